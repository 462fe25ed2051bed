"""The operator's copies of the wire shapes parse what the agent image actually produces.

The operator image does not ship the agent package, so it keeps its own models; these tests pin
them to the agent's ``protocol`` module.
"""

from __future__ import annotations

import pytest
from codingjob_agent import protocol
from codingjob_operator import builders
from codingjob_operator.status import StatsMessage, parse_agent_result


@pytest.mark.parametrize("outcome", list(protocol.Outcome))
@pytest.mark.parametrize("reason", list(protocol.AgentReason))
def test_termination_message_parses(
    outcome: protocol.Outcome, reason: protocol.AgentReason
) -> None:
    result = protocol.AgentResult(
        outcome=outcome, reason=reason, message="m" * 2048, steps=7, tokens=1234, summary="s" * 5000
    )
    parsed = parse_agent_result(result.termination_message())
    assert parsed is not None
    assert (parsed.outcome, parsed.reason) == (outcome.value, reason.value)
    assert (parsed.steps, parsed.tokens) == (7, 1234)
    assert parsed.summary == "s" * 1024 and parsed.message == "m" * 1024


def test_logs_are_not_a_result() -> None:
    assert parse_agent_result("Traceback (most recent call last):\n  boom") is None
    assert parse_agent_result("") is None


def test_stats_parse() -> None:
    stats = protocol.Stats(
        tokens=protocol.TokenStats(window=100, limit=1000, used=900, pruned=40),
        steps=3,
        model_calls=4,
        budget_exceeded=True,
        last_error="budget",
    )
    parsed = StatsMessage.model_validate_json(stats.model_dump_json(by_alias=True))
    assert (parsed.steps, parsed.tokens.used, parsed.tokens.limit, parsed.tokens.pruned) == (
        3,
        900,
        1000,
        40,
    )
    assert parsed.budget_exceeded and parsed.last_error == "budget"


def test_ports_match_the_protocol() -> None:
    assert builders.GATEWAY_PORT == protocol.GATEWAY_PORT
    assert builders.STATS_PORT == protocol.STATS_PORT


def test_the_sidecars_identity_and_paths_match_the_protocol() -> None:
    from codingjob_operator import archiver

    assert (builders.SIDECAR_UID, builders.SIDECAR_GID) == (
        protocol.SIDECAR_UID,
        protocol.SIDECAR_GID,
    )
    assert builders.SIDECAR_UID != builders.AGENT_UID
    assert builders.SIDECAR_STATE_DIR == archiver.STATE_DIR == protocol.STATE_DIR
    assert archiver.TRANSCRIPT_NAME == protocol.TRANSCRIPT_PATH
    assert archiver.LEGACY_TRANSCRIPT_NAME == protocol.LEGACY_TRANSCRIPT_PATH


def test_the_sidecars_termination_message_parses() -> None:
    stats = protocol.Stats(
        tokens=protocol.TokenStats(used=900, prompt=800, completion=100, costUSD=0.5),
        steps=3,
        max_steps=10,
        budget_exceeded=True,
        last_error="x" * 10_000,
    )
    parsed = StatsMessage.model_validate_json(protocol.sidecar_termination_message(stats))
    assert (parsed.steps, parsed.tokens.used, parsed.tokens.cost_usd) == (3, 900, 0.5)
    assert parsed.budget_exceeded and parsed.last_error == "x" * protocol.REPORT_TEXT_MAX


def test_max_steps_reason_matches_the_protocol() -> None:
    from codingjob_operator import conditions

    assert protocol.AgentReason.MAX_STEPS_EXCEEDED.value == conditions.MAX_STEPS_EXCEEDED
    assert protocol.AgentReason.BUDGET_EXCEEDED.value == conditions.TOKEN_BUDGET_REASON
