"""The journal: durable appends, a torn last record dropped on load, damage refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from codingjob_agent.context.journal import Journal, JournalError, render_message

EVENTS = [
    {"op": "messages", "messages": [{"role": "user", "content": f"m{n} ü"}]} for n in range(3)
]


def write(path: Path) -> Journal:
    journal = Journal(path)
    assert journal.load() == []
    journal.append(EVENTS[:2])
    journal.append(EVENTS[2:])
    journal.close()
    return journal


def test_appended_events_load_back(tmp_path: Path) -> None:
    path = tmp_path / "context.jsonl"
    write(path)
    assert Journal(path).load() == EVENTS


@pytest.mark.parametrize(
    "tail",
    [b'{"op":"messages","mess', b'{"op":"error"}', b"\xff\xfe", b"[1,2", b"{}\n\n"[:2]],
)
def test_a_torn_last_record_is_dropped_and_cut_off(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "context.jsonl"
    write(path)
    clean = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(tail)
    journal = Journal(path)
    assert journal.load() == EVENTS
    assert path.read_bytes() == clean
    more = {"op": "error", "message": "after the crash"}
    journal.append([more])
    journal.close()
    assert Journal(path).load() == [*EVENTS, more]


def test_a_complete_but_unreadable_last_line_counts_as_torn(tmp_path: Path) -> None:
    path = tmp_path / "context.jsonl"
    write(path)
    with path.open("ab") as handle:
        handle.write(b'{"op": "mess\n')
    assert Journal(path).load() == EVENTS


def test_damage_before_the_last_record_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "context.jsonl"
    write(path)
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0][:10]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match="record 1"):
        Journal(path).load()


def test_render_message_shows_tool_calls_and_images() -> None:
    text = render_message(
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
            ],
        }
    )
    assert text == "[assistant]\nLooking.\n-> bash({}) [c1]"
    image = {"type": "image_url", "image_url": {"url": "data:"}}
    assert render_message({"role": "user", "content": [image]}) == "[user]\n<image_url>"


def test_a_failed_write_leaves_no_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "context.jsonl"
    write(path)
    journal = Journal(path)
    journal.load()
    clean = path.read_bytes()
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        journal.append(EVENTS)
    monkeypatch.undo()
    assert path.read_bytes() == clean
    journal.append(EVENTS[:1])
    journal.close()
    assert Journal(path).load() == [*EVENTS, EVENTS[0]]
