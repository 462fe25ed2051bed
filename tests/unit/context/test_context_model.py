"""The provider client: retries with backoff on 429/5xx, a clear error on 4xx."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from codingjob_agent.context.model import ModelCallError, ModelClient
from codingjob_agent.context.settings import Settings
from codingjob_agent.protocol import ErrorCode

ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "flaky",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                    }
                ],
            },
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}


async def complete_with(
    statuses: list[int],
    retries: int,
    error: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    retry_seconds: float = 0.0,
    api_key: str = "sk-test",
) -> tuple[Any, list[dict[str, Any]]]:
    """Call a provider that answers with ``statuses`` first (with ``error`` as the body's error
    and ``headers``), then 200."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        if len(seen) <= len(statuses):
            status = statuses[len(seen) - 1]
            body = error or {"message": f"status {status}"}
            return web.json_response({"error": body}, status=status, headers=headers)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        settings = Settings(
            model_base_url=str(server.make_url("/v1")),
            model_name="flaky",
            model_api_key=api_key,
            model_temperature=0.3,
            model_max_retries=retries,
            model_retry_seconds=retry_seconds,
            workspace=Path("."),
        )
        client = ModelClient(settings)
        try:
            result: Any = await client.complete([{"role": "user", "content": "hi"}])
        except ModelCallError as exc:
            result = exc
        finally:
            await client.close()
    return result, seen


def test_transient_errors_are_retried() -> None:
    completion, seen = asyncio.run(complete_with([503, 429], retries=3))
    assert len(seen) == 3
    assert seen[0]["model"] == "flaky" and seen[0]["temperature"] == 0.3
    assert completion.message["tool_calls"][0]["function"]["arguments"] == '{"command": "ls"}'
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 7)


def test_transient_errors_past_the_retries_mean_unavailable() -> None:
    error, seen = asyncio.run(complete_with([500, 500, 500], retries=1))
    assert len(seen) == 2
    assert isinstance(error, ModelCallError) and error.code is ErrorCode.MODEL_UNAVAILABLE


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    error, seen = asyncio.run(complete_with([status], retries=3))
    assert len(seen) == 1
    assert isinstance(error, ModelCallError) and error.code is ErrorCode.MODEL_ERROR
    assert f"status {status}" in str(error)


#: What OpenAI answers to a wrong key: its message quotes the key's ends.
LEAKY_REFUSAL = {
    "message": "Incorrect API key provided: sk-proj-****9f2c. You can find your API key at ...",
    "type": "invalid_request_error",
    "code": "invalid_api_key",
}


@pytest.mark.parametrize(
    ("status", "error", "headers", "says"),
    [
        # A provider called directly (spec.model.baseURL with apiKeySecretRef).
        (401, LEAKY_REFUSAL, None, "the model provider refused the API key (HTTP 401"),
        (403, {"message": "sk-proj-****9f2c may not use this model"}, None, "HTTP 403"),
        # The relay, whose provider refused the admin's key, as codingjob_relay answers it.
        (
            502,
            {
                "message": "provider scripted refused the relay's key (HTTP 401)",
                "type": "provider_auth_failed",
                "code": "provider_auth_failed",
            },
            {"x-should-retry": "false"},
            "the model relay's provider refused the relay's API key",
        ),
    ],
)
def test_a_refused_key_ends_the_step_at_once(
    status: int, error: dict[str, Any], headers: dict[str, str] | None, says: str
) -> None:
    # Even with retries left and an hour to retry in: a refused key does not heal by waiting.
    start = time.monotonic()
    refused, seen = asyncio.run(
        complete_with([status] * 10, retries=3, error=error, headers=headers, retry_seconds=3600)
    )
    assert time.monotonic() - start < 10
    assert len(seen) == 1
    assert isinstance(refused, ModelCallError) and refused.code is ErrorCode.MODEL_ERROR
    assert says in str(refused)
    assert "sk-" not in str(refused), "the provider's text (with part of the key) is not passed on"


def test_a_relay_refusal_without_the_no_retry_header_still_ends_the_step() -> None:
    # An older relay sends no x-should-retry: the SDK retries the 502, then the step ends.
    body = {"message": "provider p refused the relay's key", "code": "provider_auth_failed"}
    refused, seen = asyncio.run(
        complete_with([502] * 10, retries=1, error=body, retry_seconds=3600)
    )
    assert len(seen) == 2
    assert isinstance(refused, ModelCallError) and refused.code is ErrorCode.MODEL_ERROR


def test_the_relay_refusing_the_jobs_credential_says_why() -> None:
    # The relay's own refusal (a job credential, never a provider key) keeps its text.
    body = {"message": "credential refused: team-a/job is not running", "code": "invalid_api_key"}
    refused, seen = asyncio.run(
        complete_with([401], retries=3, error=body, retry_seconds=3600, api_key="cjr1.e30.mac")
    )
    assert len(seen) == 1
    assert isinstance(refused, ModelCallError) and refused.code is ErrorCode.MODEL_ERROR
    assert str(refused) == (
        "the model relay refused the job's credential: "
        "credential refused: team-a/job is not running"
    )


def test_an_unconfigured_relay_provider_is_not_called_a_refused_key() -> None:
    body = {
        "message": "provider 'x' of ns/job is not configured",
        "code": "provider_not_configured",
    }
    refused, seen = asyncio.run(complete_with([403], retries=3, error=body))
    assert len(seen) == 1
    assert isinstance(refused, ModelCallError) and refused.code is ErrorCode.MODEL_ERROR
    assert "not configured" in str(refused) and "API key" not in str(refused)


def test_an_unreachable_provider_is_unavailable(free_tcp_port: int) -> None:
    settings = Settings(
        model_base_url=f"http://127.0.0.1:{free_tcp_port}/v1",
        model_name="m",
        model_max_retries=0,
        workspace=Path("."),
    )

    async def call() -> None:
        client = ModelClient(settings)
        try:
            await client.complete([{"role": "user", "content": "hi"}])
        finally:
            await client.close()

    with pytest.raises(ModelCallError) as error:
        asyncio.run(call())
    assert error.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_max_completion_tokens_is_used_when_max_tokens_is_refused() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if "max_tokens" in body:
            message = "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."
            return web.json_response({"error": {"message": message}}, status=400)
        return web.json_response(ANSWER)

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        async with TestServer(app, host="127.0.0.1") as server:
            settings = Settings(
                model_base_url=str(server.make_url("/v1")),
                model_name="newer",
                model_max_output_tokens=100,
                model_max_retries=0,
                workspace=Path("."),
            )
            client = ModelClient(settings)
            try:
                await client.complete([{"role": "user", "content": "hi"}])
                await client.complete([{"role": "user", "content": "again"}])
            finally:
                await client.close()

    asyncio.run(run())
    assert [("max_tokens" in b, b.get("max_completion_tokens")) for b in seen] == [
        (True, None),
        (False, 100),
        (False, 100),
    ]
