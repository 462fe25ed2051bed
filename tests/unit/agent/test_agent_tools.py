"""The agent's tools against a temporary workspace: results and errors come back as ToolOutput."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from codingjob_agent.agent.tools import (
    MAX_OUTPUT_CHARS,
    TOOL_NAMES,
    TOOL_SCHEMAS,
    Toolbox,
    truncate_middle,
)


@pytest.fixture
def box(tmp_path: Path) -> Toolbox:
    return Toolbox(workspace=tmp_path, display=":99", screenshot_dir=tmp_path / "shots")


def run(box: Toolbox, name: str, **args: object) -> tuple[str, bool]:
    out = box.run(name, json.dumps(args))
    return out.text, out.error


def test_schemas_are_openai_function_tools() -> None:
    assert {"bash", "view", "create", "str_replace", "insert", "screenshot", "finish"} == TOOL_NAMES
    for schema in TOOL_SCHEMAS:
        assert schema["type"] == "function"
        params = schema["function"]["parameters"]
        assert params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])


def test_bash_runs_in_the_workspace(box: Toolbox, tmp_path: Path) -> None:
    text, error = run(box, "bash", command="pwd && echo $DISPLAY && echo err >&2")
    assert not error
    assert text.split("\n")[:3] == [str(tmp_path), ":99", "err"]


def test_bash_reports_a_non_zero_exit(box: Toolbox) -> None:
    text, error = run(box, "bash", command="echo nope; exit 7")
    assert error
    assert "nope" in text and "[exit code: 7]" in text


def test_bash_has_no_stdin(box: Toolbox) -> None:
    text, error = run(box, "bash", command="read line || echo no-input", timeout=5)
    assert "no-input" in text and not error


def test_bash_timeout_kills_the_process_group(box: Toolbox, tmp_path: Path) -> None:
    started = time.monotonic()
    text, error = run(
        box, "bash", command="sleep 60 & echo $! > child.pid; echo started; wait", timeout=1
    )
    assert time.monotonic() - started < 10
    assert error
    assert "started" in text and "timed out after 1 s" in text
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the background child survived the timeout"


def test_bash_timeout_is_bounded_by_the_deadline(tmp_path: Path) -> None:
    box = Toolbox(workspace=tmp_path, time_left=lambda: 1.0)
    started = time.monotonic()
    text, error = run(box, "bash", command="sleep 30", timeout=600)
    assert error and "timed out after 1 s" in text
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("lines", [20_000, 3_000_000])
def test_bash_huge_output_keeps_head_and_tail(box: Toolbox, lines: int) -> None:
    text, error = run(box, "bash", command=f"seq 1 {lines}")
    assert not error
    assert len(text) < MAX_OUTPUT_CHARS + 200
    assert text.startswith("1\n2\n3\n")
    assert text.rstrip().endswith(str(lines))
    assert "omitted ...]" in text


def test_bash_rejects_bad_arguments(box: Toolbox) -> None:
    assert run(box, "bash", command="")[1]
    text, error = run(box, "bash", command="true", timeout=0)
    assert error and "timeout must be a positive number" in text
    text, error = run(box, "bash")
    assert error and "bad arguments for bash" in text


def test_truncate_middle() -> None:
    assert truncate_middle("abc", 10) == "abc"
    cut = truncate_middle("a" * 50 + "b" * 50, 20)
    assert cut.startswith("a" * 10) and cut.endswith("b" * 10)
    assert "[... 80 characters omitted ...]" in cut


def test_create_and_view(box: Toolbox, tmp_path: Path) -> None:
    text, error = run(box, "create", path="src/a.py", file_text="one\ntwo\nthree\n")
    assert not error and "Created" in text and "(3 lines)" in text
    assert (tmp_path / "src/a.py").read_text() == "one\ntwo\nthree\n"
    text, _ = run(box, "view", path="src/a.py")
    assert text == "     1\tone\n     2\ttwo\n     3\tthree"
    text, _ = run(box, "view", path=str(tmp_path / "src/a.py"), view_range=[2, -1])
    assert text == "     2\ttwo\n     3\tthree"
    text, error = run(box, "view", path="src/a.py", view_range=[3, 9])
    assert error and "outside the file's lines 1..3" in text
    text, error = run(box, "create", path="src/a.py", file_text="new")
    assert not error and "Overwrote" in text


def test_view_lists_a_directory_without_hidden_entries(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("")
    (tmp_path / ".git").mkdir()
    text, error = run(box, "view", path=".")
    assert not error
    assert "pkg/\npkg/mod.py\npkg/sub/" in text
    assert ".git" not in text.split(":", 1)[1]


def test_view_errors(box: Toolbox, tmp_path: Path) -> None:
    text, error = run(box, "view", path="missing.txt")
    assert error and "does not exist" in text
    (tmp_path / "blob").write_bytes(b"\xff\xfe\x00")
    text, error = run(box, "view", path="blob")
    assert error and "not a UTF-8 text file" in text


def test_str_replace(box: Toolbox, tmp_path: Path) -> None:
    f = tmp_path / "n.txt"
    f.write_text("alpha\nbeta\nalpha\n")
    text, error = run(box, "str_replace", path="n.txt", old_str="gamma", new_str="x")
    assert error and "did not appear verbatim" in text
    text, error = run(box, "str_replace", path="n.txt", old_str="alpha", new_str="x")
    assert error and "appears 2 times" in text and "lines [1, 3]" in text
    assert f.read_text() == "alpha\nbeta\nalpha\n"
    text, error = run(box, "str_replace", path="n.txt", old_str="", new_str="x")
    assert error and "old_str is empty" in text
    text, error = run(box, "str_replace", path="n.txt", old_str="beta\n", new_str="")
    assert not error and "Edited" in text
    assert f.read_text() == "alpha\nalpha\n"


def test_insert(box: Toolbox, tmp_path: Path) -> None:
    f = tmp_path / "n.txt"
    f.write_text("a\nb\n")
    assert not run(box, "insert", path="n.txt", insert_line=0, insert_text="top")[1]
    assert not run(box, "insert", path="n.txt", insert_line=3, insert_text="end\nmore\n")[1]
    assert f.read_text() == "top\na\nb\nend\nmore\n"
    text, error = run(box, "insert", path="n.txt", insert_line=9, insert_text="x")
    assert error and "outside 0..5" in text
    text, error = run(box, "insert", path="n.txt", insert_line="2", insert_text="x")
    assert error and "must be an integer" in text


def test_unknown_tool_and_bad_json(box: Toolbox) -> None:
    text, error = run(box, "launch_rocket")
    assert error and "unknown tool 'launch_rocket'" in text and "bash" in text
    out = box.run("bash", "{not json")
    assert out.error and "not valid JSON" in out.text
    out = box.run("bash", "[1]")
    assert out.error and "must be a JSON object" in out.text
    text, error = run(box, "view", path="x", colour="red")
    assert error and "bad arguments for view" in text


def test_finish(box: Toolbox) -> None:
    out = box.run("finish", json.dumps({"summary": " done "}))
    assert out.finish and out.success and out.summary == "done"
    out = box.run("finish", json.dumps({"summary": "no", "success": False}))
    assert out.finish and not out.success
    assert box.run("finish", json.dumps({"summary": ""})).error


def test_screenshot_without_a_display_is_an_error_result(box: Toolbox) -> None:
    # Display :99 does not exist (and ImageMagick may be missing): an error result either way.
    out = box.run("screenshot", "{}")
    assert out.error and out.image_png is None
    assert "screenshot" in out.text


def test_bad_timeout_and_huge_files_are_error_results(box: Toolbox, tmp_path: Path) -> None:
    text, error = run(box, "bash", command="true", timeout="soon")
    assert error and "timeout must be a number of seconds" in text
    with (tmp_path / "big.log").open("wb") as f:
        f.truncate(11 * 1024 * 1024)
    text, error = run(box, "view", path="big.log")
    assert error and "use bash" in text
    text, error = run(box, "str_replace", path="big.log", old_str="a", new_str="b")
    assert error and "use bash" in text


def test_an_unexpected_failure_is_an_error_result(
    box: Toolbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: Toolbox, path: str, file_text: str) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Toolbox, "_tool_create", explode)
    text, error = run(box, "create", path="a", file_text="b")
    assert error and "RuntimeError: disk on fire" in text
