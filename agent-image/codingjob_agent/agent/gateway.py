"""HTTP client of the context-manager sidecar (the agent's only way to the model)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from pydantic import ValidationError

from codingjob_agent.protocol import (
    ConversationState,
    ErrorBody,
    ErrorCode,
    StepRequest,
    StepResponse,
)

#: Errors that mean "no answer" (refused, reset, timed out) rather than "an error answer".
_UNREACHABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class GatewayError(Exception):
    """The sidecar answered with an error; ``code`` is its :class:`ErrorCode` when it sent one."""

    def __init__(self, status: int, code: ErrorCode | None, message: str) -> None:
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status = status
        self.code = code
        self.message = message


class GatewayUnavailable(Exception):
    """The sidecar could not be reached (not started yet, restarting, or timed out)."""


class Gateway:
    """Blocking JSON client for ``GET /v1/conversation`` and ``POST /v1/step``."""

    def __init__(self, base_url: str, step_timeout: float = 900.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.step_timeout = step_timeout

    def healthy(self) -> bool:
        """Whether ``/healthz`` answers 200 (the journal is loaded)."""
        try:
            self._call("GET", "/healthz", None, timeout=5)
        except (GatewayError, GatewayUnavailable):
            return False
        return True

    def conversation(self) -> ConversationState:
        """The stored conversation, to start or resume from."""
        return ConversationState.model_validate(self._call("GET", "/v1/conversation", None, 30))

    def step(self, request: StepRequest, timeout: float | None = None) -> StepResponse:
        """Send the new messages and get the model's next assistant message."""
        body = request.model_dump(mode="json")
        data = self._call("POST", "/v1/step", body, timeout or self.step_timeout)
        return StepResponse.model_validate(data)

    def _call(self, method: str, path: str, body: Any, timeout: float) -> Any:
        payload = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=payload, method=method)
        if payload is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw_err = e.read()
            try:
                err = ErrorBody.model_validate_json(raw_err)
                raise GatewayError(e.code, err.error, err.message) from None
            except ValidationError:
                text = raw_err.decode("utf-8", "replace")[:500]
                raise GatewayError(e.code, None, text or str(e.reason)) from None
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ) as e:
            raise GatewayUnavailable(f"{method} {path}: {e}") from e
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise GatewayError(200, None, f"{method} {path} answered invalid JSON: {e}") from e
