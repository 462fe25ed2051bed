"""The sidecar talking to the model relay (both real processes) in front of the scripted model."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from codingjob_agent.context.journal import Journal
from codingjob_agent.protocol import JOURNAL_PATH

from tests.fixtures.relay import ModelRelay
from tests.fixtures.scripted_model import ContextManager, ScriptedModel
from tests.unit.context.test_context_gateway import (
    FIRST,
    answer,
    request,
    run_to_finish,
    scenario,
    step,
)

Start = Callable[..., ContextManager]
Model = Callable[..., ScriptedModel]
Relay = Callable[..., ModelRelay]


def through_relay(
    context_manager: Start,
    model: ScriptedModel,
    relay: ModelRelay,
    workspace: Path,
    credential: str | None = None,
    **settings: object,
) -> ContextManager:
    return context_manager(
        model,
        workspace,
        MODEL_BASE_URL=relay.base_url,
        MODEL_API_KEY=credential or relay.credential(),
        **settings,
    )


def stats(cm: ContextManager) -> dict[str, Any]:
    status, body = request("GET", f"{cm.stats_url}/stats")
    assert status == 200
    return dict(body)


def test_steps_through_the_relay_show_its_usage_and_cost(
    scripted_model: Model, context_manager: Start, model_relay: Relay, tmp_path: Path
) -> None:
    model = scripted_model(scenario(2))
    relay = model_relay(
        [{"name": "scripted", "baseURL": model.base_url, "prices": {"prompt": 3, "completion": 15}}]
    )
    cm = through_relay(context_manager, model, relay, tmp_path)
    run_to_finish(cm, size=10)
    tokens = stats(cm)["tokens"]
    prompt = sum(r["tokens"] for r in model.requests())
    assert tokens["prompt"] == prompt
    assert tokens["completion"] > 0
    assert tokens["costUSD"] > prompt * 3 / 1e6


def test_the_relay_budget_ends_the_run_as_budget_exceeded(
    scripted_model: Model, context_manager: Start, model_relay: Relay, tmp_path: Path
) -> None:
    model = scripted_model(scenario(20))
    relay = model_relay([{"name": "scripted", "baseURL": model.base_url}])
    cm = through_relay(
        context_manager, model, relay, tmp_path, relay.credential(max_total_tokens=600)
    )
    outgoing = FIRST
    for _ in range(20):
        status, body = step(cm, outgoing)
        if status != 200:
            break
        outgoing = answer(body["message"], 10)
    assert (status, body["error"]) == (409, "BudgetExceeded"), body
    assert "maxTotalTokens is 600" in body["message"]
    assert stats(cm)["budgetExceeded"] is True


def test_context_length_exceeded_prunes_harder_and_retries(
    scripted_model: Model, context_manager: Start, model_relay: Relay, tmp_path: Path
) -> None:
    model = scripted_model(scenario(10))
    # The provider's window is far smaller than the sidecar's configured one.
    relay = model_relay([{"name": "scripted", "baseURL": model.base_url, "contextWindow": 1500}])
    cm = through_relay(context_manager, model, relay, tmp_path, CONTEXT_MAX_TOKENS=50_000)
    responses = run_to_finish(cm, size=120)
    assert responses[-1].stats.tokens.pruned > 0
    assert responses[-1].stats.errors == 0
    assert all(r["status"] == 200 for r in model.requests())
    events = Journal(tmp_path / JOURNAL_PATH).load()
    assert any(e["op"] in ("mask", "drop") for e in events)
    with urllib.request.urlopen(relay.metrics_url, timeout=10) as r:
        assert 'reason="context_window"' in r.read().decode()


def test_an_outage_longer_than_the_relay_window_shows_as_degraded_and_passes(
    scripted_model: Model, context_manager: Start, model_relay: Relay, tmp_path: Path
) -> None:
    model = scripted_model(scenario(1))
    relay = model_relay(
        [{"name": "scripted", "baseURL": model.base_url}],
        retry={"baseDelaySeconds": 0.1, "maxDelaySeconds": 0.5, "maxElapsedSeconds": 1},
    )
    cm = through_relay(context_manager, model, relay, tmp_path, MODEL_RETRY_SECONDS=120)
    model.outage(status=503, seconds=6)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(done=step(cm, FIRST)))
    worker.start()
    degraded = None
    deadline = time.monotonic() + 60
    while worker.is_alive() and time.monotonic() < deadline:
        degraded = degraded or stats(cm).get("modelDegraded")
        time.sleep(0.3)
    worker.join(60)
    status, body = result["done"]
    assert status == 200, body
    assert degraded is not None and "unavailable" in degraded
    assert stats(cm).get("modelDegraded") is None
    assert json.loads(body["message"]["tool_calls"][0]["function"]["arguments"]) == {"step": 0}
