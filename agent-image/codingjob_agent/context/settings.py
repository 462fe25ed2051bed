"""The sidecar's settings, read from the environment the pod contract defines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from codingjob_agent.protocol import (
    GATEWAY_PORT,
    JOURNAL_PATH,
    STATS_PORT,
    TERMINATION_LOG,
    TRANSCRIPT_PATH,
)


class Strategy(StrEnum):
    """What the sidecar gives up first when the window is full."""

    WINDOW = "window"
    MASK_OBSERVATIONS = "mask-observations"
    SUMMARIZE = "summarize"


class SettingsError(ValueError):
    """The environment is missing a setting or holds an invalid one."""


DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: Output tokens reserved when ``CODINGJOB_MODEL_MAX_OUTPUT_TOKENS`` is not set.
DEFAULT_RESERVED_OUTPUT_TOKENS = 4096


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar needs; see ``docs/pod-contract.md`` for the variables."""

    model_base_url: str
    model_name: str
    model_api_key: str | None = None
    model_temperature: float | None = None
    model_max_output_tokens: int | None = None
    #: Retries (with the SDK's exponential backoff) on 408/409/429/5xx and connection errors.
    model_max_retries: int = 5
    model_timeout_seconds: float = 600.0
    #: How long a step keeps retrying while the provider (or relay) is unavailable; the operator
    #: sets it to the job's deadline, so an outage does not end a run that could still finish.
    model_retry_seconds: float = 0.0
    max_tokens: int = 1_000_000
    encoding: str = "cl100k_base"
    strategy: Strategy = Strategy.MASK_OBSERVATIONS
    #: The last N assistant turns (with their tool results) are never pruned.
    keep_turns: int = 2
    #: After pruning, the window is brought down to this fraction of the budget, so that the
    #: next steps do not prune (or summarize) again right away.
    prune_target: float = 0.75
    max_total_tokens: int = 0
    #: ``limits.maxSteps``: model steps the job may take (0: no limit).
    max_steps: int = 0
    workspace: Path = Path("/workspace")
    gateway_port: int = GATEWAY_PORT
    stats_host: str = "127.0.0.1"
    stats_port: int = STATS_PORT
    #: Largest step body accepted. A step carries tool results (already cut by the tools) and
    #: screenshots; 8 MiB is many times that, and small enough that the few bodies in memory at
    #: once (server.BODY_SLOTS) fit the sidecar's memory limit after parsing.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: The termination message file; written only when it exists (Kubernetes creates it).
    termination_log: Path = Path(TERMINATION_LOG)

    @property
    def reserved_output_tokens(self) -> int:
        """Tokens kept free in the window for the model's answer."""
        if self.model_max_output_tokens is not None:
            return self.model_max_output_tokens
        return min(DEFAULT_RESERVED_OUTPUT_TOKENS, self.max_tokens // 4)

    @property
    def budget(self) -> int:
        """Most tokens a request to the model may hold."""
        return self.max_tokens - self.reserved_output_tokens

    @property
    def summary_tokens(self) -> int:
        """Room kept for the summary message under the ``summarize`` strategy."""
        return max(64, min(2048, self.budget // 8))

    @property
    def journal_path(self) -> Path:
        return self.workspace / JOURNAL_PATH

    @property
    def transcript_path(self) -> Path:
        return self.workspace / TRANSCRIPT_PATH

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from ``CODINGJOB_*`` variables; raises SettingsError with the variable name."""

        def text(name: str, default: str | None = None) -> str | None:
            value = env.get(f"CODINGJOB_{name}", "").strip()
            return value or default

        def number(name: str, kind: type[int] | type[float], default: float | None) -> float | None:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"CODINGJOB_{name}={raw!r} is not a valid number") from None
            if value < 0:
                raise SettingsError(f"CODINGJOB_{name} must not be negative")
            return value

        base_url = text("MODEL_BASE_URL")
        model = text("MODEL_NAME")
        if base_url is None or model is None:
            raise SettingsError("CODINGJOB_MODEL_BASE_URL and CODINGJOB_MODEL_NAME are required")
        strategy_name = text("CONTEXT_STRATEGY") or Strategy.MASK_OBSERVATIONS.value
        try:
            strategy = Strategy(strategy_name)
        except ValueError:
            choices = ", ".join(s.value for s in Strategy)
            raise SettingsError(
                f"CODINGJOB_CONTEXT_STRATEGY={strategy_name!r}: must be one of {choices}"
            ) from None
        max_output = number("MODEL_MAX_OUTPUT_TOKENS", int, None)
        settings = cls(
            model_base_url=base_url,
            model_name=model,
            model_api_key=text("MODEL_API_KEY"),
            model_temperature=number("MODEL_TEMPERATURE", float, None),
            model_max_output_tokens=int(max_output) if max_output else None,
            model_max_retries=int(number("MODEL_MAX_RETRIES", int, 5) or 0),
            model_timeout_seconds=float(number("MODEL_TIMEOUT_SECONDS", float, 600.0) or 600.0),
            model_retry_seconds=float(number("MODEL_RETRY_SECONDS", float, 0.0) or 0.0),
            max_tokens=int(number("CONTEXT_MAX_TOKENS", int, 1_000_000) or 0),
            encoding=text("CONTEXT_ENCODING", "cl100k_base") or "cl100k_base",
            strategy=strategy,
            keep_turns=int(number("CONTEXT_KEEP_TURNS", int, 2) or 0),
            max_total_tokens=int(number("MAX_TOTAL_TOKENS", int, 0) or 0),
            max_steps=int(number("MAX_STEPS", int, 0) or 0),
            termination_log=Path(text("TERMINATION_LOG", TERMINATION_LOG) or TERMINATION_LOG),
            workspace=Path(text("WORKSPACE", "/workspace") or "/workspace"),
            gateway_port=int(number("GATEWAY_PORT", int, GATEWAY_PORT) or 0),
            stats_host=text("STATS_HOST", "127.0.0.1") or "127.0.0.1",
            stats_port=int(number("STATS_PORT", int, STATS_PORT) or 0),
            max_request_bytes=int(
                number("CONTEXT_MAX_REQUEST_BYTES", int, DEFAULT_MAX_REQUEST_BYTES)
                or DEFAULT_MAX_REQUEST_BYTES
            ),
        )
        if settings.budget < 256:
            raise SettingsError(
                f"CODINGJOB_CONTEXT_MAX_TOKENS={settings.max_tokens} leaves only "
                f"{settings.budget} tokens after reserving {settings.reserved_output_tokens} "
                "for the answer; at least 256 are needed"
            )
        return settings
