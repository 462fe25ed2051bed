"""The relay's configuration: the providers the admin set up, retries, and process settings.

Providers come from a YAML file (the chart's ConfigMap); their keys from files or environment
variables (the chart's provider Secret in the operator namespace), never from the YAML itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(ValueError):
    """The configuration file or a provider key is missing or invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Prices(_Model):
    """USD per million tokens; cached prompt tokens are billed at ``cached`` instead of
    ``prompt``."""

    prompt: Annotated[float, Field(ge=0)] = 0.0
    completion: Annotated[float, Field(ge=0)] = 0.0
    cached: Annotated[float | None, Field(ge=0)] = None

    def cost(self, prompt: int, completion: int, cached: int) -> float:
        """Cost in USD of one call's usage (``cached`` is part of ``prompt``)."""
        cached = min(cached, prompt)
        cached_price = self.prompt if self.cached is None else self.cached
        return (
            (prompt - cached) * self.prompt + cached * cached_price + completion * self.completion
        ) / 1_000_000


class Provider(_Model):
    """One OpenAI-compatible provider endpoint."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    base_url: Annotated[str, Field(alias="baseURL", pattern=r"^https?://")]
    #: File holding the key (a mounted Secret), or the environment variable that holds it.
    api_key_file: Annotated[Path | None, Field(alias="apiKeyFile")] = None
    api_key_env: Annotated[str | None, Field(alias="apiKeyEnv")] = None
    #: Job-facing model name -> the provider's model name. Empty: any name, passed unchanged.
    models: dict[str, str] = Field(default_factory=dict)
    #: Tokens of the provider's context window; requests estimated above it are refused with
    #: ``context_length_exceeded`` before they cost anything. 0: not checked.
    context_window: Annotated[int, Field(alias="contextWindow", ge=0)] = 0
    prices: Prices = Prices()
    #: Seconds without a byte from the provider before a call counts as failed (then retried).
    timeout_seconds: Annotated[float, Field(alias="timeoutSeconds", gt=0)] = 300.0

    @model_validator(mode="after")
    def _one_key_source(self) -> Provider:
        if self.api_key_file is not None and self.api_key_env is not None:
            raise ValueError("set apiKeyFile or apiKeyEnv, not both")
        return self

    def api_key(self) -> str | None:
        """The provider's key, read now (a rotated Secret file is picked up on the next call)."""
        if self.api_key_file is not None:
            try:
                return self.api_key_file.read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"provider {self.name}: cannot read its key: {exc}") from None
        if self.api_key_env is not None:
            return os.environ.get(self.api_key_env, "").strip() or None
        return None

    def upstream_model(self, requested: str) -> str | None:
        """The provider's name for ``requested``, or None when the provider does not offer it."""
        if not self.models:
            return requested
        return self.models.get(requested)


class RetryPolicy(_Model):
    """Retries of 429 / 5xx / timeouts / connection errors inside one relayed call."""

    #: First delay; each attempt doubles it, up to ``maxDelaySeconds``; full jitter.
    base_delay_seconds: Annotated[float, Field(alias="baseDelaySeconds", ge=0)] = 0.5
    max_delay_seconds: Annotated[float, Field(alias="maxDelaySeconds", ge=0)] = 30.0
    #: How long one call keeps retrying before the relay answers 503 (and the sidecar, which
    #: then reports ModelDegraded, retries the call itself); never past the job's deadline.
    max_elapsed_seconds: Annotated[float, Field(alias="maxElapsedSeconds", ge=0)] = 120.0


class RelayConfig(_Model):
    providers: list[Provider]
    retry: RetryPolicy = RetryPolicy()

    @model_validator(mode="after")
    def _unique_names(self) -> RelayConfig:
        names = [p.name for p in self.providers]
        if len(names) != len(set(names)):
            raise ValueError(f"provider names must be unique: {names}")
        return self

    def provider(self, name: str) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)

    @classmethod
    def load(cls, path: Path) -> RelayConfig:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(f"{path}: {exc}") from None


class Settings(BaseSettings):
    """Process settings from ``CODINGJOB_RELAY_*`` variables (flags override some)."""

    model_config = SettingsConfigDict(env_prefix="CODINGJOB_RELAY_", frozen=True)

    config: Path = Path("/etc/codingjob-relay/relay.yaml")
    #: The HMAC key shared with the operator, from a file (the chart mounts a Secret) ...
    signing_key_file: Path | None = None
    #: ... or directly (tests, local runs).
    signing_key: str | None = None
    #: Directory of the usage journal; on a persistent volume, usage survives a restart.
    state_dir: Path = Path("/var/lib/codingjob-relay")
    #: ``kubernetes``: refuse credentials of jobs that no longer run (reads the CodingJob);
    #: ``none``: trust the credential's expiry only (tests, the benchmark).
    job_check: Literal["kubernetes", "none"] = "kubernetes"
    #: Seconds a job's running state is cached before the API is asked again.
    job_check_ttl_seconds: float = 10.0
    host: str = "0.0.0.0"
    port: int = 8080
    #: Port of ``/metrics``, apart from the API's: sandboxes may reach the API port, and the
    #: metrics name every tenant's namespace and spending.
    metrics_port: int = 9090

    def key(self) -> bytes:
        if self.signing_key_file is not None:
            try:
                return self.signing_key_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the signing key: {exc}") from None
        if self.signing_key:
            return self.signing_key.encode()
        raise ConfigError(
            "CODINGJOB_RELAY_SIGNING_KEY_FILE or CODINGJOB_RELAY_SIGNING_KEY is required"
        )
