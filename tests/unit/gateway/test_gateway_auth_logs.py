"""Token extraction, the review cache and the JSON log lines of the gateway."""

from __future__ import annotations

import asyncio
import json
import logging

from codingjob_gateway.auth import MAX_CACHE_ENTRIES, TtlCache, bearer_token
from codingjob_gateway.logs import JsonFormatter


def test_bearer_header_wins_over_cookie() -> None:
    assert bearer_token("Bearer abc", "cookie") == "abc"
    assert bearer_token("bearer  abc ", None) == "abc"
    assert bearer_token(None, "cookie") == "cookie"
    assert bearer_token("Basic dXNlcg==", "cookie") is None
    assert bearer_token("Bearer ", None) is None
    assert bearer_token(None, None) is None


def test_cache_reuses_answers_within_ttl_only() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(10, clock=lambda: now[0])
    calls: list[str] = []

    async def compute() -> int:
        calls.append("x")
        return len(calls)

    async def scenario() -> list[int]:
        first = await cache.get("k", compute)
        now[0] = 9.9
        second = await cache.get("k", compute)
        now[0] = 10.0
        third = await cache.get("k", compute)
        return [first, second, third]

    assert asyncio.run(scenario()) == [1, 1, 2]


def test_cache_is_bounded() -> None:
    cache: TtlCache[int, int] = TtlCache(60)

    async def fill() -> None:
        for i in range(MAX_CACHE_ENTRIES + 10):

            async def value(i: int = i) -> int:
                return i

            await cache.get(i, value)

    asyncio.run(fill())
    assert len(cache._items) == MAX_CACHE_ENTRIES


def test_json_log_line_has_job_fields() -> None:
    record = logging.LogRecord(
        "codingjob_gateway", logging.INFO, __file__, 1, "job %s", ("submitted",), None
    )
    record.job_namespace = "team-a"
    record.job_name = "job-x"
    line = JsonFormatter().format(record)
    event = json.loads(line)
    assert "\n" not in line
    assert event["message"] == "job submitted"
    assert event["level"] == "info"
    assert (event["job_namespace"], event["job_name"]) == ("team-a", "job-x")
