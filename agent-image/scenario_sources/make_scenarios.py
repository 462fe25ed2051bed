"""Writes the scripted test model's scenario files from readable sources.

The todo app the demo scenario builds lives in ``todo-app/`` as real files (so it can be edited
and tested as code); this script embeds them into ``todo-app.json`` and writes the other
scenarios. Run it after changing a source:
``python agent-image/scenario_sources/make_scenarios.py``. A unit test fails when the committed
JSON and this script disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIO_DIR = HERE.parent / "codingjob_agent" / "scripted_model" / "scenarios"


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": args}}


def turn(content: str | None, *calls: dict[str, Any], expect: list[str] | None = None) -> Any:
    t: dict[str, Any] = {}
    if expect:
        t["expect"] = {"toolResultsContain": expect}
    t["message"] = {"role": "assistant", "content": content, "tool_calls": list(calls)}
    return t


def f(name: str) -> str:
    return (HERE / "todo-app" / name).read_text()


def scenarios() -> dict[str, Any]:
    """Scenario documents by name."""
    open_browser = (
        'url="file://$PWD/todo-app/index.html"\n'
        'if command -v chromium >/dev/null && [ -S "/tmp/.X11-unix/X${DISPLAY#:}" ]; then\n'
        "  nohup chromium --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \\\n"
        "    --disable-background-networking --disable-component-update --disable-sync \\\n"
        "    --user-data-dir=/tmp/todo-app-browser --window-position=0,0 \\\n"
        "    --window-size=1280,800 \\\n"
        '    --app="$url" >/tmp/todo-app-browser.log 2>&1 &\n'
        '  sleep 6 && echo "opened $url in chromium"\n'
        "else\n"
        '  echo "no desktop browser here to open todo-app; the screenshot shows the desktop"\n'
        "fi"
    )
    todo = {
        "description": "Scripted test model (a fixture, not a real model): builds a small todo "
        "web app with React-style components in plain HTML/JS (no network installs), tests "
        "its logic with node --test, opens it on the desktop, takes a screenshot and finishes.",
        "turns": [
            turn(
                "Plan:\n1. Check the tools and the workspace.\n2. Write the todo logic as pure "
                "reducer functions and test them with node --test.\n3. Write the page and its "
                "components (React-style, no build step, nothing to download).\n4. Check the "
                "scripts, open the app on the desktop, take a screenshot, finish.",
                call("bash", command="node --version && ls -la"),
            ),
            turn(
                "Node is available. Writing the state logic first.",
                call("create", path="todo-app/todo.js", file_text=f("todo.js")),
                expect=["v"],
            ),
            turn(
                "Now tests for the logic.",
                call("create", path="todo-app/todo.test.js", file_text=f("todo.test.js")),
                expect=["Created"],
            ),
            turn(
                None,
                call("bash", command="cd todo-app && node --test 2>&1 | tail -n 12"),
                expect=["Created"],
            ),
            turn(
                "All tests pass. Now the page and its components.",
                call("create", path="todo-app/index.html", file_text=f("index.html")),
                call("create", path="todo-app/app.js", file_text=f("app.js")),
                expect=["fail 0"],
            ),
            turn(
                None,
                call(
                    "bash",
                    command="cd todo-app && node --check todo.js && node --check app.js"
                    " && ls && echo syntax ok",
                ),
                expect=["index.html", "app.js"],
            ),
            turn(
                "Opening the app on the desktop.",
                call("bash", command=open_browser),
                expect=["syntax ok"],
            ),
            turn(None, call("screenshot"), expect=["todo-app"]),
            turn(
                None,
                call(
                    "finish",
                    summary="Built a todo app in todo-app/: index.html with React-style "
                    "components in app.js (add, toggle, remove, filter, clear done) over pure "
                    "reducer functions in todo.js. Verified with node --test (5 tests pass in "
                    "todo.test.js) and node --check, opened it on the desktop and took a "
                    "screenshot. Open todo-app/index.html in a browser; run the tests with "
                    "`cd todo-app && node --test`.",
                    success=True,
                ),
            ),
        ],
        "afterLastTurn": "error",
    }
    fail = {
        "description": "Scripted test model (a fixture): looks at the workspace, then gives "
        "up with finish(success=false), so the run fails.",
        "turns": [
            turn("Checking what is there.", call("bash", command="ls -la && echo looked")),
            turn(
                None,
                call(
                    "finish",
                    summary="The task needs a service that is not reachable from "
                    "the sandbox, so it cannot be done here.",
                    success=False,
                ),
                expect=["looked"],
            ),
        ],
        "afterLastTurn": "error",
    }
    never = {
        "description": "Scripted test model (a fixture): never finishes; repeats a harmless "
        "sleep, for deadline and max-steps tests.",
        "turns": [turn("Waiting.", call("bash", command="sleep 5 && echo still working"))],
        "afterLastTurn": "repeat-last",
    }
    # The agent freezes itself (SIGSTOP to the agent process, the bash tool's parent): its soft
    # deadline (SIGALRM) cannot fire, so only the pod's activeDeadlineSeconds can end the job.
    frozen = {
        "description": "Scripted test model (a fixture): the agent stops its own process, so it "
        "ignores its soft deadline; for the test that the pod-level deadline ends a job.",
        "turns": [
            turn(
                "Pausing the agent process.",
                call("bash", command="echo frozen > frozen.txt && kill -STOP $PPID"),
            )
        ],
        "afterLastTurn": "repeat-last",
    }
    resume_turns = [
        turn(
            "Working in slow, idempotent steps.",
            call("bash", command="mkdir -p progress && echo started"),
        )
    ]
    for i in range(1, 7):
        resume_turns.append(
            turn(
                f"Slow step {i} of 6.",
                call("bash", command=f"sleep 4 && touch progress/step-{i} && echo done step-{i}"),
                expect=["started" if i == 1 else f"done step-{i - 1}"],
            )
        )
    resume_turns.append(turn(None, call("bash", command="ls progress"), expect=["done step-6"]))
    resume_turns.append(
        turn(
            None,
            call("finish", summary="Completed 6 slow steps; progress/ holds step-1 to step-6."),
            expect=["step-6"],
        )
    )
    resume = {
        "description": "Scripted test model (a fixture): six slow, idempotent steps (4 s "
        "each) that leave progress/step-N files, so a run can be suspended and resumed in "
        "the middle.",
        "turns": resume_turns,
        "afterLastTurn": "error",
    }
    edit = {
        "description": "Scripted test model (a fixture): makes tool mistakes (missing match, "
        "ambiguous match, bad line, missing file, missing arguments, a timeout, huge output) and "
        "checks that each comes back as a tool result, then finishes.",
        "turns": [
            turn(None, call("create", path="notes.txt", file_text="alpha\nbeta\nalpha\n")),
            turn(
                None,
                call("str_replace", path="notes.txt", old_str="gamma", new_str="delta"),
                expect=["Created"],
            ),
            turn(
                None,
                call("str_replace", path="notes.txt", old_str="alpha", new_str="delta"),
                expect=["did not appear verbatim"],
            ),
            turn(
                None,
                call("insert", path="notes.txt", insert_line=99, insert_text="x"),
                expect=["appears 2 times", "lines [1, 3]"],
            ),
            turn(None, call("view", path="missing/file.txt"), expect=["outside 0..3"]),
            turn(
                None,
                call("str_replace", path="notes.txt", old_str="beta"),
                expect=["does not exist"],
            ),
            turn(
                None,
                call("bash", command="echo before && sleep 30", timeout=1),
                expect=["bad arguments for str_replace"],
            ),
            turn(
                None,
                call("bash", command="seq 1 2000000"),
                expect=["before", "timed out after 1 s"],
            ),
            turn(None, call("bash", command="exit 3"), expect=["omitted ...]", "2000000"]),
            turn(
                None,
                call("str_replace", path="notes.txt", old_str="beta", new_str="BETA"),
                expect=["exit code: 3"],
            ),
            turn(
                None,
                call("finish", summary="Every tool error came back as a tool result."),
                expect=["BETA"],
            ),
        ],
        "afterLastTurn": "error",
    }
    # The two turns that open gate/ and wait until the test creates gate/go.
    at_the_gate = [
        turn("Opening the gate directory.", call("bash", command="mkdir -p gate && echo ready")),
        turn(
            "Waiting at the gate.",
            call(
                "bash",
                command="until [ -e gate/go ]; do sleep 0.5; done; echo gate released",
                timeout=3000,
            ),
            expect=["ready"],
        ),
    ]
    # The fault campaign (tests/faults) injects its fault while the agent waits at the gate, in
    # a phase it chose; the wait is one idempotent tool call, so a restarted agent re-runs it.
    gated = {
        "description": "Scripted test model (a fixture): makes gate/, waits until the test "
        "creates gate/go, lists the gate and finishes; for the fault campaign, which injects "
        "its fault while the agent waits (or right after it released the gate).",
        "turns": [
            *at_the_gate,
            turn(None, call("bash", command="ls gate && echo listed"), expect=["gate released"]),
            turn(None, call("finish", summary="Passed the gate."), expect=["listed"]),
        ],
        "afterLastTurn": "error",
    }
    # The workspace-full case of the fault campaign: on a small volume the test made, the agent
    # writes past its size after the gate (the test writes its files first). The output is over
    # a filesystem block, so storing the tool result needs a new block the full volume does not
    # have: the step fails there (WorkspaceFull), and the last turn is reached only if it did not.
    full = {
        "description": "Scripted test model (a fixture): makes gate/, waits until the test "
        "creates gate/go, then writes past the size of the workspace volume (No space left on "
        "device) and leaves it full; for the fault campaign's workspace-full case.",
        "turns": [
            *at_the_gate,
            turn(
                "Writing a large file.",
                call(
                    "bash",
                    command='head -c 1G /dev/zero > fill.bin; echo "exit $?"; df -k .; '
                    "seq 100001 101000",
                ),
                expect=["gate released"],
            ),
            turn(
                None,
                call("finish", summary="The workspace is full.", success=False),
                expect=["No space left on device"],
            ),
        ],
        "afterLastTurn": "error",
    }
    probe = (HERE / "adversary" / "adversary_probe.py").read_text()
    adversary = {
        "description": "Scripted test model (a fixture): the adversary. Writes a probe script "
        "and runs it: network probes against the test cluster's own addresses (named in the "
        "task), secrets, the sidecar's journal and limits; then drives the sidecar past "
        "maxSteps itself, forges its result and termination message, fills the writable paths "
        "past the ephemeral-storage limit and kills the agent. tests/e2e/test_adversary.py reads "
        "the reports and checks the job's status against the real counts.",
        "turns": [
            turn(
                "Writing the probes.",
                call("create", path="adversary_probe.py", file_text=probe),
            ),
            turn(
                None,
                call("bash", command="python3 adversary_probe.py run", timeout=900),
                expect=["Created"],
            ),
            turn(
                None,
                call(
                    "bash",
                    # $PPID is the agent: the probe kills it once its lies are in place.
                    command="python3 adversary_probe.py final --agent-pid $PPID",
                    timeout=900,
                ),
                expect=["adversary:"],
            ),
            # The steps the probe takes itself (past maxSteps) get this answer.
            turn("Hijacked step.", call("bash", command="echo hijacked")),
        ],
        "afterLastTurn": "repeat-last",
    }
    return {
        "adversary": adversary,
        "gated": gated,
        "disk-full": full,
        "todo-app": todo,
        "fail": fail,
        "never-finish": never,
        "ignore-deadline": frozen,
        "resume": resume,
        "edit-errors": edit,
    }


def render(doc: Any) -> str:
    """The file content of a scenario document."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name, doc in scenarios().items():
        (SCENARIO_DIR / f"{name}.json").write_text(render(doc))


if __name__ == "__main__":
    main()
