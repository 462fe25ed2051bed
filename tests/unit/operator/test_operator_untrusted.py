"""Text and numbers from the sandbox reach the status inert: escape sequences and control
characters stripped, messages clamped, reasons mapped to the known enum, counts bounded, and a
status the API server refuses ends the job Failed instead of looping."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from codingjob_agent.protocol import AgentReason
from codingjob_operator import conditions as c
from codingjob_operator.kube import InvalidObject
from codingjob_operator.untrusted import (
    AGENT_REASONS,
    COUNT_MAX,
    MESSAGE_MAX,
    bounded_int,
    clean_text,
    known_reason,
)
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.operator.test_reconciler_paths import Make, end_agent, make, start

__all__ = ["make"]

ESC = "\x1b"
#: A 4 KiB reason made of what a hostile agent would print: colours, cursor moves, a window
#: title (OSC), a clear-screen, bidi overrides, NULs and BELs.
HOSTILE = (f"{ESC}[31mRED{ESC}[0m{ESC}]0;pwned\x07{ESC}[2J{ESC}[H\u202eevil\u202c\x00\x07" * 80)[
    :4096
]
#: Nothing a terminal would act on, nor an invisible or direction-changing character.
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def test_the_known_reasons_are_the_agents() -> None:
    assert {r.value for r in AgentReason} == AGENT_REASONS


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (f"{ESC}[1;31mfailed{ESC}[0m", "failed"),
        (f"{ESC}]0;title\x07done", "done"),
        (f"{ESC}]8;;http://x{ESC}\\link{ESC}]8;;{ESC}\\", "link"),
        ("a\x00b\x07c\x7fd\x9b0me", "abcde"),
        ("\u202eright-to-left\u202c", "right-to-left"),
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        ("  padded  ", "padded"),
        (None, ""),
        (12, "12"),
    ],
)
def test_clean_text(raw: Any, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_clamps() -> None:
    assert len(clean_text("x" * 100_000)) == MESSAGE_MAX
    assert clean_text("x" * 100_000).endswith("...")


@given(st.text(max_size=5000))
def test_clean_text_is_always_inert_and_short(text: str) -> None:
    out = clean_text(text)
    assert len(out) <= MESSAGE_MAX
    assert ESC not in out and not UNSAFE.search(out)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Completed", "Completed"),
        ("ModelError", "ModelError"),
        ("Pwned", "AgentError"),
        (HOSTILE, "AgentError"),
        (None, "AgentError"),
        (3, "AgentError"),
    ],
)
def test_known_reason(value: Any, expected: str) -> None:
    assert known_reason(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        (-1, 0),
        (10**40, COUNT_MAX),
        (float("inf"), COUNT_MAX),
        (float("nan"), 0),
        ("7", 0),
        (True, 0),
        (None, 0),
        (2.9, 2),
    ],
)
def test_bounded_int(value: Any, expected: int) -> None:
    assert bounded_int(value) == expected


def _assert_inert(status: dict[str, Any]) -> None:
    text = json.dumps(status, ensure_ascii=False)
    assert ESC not in text and not UNSAFE.search(text), text[:300]


def test_a_4kib_ansi_reason_ends_the_job_with_a_clean_reason(make: Make) -> None:
    w = make()
    start(w)
    message = json.dumps(
        {
            "outcome": "Failed",
            "reason": HOSTILE,
            "message": HOSTILE,
            "summary": HOSTILE,
            "steps": 10**30,
            "tokens": -5,
        }
    )
    end_agent(w, exit_code=1, message=message)
    assert w.status["outcome"] == "Failed"
    assert w.status["reason"] == c.AGENT_ERROR
    # The agent's counts are never taken: the status has none from this message.
    assert w.status.get("steps", 0) < COUNT_MAX
    assert len(w.status["message"]) <= MESSAGE_MAX
    assert "REDevil" in w.status["message"]
    _assert_inert(w.status)
    for _, _, event_message in w.events:
        assert ESC not in event_message and not UNSAFE.search(event_message)


def test_logs_as_termination_message_are_cleaned(make: Make) -> None:
    # FallbackToLogsOnError: a crashed agent's last log lines become its termination message.
    w = make()
    start(w)
    end_agent(w, exit_code=2, message=HOSTILE)
    assert w.status["reason"] == c.AGENT_ERROR
    assert w.status["message"].startswith("agent exited with code 2")
    _assert_inert(w.status)


def test_stats_are_bounded_and_cleaned(make: Make) -> None:
    w = make()
    w.kube.stats = {
        "steps": 10**50,
        "tokens": {"used": -3, "limit": 10**20, "pruned": 1},
        "budgetExceeded": True,
        "lastError": HOSTILE,
    }
    start(w)
    assert w.status["steps"] == COUNT_MAX
    assert w.status["tokens"] == {"used": 0, "limit": COUNT_MAX, "pruned": 1}
    _assert_inert(w.status)


def test_a_status_the_api_server_refuses_fails_the_job(make: Make, monkeypatch: Any) -> None:
    w = make()
    real = w.kube.patch_codingjob_status

    def refuse_pod_name(namespace: str, name: str, status: dict[str, Any]) -> None:
        if "podName" in status:
            raise InvalidObject(422, 'CodingJob.codingjob.dev "demo" is invalid: status.podName')
        real(namespace, name, status)

    monkeypatch.setattr(w.kube, "patch_codingjob_status", refuse_pod_name)
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.STATUS_REJECTED)
    assert "status.podName" in w.status["message"]
    # Finished: later passes never retry the refused patch and settle (no patch at all).
    w.run()
    patches = len(w.kube.calls_of("patch_status"))
    w.run()
    assert len(w.kube.calls_of("patch_status")) == patches
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.STATUS_REJECTED)
    assert "podName" not in w.status
