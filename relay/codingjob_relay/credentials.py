"""Per-job relay credentials: issued by the operator, checked by the relay (one contract).

A credential is ``cjr1.<payload>.<mac>``: the payload is the job's claims as JSON (base64url), the
MAC an HMAC-SHA256 over it with a signing key that only the operator and the relay hold. The
claims bind the credential to one job (namespace, name and UID), one provider, its budgets and an
expiry; the relay additionally checks that the job still runs, so a credential is useless once
its job has ended even before it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PREFIX = "cjr1"
#: Signing keys shorter than this are refused: the key is all that protects every budget.
MIN_KEY_BYTES = 32


class CredentialError(ValueError):
    """The credential is malformed, forged, or expired."""


class JobClaims(BaseModel):
    """What a credential says about its job; signed, so the sandbox cannot change it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    namespace: str
    name: str
    uid: str
    provider: str
    #: The job's CodingJobClass, if any (a label on metrics only).
    job_class: Annotated[str, Field(alias="class")] = ""
    #: Tokens (prompt + completion) the job may use through the relay; 0 means unlimited.
    max_total_tokens: Annotated[int, Field(alias="maxTotalTokens", ge=0)] = 0
    #: Cost budget in USD; 0 means unlimited.
    max_cost: Annotated[float, Field(alias="maxCostUSD", ge=0)] = 0.0
    #: Unix time after which the credential is refused (the job's deadline, or a cap).
    expires_at: Annotated[int, Field(alias="exp")]

    @property
    def job(self) -> str:
        return f"{self.namespace}/{self.name}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the relay signing key must have at least {MIN_KEY_BYTES} bytes")


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, f"{PREFIX}.{payload}".encode("ascii"), hashlib.sha256).digest())


def issue(key: bytes, claims: JobClaims) -> str:
    """The credential for ``claims``, signed with ``key``."""
    _check_key(key)
    body = claims.model_dump(mode="json", by_alias=True)
    payload = _b64(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return f"{PREFIX}.{payload}.{_mac(key, payload)}"


def verify(key: bytes, token: str, now: float) -> JobClaims:
    """The claims of a credential signed with ``key`` that has not expired at ``now``."""
    _check_key(key)
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise CredentialError("not a CodingJob relay credential")
    payload, mac = parts[1], parts[2]
    # Constant-time comparison: a timing difference would let a caller forge the MAC bytewise.
    if not hmac.compare_digest(_mac(key, payload), mac):
        raise CredentialError("credential signature does not match")
    try:
        claims = JobClaims.model_validate(json.loads(_unb64(payload)))
    except (ValueError, ValidationError) as exc:
        raise CredentialError(f"credential payload is invalid: {exc}") from None
    if now >= claims.expires_at:
        raise CredentialError(f"credential of {claims.job} expired")
    return claims
