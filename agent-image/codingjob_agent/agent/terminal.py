"""The agent's tool calls, mirrored onto its desktop so a viewer watches it work.

Each call is one numbered entry in a directory: ``N.cmd`` (the command line or the edit, written
first), ``N.out`` (the output, written while the command runs: bash writes straight into it) and
``N.done`` (how it ended, written last). The desktop's terminal window (``codingjob-terminal``,
an xterm started by supervisord) follows the entries in order and prints them as they grow.
The directory lives under /tmp, never in the workspace: it is a view, not part of the work.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Entries kept; older ones are removed (the terminal has printed them long ago).
KEEP_ENTRIES = 200
#: Longest line of a non-bash tool call shown as its command line.
MAX_TITLE = 200


@dataclass(frozen=True)
class Entry:
    """One mirrored tool call."""

    number: int
    directory: Path

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.number:06d}.{suffix}"


def title(name: str, arguments: str | None) -> str:
    """The command line shown for a tool call: bash's command, or ``edit: create app.js``."""
    try:
        args: Any = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        args = {}
    if not isinstance(args, dict):
        args = {}
    if name == "bash" and isinstance(args.get("command"), str):
        return str(args["command"])
    target = args.get("path")
    detail = f" {target}" if isinstance(target, str) else ""
    return f"# {name}{detail}"[:MAX_TITLE]


@dataclass
class Terminal:
    """Writes tool calls as entries into ``directory`` (created on first use)."""

    directory: Path
    keep: int = KEEP_ENTRIES
    _next: int = 1

    def begin(self, name: str, arguments: str | None) -> Entry | None:
        """Announce a tool call; None when the mirror cannot be written (never fatal)."""
        entry = Entry(self._next, self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            entry.path("out").touch()
            entry.path("cmd").write_text(title(name, arguments) + "\n", encoding="utf-8")
        except OSError:
            return None
        self._next += 1
        self._prune(entry.number - self.keep)
        return entry

    def finish(self, entry: Entry | None, status: str, text: str | None = None) -> None:
        """Record how the call ended; ``text`` is its output when the tool did not stream it."""
        if entry is None:
            return
        with contextlib.suppress(OSError):
            if text:
                with entry.path("out").open("a", encoding="utf-8") as out:
                    out.write(text if text.endswith("\n") else text + "\n")
            entry.path("done").write_text(status + "\n", encoding="utf-8")

    def _prune(self, below: int) -> None:
        if below < 1:
            return
        for suffix in ("cmd", "out", "done"):
            with contextlib.suppress(OSError):
                Entry(below, self.directory).path(suffix).unlink(missing_ok=True)
