"""Peering priorities: replicas never share one (kopf would pause both) and the first started
stays active (a restarted replica does not take the work back)."""

from __future__ import annotations

from codingjob_operator.__main__ import parse_options, seniority_priority
from hypothesis import given
from hypothesis import strategies as st

STARTED = 1_796_000_000.0  # a moment in 2026


def test_the_earlier_replica_has_the_higher_priority() -> None:
    first = seniority_priority(STARTED, "codingjob-7d9f-zzzzz")
    restarted = seniority_priority(STARTED + 1, "codingjob-7d9f-aaaaa")
    assert first > restarted


@given(st.text(min_size=1, max_size=63), st.text(min_size=1, max_size=63))
def test_same_second_is_told_apart_by_the_pod_name(a: str, b: str) -> None:
    pa, pb = seniority_priority(STARTED, a), seniority_priority(STARTED, b)
    # Within one second the names decide; a later second always loses.
    assert abs(pa - pb) < 1000
    assert seniority_priority(STARTED + 1, a) < min(pa, pb)


def test_pod_names_of_one_deployment_get_distinct_priorities() -> None:
    names = [f"codingjob-operator-6b8f9c7d5-{suffix}" for suffix in ("x2k9q", "p7wzr", "m4n8t")]
    priorities = {seniority_priority(STARTED, n) for n in names}
    assert len(priorities) == len(names)


def test_priority_from_the_command_line_or_environment() -> None:
    assert parse_options(["--priority", "7"], {}).priority == 7
    assert parse_options([], {"CODINGJOB_PEERING_PRIORITY": "9"}).priority == 9
    assert parse_options([], {}).priority is None
