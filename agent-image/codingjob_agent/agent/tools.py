"""The agent's tools: OpenAI function schemas and their implementations.

Every tool returns a :class:`ToolOutput`; a tool never raises for a mistake the model made (bad
path, no match, timeout): the mistake comes back as the tool result so the model can correct it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from codingjob_agent.agent.terminal import Entry, Terminal

#: Tool results longer than this are cut in the middle; the head and the tail are kept because
#: that is where commands print what they are doing and how they ended.
MAX_OUTPUT_CHARS = 16_000
DEFAULT_BASH_TIMEOUT = 120
MAX_BASH_TIMEOUT = 3600
#: Largest file view and the editing tools read whole (they hold it in memory).
MAX_FILE_BYTES = 10 * 1024 * 1024
#: Entries listed when viewing a directory, so that `view /` cannot flood the context.
MAX_DIR_ENTRIES = 400


class ToolError(Exception):
    """A mistake in a tool call, reported to the model as the tool's result."""


@dataclass
class ToolOutput:
    """What a tool call produced: text for the tool message, optionally an image for the model."""

    text: str
    error: bool = False
    image_png: bytes | None = None
    finish: bool = False
    success: bool = True
    summary: str = ""


def truncate_middle(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """Return ``text`` unchanged when it fits ``limit``, else its head and tail with a marker."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[-tail:]}"


def _read_head_tail(path: Path, limit: int = MAX_OUTPUT_CHARS) -> str:
    """Read a possibly huge file keeping its head and tail, in memory bounded by ``limit``."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= limit * 4:
            return truncate_middle(f.read().decode("utf-8", "replace"), limit)
        head = f.read(limit * 2).decode("utf-8", "replace")[: limit // 2]
        f.seek(size - limit * 2)
        tail = f.read().decode("utf-8", "replace")[-(limit - limit // 2) :]
    omitted = size - len(head.encode()) - len(tail.encode())
    return f"{head}\n[... about {omitted} bytes omitted ...]\n{tail}"


def _schema(name: str, description: str, properties: dict[str, Any], required: list[str]) -> Any:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


TOOL_SCHEMAS: list[dict[str, Any]] = [
    _schema(
        "bash",
        "Run a bash command in a new shell with cwd /workspace and return its combined stdout "
        "and stderr and its exit code. Each call is independent: `cd` and variables do not "
        "persist, so chain with && or use absolute paths. No interactive programs (editors, "
        "pagers, prompts): pass flags such as -y. Long output is cut in the middle. Start "
        "servers in the background with output redirected (`cmd > /tmp/log 2>&1 &`).",
        {
            "command": {"type": "string", "description": "The command to run."},
            "timeout": {
                "type": "integer",
                "description": f"Seconds before the command is killed (default "
                f"{DEFAULT_BASH_TIMEOUT}, at most {MAX_BASH_TIMEOUT}).",
            },
        },
        ["command"],
    ),
    _schema(
        "view",
        "Show a file with line numbers (optionally only view_range [first, last], last -1 for "
        "the end), or list a directory two levels deep.",
        {
            "path": {
                "type": "string",
                "description": "File or directory, relative to /workspace or absolute.",
            },
            "view_range": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 2,
                "maxItems": 2,
                "description": "[first, last] line numbers, 1-based and inclusive.",
            },
        },
        ["path"],
    ),
    _schema(
        "create",
        "Create a file with the given content, creating parent directories; an existing file "
        "is overwritten.",
        {
            "path": {
                "type": "string",
                "description": "File path, relative to /workspace or absolute.",
            },
            "file_text": {"type": "string", "description": "The complete file content."},
        },
        ["path", "file_text"],
    ),
    _schema(
        "str_replace",
        "Replace old_str with new_str in a file. old_str must match exactly once, whitespace "
        "included; include enough surrounding lines to make it unique.",
        {
            "path": {"type": "string"},
            "old_str": {"type": "string", "description": "Exact text to replace."},
            "new_str": {"type": "string", "description": "Replacement text (may be empty)."},
        },
        ["path", "old_str", "new_str"],
    ),
    _schema(
        "insert",
        "Insert text after line insert_line of a file (0 inserts at the top).",
        {
            "path": {"type": "string"},
            "insert_line": {"type": "integer", "description": "Line after which to insert."},
            "insert_text": {"type": "string"},
        },
        ["path", "insert_line", "insert_text"],
    ),
    _schema(
        "screenshot",
        "Take a screenshot of the desktop (display :1) that the user watches. GUI programs "
        "started from bash appear there.",
        {},
        [],
    ),
    _schema(
        "finish",
        "End the task. Call it once, after verifying the result, with a short summary of what "
        "was done and how it was checked. Set success to false if the task could not be done.",
        {
            "summary": {"type": "string", "description": "What was done, and how it was verified."},
            "success": {
                "type": "boolean",
                "description": "Whether the task is done (default true).",
            },
        },
        ["summary"],
    ),
]

TOOL_NAMES = frozenset(s["function"]["name"] for s in TOOL_SCHEMAS)


@dataclass
class Toolbox:
    """Runs tool calls inside the sandbox, relative to ``workspace``."""

    workspace: Path
    display: str = ":1"
    screenshot_dir: Path | None = None
    #: Seconds left before the job's deadline, or None; bash timeouts never exceed it.
    time_left: Callable[[], float | None] = field(default=lambda: None)
    #: Mirrors every call onto the desktop's terminal window, when there is a desktop.
    terminal: Terminal | None = None
    _shots: int = 0
    _entry: Entry | None = None

    def run(self, name: str, arguments: str | None) -> ToolOutput:
        """Run tool ``name`` with JSON ``arguments``; every failure becomes an error result."""
        if self.terminal is None:
            return self._run(name, arguments)
        self._entry = self.terminal.begin(name, arguments)
        try:
            result = self._run(name, arguments)
        finally:
            entry, self._entry = self._entry, None
        if name != "bash":
            shown: str | None = result.text
        elif result.error:
            # The command's output is in the entry already; add the note the tool appended
            # (exit code, timeout) or its refusal.
            shown = result.text.rsplit("\n", 1)[-1]
        else:
            shown = None
        self.terminal.finish(entry, "failed" if result.error else "ok", shown)
        return result

    def _run(self, name: str, arguments: str | None) -> ToolOutput:
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            return ToolOutput(f"Error: the arguments of {name} are not valid JSON ({e}).", True)
        if not isinstance(args, dict):
            return ToolOutput(f"Error: the arguments of {name} must be a JSON object.", True)
        handler = getattr(self, f"_tool_{name}", None) if name in TOOL_NAMES else None
        if handler is None:
            known = ", ".join(sorted(TOOL_NAMES))
            return ToolOutput(f"Error: unknown tool {name!r}. Available tools: {known}.", True)
        try:
            result: ToolOutput = handler(**args)
        except TypeError as e:
            return ToolOutput(f"Error: bad arguments for {name}: {e}.", True)
        except ToolError as e:
            return ToolOutput(f"Error: {e}", True)
        except OSError as e:
            return ToolOutput(f"Error: {e.strerror or e} ({e.filename or name}).", True)
        except Exception as e:  # the loop must survive any tool failure; the model sees it
            return ToolOutput(f"Error: {name} failed unexpectedly: {type(e).__name__}: {e}", True)
        return result

    # --- helpers -------------------------------------------------------------------------------

    def _path(self, path: object) -> Path:
        if not isinstance(path, str) or not path:
            raise ToolError("path must be a non-empty string.")
        p = Path(path)
        return p if p.is_absolute() else self.workspace / p

    @staticmethod
    def _read_text(p: Path) -> str:
        if not p.exists():
            raise ToolError(f"{p} does not exist.")
        if p.is_dir():
            raise ToolError(f"{p} is a directory; use view to list it.")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ToolError(
                f"{p} has {p.stat().st_size} bytes, more than {MAX_FILE_BYTES} that view and the "
                "editing tools handle; use bash (head, sed -n, rg) to look at parts of it."
            )
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ToolError(f"{p} is not a UTF-8 text file.") from e

    @staticmethod
    def _numbered(lines: list[str], first: int) -> str:
        return "\n".join(f"{i:6}\t{line}" for i, line in enumerate(lines, start=first))

    def _snippet(self, text: str, line: int, context: int = 4) -> str:
        lines = text.split("\n")
        start = max(1, line - context)
        end = min(len(lines), line + context)
        return self._numbered(lines[start - 1 : end], start)

    # --- tools ---------------------------------------------------------------------------------

    def _tool_bash(self, command: str, timeout: int | None = None) -> ToolOutput:
        if not isinstance(command, str) or not command.strip():
            raise ToolError("command must be a non-empty string.")
        try:
            limit = float(DEFAULT_BASH_TIMEOUT if timeout is None else timeout)
        except (TypeError, ValueError) as e:
            raise ToolError(f"timeout must be a number of seconds, got {timeout!r}.") from e
        if limit <= 0:
            raise ToolError("timeout must be a positive number of seconds.")
        limit = min(limit, MAX_BASH_TIMEOUT)
        left = self.time_left()
        if left is not None:
            limit = max(1.0, min(limit, left))
        env = dict(os.environ, DISPLAY=self.display, PAGER="cat", GIT_PAGER="cat", TERM="dumb")
        with self._bash_output() as out:
            # A new session makes the command a process group we can kill as a whole on timeout,
            # children included; stdin is closed so that a prompt fails instead of hanging.
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.workspace,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:
                # SIGTERM or the deadline interrupted us: never leave the command running.
                _kill_group(proc)
                raise
            out.flush()
            text = _read_head_tail(Path(f"/proc/self/fd/{out.fileno()}"))
        if timed_out:
            return ToolOutput(
                f"{text}\n[command timed out after {limit:g} s; its process group was killed. "
                "Run long commands in the background or raise timeout.]",
                error=True,
            )
        if proc.returncode != 0:
            return ToolOutput(f"{text}\n[exit code: {proc.returncode}]", error=True)
        return ToolOutput(text if text else "[no output, exit code 0]")

    @contextlib.contextmanager
    def _bash_output(self) -> Iterator[IO[bytes]]:
        """Where a command's output goes: the terminal entry (the desktop shows it as it is
        written), else an anonymous temporary file."""
        if self._entry is not None:
            try:
                mirrored = self._entry.path("out").open("w+b")
            except OSError:
                mirrored = None
            if mirrored is not None:
                with mirrored:
                    yield mirrored
                return
        with tempfile.TemporaryFile(prefix="codingjob-bash-") as anonymous:
            yield anonymous

    def _tool_view(self, path: str, view_range: list[int] | None = None) -> ToolOutput:
        p = self._path(path)
        if p.is_dir():
            if view_range is not None:
                raise ToolError("view_range only applies to files.")
            return ToolOutput(self._list_dir(p))
        text = self._read_text(p)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        first, last = 1, len(lines)
        if view_range is not None:
            if (
                not isinstance(view_range, list)
                or len(view_range) != 2
                or not all(isinstance(n, int) for n in view_range)
            ):
                raise ToolError("view_range must be two integers [first, last].")
            first, last = view_range
            if last == -1:
                last = len(lines)
            if not 1 <= first <= max(len(lines), 1) or last < first or last > len(lines):
                raise ToolError(
                    f"view_range {view_range} is outside the file's lines 1..{len(lines)}."
                )
        if not lines:
            return ToolOutput(f"{p} is empty.")
        return ToolOutput(truncate_middle(self._numbered(lines[first - 1 : last], first)))

    def _list_dir(self, root: Path) -> str:
        entries: list[str] = []
        for depth1 in sorted(root.iterdir()):
            if depth1.name.startswith("."):
                continue
            entries.append(depth1.name + ("/" if depth1.is_dir() else ""))
            if depth1.is_dir():
                try:
                    children = sorted(depth1.iterdir())
                except OSError:
                    continue
                for child in children:
                    if not child.name.startswith("."):
                        rel = f"{depth1.name}/{child.name}"
                        entries.append(rel + ("/" if child.is_dir() else ""))
            if len(entries) >= MAX_DIR_ENTRIES:
                entries.append(f"[... listing cut at {MAX_DIR_ENTRIES} entries ...]")
                break
        body = "\n".join(entries) if entries else "[empty directory]"
        return f"{root} (hidden entries not shown):\n{body}"

    def _tool_create(self, path: str, file_text: str) -> ToolOutput:
        p = self._path(path)
        if not isinstance(file_text, str):
            raise ToolError("file_text must be a string.")
        if p.is_dir():
            raise ToolError(f"{p} is a directory.")
        existed = p.exists()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(file_text, encoding="utf-8")
        lines = file_text.count("\n") + (0 if file_text.endswith("\n") or not file_text else 1)
        verb = "Overwrote" if existed else "Created"
        return ToolOutput(f"{verb} {p} ({lines} lines).")

    def _tool_str_replace(self, path: str, old_str: str, new_str: str) -> ToolOutput:
        p = self._path(path)
        if not isinstance(old_str, str) or not isinstance(new_str, str):
            raise ToolError("old_str and new_str must be strings.")
        if not old_str:
            raise ToolError("old_str is empty; use insert or create to add text.")
        text = self._read_text(p)
        count = text.count(old_str)
        if count == 0:
            raise ToolError(
                f"old_str did not appear verbatim in {p}. No change made. Check whitespace and "
                "indentation with view."
            )
        if count > 1:
            starts: list[int] = []
            at = text.find(old_str)
            while at != -1:
                starts.append(text.count("\n", 0, at) + 1)
                at = text.find(old_str, at + 1)
            raise ToolError(
                f"old_str appears {count} times in {p} (lines {starts}). No change made. "
                "Include more surrounding lines to make it unique."
            )
        at = text.index(old_str)
        new_text = text[:at] + new_str + text[at + len(old_str) :]
        p.write_text(new_text, encoding="utf-8")
        line = text.count("\n", 0, at) + 1
        return ToolOutput(f"Edited {p}. Lines around the change:\n{self._snippet(new_text, line)}")

    def _tool_insert(self, path: str, insert_line: int, insert_text: str) -> ToolOutput:
        p = self._path(path)
        if not isinstance(insert_line, int) or isinstance(insert_line, bool):
            raise ToolError("insert_line must be an integer.")
        if not isinstance(insert_text, str):
            raise ToolError("insert_text must be a string.")
        text = self._read_text(p)
        lines = text.split("\n")
        trailing = text.endswith("\n")
        if trailing:
            lines.pop()
        if not 0 <= insert_line <= len(lines):
            raise ToolError(
                f"insert_line {insert_line} is outside 0..{len(lines)} (the file has "
                f"{len(lines)} lines). No change made."
            )
        new_lines = insert_text.removesuffix("\n").split("\n")
        lines[insert_line:insert_line] = new_lines
        new_text = "\n".join(lines) + ("\n" if trailing or not text else "")
        p.write_text(new_text, encoding="utf-8")
        return ToolOutput(
            f"Inserted {len(new_lines)} lines into {p} after line {insert_line}:\n"
            f"{self._snippet(new_text, insert_line + 1)}"
        )

    def _tool_screenshot(self) -> ToolOutput:
        self._shots += 1
        out_dir = self.screenshot_dir or self.workspace / ".codingjob" / "screenshots"
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"screenshot-{time.strftime('%Y%m%d-%H%M%S')}-{self._shots:03}.png"
        try:
            proc = subprocess.run(
                ["import", "-display", self.display, "-window", "root", f"png:{target}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except FileNotFoundError as e:
            raise ToolError("no screenshot program (ImageMagick `import`) is installed.") from e
        except subprocess.TimeoutExpired as e:
            raise ToolError(f"taking the screenshot of {self.display} timed out.") from e
        if proc.returncode != 0 or not target.exists():
            detail = (proc.stderr or proc.stdout).strip()[:500]
            raise ToolError(f"could not take a screenshot of display {self.display}: {detail}")
        png = target.read_bytes()
        return ToolOutput(f"Screenshot of the desktop saved to {target}.", image_png=png)

    def _tool_finish(self, summary: str, success: bool = True) -> ToolOutput:
        if not isinstance(summary, str) or not summary.strip():
            raise ToolError("summary must be a non-empty string.")
        if not isinstance(success, bool):
            raise ToolError("success must be true or false.")
        return ToolOutput("Finished.", finish=True, success=success, summary=summary.strip())


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group led by ``proc`` and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def image_data_url(png: bytes) -> str:
    """A data URL for an image content part."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
