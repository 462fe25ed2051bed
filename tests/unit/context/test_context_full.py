"""A full workspace volume: the sidecar cannot store a step, says so with its own error code,
and stores nothing of it; a transcript it cannot write never costs a stored step."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from codingjob_agent.context.journal import Journal, Transcript
from codingjob_agent.context.service import ContextService, StepError
from codingjob_agent.context.settings import Settings
from codingjob_agent.context.tokens import counter_for
from codingjob_agent.protocol import ErrorCode, StepRequest

from tests.fixtures.bash_model import TOOLS, BashCallModel

COUNTER = counter_for("cl100k_base")


def service(workspace: Path) -> tuple[ContextService, BashCallModel]:
    settings = Settings(
        model_base_url="http://model.invalid/v1", model_name="m", workspace=workspace
    )
    model = BashCallModel()
    svc = ContextService(settings, COUNTER, model)
    svc.load()
    return svc, model


def first(svc: ContextService) -> None:
    start = StepRequest(
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}],
        tools=TOOLS,
    )
    asyncio.run(svc.step(start))


def result(call_id: str) -> StepRequest:
    content = "head: error writing 'fill.bin': No space left on device"
    return StepRequest(messages=[{"role": "tool", "tool_call_id": call_id, "content": content}])


def test_a_step_that_cannot_be_stored_is_workspace_full_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, model = service(tmp_path)
    first(svc)
    before = list(svc.conversation.messages)
    steps = svc.stats().steps

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StepError) as raised:
        asyncio.run(svc.step(result("call_1")))
    assert raised.value.code is ErrorCode.WORKSPACE_FULL and raised.value.status == 507
    assert "No space left on device" in str(raised.value)
    # Nothing stored or applied, and the model was not called for an unstored step.
    assert svc.conversation.messages == before and svc.stats().steps == steps
    assert model.calls == 1
    monkeypatch.undo()
    # Room again: the same step goes through, once.
    asyncio.run(svc.step(result("call_1")))
    assert svc.stats().steps == steps + 1
    svc.close()
    stored = service(tmp_path)[0].conversation.messages
    assert [m["role"] for m in stored] == ["system", "user", "assistant", "tool", "assistant"]


def test_other_write_errors_are_not_called_a_full_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, _ = service(tmp_path)
    first(svc)

    def broken(fd: int, data: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(OSError, match="Input/output"):
        asyncio.run(svc.step(result("call_1")))


def test_a_transcript_that_cannot_be_written_loses_no_stored_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, _ = service(tmp_path)
    first(svc)

    def full(self: Transcript, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Transcript, "write", full)
    answer = asyncio.run(svc.step(result("call_1")))
    assert answer.message["content"] == "step 2"
    roles = [m["role"] for m in svc.conversation.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    svc.close()
    journal = Journal(svc.journal.path)
    replayed = [e for e in journal.load() if e.get("op") == "messages"]
    journal.close()
    assert sum(len(e["messages"]) for e in replayed) == len(roles)
