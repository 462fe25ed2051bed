"""The sidecar as a process, against the scripted test model, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from codingjob_agent.context.journal import Journal
from codingjob_agent.context.summarize import SUMMARY_HEADER
from codingjob_agent.context.tokens import counter_for
from codingjob_agent.protocol import JOURNAL_PATH, TRANSCRIPT_PATH, ConversationState, StepResponse

from tests.fixtures.relay import ModelRelay
from tests.fixtures.scripted_model import ContextManager, ScriptedModel

COUNTER = counter_for("cl100k_base")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for name in ("bash", "finish")
]
FIRST = [
    {"role": "system", "content": "You are a careful test agent."},
    {"role": "user", "content": "Run the steps, then finish."},
]


def bash_turn(n: int) -> dict[str, Any]:
    return {
        "expect": {"toolResultsContain": [f"output of step {n - 1}"]} if n else None,
        "message": {
            "role": "assistant",
            "content": f"Step {n}.",
            "tool_calls": [
                {"type": "function", "function": {"name": "bash", "arguments": {"step": n}}}
            ],
        },
    }


def scenario(steps: int, after: str = "error") -> dict[str, Any]:
    finish = {
        "expect": {"toolResultsContain": [f"output of step {steps - 1}"]},
        "message": {
            "role": "assistant",
            "content": "Finished.",
            "tool_calls": [
                {"type": "function", "function": {"name": "finish", "arguments": {"summary": "ok"}}}
            ],
        },
    }
    turns = [{k: v for k, v in bash_turn(n).items() if v is not None} for n in range(steps)]
    return {"description": "test", "turns": [*turns, finish], "afterLastTurn": after}


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def step(cm: ContextManager, messages: list[dict[str, Any]]) -> tuple[int, Any]:
    body = json.dumps({"messages": messages, "tools": TOOLS}).encode()
    return request("POST", f"{cm.gateway_url}/v1/step", body)


def state(cm: ContextManager) -> ConversationState:
    status, body = request("GET", f"{cm.gateway_url}/v1/conversation")
    assert status == 200
    return ConversationState.model_validate(body)


def answer(message: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Tool results for ``message``, each about ``size`` words long."""
    results = []
    for call in message.get("tool_calls") or ():
        n = json.loads(call["function"]["arguments"]).get("step")
        text = f"output of step {n}\n" + " ".join(f"line{i}" for i in range(size))
        results.append({"role": "tool", "tool_call_id": call["id"], "content": text})
    return results


def run_to_finish(cm: ContextManager, size: int, limit: int = 40) -> list[StepResponse]:
    responses = []
    outgoing = FIRST
    for _ in range(limit):
        status, body = step(cm, outgoing)
        assert status == 200, body
        response = StepResponse.model_validate(body)
        responses.append(response)
        calls = response.message.get("tool_calls") or []
        if calls and calls[0]["function"]["name"] == "finish":
            return responses
        outgoing = answer(response.message, size)
    raise AssertionError("the scenario did not finish")


Start = Callable[..., ContextManager]
Model = Callable[..., ScriptedModel]


