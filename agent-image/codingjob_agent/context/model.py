"""The model provider (or the model relay) behind the gateway, called with the ``openai`` SDK.

The SDK retries 408/409/429/5xx answers and connection errors with exponential backoff
(``max_retries``); after that the client keeps retrying with capped, jittered backoff (honouring
``Retry-After``) for up to ``model_retry_seconds`` and reports itself degraded meanwhile. What
still fails becomes :class:`ModelCallError` with the code the agent sees. A refused key (401/403,
or the relay's ``provider_auth_failed``) is a model error at once: retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from codingjob_agent.context.settings import Settings
from codingjob_agent.protocol import ErrorCode

log = logging.getLogger(__name__)

#: Statuses worth retrying; the SDK already did, so after that the provider is "unavailable".
_TRANSIENT = frozenset({408, 409, 429})
#: Error codes of the model relay (``codingjob_relay.app``) and OpenAI the sidecar acts on.
BUDGET_EXCEEDED_CODE = "budget_exceeded"
CONTEXT_LENGTH_EXCEEDED_CODE = "context_length_exceeded"
#: The relay's provider refused the relay's key (``codingjob_relay.app``; answered with 502).
PROVIDER_AUTH_FAILED_CODE = "provider_auth_failed"
#: The relay's 403 for a provider it does not have: about the job's spec, not about a key.
PROVIDER_NOT_CONFIGURED_CODE = "provider_not_configured"
#: Statuses with which an endpoint refuses the key it was called with.
_AUTH_REFUSED = frozenset({401, 403})
#: How a job credential of the relay starts (``codingjob_relay.credentials.PREFIX``): a key
#: with it means the sidecar talks to the relay, not to a provider.
RELAY_CREDENTIAL_PREFIX = "cjr1."
#: Headers of the relay with the job's totals after a call (``codingjob_relay.app.USAGE_HEADERS``).
USAGE_HEADERS = {
    "prompt": "x-codingjob-prompt-tokens",
    "completion": "x-codingjob-completion-tokens",
    "cached": "x-codingjob-cached-tokens",
    "cost": "x-codingjob-cost-usd",
}
#: Longest wait between two attempts while the provider is down.
MAX_RETRY_DELAY_SECONDS = 60.0


class ModelCallError(RuntimeError):
    """The provider refused the request (ModelError) or could not be reached (ModelUnavailable).

    ``context_length`` is True when the provider said the request does not fit its window.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        context_length: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.context_length = context_length
        self.retry_after = retry_after


