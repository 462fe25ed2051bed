"""The relay's HTTP API (OpenAI-compatible): ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /v1/usage``, ``GET /metrics``, ``GET /healthz``.

A call goes: credential -> job still running -> provider and model allowed -> context window ->
budget -> provider (streamed, retried on transient errors until the retry window or the job's
deadline closes) -> usage recorded -> answer, streamed through or assembled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from codingjob_relay.config import Provider, RelayConfig, Settings
from codingjob_relay.credentials import CredentialError, JobClaims, verify
from codingjob_relay.jobs import JobChecker
from codingjob_relay.metrics import Metrics
from codingjob_relay.policy import (
    RETRYABLE_STATUS,
    backoff_delay,
    budget_refusal,
    estimate_prompt_tokens,
    retry_after_seconds,
    usage_of,
)
from codingjob_relay.upstream import (
    Assembler,
    Clients,
    UpstreamStreamError,
    data_of,
    parse_chunk,
)
from codingjob_relay.usage import Usage, UsageStore

log = logging.getLogger("codingjob.relay")

T = TypeVar("T")

#: Response headers with the job's totals after the call (the sidecar shows them in /stats).
USAGE_HEADERS = {
    "prompt": "x-codingjob-prompt-tokens",
    "completion": "x-codingjob-completion-tokens",
    "cached": "x-codingjob-cached-tokens",
    "cost": "x-codingjob-cost-usd",
}
#: Error codes the sidecar acts on (OpenAI's shape: ``{"error": {"code": ...}}``).
BUDGET_EXCEEDED = "budget_exceeded"
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
PROVIDER_UNAVAILABLE = "provider_unavailable"
#: The provider refused the relay's key (401/403); the sidecar ends the step, no retry.
PROVIDER_AUTH_FAILED = "provider_auth_failed"
PROVIDER_NOT_CONFIGURED = "provider_not_configured"


class RelayError(Exception):
    """An answer other than success, in OpenAI's error shape."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {
            "error": {"message": str(self), "type": self.code, "param": None, "code": self.code}
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class _Transient(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


@dataclass
class Relay:
    """The relay's state: configuration, key, usage, job checks, clients and metrics."""

    settings: Settings
    config: RelayConfig
    key: bytes
    store: UsageStore
    checker: JobChecker
    metrics: Metrics = field(default_factory=Metrics)
    clients: Clients = field(default_factory=Clients)
    rng: random.Random = field(default_factory=random.Random)

    # -- checks ----------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> JobClaims:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise RelayError(401, "invalid_api_key", "a job credential (Bearer) is required")
        try:
            claims = verify(self.key, token, time.time())
        except CredentialError as exc:
            raise RelayError(401, "invalid_api_key", f"credential refused: {exc}") from None
        # Useless once the job has ended, even before the credential expires.
        if not await self.checker.is_live(claims):
            raise RelayError(
                401, "invalid_api_key", f"credential refused: {claims.job} is not running"
            )
        return claims

    def provider(self, claims: JobClaims) -> Provider:
        provider = self.config.provider(claims.provider)
        if provider is None:
            raise RelayError(
                403,
                PROVIDER_NOT_CONFIGURED,
                f"provider {claims.provider!r} of {claims.job} is not configured in the relay",
            )
        return provider

    def usage_headers(self, usage: Usage) -> dict[str, str]:
        return {
            USAGE_HEADERS["prompt"]: str(usage.prompt),
            USAGE_HEADERS["completion"]: str(usage.completion),
            USAGE_HEADERS["cached"]: str(usage.cached),
            USAGE_HEADERS["cost"]: f"{usage.cost:.6f}",
        }

    # -- upstream --------------------------------------------------------------------------

    async def _retrying(
        self, claims: JobClaims, provider: Provider, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """``attempt()`` until it succeeds, fails permanently, or the retry window closes."""
        policy = self.config.retry
        start = time.monotonic()
        window = min(policy.max_elapsed_seconds, claims.expires_at - time.time())
        tries = 0
        while True:
            try:
                return await attempt()
            except _Transient as exc:
                self.metrics.upstream_errors.labels(provider.name, exc.kind).inc()
                delay = backoff_delay(policy, tries, exc.retry_after, self.rng)
                if time.monotonic() - start + delay > window:
                    log.error(
                        "provider %s unavailable after %d attempts: %s",
                        provider.name,
                        tries + 1,
                        exc,
                        extra=_fields(claims),
                    )
                    raise RelayError(
                        503,
                        PROVIDER_UNAVAILABLE,
                        f"provider {provider.name} unavailable after {tries + 1} attempts "
                        f"in {time.monotonic() - start:.0f}s: {exc}",
                        {"retry-after": str(max(1, round(delay)))},
                    ) from None
                tries += 1
                self.metrics.retries.labels(provider.name).inc()
                log.warning(
                    "provider %s: %s; attempt %d in %.1fs",
                    provider.name,
                    exc,
                    tries + 1,
                    delay,
                    extra=_fields(claims),
                )
                await asyncio.sleep(delay)

    async def _open(
        self, provider: Provider, body: dict[str, Any]
    ) -> tuple[AsyncExitStack, AsyncIterator[str]]:
        """A streamed call toward the provider; raises _Transient or RelayError."""
        # The request is already in wire format: it goes as extra_body, so that the SDK does
        # not walk every message of a long context through its parameter transform (that costs
        # milliseconds per call). Usage arrives in the last chunk; without it the budget would
        # be a guess.
        wire = {**body, "stream": True, "stream_options": {"include_usage": True}}
        stack = AsyncExitStack()
        try:
            response = await stack.enter_async_context(
                self.clients.get(provider).chat.completions.with_streaming_response.create(
                    model=body["model"], messages=[], extra_body=wire
                )
            )
        except Exception as exc:
            await stack.aclose()
            raise _classify(provider, exc) from exc
        except BaseException:
            await stack.aclose()
            raise
        return stack, response.iter_lines()

    # -- the call --------------------------------------------------------------------------

    def _record(
        self,
        claims: JobClaims,
        provider: Provider,
        model: str,
        assembled: Assembler,
        prompt_estimate: int,
    ) -> Usage:
        prompt, completion, cached = usage_of(assembled.usage)
        if assembled.usage is None:
            # A provider that sends no usage is still counted, by estimate.
            prompt, completion = prompt_estimate, assembled.completion_bytes // 4
        cost = provider.prices.cost(prompt, completion, cached)
        totals = self.store.record(
            claims.uid,
            Usage(prompt=prompt, completion=completion, cached=cached, cost=cost, calls=1),
        )
        labels = (provider.name, model, claims.job_class, claims.namespace)
        for kind, value in (("prompt", prompt), ("completion", completion), ("cached", cached)):
            self.metrics.tokens.labels(*labels, kind).inc(value)
        self.metrics.cost.labels(*labels).inc(cost)
        return totals

    async def chat(self, request: Request) -> Response:
        claims = await self.authenticate(request)
        provider = self.provider(claims)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            raise RelayError(400, "invalid_json", "the request body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise RelayError(400, "invalid_request", "model and messages are required")
        requested = str(body.get("model") or "")
        upstream_model = provider.upstream_model(requested)
        if upstream_model is None:
            raise RelayError(
                404,
                "model_not_found",
                f"provider {provider.name} offers {sorted(provider.models)}, not {requested!r}",
            )
        body["model"] = upstream_model
        estimate = estimate_prompt_tokens(len(raw))
        if provider.context_window and estimate > provider.context_window:
            self.metrics.refusals.labels(claims.namespace, "context_window").inc()
            raise RelayError(
                400,
                CONTEXT_LENGTH_EXCEEDED,
                f"the request has about {estimate} tokens; the context window of "
                f"{provider.name} is {provider.context_window}",
            )
        refusal = budget_refusal(claims, self.store.get(claims.uid), estimate, provider.prices)
        if refusal is not None:
            self.metrics.refusals.labels(claims.namespace, "budget").inc()
            log.info("refused: %s", refusal, extra=_fields(claims))
            raise RelayError(403, BUDGET_EXCEEDED, refusal)
        if body.get("stream"):
            return await self._stream(claims, provider, requested, body, estimate)
        return await self._complete(claims, provider, requested, body, estimate)

    async def _complete(
        self,
        claims: JobClaims,
        provider: Provider,
        model: str,
        body: dict[str, Any],
        estimate: int,
    ) -> Response:
        async def attempt() -> Assembler:
            stack, lines = await self._open(provider, body)
            assembled = Assembler()
            async with stack:
                try:
                    async for line in lines:
                        payload = data_of(line)
                        if payload is None:
                            continue
                        chunk = parse_chunk(payload)
                        if chunk is not None:
                            assembled.add(chunk)
                except RelayError:
                    raise
                except Exception as exc:
                    raise _classify(provider, exc) from exc
            return assembled

        with self.metrics.in_flight.labels(provider.name).track_inprogress():
            assembled = await self._retrying(claims, provider, attempt)
        totals = self._record(claims, provider, model, assembled, estimate)
        return JSONResponse(assembled.completion(), headers=self.usage_headers(totals))

    async def _stream(
        self,
        claims: JobClaims,
        provider: Provider,
        model: str,
        body: dict[str, Any],
        estimate: int,
    ) -> Response:
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def attempt() -> tuple[AsyncExitStack, AsyncIterator[str], str]:
            # Retried until the first chunk: after that the caller has bytes and we cannot.
            stack, lines = await self._open(provider, body)
            try:
                async for line in lines:
                    payload = data_of(line)
                    if payload is not None:
                        return stack, lines, payload
            except Exception as exc:
                await stack.aclose()
                raise _classify(provider, exc) from exc
            await stack.aclose()
            raise _Transient("empty", "the provider closed the stream without data")

        gauge = self.metrics.in_flight.labels(provider.name)
        gauge.inc()
        try:
            stack, lines, first = await self._retrying(claims, provider, attempt)
        except BaseException:
            gauge.dec()
            raise
        assembled = Assembler()

        async def forward() -> AsyncIterator[bytes]:
            try:
                payload: str | None = first
                while payload is not None:
                    chunk = parse_chunk(payload)
                    if chunk is None:
                        break
                    assembled.add(chunk)
                    if wants_usage or chunk.get("choices"):
                        yield f"data: {payload}\n\n".encode()
                    payload = None
                    async for line in lines:
                        payload = data_of(line)
                        if payload is not None:
                            break
                yield b"data: [DONE]\n\n"
                # Read the stream to its end, so its connection goes back to the pool.
                async for _ in lines:
                    pass
            except Exception as exc:
                log.error("stream from %s broke: %s", provider.name, exc, extra=_fields(claims))
                error = {
                    "error": {
                        "message": f"provider stream broke: {exc}",
                        "type": PROVIDER_UNAVAILABLE,
                        "code": PROVIDER_UNAVAILABLE,
                    }
                }
                yield f"data: {json.dumps(error)}\n\n".encode()
            finally:
                await stack.aclose()
                gauge.dec()
                self._record(claims, provider, model, assembled, estimate)

        headers = self.usage_headers(self.store.get(claims.uid))
        return StreamingResponse(forward(), media_type="text/event-stream", headers=headers)


def _fields(claims: JobClaims) -> dict[str, str]:
    return {
        "job_namespace": claims.namespace,
        "job_name": claims.name,
        "job_uid": claims.uid,
        "provider": claims.provider,
    }


def _classify(provider: Provider, exc: BaseException) -> BaseException:
    """A provider failure as _Transient (retry) or RelayError (answer the caller now)."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in RETRYABLE_STATUS:
            return _Transient(
                str(status),
                f"HTTP {status}: {exc.message}",
                retry_after_seconds(exc.response.headers),
            )
        code = exc.code if isinstance(exc.code, str) else "upstream_error"
        if status in (401, 403):
            # The provider refused the admin's key: not the job's fault, not the job's credential.
            # The provider's text stays in the relay's log: some providers quote part of the key.
            log.warning("provider %s refused the relay's key: %s", provider.name, exc.message)
            return RelayError(
                502,
                PROVIDER_AUTH_FAILED,
                f"provider {provider.name} refused the relay's key (HTTP {status})",
                # Not worth retrying (the admin must fix the key): the sidecar's SDK would retry
                # a 502 otherwise, and the sidecar ends the step as a model error.
                headers={"x-should-retry": "false"},
            )
        return RelayError(status, code, f"provider {provider.name}: {exc.message}")
    if isinstance(exc, openai.APITimeoutError):
        return _Transient("timeout", f"timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return _Transient("connection", f"connection failed: {exc}")
    if isinstance(exc, UpstreamStreamError):
        return _Transient("stream", f"error in the stream: {exc}")
    if isinstance(exc, ValueError):
        return RelayError(502, "bad_upstream_response", f"provider {provider.name}: {exc}")
    if isinstance(exc, Exception):
        # Reading the body failed midway (reset, read timeout): the next attempt may get it.
        return _Transient("read", f"reading the answer failed: {exc!r}")
    return exc


def create_app(relay: Relay, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The relay's ASGI app; the lifespan opens the usage journal and syncs it every second,
    then calls ``on_ready``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        relay.store.open()

        async def sync() -> None:
            while True:
                await asyncio.sleep(1.0)
                relay.store.sync()

        task = asyncio.create_task(sync())
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await relay.clients.close()
            await relay.checker.close()
            relay.store.close()

    app = FastAPI(
        title="codingjob-model-relay",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    async def answer(provider: str, handler: Callable[[], Awaitable[Response]]) -> Response:
        try:
            response = await handler()
        except RelayError as exc:
            relay.metrics.requests.labels(provider, str(exc.status), exc.code).inc()
            return exc.response()
        relay.metrics.requests.labels(provider, str(response.status_code), "").inc()
        return response

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer("", lambda: relay.chat(request))

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        async def handler() -> Response:
            provider = relay.provider(await relay.authenticate(request))
            names = sorted(provider.models) or []
            return JSONResponse(
                {
                    "object": "list",
                    "data": [
                        {"id": n, "object": "model", "created": 0, "owned_by": provider.name}
                        for n in names
                    ],
                }
            )

        return await answer("", handler)

    @app.get("/v1/usage")
    async def usage(request: Request) -> Response:
        async def handler() -> Response:
            claims = await relay.authenticate(request)
            used = relay.store.get(claims.uid)
            return JSONResponse(
                {
                    "job": claims.job,
                    "uid": claims.uid,
                    "provider": claims.provider,
                    "prompt": used.prompt,
                    "completion": used.completion,
                    "cached": used.cached,
                    "costUSD": round(used.cost, 6),
                    "calls": used.calls,
                    "maxTotalTokens": claims.max_total_tokens,
                    "maxCostUSD": claims.max_cost,
                }
            )

        return await answer("", handler)

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    return app
