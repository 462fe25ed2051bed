"""Gateway configuration from the environment (``CODINGJOB_GATEWAY_*``), read once at startup."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """What the gateway needs to know; every value has its default here and only here."""

    model_config = SettingsConfigDict(env_prefix="CODINGJOB_GATEWAY_", extra="ignore")

    #: Namespace of jobs submitted by users that are not ServiceAccounts and name none.
    default_namespace: str = "default"
    #: Seconds any single API server call may take before the gateway answers 503.
    api_timeout_seconds: float = Field(10.0, gt=0)
    #: How long a TokenReview / SubjectAccessReview answer is reused (0 = every request).
    review_cache_seconds: float = Field(10.0, ge=0)
    #: Queue length per SSE client; a client that falls further behind is disconnected
    #: (EventSource reconnects and gets a fresh snapshot).
    sse_queue_size: int = Field(256, ge=1)
    #: Seconds between SSE keep-alive comments.
    sse_heartbeat_seconds: float = Field(15.0, gt=0)
    #: noVNC's ES modules (core/, vendor/) for the console's live desktop; the image ships them.
    novnc_dir: Path = Path("/opt/codingjob/novnc")
    #: Swagger UI's files (swagger-ui-dist) for /docs; the image ships them.
    swagger_ui_dir: Path = Path("/opt/codingjob/swagger-ui")
    #: kubeconfig to use outside a pod; empty: in-cluster, else $KUBECONFIG.
    kubeconfig: str | None = None
    log_format: Literal["text", "json"] = "text"
