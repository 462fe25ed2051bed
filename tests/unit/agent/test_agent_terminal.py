"""The desktop's terminal mirror: tool calls become entries, and the viewer script prints them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from codingjob_agent.agent.terminal import Terminal, title
from codingjob_agent.agent.tools import Toolbox

REPO = Path(__file__).resolve().parents[3]
VIEWER = REPO / "agent-image" / "bin" / "codingjob-terminal"


def _args(**kwargs: object) -> str:
    return json.dumps(kwargs)


def test_titles() -> None:
    assert title("bash", _args(command="ls -la")) == "ls -la"
    assert title("create", _args(path="a.js", file_text="x")) == "# create a.js"
    assert title("finish", _args(summary="done")) == "# finish"
    assert title("bash", "not json") == "# bash"


def test_bash_streams_into_its_entry(tmp_path: Path) -> None:
    mirror = tmp_path / "terminal"
    box = Toolbox(workspace=tmp_path, terminal=Terminal(mirror))
    result = box.run("bash", _args(command="echo hello-from-the-agent; exit 3"))
    assert result.error
    assert "hello-from-the-agent" in result.text
    assert (mirror / "000001.cmd").read_text() == "echo hello-from-the-agent; exit 3\n"
    assert (mirror / "000001.out").read_text() == "hello-from-the-agent\n[exit code: 3]\n"
    assert (mirror / "000001.done").read_text() == "failed\n"

    box.run("create", _args(path="app.js", file_text="let x = 1;\n"))
    assert (mirror / "000002.cmd").read_text() == "# create app.js\n"
    assert "Created" in (mirror / "000002.out").read_text()
    assert (mirror / "000002.done").read_text() == "ok\n"
    # The mirror is a view: nothing of it lands in the workspace besides the agent's own file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.js", "terminal"]


def test_old_entries_are_pruned(tmp_path: Path) -> None:
    terminal = Terminal(tmp_path, keep=3)
    for i in range(6):
        terminal.finish(terminal.begin("bash", _args(command=f"echo {i}")), "ok")
    assert sorted(p.name for p in tmp_path.glob("*.cmd")) == [
        "000004.cmd",
        "000005.cmd",
        "000006.cmd",
    ]


def test_an_unwritable_mirror_never_breaks_a_tool(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    box = Toolbox(workspace=tmp_path, terminal=Terminal(blocker / "sub"))
    assert box.run("bash", _args(command="echo ok")).text == "ok\n"


def test_viewer_prints_commands_and_output_as_they_happen(tmp_path: Path) -> None:
    mirror = tmp_path / "terminal"
    box = Toolbox(workspace=tmp_path, terminal=Terminal(mirror))
    env = dict(os.environ, CODINGJOB_TERMINAL_DIR=str(mirror), CODINGJOB_NAME="todo")
    viewer = subprocess.Popen(
        ["bash", str(VIEWER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        box.run("bash", _args(command="echo first-line && sleep 0.5 && echo second-line"))
        box.run("str_replace", _args(path="nope.js", old_str="a", new_str="b"))
        deadline = time.monotonic() + 10
        while not (mirror / "000002.done").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        viewer.terminate()
        out = viewer.communicate(timeout=5)[0].decode()
    prompt = "agent@todo:/workspace$\x1b[0m echo first-line && sleep 0.5 && echo second-line\n"
    assert prompt in out
    after = out.split(prompt, 1)[1]
    assert after.index("first-line\n") < after.index("second-line\n") < after.index("# str_replace")
    assert "does not exist" in out
    assert "[failed]" in out


def test_viewer_cuts_a_flood_and_shows_its_end(tmp_path: Path) -> None:
    mirror = tmp_path / "terminal"
    box = Toolbox(workspace=tmp_path, terminal=Terminal(mirror))
    env = dict(os.environ, CODINGJOB_TERMINAL_DIR=str(mirror), CODINGJOB_TERMINAL_CAP="1000")
    viewer = subprocess.Popen(
        ["bash", str(VIEWER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        box.run("bash", _args(command="seq 1 20000; echo the-very-end"))
        deadline = time.monotonic() + 10
        while not (mirror / "000001.done").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        viewer.terminate()
        out = viewer.communicate(timeout=5)[0].decode()
    assert "[... more output; the end follows when the command ends ...]" in out
    assert out.rstrip().endswith("the-very-end")
    assert len(out) < 5000
