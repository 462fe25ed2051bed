"""Pure parts of the relay: credentials, prices, budgets, backoff."""

from __future__ import annotations

import random
import threading
import time

import pytest
from codingjob_relay.config import Prices, Provider, RetryPolicy
from codingjob_relay.credentials import CredentialError, JobClaims, issue, verify
from codingjob_relay.policy import backoff_delay, budget_refusal, retry_after_seconds
from codingjob_relay.usage import Usage, UsageStore
from hypothesis import given
from hypothesis import strategies as st

KEY = b"k" * 32


def claims(**overrides: object) -> JobClaims:
    values: dict[str, object] = dict(
        namespace="team-a", name="job", uid="uid-1", provider="openai", expires_at=2_000_000_000
    )
    values.update(overrides)
    return JobClaims.model_validate(values)


def test_credential_round_trip_keeps_every_claim() -> None:
    original = claims(max_total_tokens=1000, max_cost=2.5, job_class="default")
    assert verify(KEY, issue(KEY, original), now=time.time()) == original


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("sk-plain-provider-key", "not a CodingJob relay credential"),
        (issue(b"o" * 32, claims()), "signature does not match"),
        (issue(KEY, claims(expires_at=1)), "expired"),
    ],
    ids=["not-a-credential", "other-key", "expired"],
)
def test_credential_refused(token: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        verify(KEY, token, now=time.time())


def test_credential_cannot_be_moved_to_another_job() -> None:
    """Swapping the payload of one job's credential into another's keeps neither MAC valid."""
    mine = issue(KEY, claims(uid="uid-1", max_total_tokens=10)).split(".")
    other = issue(KEY, claims(uid="uid-2")).split(".")
    forged = ".".join([mine[0], other[1], mine[2]])
    with pytest.raises(CredentialError, match="signature"):
        verify(KEY, forged, now=time.time())


def test_short_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        issue(b"short", claims())


def test_prices_bill_cached_tokens_at_their_own_price() -> None:
    prices = Prices(prompt=2.0, completion=8.0, cached=0.5)
    assert prices.cost(1_000_000, 0, 0) == pytest.approx(2.0)
    assert prices.cost(1_000_000, 1_000_000, 500_000) == pytest.approx(1.0 + 0.25 + 8.0)
    assert Prices(prompt=2.0).cost(1_000_000, 0, 1_000_000) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("limit", "used", "estimate", "refused"),
    [
        (0, 10**9, 10**6, False),
        (1000, 500, 499, False),
        (1000, 500, 500, True),
        (1000, 1000, 0, True),
    ],
)
def test_token_budget_refuses_the_call_that_would_cross(
    limit: int, used: int, estimate: int, refused: bool
) -> None:
    reason = budget_refusal(claims(max_total_tokens=limit), Usage(prompt=used), estimate, Prices())
    assert (reason is not None) is refused
    if refused:
        assert reason is not None and "maxTotalTokens is 1000" in reason


def test_cost_budget_counts_the_prompt_of_the_next_call() -> None:
    prices = Prices(prompt=10.0)
    job = claims(max_cost=1.0)
    assert budget_refusal(job, Usage(cost=0.5), 10_000, prices) is None
    reason = budget_refusal(job, Usage(cost=0.95), 10_000, prices)
    assert reason is not None and "cost budget exceeded" in reason


@given(attempt=st.integers(0, 60), hint=st.none() | st.floats(0, 10_000), seed=st.integers())
def test_backoff_is_capped_and_honours_retry_after(
    attempt: int, hint: float | None, seed: int
) -> None:
    policy = RetryPolicy(base_delay_seconds=0.5, max_delay_seconds=30)
    delay = backoff_delay(policy, attempt, hint, random.Random(seed))
    assert 0 <= delay <= 30
    if hint is not None:
        assert delay >= min(hint, 30)


def test_backoff_is_jittered() -> None:
    policy = RetryPolicy()
    delays = {backoff_delay(policy, 5, None, random.Random(seed)) for seed in range(20)}
    assert len(delays) == 20


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),
    ],
)
def test_retry_after_header(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_provider_model_mapping() -> None:
    provider = Provider.model_validate(
        {"name": "openai", "baseURL": "https://api.openai.com/v1", "models": {"fast": "gpt-x"}}
    )
    assert provider.upstream_model("fast") == "gpt-x"
    assert provider.upstream_model("gpt-x") is None
    open_provider = Provider.model_validate({"name": "any", "baseURL": "http://vllm:8000/v1"})
    assert open_provider.upstream_model("whatever") == "whatever"


def test_usage_journal_survives_a_restart_and_a_torn_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = UsageStore(tmp_path)
    store.open()
    store.record("uid-1", Usage(prompt=10, completion=5, cached=2, cost=0.01, calls=1))
    store.record("uid-1", Usage(prompt=1, completion=1, calls=1))
    store.record("uid-2", Usage(prompt=7, calls=1))
    store.close()
    with store.path.open("a") as journal:
        journal.write('{"uid": "uid-1", "prom')  # a crash in the middle of a write
    again = UsageStore(tmp_path)
    again.open()
    assert again.get("uid-1") == Usage(prompt=11, completion=6, cached=2, cost=0.01, calls=2)
    assert again.get("uid-2").total == 7
    again.close()
    assert len(store.path.read_text().splitlines()) == 2  # compacted to one line per job


def test_a_second_relay_on_the_journal_waits_for_the_first_to_stop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = UsageStore(tmp_path)
    first.open()
    first.record("uid-1", Usage(prompt=10, calls=1))
    successor = UsageStore(tmp_path)
    opened = threading.Event()

    def start() -> None:
        successor.open()
        opened.set()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    assert not opened.wait(0.5), "the successor replayed while the first relay still wrote"
    first.record("uid-1", Usage(prompt=5, calls=1))  # a last call answered by the old relay
    first.close()
    assert opened.wait(10)
    thread.join(10)
    assert successor.get("uid-1") == Usage(prompt=15, calls=2)
    successor.close()


def test_the_sidecar_acts_on_the_relays_codes_and_headers() -> None:
    # Two images, one contract: the sidecar (agent image) keeps its own copy of the relay's
    # error codes and usage headers, since the agent image does not ship the relay.
    from codingjob_agent.context import model
    from codingjob_relay import app

    assert model.BUDGET_EXCEEDED_CODE == app.BUDGET_EXCEEDED
    assert model.CONTEXT_LENGTH_EXCEEDED_CODE == app.CONTEXT_LENGTH_EXCEEDED
    assert model.PROVIDER_AUTH_FAILED_CODE == app.PROVIDER_AUTH_FAILED
    assert model.USAGE_HEADERS == app.USAGE_HEADERS
    assert model.PROVIDER_NOT_CONFIGURED_CODE == app.PROVIDER_NOT_CONFIGURED
    assert issue(KEY, claims()).startswith(model.RELAY_CREDENTIAL_PREFIX)
