"""The scripted test model's HTTP server: OpenAI-compatible ``/v1/chat/completions``.

It keeps no conversation state, so any number of conversations, restarts of the sidecar and
pruned windows work: tool call ids carry the turn that made them (``call_t3_0`` is the first
call of turn 3), and the next turn is one after the turn of the last assistant message in the
request. Requests whose system message starts with the context manager's summary marker get a
fixed summary instead of a turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from codingjob_agent.context.summarize import SUMMARY_MARKER
from codingjob_agent.context.tokens import TokenCounter, counter_for
from codingjob_agent.scripted_model.scenario import (
    Scenario,
    Turn,
    UnknownModel,
    load_scenario,
    model_names,
    scenario_path,
)

log = logging.getLogger("codingjob.scripted_model")

_CALL_ID = re.compile(r"^call_t(\d+)_\d+$")
#: Shown as the fingerprint of every answer, so nobody mistakes the server for a real model.
FINGERPRINT = "scripted-test-model"


class UnexpectedRequest(ValueError):
    """The request does not match what the scenario expects at this point."""


@dataclass
class Outage:
    """Refuse chat completions with ``status`` (and ``Retry-After``) for a while."""

    status: int
    remaining: int | None = None
    until: float | None = None
    retry_after: float | None = None

    def refuses(self, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True


@dataclass
class ServerState:
    """The scenario directory, the token counter, and the log of received requests."""

    scenario_dir: Path
    counter: TokenCounter
    #: Seconds each answer waits, like a real model's latency, so people and tests can watch a run.
    turn_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: When set, ``/v1/*`` requires ``Authorization: Bearer <api_key>`` (401 otherwise), as a
    #: real provider does; tests of the real-provider path use it.
    api_key: str | None = None
    #: A simulated provider outage (``POST /_scripted/outage``): answers with ``status`` until
    #: ``remaining`` requests have been refused or ``until`` (monotonic) has passed.
    outage: Outage | None = None
    _cache: dict[Path, tuple[float, Scenario]] = field(default_factory=dict)

    def scenario(self, model: str) -> Scenario:
        path = scenario_path(self.scenario_dir, model)
        mtime = path.stat().st_mtime
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, load_scenario(path))
            self._cache[path] = cached
        return cached[1]


STATE_KEY = web.AppKey("state", ServerState)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def turn_of(message: Mapping[str, Any]) -> int | None:
    """The turn encoded in an assistant message's tool call ids, if it made any."""
    for call in message.get("tool_calls") or ():
        match = _CALL_ID.match(str(call.get("id", "")))
        if match:
            return int(match.group(1))
    return None


def next_turn(messages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the turn that answers ``messages``.

    One after the turn in the last assistant message's tool call ids; assistant messages
    without tool calls (which carry no id) each count as one more turn.
    """
    after = 0
    for message in reversed(messages):
        if message.get("role") != "assistant":
            continue
        turn = turn_of(message)
        if turn is not None:
            return turn + 1 + after
        after += 1
    return after


def check_request(scenario: Scenario, turn: Turn | None, body: Mapping[str, Any]) -> None:
    """Raise UnexpectedRequest unless ``body`` answers the previous turn as the scenario wants."""
    messages = body["messages"]
    last_assistant = None
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "assistant":
            last_assistant = index
            break
    results = [m for m in messages[(last_assistant or 0) + 1 :] if m.get("role") == "tool"]
    if last_assistant is not None:
        answered = {str(m.get("tool_call_id")) for m in results}
        missing = [
            call.get("id")
            for call in messages[last_assistant].get("tool_calls") or ()
            if call.get("id") not in answered
        ]
        if missing:
            raise UnexpectedRequest(f"no tool results for the previous tool calls {missing}")
    if turn is None:
        return
    offered = {
        str((tool.get("function") or {}).get("name"))
        for tool in body.get("tools") or ()
        if isinstance(tool, dict)
    }
    for call in turn.message.tool_calls:
        if call.function.name not in offered:
            raise UnexpectedRequest(
                f"the scenario calls tool {call.function.name!r}, but the request offers "
                f"{sorted(offered)}"
            )
    if turn.expect is not None:
        seen = "\n".join(_text(m.get("content")) for m in results)
        for needle in turn.expect.tool_results_contain:
            if needle not in seen:
                raise UnexpectedRequest(
                    f"expected the tool results to contain {needle!r}; they were: {seen[:800]!r}"
                )


def scripted_message(turn: Turn, index: int) -> dict[str, Any]:
    """The assistant message of ``turn``, with ids that encode ``index`` and JSON arguments."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.message.content}
    if turn.message.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_t{index}_{number}",
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": json.dumps(call.function.arguments),
                },
            }
            for number, call in enumerate(turn.message.tool_calls)
        ]
    return message


