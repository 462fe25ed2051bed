"""The e2e suite's "no operator errors" check reads kopf's log Events: it must see a crash."""

from __future__ import annotations

from tests.fixtures.events import operator_errors


def event(type_: str, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "reason": reason, "message": message}


def test_a_crashed_or_failed_reconcile_is_an_operator_error() -> None:
    events = [
        event("Normal", "Created", "creating the agent pod"),
        event("Error", "Logging", "reconcile crashed, retrying in 5s"),
        event("Warning", "Logging", "reconcile failed, retrying in 10s: 409 Conflict"),
    ]
    assert operator_errors(events) == [
        "Error: reconcile crashed, retrying in 5s",
        "Warning: reconcile failed, retrying in 10s: 409 Conflict",
    ]


def test_the_products_own_warnings_are_not_operator_errors() -> None:
    events = [
        event("Warning", "PodLost", "recreating the agent pod"),
        event("Warning", "ArchiveMismatch", "size differs"),
        event("Normal", "Logging", "an info record"),
    ]
    assert operator_errors(events) == []


def test_client_objects_are_read_like_dicts() -> None:
    class Event:
        type, reason, message = "Error", "Logging", "boom"

    assert operator_errors([Event()]) == ["Error: boom"]
