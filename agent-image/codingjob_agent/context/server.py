"""HTTP listeners: the model gateway on 127.0.0.1 and the read-only stats on the pod IP.

The gateway's caller is the agent, i.e. hostile code: a body is refused by its declared size
before a byte of it is read, read with a hard bound when it is chunked, and read, parsed and
handled only under :data:`BODY_SLOTS`, so that a flood of concurrent large bodies costs at most
``BODY_SLOTS`` bodies of memory instead of restarting the sidecar out of memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from codingjob_agent.context.service import ContextService, StepError
from codingjob_agent.protocol import ErrorBody, ErrorCode, StepRequest

log = logging.getLogger(__name__)

SERVICE_KEY = web.AppKey("service", ContextService)
MAX_BYTES_KEY = web.AppKey("max_bytes", int)
SLOTS_KEY = web.AppKey("body_slots", asyncio.Semaphore)

#: Requests whose bodies may be in memory (read, parsed or being handled) at once; the others
#: wait before reading theirs, which stays in the kernel's socket buffers (aiohttp pauses
#: reading a connection whose buffer is full). Steps run one at a time anyway: two lets a
#: retried step wait for the lock while the first finishes.
BODY_SLOTS = 2


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(
        model.model_dump(mode="json", by_alias=True), status=status, dumps=json.dumps
    )


def _error(code: ErrorCode, message: str, status: int) -> web.Response:
    return _json(ErrorBody(error=code, message=message), status)


async def healthz(request: web.Request) -> web.Response:
    """200 once the journal is loaded (the listeners start only after that)."""
    return web.json_response({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    return _json(request.app[SERVICE_KEY].stats())


async def conversation(request: web.Request) -> web.Response:
    return _json(request.app[SERVICE_KEY].state())


def _too_large(limit: int) -> web.Response:
    return _error(ErrorCode.MESSAGE_TOO_LARGE, f"request body over the {limit}-byte limit", 413)


async def _read_step(request: web.Request) -> StepRequest | web.Response:
    """The parsed body, or the 4xx response explaining why it cannot be used."""
    limit = request.app[MAX_BYTES_KEY]
    try:
        # Bounded by the app's client_max_size (limit + 1): a chunked body is cut off there.
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(limit)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _error(ErrorCode.BAD_REQUEST, f"request body is not UTF-8 ({exc.reason})", 400)
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        return _error(ErrorCode.BAD_REQUEST, f"request body is not JSON: {exc}", 400)
    except RecursionError:
        # Deeply nested arrays: refused, not a crash of the handler.
        return _error(ErrorCode.BAD_REQUEST, "request body is nested too deeply", 400)
    try:
        return StepRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        return _error(ErrorCode.BAD_REQUEST, f"invalid step request: {problems}", 422)


async def step(request: web.Request) -> web.Response:
    limit = request.app[MAX_BYTES_KEY]
    # Refused by its declared size before any of it is read, and without waiting for a slot.
    if request.content_length is not None and request.content_length > limit:
        return _too_large(limit)
    async with request.app[SLOTS_KEY]:
        parsed = await _read_step(request)
        if isinstance(parsed, web.Response):
            return parsed
        try:
            answer = await request.app[SERVICE_KEY].step(parsed)
        except StepError as exc:
            return _error(exc.code, str(exc), exc.status)
        return _json(answer)


def gateway_app(service: ContextService) -> web.Application:
    """The model gateway: ``/healthz``, ``/v1/conversation``, ``/v1/step``."""
    limit = service.settings.max_request_bytes
    # One byte over the limit, so that our own check answers with a JSON ErrorBody.
    app = web.Application(client_max_size=limit + 1)
    app[SERVICE_KEY] = service
    app[MAX_BYTES_KEY] = limit
    app[SLOTS_KEY] = asyncio.Semaphore(BODY_SLOTS)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/conversation", conversation)
    app.router.add_post("/v1/step", step)
    return app


def stats_app(service: ContextService) -> web.Application:
    """The read-only listener the operator polls: ``/healthz`` and ``/stats``, no secrets."""
    app = web.Application(client_max_size=1024)
    app[SERVICE_KEY] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    return app