def scripted_summary(body: Mapping[str, Any]) -> str:
    """The fixed answer to a summary request: what it covered, counted, never invented."""
    text = "\n".join(_text(m.get("content")) for m in body["messages"][1:])
    tools = re.findall(r"^-> (\w+)\(", text, flags=re.MULTILINE)
    counts = {name: tools.count(name) for name in sorted(set(tools))}
    listed = ", ".join(f"{name} x{count}" for name, count in counts.items()) or "none"
    return (
        f"Scripted test summary of {len(text.splitlines())} transcript lines. Tool calls: {listed}."
    )


def _completion(body: Mapping[str, Any], message: dict[str, Any], usage: dict[str, int]) -> Any:
    return {
        "id": f"chatcmpl-scripted-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def _chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The completion as stream chunks: role and content, tool calls, finish, usage."""
    choice = completion["choices"][0]
    message = choice["message"]
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": message.get("content") or ""})]
    calls = message.get("tool_calls") or []
    if calls:
        chunks.append(chunk({"tool_calls": [{"index": n, **c} for n, c in enumerate(calls)]}))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": f"scripted test model: {message}",
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        },
        status=status,
    )


def _unauthorized(state: ServerState, request: web.Request) -> web.Response | None:
    """401 unless the request carries the key the server was started with (if any)."""
    if state.api_key is None:
        return None
    header = request.headers.get("Authorization", "")
    if header == f"Bearer {state.api_key}":
        return None
    return web.json_response(
        {
            "error": {
                "message": "scripted test model: incorrect or missing API key",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
        status=401,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    refused = _unauthorized(state, request)
    if refused is not None:
        state.requests.append({"model": None, "purpose": "unauthorized", "status": 401})
        return refused
    if state.outage is not None and state.outage.refuses(time.monotonic()):
        state.requests.append({"model": None, "purpose": "outage", "status": state.outage.status})
        headers = {}
        if state.outage.retry_after is not None:
            headers["Retry-After"] = str(state.outage.retry_after)
        refusal = _error(state.outage.status, "simulated outage", "outage")
        refusal.headers.update(headers)
        return refusal
    entry: dict[str, Any] = {"model": None, "purpose": "rejected", "status": 400}
    state.requests.append(entry)
    try:
        body = await request.json()
    except ValueError:
        log.error("rejected a request whose body is not JSON")
        return _error(400, "the body is not JSON", "invalid_json")
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("model"), str)
        or not isinstance(body.get("messages"), list)
        or not body["messages"]
        or not all(isinstance(m, dict) for m in body["messages"])
    ):
        log.error("rejected a request without model and messages")
        return _error(400, "model and a non-empty messages list are required", "invalid_request")
    messages: list[dict[str, Any]] = body["messages"]
    tools = body.get("tools") or []
    entry.update(
        model=body["model"],
        messages=len(messages),
        tokens=state.counter.request(messages, tools),
        tools=len(tools),
        maxTokens=body.get("max_tokens") or body.get("max_completion_tokens"),
    )
    summary = messages[0].get("role") == "system" and _text(messages[0].get("content")).startswith(
        SUMMARY_MARKER
    )
    try:
        scenario = state.scenario(body["model"])
        if summary:
            entry["purpose"] = "summary"
            message: dict[str, Any] = {"role": "assistant", "content": scripted_summary(body)}
        else:
            entry["purpose"] = "step"
            index = next_turn(messages)
            entry["turn"] = index
            if index < len(scenario.turns):
                turn: Turn | None = scenario.turns[index]
            elif scenario.after_last_turn == "repeat-last":
                turn = scenario.turns[-1]
            else:
                turn = None
            check_request(scenario, turn if index < len(scenario.turns) else None, body)
            if turn is None:
                raise UnexpectedRequest(
                    f"the scenario has {len(scenario.turns)} turns; there is no turn {index}"
                )
            message = scripted_message(turn, index)
    except UnknownModel as exc:
        entry["error"] = str(exc)
        log.error("%s", exc)
        return _error(404, str(exc), "model_not_found")
    except ValidationError as exc:
        entry["error"] = f"invalid scenario file: {exc}"
        log.error("invalid scenario file for model %s: %s", body["model"], exc)
        return _error(500, f"invalid scenario file for {body['model']}: {exc}", "invalid_scenario")
    except UnexpectedRequest as exc:
        entry["error"] = str(exc)
        log.error("unexpected request for %s (turn %s): %s", body["model"], entry.get("turn"), exc)
        return _error(400, f"unexpected request: {exc}", "unexpected_request")
    completion_tokens = state.counter.message(message)
    # With the prompt tokens, what a caller (sidecar, relay) must have counted for this answer.
    entry["completionTokens"] = completion_tokens
    usage = {
        "prompt_tokens": entry["tokens"],
        "completion_tokens": completion_tokens,
        "total_tokens": entry["tokens"] + completion_tokens,
    }
    entry["status"] = 200
    completion = _completion(body, message, usage)
    if state.turn_delay > 0:
        await asyncio.sleep(state.turn_delay)
    log.info(
        "%s %s turn %s: %d messages, %d tokens",
        body["model"],
        entry["purpose"],
        entry.get("turn", "-"),
        len(messages),
        entry["tokens"],
    )
    if not body.get("stream"):
        return web.json_response(completion)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in _chunks(completion, include_usage):
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    refused = _unauthorized(state, request)
    if refused is not None:
        return refused
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": FINGERPRINT}
                for name in model_names(state.scenario_dir)
            ],
        }
    )


