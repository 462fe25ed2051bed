"""The relay as a process in front of the real scripted model process (no HTTP mocks)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from codingjob_relay.__main__ import listener

from tests.fixtures.relay import ModelRelay
from tests.fixtures.scripted_model import ScriptedModel

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {"type": "object", "properties": {}, "additionalProperties": True},
        },
    }
    for name in ("bash", "create", "str_replace", "view", "screenshot", "finish")
]
FIRST_STEP = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Build a todo app."},
]


def provider(model: ScriptedModel, **extra: Any) -> dict[str, Any]:
    return {"name": "scripted", "baseURL": model.base_url, **extra}


def client(relay: ModelRelay, credential: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.base_url, api_key=credential, max_retries=0, timeout=60)


def step(relay: ModelRelay, credential: str, model: ScriptedModel, **options: Any) -> Any:
    return client(relay, credential).chat.completions.create(
        model=model.model,
        messages=FIRST_STEP,
        tools=TOOLS,
        **options,  # type: ignore[arg-type]
    )


def metrics(relay: ModelRelay) -> str:
    with urllib.request.urlopen(relay.metrics_url, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture
def todo(scripted_model: Callable[..., ScriptedModel]) -> ScriptedModel:
    return scripted_model("todo-app")


def test_relays_a_step_with_the_job_usage(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    relay = model_relay([provider(todo, prices={"prompt": 1.0, "completion": 2.0})])
    raw = client(relay, relay.credential()).chat.completions.with_raw_response.create(
        model=todo.model,
        messages=FIRST_STEP,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    answer = raw.parse()
    direct = todo.requests()[-1]
    assert answer.choices[0].message.tool_calls[0].id == "call_t0_0"  # type: ignore[index]
    assert answer.choices[0].message.tool_calls[0].function.name == "bash"  # type: ignore[index, union-attr]
    assert answer.usage is not None and answer.usage.prompt_tokens == direct["tokens"]
    assert raw.headers["x-codingjob-prompt-tokens"] == str(direct["tokens"])
    cost = (direct["tokens"] * 1.0 + answer.usage.completion_tokens * 2.0) / 1e6
    assert float(raw.headers["x-codingjob-cost-usd"]) == pytest.approx(cost, abs=1e-6)
    text = metrics(relay)
    assert (
        'codingjob_relay_tokens_total{job_class="",kind="prompt",model="scripted/todo-app",'
        f'namespace="team-a",provider="scripted"}} {float(direct["tokens"])}'
    ) in text


@pytest.mark.parametrize(
    "credential",
    [
        lambda relay: "",
        lambda relay: "sk-a-provider-key",
        lambda relay: relay.credential(key=b"x" * 32),
        lambda relay: relay.credential(lifetime=-10),
        lambda relay: relay.credential("another-provider"),
    ],
    ids=["none", "provider-key", "other-signing-key", "expired", "provider-not-allowed"],
)
def test_refuses_wrong_credentials(
    model_relay: Callable[..., ModelRelay],
    todo: ScriptedModel,
    credential: Callable[[ModelRelay], str],
) -> None:
    relay = model_relay([provider(todo)])
    before = len(todo.all_requests())
    with pytest.raises((openai.AuthenticationError, openai.PermissionDeniedError)) as refused:
        step(relay, credential(relay) or "missing", todo)
    assert refused.value.status_code in (401, 403)
    assert len(todo.all_requests()) == before  # nothing reached the provider


def test_other_job_credential_does_not_spend_this_job_budget(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    relay = model_relay([provider(todo)])
    mine = relay.credential(uid="uid-a", max_total_tokens=50_000)
    other = relay.credential(uid="uid-b", name="other")
    for _ in range(3):
        step(relay, other, todo)
    usage = client(relay, mine).get("/usage", cast_to=object)
    assert usage["prompt"] == 0 and usage["calls"] == 0  # type: ignore[index]


def test_budget_refusal_survives_a_restart(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    relay = model_relay([provider(todo)])
    first = step(relay, relay.credential(max_total_tokens=10_000), todo)
    assert first.usage is not None
    used = first.usage.total_tokens
    # A budget just above what one call used: the next call would cross it.
    credential = relay.credential(max_total_tokens=used + 50)
    relay.restart()
    before = len(todo.all_requests())
    with pytest.raises(openai.PermissionDeniedError) as refused:
        step(relay, credential, todo)
    assert refused.value.code == "budget_exceeded"
    assert f"used {used} tokens" in refused.value.message
    assert len(todo.all_requests()) == before
    assert 'reason="budget"' in metrics(relay)


def test_cost_budget_refusal(model_relay: Callable[..., ModelRelay], todo: ScriptedModel) -> None:
    relay = model_relay([provider(todo, prices={"prompt": 1000.0, "completion": 1000.0})])
    credential = relay.credential(max_cost=0.5)
    step(relay, credential, todo)  # about 0.3 USD at these prices
    with pytest.raises(openai.PermissionDeniedError, match="cost budget exceeded"):
        step(relay, credential, todo)


@pytest.mark.parametrize(
    ("status", "retry_after"), [(503, None), (429, 0.4)], ids=["503", "429-retry-after"]
)
def test_retries_through_a_provider_outage(
    model_relay: Callable[..., ModelRelay],
    todo: ScriptedModel,
    status: int,
    retry_after: float | None,
) -> None:
    relay = model_relay([provider(todo)], retry={"baseDelaySeconds": 0.05, "maxDelaySeconds": 1})
    todo.outage(status=status, requests=3, retryAfter=retry_after)
    start = time.monotonic()
    answer = step(relay, relay.credential(), todo)
    elapsed = time.monotonic() - start
    assert answer.choices[0].message.tool_calls  # the fourth attempt got through
    outages = [r for r in todo.all_requests()[-4:] if r["purpose"] == "outage"]
    assert len(outages) == 3
    if retry_after is not None:
        assert elapsed >= 3 * retry_after
    text = metrics(relay)
    assert 'codingjob_relay_retries_total{provider="scripted"} 3.0' in text
    assert (
        f'codingjob_relay_upstream_errors_total{{kind="{status}",provider="scripted"}} 3.0' in text
    )


def test_gives_up_with_503_when_the_retry_window_closes(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    relay = model_relay(
        [provider(todo)],
        retry={"baseDelaySeconds": 0.05, "maxDelaySeconds": 0.2, "maxElapsedSeconds": 1},
    )
    todo.outage(status=502, seconds=30)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            step(relay, relay.credential(), todo)
    finally:
        todo.outage()
    assert failed.value.status_code == 503
    assert failed.value.code == "provider_unavailable"
    assert "retry-after" in failed.value.response.headers


def test_connection_errors_are_retried_then_reported(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    """A provider nobody listens for: connection errors, retried until the window closes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    relay = model_relay(
        [{"name": "scripted", "baseURL": f"http://127.0.0.1:{closed}/v1"}],
        retry={"baseDelaySeconds": 0.05, "maxDelaySeconds": 0.2, "maxElapsedSeconds": 1},
    )
    with pytest.raises(openai.InternalServerError) as failed:
        step(relay, relay.credential(), todo)
    assert failed.value.code == "provider_unavailable"
    assert "connection failed" in failed.value.message
    match = re.search(
        r'codingjob_relay_upstream_errors_total\{kind="connection",provider="scripted"\} (\S+)',
        metrics(relay),
    )
    assert match and float(match.group(1)) >= 3