def test_a_scenario_runs_to_the_end_and_is_stored(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    model = scripted_model(scenario(3))
    cm = context_manager(model, tmp_path)
    responses = run_to_finish(cm, size=10)
    stats = responses[-1].stats
    assert (stats.steps, stats.model_calls, stats.errors, stats.tokens.pruned) == (4, 4, 0, 0)
    assert stats.messages == 2 + 4 + 3
    assert stats.tokens.limit == 1_000_000
    assert stats.tokens.used == sum(r["tokens"] for r in model.requests()) + sum(
        COUNTER.message(r.message) for r in responses
    )
    current = state(cm)
    assert current.messages == stats.messages and current.pending_tool_call_ids == ["call_t3_0"]
    status, polled = request("GET", f"{cm.stats_url}/stats")
    assert status == 200 and polled["steps"] == 4 and "modelCalls" in polled
    transcript = (tmp_path / TRANSCRIPT_PATH).read_text()
    assert "[system]\nYou are a careful test agent." in transcript
    assert "-> finish(" in transcript
    assert len(Journal(tmp_path / JOURNAL_PATH).load()) >= 8


def test_only_stats_and_health_are_on_the_stats_listener(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    cm = context_manager(scripted_model(scenario(1)), tmp_path)
    assert request("GET", f"{cm.stats_url}/healthz")[0] == 200
    assert request("GET", f"{cm.gateway_url}/healthz")[0] == 200
    for path in ("/v1/conversation", "/v1/step"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{cm.stats_url}{path}", timeout=10)
        assert error.value.code in {404, 405}


@pytest.mark.parametrize("strategy", ["window", "mask-observations", "summarize"])
def test_pruning_keeps_every_request_within_the_budget(
    scripted_model: Model, context_manager: Start, tmp_path: Path, strategy: str
) -> None:
    model = scripted_model(scenario(14))
    cm = context_manager(
        model,
        tmp_path,
        CONTEXT_MAX_TOKENS=2500,
        MODEL_MAX_OUTPUT_TOKENS=300,
        CONTEXT_STRATEGY=strategy,
    )
    budget = 2500 - 300
    responses = run_to_finish(cm, size=120)
    stats = responses[-1].stats
    assert stats.tokens.pruned > 0
    assert stats.messages == 2 + 15 + 14, "the journal keeps the whole history"
    seen = model.requests()
    assert all(r["status"] == 200 for r in seen)
    assert all(r["tokens"] <= budget for r in seen), [r["tokens"] for r in seen]
    steps = [r for r in seen if r["purpose"] == "step"]
    assert max(r["tokens"] for r in steps) > budget * 0.75, "pruning happened near the limit"
    summaries = [r for r in seen if r["purpose"] == "summary"]
    events = Journal(tmp_path / JOURNAL_PATH).load()
    drops = [e for e in events if e["op"] == "drop"]
    if strategy == "summarize":
        assert summaries and all(r["maxTokens"] for r in summaries)
        assert drops[-1]["summary"]["content"].startswith(SUMMARY_HEADER)
        assert "Scripted test summary" in drops[-1]["summary"]["content"]
        assert stats.model_calls == stats.steps + len(summaries)
    else:
        assert not summaries
    if strategy == "mask-observations":
        assert any(e["op"] == "mask" for e in events)
    if strategy == "window":
        assert drops and not any(e["op"] == "mask" for e in events)


def test_a_restart_after_sigkill_keeps_every_acknowledged_step(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    model = scripted_model(scenario(1, after="repeat-last"))
    cm = context_manager(model, tmp_path, CONTEXT_MAX_TOKENS=3000, CONTEXT_STRATEGY="window")
    acknowledged: list[int] = []
    stop = threading.Event()

    def agent() -> None:
        outgoing = FIRST
        while not stop.is_set():
            try:
                status, body = step(cm, outgoing)
            except (OSError, http.client.HTTPException):
                return
            if status != 200:
                return
            response = StepResponse.model_validate(body)
            acknowledged.append(response.stats.messages)
            outgoing = answer(response.message, 60)

    thread = threading.Thread(target=agent)
    thread.start()
    time.sleep(random.uniform(1.5, 3.0))
    cm.server.kill()
    stop.set()
    thread.join(30)
    assert acknowledged, "no step finished before the kill"
    cm.restart()
    resumed = state(cm)
    assert resumed.messages >= acknowledged[-1]
    assert resumed.stats.steps >= len(acknowledged)
    # The agent continues where the conversation stands.
    last = resumed.last_message or {}
    outgoing = answer(last, 60) if last.get("role") == "assistant" else []
    for _ in range(3):
        status, body = step(cm, outgoing)
        assert status == 200, body
        outgoing = answer(body["message"], 60)
    assert state(cm).stats.errors == 0


def test_bad_input_is_refused_and_changes_nothing(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    cm = context_manager(
        scripted_model(scenario(2)),
        tmp_path,
        CONTEXT_MAX_TOKENS=3000,
        CONTEXT_MAX_REQUEST_BYTES=100_000,
    )
    status, first = step(cm, FIRST)
    assert status == 200
    call_id = first["message"]["tool_calls"][0]["id"]
    before = state(cm)
    journal = (tmp_path / JOURNAL_PATH).read_bytes()
    url = f"{cm.gateway_url}/v1/step"
    tool = {"role": "tool", "tool_call_id": call_id, "content": "output of step 0"}

    def body(**fields: Any) -> bytes:
        return json.dumps({"messages": [tool], "tools": TOOLS, **fields}).encode()

    cases: list[tuple[str, bytes, int, str]] = [
        ("oversized body", b'{"messages": ["' + b"x" * 200_000 + b'"]}', 413, "MessageTooLarge"),
        ("invalid JSON", b'{"messages": [', 400, "BadRequest"),
        ("not UTF-8", b'{"messages": ["\xff\xfe"]}', 400, "BadRequest"),
        ("unknown field", body(temperature=2), 422, "BadRequest"),
        ("not an object", b"[]", 422, "BadRequest"),
        ("wrong type", json.dumps({"messages": "hi"}).encode(), 422, "BadRequest"),
        (
            "unknown message field",
            json.dumps({"messages": [{**tool, "name": "x"}]}).encode(),
            400,
            "BadRequest",
        ),
        (
            "unanswered call",
            json.dumps({"messages": [{**tool, "tool_call_id": "call_t9_0"}]}).encode(),
            400,
            "BadRequest",
        ),
        (
            "message bigger than the budget",
            json.dumps({"messages": [{**tool, "content": "word " * 3000}]}).encode(),
            413,
            "MessageTooLarge",
        ),
        (
            "too much for the window",
            json.dumps({"messages": [{**tool, "content": "word " * 2200}]}).encode(),
            409,
            "ContextOverflow",
        ),
    ]
    for name, data, expected_status, code in cases:
        status, error = request("POST", url, data, {"Content-Type": "application/json"})
        assert (status, error["error"]) == (expected_status, code), (name, error)
        assert error["message"], name
        after = state(cm)
        assert after.messages == before.messages, name
        assert after.pending_tool_call_ids == before.pending_tool_call_ids, name
        if code != "ContextOverflow":
            assert (tmp_path / JOURNAL_PATH).read_bytes() == journal, name
    # A body sent in chunks, without Content-Length, meets the same limit.
    connection = http.client.HTTPConnection("127.0.0.1", int(cm.gateway_url.rsplit(":", 1)[1]))
    connection.request("POST", "/v1/step", body=iter([b'{"messages": ["', b"x" * 200_000]))
    assert connection.getresponse().status == 413
    assert state(cm).messages == before.messages
    # After all that, the conversation goes on.
    status, _ = step(cm, [tool])
    assert status == 200


def test_a_spent_budget_stops_the_next_step(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    cm = context_manager(scripted_model(scenario(5)), tmp_path, MAX_TOTAL_TOKENS=250)
    status, body = step(cm, FIRST)
    outgoing = answer(body["message"], 40)
    while status == 200 and not body["stats"]["budgetExceeded"]:
        status, body = step(cm, outgoing)
        outgoing = answer(body["message"], 40)
    assert status == 200 and body["stats"]["tokens"]["used"] >= 250
    messages = state(cm).messages
    status, error = step(cm, outgoing)
    assert (status, error["error"]) == (409, "BudgetExceeded")
    assert state(cm).messages == messages
    assert request("GET", f"{cm.stats_url}/stats")[1]["budgetExceeded"] is True


def test_the_sidecar_counts_and_enforces_max_steps(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    cm = context_manager(scripted_model(scenario(5)), tmp_path, MAX_STEPS=2)
    status, body = step(cm, FIRST)
    assert status == 200 and body["stats"]["maxSteps"] == 2
    status, body = step(cm, answer(body["message"], 5))
    assert status == 200 and body["stats"]["steps"] == 2
    outgoing = answer(body["message"], 5)
    status, error = step(cm, outgoing)
    assert (status, error["error"]) == (409, "MaxStepsExceeded")
    assert "2 steps" in error["message"]
    # Refused before anything is stored, and still refused after a restart (the count is in
    # the sidecar's journal).
    assert state(cm).messages == 2 + 2 + 1
    cm.restart()
    assert state(cm).stats.steps == 2
    assert step(cm, outgoing)[1]["error"] == "MaxStepsExceeded"


def test_model_errors_reach_the_agent_and_a_retry_is_not_stored_twice(
    scripted_model: Model, context_manager: Start, tmp_path: Path
) -> None:
    cm = context_manager(scripted_model(scenario(2)), tmp_path)
    assert step(cm, FIRST)[0] == 200
    wrong = [{"role": "tool", "tool_call_id": "call_t0_0", "content": "unexpected output"}]
    status, error = step(cm, wrong)
    assert (status, error["error"]) == (502, "ModelError")
    assert "tool results to contain 'output of step 0'" in error["message"]
    stored = state(cm)
    assert stored.last_message == wrong[0] and stored.pending_tool_call_ids == []
    # The agent did not get an answer and sends the same results again.
    status, error = step(cm, wrong)
    assert status == 502
    assert state(cm).messages == stored.messages
    assert state(cm).stats.errors == 2


def test_an_unreachable_model_is_unavailable(
    scripted_model: Model, context_manager: Start, tmp_path: Path, free_tcp_port: int
) -> None:
    cm = context_manager(
        scripted_model(scenario(1)),
        tmp_path,
        MODEL_BASE_URL=f"http://127.0.0.1:{free_tcp_port}/v1",
    )
    status, error = step(cm, FIRST)
    assert (status, error["error"]) == (503, "ModelUnavailable")
    assert state(cm).messages == 2


def test_a_provider_refusing_the_relays_key_fails_the_step_at_once(
    scripted_model: Model,
    context_manager: Start,
    model_relay: Callable[..., ModelRelay],
    tmp_path: Path,
) -> None:
    """Sidecar, relay and a provider that requires a key the relay does not send: the step fails
    ModelError at once, although the SDK may retry and the sidecar may wait an hour."""
    locked = scripted_model(scenario(1), api_key="sk-provider-secret")
    relay = model_relay([{"name": "keyless", "baseURL": locked.base_url}])
    cm = context_manager(
        locked,
        tmp_path,
        MODEL_BASE_URL=relay.base_url,
        MODEL_API_KEY=relay.credential("keyless"),
        MODEL_MAX_RETRIES=5,
        MODEL_RETRY_SECONDS=3600,
    )
    start = time.monotonic()
    status, error = step(cm, FIRST)
    assert time.monotonic() - start < 10
    assert (status, error["error"]) == (502, "ModelError")
    assert "refused the relay's API key" in error["message"]
    # Neither the provider's text nor its key, and not reported as an outage.
    assert "incorrect or missing" not in error["message"]
    assert "sk-provider-secret" not in json.dumps(error)
    assert request("GET", f"{cm.stats_url}/stats")[1]["modelDegraded"] is None


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"CODINGJOB_CONTEXT_STRATEGY": "forget"}, "CODINGJOB_CONTEXT_STRATEGY='forget'"),
        ({"CODINGJOB_CONTEXT_ENCODING": "o200k_base"}, "'o200k_base' is not shipped"),
        ({"CODINGJOB_MODEL_NAME": ""}, "CODINGJOB_MODEL_NAME are required"),
    ],
)
def test_an_invalid_configuration_stops_the_sidecar_with_the_reason(
    tmp_path: Path, setting: dict[str, str], message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODINGJOB_")}
    env.update(
        CODINGJOB_MODEL_BASE_URL="http://127.0.0.1:9/v1",
        CODINGJOB_MODEL_NAME="m",
        CODINGJOB_WORKSPACE=str(tmp_path),
    )
    env.update(setting)
    done = subprocess.run(
        [sys.executable, "-m", "codingjob_agent.context"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / JOURNAL_PATH).exists()
    assert not (tmp_path / "context.jsonl").exists()
