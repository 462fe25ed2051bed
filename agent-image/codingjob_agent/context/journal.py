"""Append-only, fsync'd journal of conversation events, and the readable transcript.

One JSON object per line. A record reaches the disk (``fsync``) before the step that wrote it
answers, so an acknowledged step survives a crash; a crash in the middle of a write leaves at
most one torn last line, which loading drops (and cuts off, so later records start cleanly).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class JournalError(RuntimeError):
    """A record other than the last one is unreadable: the journal was damaged, not torn."""


def _encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class Journal:
    """The event log at ``path``; :meth:`load` first, then :meth:`append`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def load(self) -> list[dict[str, Any]]:
        """All complete records; a torn last line is logged, dropped and cut off the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        events: list[dict[str, Any]] = []
        good_size = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        lines = data.split(b"\n")
        for number, line in enumerate(lines):
            last = number == len(lines) - 1
            if not line:
                if not last:
                    good_size += 1
                continue
            try:
                event = json.loads(line.decode("utf-8"))
                if not isinstance(event, dict) or last:
                    # A record without its newline was cut short, even when it parses.
                    raise ValueError("incomplete record")
            except ValueError:
                if number >= len(lines) - 2 and all(not rest for rest in lines[number + 1 :]):
                    log.warning("%s: dropping a torn last record (%d bytes)", self.path, len(line))
                    break
                raise JournalError(f"{self.path}: record {number + 1} is unreadable") from None
            events.append(event)
            good_size += len(line) + 1
        if good_size < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(good_size)
                os.fsync(handle.fileno())
        # Readable by the sidecar's group (the archiver, which ships it in the workspace ZIP).
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return events

    def append(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Write ``events`` and fsync; they are on disk when this returns."""
        if self._fd is None:
            raise RuntimeError("Journal.load() must run before append()")
        data = b"".join(_encode(e) for e in events)
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            # A full disk must not leave half a record for the next one to be appended after.
            os.ftruncate(self._fd, size)
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def render_message(message: Mapping[str, Any]) -> str:
    """A message as readable text: role line, content, then one line per tool call."""
    role = str(message.get("role", "?"))
    header = f"[{role}]"
    if message.get("tool_call_id"):
        header += f" (result of {message['tool_call_id']})"
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                parts.append(f"<{part.get('type', 'part')}>")
        text = "\n".join(parts)
    else:
        text = "" if content is None else str(content)
    lines = [header, text] if text else [header]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        lines.append(f"-> {function.get('name')}({function.get('arguments')}) [{call.get('id')}]")
    return "\n".join(lines)


class Transcript:
    """``context.txt``: what happened, for people; appended, never read back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(text.rstrip("\n") + "\n\n")

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> None:
        if messages:
            self.write("\n\n".join(render_message(m) for m in messages))
