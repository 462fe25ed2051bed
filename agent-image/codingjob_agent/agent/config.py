"""The agent's settings, read once from the pod contract's environment variables."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """The environment does not describe a runnable job."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from e
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent loop needs to know about its job."""

    workspace: Path
    task: str
    gateway_url: str
    max_steps: int = 0
    deadline_seconds: int = 0
    #: Wall-clock time (epoch seconds) the deadline counts from: the container's start.
    started_at: float = 0.0
    model_supports_images: bool = False
    display: str = ":1"
    termination_log: Path = Path("/dev/termination-log")
    #: Seconds one /v1/step may take; the sidecar retries the model inside it.
    step_timeout: float = 900.0
    #: Seconds to wait for an unreachable sidecar before giving up.
    gateway_wait: float = 120.0
    #: Where tool calls are mirrored for the desktop's terminal window; None: no mirror.
    terminal_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentConfig:
        """Read the settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        workspace = Path(env.get("CODINGJOB_WORKSPACE", "/workspace"))
        started_raw = env.get("CODINGJOB_STARTED_AT", "").strip()
        try:
            started_at = float(started_raw) if started_raw else time.time()
        except ValueError as e:
            raise ConfigError(
                f"CODINGJOB_STARTED_AT must be epoch seconds, got {started_raw!r}"
            ) from e
        gateway_url = env.get("CODINGJOB_GATEWAY_URL", "").strip().rstrip("/")
        if not gateway_url.startswith(("http://", "https://")):
            raise ConfigError(f"CODINGJOB_GATEWAY_URL must be an http(s) URL, got {gateway_url!r}")
        return cls(
            workspace=workspace,
            task=env.get("CODINGJOB_TASK", ""),
            gateway_url=gateway_url,
            max_steps=_int(env, "CODINGJOB_MAX_STEPS", 0),
            deadline_seconds=_int(env, "CODINGJOB_DEADLINE_SECONDS", 0),
            started_at=started_at,
            model_supports_images=_bool(env, "CODINGJOB_MODEL_SUPPORTS_IMAGES", False),
            display=env.get("DISPLAY", ":1") or ":1",
            termination_log=Path(env.get("CODINGJOB_TERMINATION_LOG", "/dev/termination-log")),
            step_timeout=float(_int(env, "CODINGJOB_STEP_TIMEOUT_SECONDS", 900) or 900),
            gateway_wait=float(_int(env, "CODINGJOB_GATEWAY_WAIT_SECONDS", 120)),
            terminal_dir=Path(env["CODINGJOB_TERMINAL_DIR"])
            if env.get("CODINGJOB_TERMINAL_DIR", "").strip()
            else None,
        )

    @property
    def deadline(self) -> float | None:
        """Epoch seconds at which the agent must stop, or None."""
        return self.started_at + self.deadline_seconds if self.deadline_seconds else None
