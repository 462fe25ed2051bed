"""Pure decisions of the relay: budgets, size estimates, retry delays."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from codingjob_relay.config import Prices, RetryPolicy
from codingjob_relay.credentials import JobClaims
from codingjob_relay.usage import Usage

#: Bytes of request JSON per token assumed by the estimate (English text and code average about
#: 4; JSON punctuation makes the estimate a little high, which errs on the refusing side).
BYTES_PER_TOKEN = 4

#: Upstream statuses worth another attempt: rate limits, timeouts, conflicts, server errors.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def estimate_prompt_tokens(body_bytes: int) -> int:
    """A cheap upper-ish estimate of a request's prompt tokens from its JSON size."""
    return body_bytes // BYTES_PER_TOKEN


def budget_refusal(
    claims: JobClaims, used: Usage, prompt_estimate: int, prices: Prices
) -> str | None:
    """Why the next call must be refused (it would cross a budget), or None.

    Only the prompt can be known before the call; a call that is let through may end up to its
    reply's length over the budget, and the next one is refused.
    """
    if claims.max_total_tokens and used.total + prompt_estimate >= claims.max_total_tokens:
        return (
            f"token budget exceeded: {claims.job} used {used.total} tokens, the next call needs "
            f"about {prompt_estimate} more, maxTotalTokens is {claims.max_total_tokens}"
        )
    if claims.max_cost:
        next_cost = prices.cost(prompt_estimate, 0, 0)
        if used.cost + next_cost >= claims.max_cost:
            return (
                f"cost budget exceeded: {claims.job} spent {used.cost:.4f} USD, the next call "
                f"costs about {next_cost:.4f} USD more, the budget is {claims.max_cost:.4f} USD"
            )
    return None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The provider's ``retry-after-ms`` / ``Retry-After`` (seconds) hint, if it sent one."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue  # an HTTP date: rare for APIs; fall back to our own backoff
        if value >= 0:
            return value
    return None


def backoff_delay(
    policy: RetryPolicy, attempt: int, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0).

    Full jitter over a doubling, capped window; a provider's Retry-After is honoured as a floor
    (capped too, so a bogus hour-long hint does not stall the job past the cap).
    """
    window = min(policy.max_delay_seconds, policy.base_delay_seconds * (2**attempt))
    delay = rng.uniform(0, window)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay_seconds))
    return delay


def usage_of(body: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of an OpenAI ``usage`` object."""
    if not body:
        return 0, 0, 0
    details = body.get("prompt_tokens_details") or {}
    return (
        int(body.get("prompt_tokens") or 0),
        int(body.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )
