"""The provider client: retries with backoff on 429/5xx, a clear error on 4xx."""

from __future__ import annotations

import asyncio
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


async def complete_with(statuses: list[int], retries: int) -> tuple[Any, list[dict[str, Any]]]:
    """Call a provider that answers with ``statuses`` first, then 200."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        if len(seen) <= len(statuses):
            status = statuses[len(seen) - 1]
            return web.json_response({"error": {"message": f"status {status}"}}, status=status)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        settings = Settings(
            model_base_url=str(server.make_url("/v1")),
            model_name="flaky",
            model_api_key="sk-test",
            model_temperature=0.3,
            model_max_retries=retries,
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


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    error, seen = asyncio.run(complete_with([status], retries=3))
    assert len(seen) == 1
    assert isinstance(error, ModelCallError) and error.code is ErrorCode.MODEL_ERROR
    assert f"status {status}" in str(error)


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
