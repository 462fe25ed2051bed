"""Who is calling: the bearer token checked by the API server (TokenReview), and what the caller
may do (SubjectAccessReview), both cached briefly so a polling client costs one review per TTL.

The gateway never decides access itself: every job operation is sent to the API server as the
caller (impersonation), and the one thing the gateway does with its own identity, the shared
watch behind the event stream, is filtered per caller by a SubjectAccessReview.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from codingjob_gateway.kube import Identity, KubeClient

#: The console keeps the token in this cookie (HttpOnly, SameSite=Strict).
TOKEN_COOKIE = "codingjob_token"
#: Bounded caches: a flood of distinct bad tokens cannot grow memory without limit.
MAX_CACHE_ENTRIES = 4096

K = TypeVar("K")
V = TypeVar("V")


class NotAuthenticated(Exception):
    """No token, or a token the API server does not accept."""


@dataclass
class TtlCache(Generic[K, V]):
    """A small time-bounded cache (insertion-ordered, oldest entries evicted first)."""

    ttl: float
    clock: Callable[[], float] = time.monotonic
    _items: dict[K, tuple[float, V]] = field(default_factory=dict)

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        now = self.clock()
        hit = self._items.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = await compute()
        if self.ttl > 0:
            self._items.pop(key, None)
            self._items[key] = (now, value)
            while len(self._items) > MAX_CACHE_ENTRIES:
                self._items.pop(next(iter(self._items)))
        return value


def bearer_token(authorization: str | None, cookie: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, else of the console's cookie."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return cookie or None


class Authenticator:
    """TokenReview and SubjectAccessReview through the API server, with short caches."""

    def __init__(self, kube: KubeClient, cache_seconds: float) -> None:
        self.kube = kube
        self._identities: TtlCache[str, Identity | None] = TtlCache(cache_seconds)
        self._access: TtlCache[tuple[Identity, str, str, str, str], tuple[bool, str]] = TtlCache(
            cache_seconds
        )

    async def identify(self, token: str | None) -> Identity:
        """The caller behind ``token``; :class:`NotAuthenticated` when there is none or the API
        server rejects it. API server errors propagate (503)."""
        if not token:
            raise NotAuthenticated("no bearer token (Authorization: Bearer <token>)")
        # Keyed by a hash: the cache never holds the tokens themselves.
        key = hashlib.sha256(token.encode()).hexdigest()
        identity = await self._identities.get(key, lambda: self.kube.review_token(token))
        if identity is None:
            raise NotAuthenticated("the token was not accepted by the Kubernetes API server")
        return identity

    async def may(
        self, who: Identity, namespace: str, verb: str, resource: str, group: str, name: str = ""
    ) -> tuple[bool, str]:
        """Whether ``who`` may ``verb`` ``resource`` (``name``) in ``namespace``
        (SubjectAccessReview)."""
        return await self._access.get(
            (who, namespace, verb, f"{resource}.{group}", name),
            lambda: self.kube.review_access(
                who, namespace=namespace, verb=verb, resource=resource, group=group, name=name
            ),
        )