@dataclass(frozen=True)
class RelayUsage:
    """The job's totals as the model relay counts them (its budgets apply to these)."""

    prompt: int
    completion: int
    cached: int
    cost_usd: float

    @classmethod
    def from_headers(cls, headers: Any) -> RelayUsage | None:
        try:
            return cls(
                prompt=int(headers[USAGE_HEADERS["prompt"]]),
                completion=int(headers[USAGE_HEADERS["completion"]]),
                cached=int(headers[USAGE_HEADERS["cached"]]),
                cost_usd=float(headers[USAGE_HEADERS["cost"]]),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Completion:
    """One answer: the assistant message as stored, and the provider's usage if it sent one."""

    message: dict[str, Any]
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    relay_usage: RelayUsage | None = None


class ModelClient:
    """Chat Completions calls with the job's model settings and key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = openai.AsyncOpenAI(
            base_url=settings.model_base_url,
            # Some OpenAI-compatible servers need no key; the SDK insists on a value.
            api_key=settings.model_api_key or "unused",
            max_retries=settings.model_max_retries,
            timeout=settings.model_timeout_seconds,
        )
        self._limit_key = "max_tokens"
        self._through_relay = (settings.model_api_key or "").startswith(RELAY_CREDENTIAL_PREFIX)
        #: Why model calls are failing right now (None when the last call succeeded).
        self.degraded: str | None = None
        self._rng = random.Random()

    async def close(self) -> None:
        await self._client.close()

    async def _create(
        self, messages: Sequence[dict[str, Any]], options: dict[str, Any]
    ) -> tuple[ChatCompletion, RelayUsage | None]:
        raw = await self._client.chat.completions.with_raw_response.create(
            model=self.settings.model_name,
            # Plain dicts in the Chat Completions shape, checked when they were stored.
            messages=list(messages),  # type: ignore[arg-type]
            **options,
        )
        return raw.parse(), RelayUsage.from_headers(raw.headers)

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> Completion:
        """The model's next message for ``messages``, retrying while the provider is down
        (up to ``model_retry_seconds``); raises ModelCallError."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                completion = await self._complete_once(messages, tools, max_tokens)
            except ModelCallError as exc:
                if exc.code is not ErrorCode.MODEL_UNAVAILABLE:
                    raise
                window = min(MAX_RETRY_DELAY_SECONDS, 2.0 * 2**attempt)
                delay = self._rng.uniform(window / 2, window)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_RETRY_DELAY_SECONDS))
                if time.monotonic() - start + delay > self.settings.model_retry_seconds:
                    raise
                self.degraded = str(exc)
                attempt += 1
                log.warning("model call failed (%s); attempt %d in %.0fs", exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                continue
            if self.degraded is not None:
                log.info("model calls succeed again")
            self.degraded = None
            return completion

    async def _complete_once(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        max_tokens: int | None,
    ) -> Completion:
        options: dict[str, Any] = {}
        if tools:
            options["tools"] = list(tools)
        if self.settings.model_temperature is not None:
            options["temperature"] = self.settings.model_temperature
        limit = max_tokens or self.settings.model_max_output_tokens
        if limit:
            options[self._limit_key] = limit
        try:
            try:
                response, relay_usage = await self._create(messages, options)
            except openai.BadRequestError as exc:
                # Newer OpenAI models refuse max_tokens and want max_completion_tokens, which
                # older OpenAI-compatible servers do not know: switch once, then keep it.
                if "max_tokens" not in options or "max_completion_tokens" not in exc.message:
                    raise
                self._limit_key = "max_completion_tokens"
                options["max_completion_tokens"] = options.pop("max_tokens")
                response, relay_usage = await self._create(messages, options)
        except openai.APIStatusError as exc:
            status = exc.status_code
            if exc.code == BUDGET_EXCEEDED_CODE:
                # The relay enforces the job's budget; this ends the job as BudgetExceeded.
                raise ModelCallError(ErrorCode.BUDGET_EXCEEDED, exc.message) from exc
            refused = _key_refused(exc, self._through_relay)
            if refused is not None:
                # A refused key does not heal by retrying: someone must fix the key. Ending the
                # step now (a model error) ends the job with this reason, instead of retrying
                # (ModelDegraded) until the deadline. The provider's own text is left out: some
                # providers quote part of the key in it.
                raise ModelCallError(ErrorCode.MODEL_ERROR, refused) from exc
            code = (
                ErrorCode.MODEL_UNAVAILABLE
                if status in _TRANSIENT or status >= 500
                else ErrorCode.MODEL_ERROR
            )
            message = f"model provider refused the request: {exc.message}"
            raise ModelCallError(
                code,
                message,
                context_length=exc.code == CONTEXT_LENGTH_EXCEEDED_CODE,
                retry_after=_retry_after(exc.response.headers),
            ) from exc
        except openai.APIConnectionError as exc:
            raise ModelCallError(
                ErrorCode.MODEL_UNAVAILABLE, f"model provider unreachable: {exc}"
            ) from exc
        except openai.OpenAIError as exc:
            raise ModelCallError(ErrorCode.MODEL_ERROR, f"model call failed: {exc}") from exc
        if not response.choices:
            raise ModelCallError(ErrorCode.MODEL_ERROR, "model provider returned no choices")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            message=assistant_message(choice.message),
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            relay_usage=relay_usage,
        )


def _key_refused(exc: openai.APIStatusError, through_relay: bool) -> str | None:
    """The error message when an answer means a key was refused, else None."""
    status, code = exc.status_code, exc.code
    if code == PROVIDER_AUTH_FAILED_CODE:
        return (
            "the model relay's provider refused the relay's API key (provider_auth_failed): "
            "the cluster administrator must fix that provider's key Secret"
        )
    if status not in _AUTH_REFUSED or code == PROVIDER_NOT_CONFIGURED_CODE:
        return None
    if through_relay:
        # The relay refused the job's credential; its own text names why and holds no key.
        body = exc.body if isinstance(exc.body, dict) else {}
        why = body.get("message")
        return f"the model relay refused the job's credential: {why or exc.message}"
    named = f" {code}" if isinstance(code, str) and code else ""
    return (
        f"the model provider refused the API key (HTTP {status}{named}): "
        "fix the key in spec.model.apiKeySecretRef"
    )


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


def assistant_message(message: Any) -> dict[str, Any]:
    """The provider's message reduced to the fields sent back in later requests."""
    stored: dict[str, Any] = {"role": "assistant", "content": message.content}
    calls = []
    for call in message.tool_calls or ():
        function = getattr(call, "function", None)
        if function is None:
            continue
        arguments = function.arguments
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            {
                # A later tool result must reference the call; some servers omit the id.
                "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": function.name, "arguments": arguments},
            }
        )
    if calls:
        stored["tool_calls"] = calls
    return stored