def test_streaming_passthrough(model_relay: Callable[..., ModelRelay], todo: ScriptedModel) -> None:
    relay = model_relay([provider(todo)])
    direct = openai.OpenAI(base_url=todo.base_url, api_key="unused", max_retries=0)

    def chunks(c: openai.OpenAI) -> list[dict[str, Any]]:
        stream = c.chat.completions.create(
            model=todo.model,
            messages=FIRST_STEP,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        return [
            {k: v for k, v in chunk.model_dump().items() if k not in ("id", "created")}
            for chunk in stream
        ]

    relayed, straight = chunks(client(relay, relay.credential())), chunks(direct)
    assert relayed == straight
    assert relayed[1]["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_t0_0"
    assert relayed[-1]["usage"]["prompt_tokens"] > 0
    usage = client(relay, relay.credential()).get("/usage", cast_to=object)
    assert usage["calls"] == 1 and usage["prompt"] == relayed[-1]["usage"]["prompt_tokens"]  # type: ignore[index]


def test_stream_without_usage_option_gets_no_usage_chunk(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    relay = model_relay([provider(todo)])
    stream = client(relay, relay.credential()).chat.completions.create(
        model=todo.model,
        messages=FIRST_STEP,
        tools=TOOLS,
        stream=True,  # type: ignore[arg-type]
    )
    assert all(chunk.choices for chunk in stream)


def test_context_window_refusal(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    relay = model_relay([provider(todo, contextWindow=50)])
    with pytest.raises(openai.BadRequestError) as refused:
        step(relay, relay.credential(), todo)
    assert refused.value.code == "context_length_exceeded"


def test_model_mapping_and_unknown_model(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    relay = model_relay([provider(todo, models={"todo": todo.model})])
    answer = client(relay, relay.credential()).chat.completions.create(
        model="todo",
        messages=FIRST_STEP,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert answer.choices[0].message.tool_calls
    with pytest.raises(openai.NotFoundError, match="offers"):
        step(relay, relay.credential(), todo)


def test_provider_key_is_sent_and_required(
    model_relay: Callable[..., ModelRelay],
    scripted_model: Callable[..., ScriptedModel],
    tmp_path: Path,
) -> None:
    locked = scripted_model("todo-app", api_key="sk-provider-secret")
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-provider-secret\n")
    relay = model_relay(
        [
            provider(locked, apiKeyFile=str(key_file)),
            {"name": "keyless", "baseURL": locked.base_url},
        ]
    )
    assert step(relay, relay.credential(), locked).choices[0].message.tool_calls
    with pytest.raises(openai.APIStatusError) as refused:
        step(relay, relay.credential("keyless"), locked)
    assert refused.value.status_code == 502
    assert refused.value.code == "provider_auth_failed"
    # Not worth retrying: the sidecar's SDK takes the header and does not retry the 502.
    assert refused.value.response.headers["x-should-retry"] == "false"
    # The provider's own text (some quote part of the key) stays in the relay's log.
    assert "incorrect or missing API key" not in refused.value.message
    assert "sk-provider-secret" not in relay.server.wait_for("incorrect or missing API key")


def test_json_logs(model_relay: Callable[..., ModelRelay], todo: ScriptedModel) -> None:
    relay = model_relay([provider(todo)], log_format="json")
    todo.outage(status=503, requests=1)
    step(relay, relay.credential(uid="uid-json"), todo)
    lines = [json.loads(line) for line in relay.server.wait_for("attempt 2").splitlines()]
    retry = [line for line in lines if "attempt 2" in line["message"]]
    assert retry and retry[0]["uid"] == "uid-json" and retry[0]["namespace"] == "team-a"


def test_accepted_connections_have_nagle_off() -> None:
    """Kept-alive calls must not wait for the client's delayed ACK: asyncio sets TCP_NODELAY on
    an accepted socket only when the listener says IPPROTO_TCP, which a bare socket() does not."""

    async def accepted_nodelay() -> int:
        sock = listener("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw = writer.get_extra_info("socket")
            seen.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) == 1


def test_metrics_are_not_served_on_the_api_port(
    model_relay: Callable[..., ModelRelay], todo: ScriptedModel
) -> None:
    """Sandboxes may reach the API port; the metrics name every tenant's namespace and spending,
    so they have a port of their own, which the sandboxes' NetworkPolicy does not admit."""
    relay = model_relay([provider(todo)])
    step(relay, relay.credential(namespace="team-secret"), todo)
    assert 'namespace="team-secret"' in metrics(relay)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{relay.base_url[:-3]}/metrics", timeout=10)
    assert refused.value.code == 404
