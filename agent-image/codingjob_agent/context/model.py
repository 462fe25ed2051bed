"""The model provider behind the gateway, called with the ``openai`` SDK.

The SDK retries 408/409/429/5xx answers and connection errors with exponential backoff
(``max_retries``); what still fails becomes :class:`ModelCallError` with the code the agent sees.
"""

from __future__ import annotations

import json
import logging
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


class ModelCallError(RuntimeError):
    """The provider refused the request (ModelError) or could not be reached (ModelUnavailable)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Completion:
    """One answer: the assistant message as stored, and the provider's usage if it sent one."""

    message: dict[str, Any]
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


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

    async def close(self) -> None:
        await self._client.close()

    async def _create(
        self, messages: Sequence[dict[str, Any]], options: dict[str, Any]
    ) -> ChatCompletion:
        return await self._client.chat.completions.create(
            model=self.settings.model_name,
            # Plain dicts in the Chat Completions shape, checked when they were stored.
            messages=list(messages),  # type: ignore[arg-type]
            **options,
        )

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> Completion:
        """The model's next message for ``messages``; raises ModelCallError."""
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
                response = await self._create(messages, options)
            except openai.BadRequestError as exc:
                # Newer OpenAI models refuse max_tokens and want max_completion_tokens, which
                # older OpenAI-compatible servers do not know: switch once, then keep it.
                if "max_tokens" not in options or "max_completion_tokens" not in exc.message:
                    raise
                self._limit_key = "max_completion_tokens"
                options["max_completion_tokens"] = options.pop("max_tokens")
                response = await self._create(messages, options)
        except openai.APIStatusError as exc:
            status = exc.status_code
            code = (
                ErrorCode.MODEL_UNAVAILABLE
                if status in _TRANSIENT or status >= 500
                else ErrorCode.MODEL_ERROR
            )
            message = f"model provider refused the request: {exc.message}"
            raise ModelCallError(code, message) from exc
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
        )


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
