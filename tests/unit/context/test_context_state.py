"""The sidecar's private state directory: created as its own, refused when planted, migrated
from the older layout once, and its counters reported in the termination message."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from codingjob_agent.context.state import DIR_MODE, StateError, prepare
from codingjob_agent.protocol import (
    JOURNAL_PATH,
    LEGACY_JOURNAL_PATH,
    LEGACY_TRANSCRIPT_PATH,
    REPORT_TEXT_MAX,
    STATE_DIR,
    TRANSCRIPT_PATH,
    Stats,
    sidecar_termination_message,
)

from tests.fixtures.scripted_model import ContextManager, ScriptedModel
from tests.unit.context.test_context_gateway import FIRST, answer, scenario, state, step

Start = Callable[..., ContextManager]
Model = Callable[..., ScriptedModel]


def test_the_directory_is_created_private_to_the_sidecar(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o2777)
    directory = prepare(tmp_path)
    info = os.lstat(directory)
    assert directory == tmp_path / STATE_DIR
    # Not the setgid parent's group and mode: the sidecar's own, closed to others.
    assert stat.S_IMODE(info.st_mode) == DIR_MODE
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())
    # A widened mode (fsGroup applied by the kubelet, say) is narrowed again.
    os.chmod(directory, 0o2777)
    prepare(tmp_path)
    assert stat.S_IMODE(os.lstat(directory).st_mode) == DIR_MODE


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_planted_path_is_refused(tmp_path: Path, planted: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "symlink":
        (tmp_path / STATE_DIR).symlink_to(elsewhere)
    else:
        (tmp_path / STATE_DIR).write_text("{}")
    with pytest.raises(StateError, match="not a directory"):
        prepare(tmp_path)
    assert list(elsewhere.iterdir()) == []


def test_a_directory_of_another_uid_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / STATE_DIR).mkdir()
    # As if the agent (another uid) had made it: the sidecar's uid is not the owner's.
    owner = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(StateError, match=f"belongs to uid {owner}"):
        prepare(tmp_path)


def test_the_sidecar_refuses_to_start_on_a_planted_state(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    (tmp_path / STATE_DIR).symlink_to(tmp_path)
    with pytest.raises(RuntimeError, match="refusing to start"):
        context_manager(scripted_model(scenario(1)), tmp_path)


def _old_layout(workspace: Path) -> None:
    """Move the journal and transcript where the sidecar kept them before STATE_DIR."""
    os.replace(workspace / JOURNAL_PATH, workspace / LEGACY_JOURNAL_PATH)
    os.replace(workspace / TRANSCRIPT_PATH, workspace / LEGACY_TRANSCRIPT_PATH)
    (workspace / STATE_DIR).rmdir()


def test_a_job_suspended_before_the_upgrade_resumes_its_conversation(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    cm = context_manager(scripted_model(scenario(4)), tmp_path)
    status, body = step(cm, FIRST)
    assert status == 200
    outgoing = answer(body["message"], 5)
    assert step(cm, outgoing)[0] == 200
    before = state(cm)
    cm.server.stop()
    _old_layout(tmp_path)
    cm.restart()
    after = state(cm)
    assert (after.messages, after.stats.steps) == (before.messages, 2)
    assert not (tmp_path / LEGACY_JOURNAL_PATH).exists()
    assert "[system]" in (tmp_path / TRANSCRIPT_PATH).read_text()
    # Migrated once: a file the agent writes at the old path later is never read.
    (tmp_path / LEGACY_JOURNAL_PATH).write_text('{"op":"call","prompt":0,"completion":0}\n')
    cm.restart()
    assert state(cm).messages == before.messages


def test_a_legacy_journal_behind_a_symlink_is_not_migrated(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    secret = tmp_path.with_name(f"{tmp_path.name}-secret.jsonl")
    secret.write_text('{"op":"messages","messages":[{"role":"system","content":"s3cr3t"}]}\n')
    (tmp_path / LEGACY_JOURNAL_PATH).symlink_to(secret)
    cm = context_manager(scripted_model(scenario(1)), tmp_path)
    assert state(cm).messages == 0
    assert "s3cr3t" not in (tmp_path / JOURNAL_PATH).read_text()


def test_the_counters_are_in_the_termination_message(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    cm = context_manager(scripted_model(scenario(3)), tmp_path, MAX_STEPS=5)
    assert json.loads(cm.termination_log.read_text())["steps"] == 0
    status, body = step(cm, FIRST)
    assert status == 200
    assert step(cm, answer(body["message"], 5))[0] == 200
    report = Stats.model_validate_json(cm.termination_log.read_text())
    assert (report.steps, report.max_steps) == (2, 5)
    assert report.tokens.used == state(cm).stats.tokens.used > 0
    cm.server.stop()
    final = json.loads(cm.termination_log.read_text())
    assert (final["steps"], final["maxSteps"]) == (2, 5)


def test_the_termination_message_fits_the_kubelets_cap() -> None:
    stats = Stats(steps=10**12, last_error="e" * 100_000, model_degraded="d" * 100_000)
    message = sidecar_termination_message(stats)
    assert len(message.encode()) < 4096
    parsed = Stats.model_validate_json(message)
    assert parsed.last_error == "e" * REPORT_TEXT_MAX and parsed.steps == 10**12