async def received(request: web.Request) -> web.Response:
    """Log of the requests received so far, for tests to assert on."""
    return web.json_response({"requests": request.app[STATE_KEY].requests})


async def outage(request: web.Request) -> web.Response:
    """Start (or with ``{}`` end) a simulated outage: ``{"status": 503, "requests": 3}`` or
    ``{"status": 429, "seconds": 2, "retryAfter": 0.5}``."""
    body = await request.json()
    state = request.app[STATE_KEY]
    if not body:
        state.outage = None
    else:
        seconds = body.get("seconds")
        state.outage = Outage(
            status=int(body["status"]),
            remaining=body.get("requests"),
            until=time.monotonic() + float(seconds) if seconds is not None else None,
            retry_after=body.get("retryAfter"),
        )
    return web.json_response({"status": "ok"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(
    scenario_dir: Path,
    encoding: str = "cl100k_base",
    turn_delay: float = 0.0,
    api_key: str | None = None,
) -> web.Application:
    """The scripted model server's application, playing scenarios from ``scenario_dir``;
    with ``api_key``, ``/v1/*`` answers 401 without that key."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = ServerState(
        scenario_dir=scenario_dir,
        counter=counter_for(encoding),
        turn_delay=turn_delay,
        api_key=api_key or None,
    )
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/_scripted/requests", received)
    app.router.add_post("/_scripted/outage", outage)
    app.router.add_get("/healthz", healthz)
    return app
