"""One watch of CodingJobs shared by every event-stream client.

The hub lists and watches CodingJobs once, as the gateway, and keeps the latest object of each;
a subscriber gets the current jobs of its namespace, then every change. However many browsers
watch, the API server serves one watch. Subscribers that fall behind are dropped (their
EventSource reconnects and starts from a fresh snapshot) so one slow client cannot hold memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from codingjob_gateway.jobs import GROUP, PLURAL, VERSION
from codingjob_gateway.kube import ApiError, KubeClient
from codingjob_gateway.metrics import Metrics

log = logging.getLogger(__name__)

Key = tuple[str, str]
#: The watch asks the server to end it after this long, then resumes from its resourceVersion.
WATCH_SECONDS = 240
#: Longest pause between attempts while the API server is unreachable.
MAX_PAUSE = 30.0


@dataclass(frozen=True)
class Change:
    """A job's new state (``type`` ADDED, MODIFIED or DELETED)."""

    type: str
    object: dict[str, Any]


@dataclass(eq=False)
class Subscriber:
    namespace: str
    job: str | None
    queue: asyncio.Queue[Change | None]
    dropped: bool = False

    def wants(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return meta.get("namespace") == self.namespace and (
            self.job is None or meta.get("name") == self.job
        )


@dataclass
class JobHub:
    kube: KubeClient
    metrics: Metrics
    queue_size: int = 256
    _jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    _subscribers: set[Subscriber] = field(default_factory=set)
    _synced: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the shared watch (idempotent); it runs until :meth:`stop`."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="codingjob-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The latest state of a job the watch has seen, None when unknown or not synced."""
        if not self._synced.is_set() or self._task is None or self._task.done():
            return None
        return self._jobs.get((namespace, name))

    async def wait_synced(self, timeout: float) -> bool:
        """True once the first list has arrived; False after ``timeout`` seconds."""
        self.start()
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def subscribe(self, namespace: str, job: str | None = None) -> AsyncIterator[Subscriber]:
        """A subscriber whose queue starts with the current jobs of ``namespace`` (or one job).
        A ``None`` in the queue means the subscriber fell behind and must reconnect."""
        sub = Subscriber(namespace, job, asyncio.Queue(self.queue_size))
        for obj in list(self._jobs.values()):
            if sub.wants(obj):
                self._offer(sub, Change("ADDED", obj))
        self._subscribers.add(sub)
        self.metrics.sse_clients.inc()
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
            self.metrics.sse_clients.dec()

    def _offer(self, sub: Subscriber, change: Change | None) -> None:
        if sub.dropped:
            return
        try:
            sub.queue.put_nowait(change)
        except asyncio.QueueFull:
            sub.dropped = True
            # Make room for the end marker so the stream learns it must reconnect.
            with contextlib.suppress(asyncio.QueueEmpty):
                sub.queue.get_nowait()
            sub.queue.put_nowait(None)

    def _publish(self, change: Change) -> None:
        for sub in list(self._subscribers):
            if sub.wants(change.object):
                self._offer(sub, change)

    async def _run(self) -> None:
        path = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
        pause = 1.0
        while True:
            try:
                listing = await self.kube.request("GET", path)
                fresh = {_key(o): o for o in listing.get("items") or []}
                for key, old in self._jobs.items():
                    if key not in fresh:
                        self._publish(Change("DELETED", old))
                for key, obj in fresh.items():
                    if self._jobs.get(key) != obj:
                        self._publish(Change("MODIFIED" if key in self._jobs else "ADDED", obj))
                self._jobs = fresh
                self._synced.set()
                pause = 1.0
                version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
                while True:
                    params = {
                        "resourceVersion": version,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": str(WATCH_SECONDS),
                    }
                    async for event in self.kube.watch(path, params, WATCH_SECONDS + 30):
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
                        version = str((obj.get("metadata") or {}).get("resourceVersion", version))
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            self._jobs.pop(_key(obj), None)
                        else:
                            self._jobs[_key(obj)] = obj
                        self._publish(Change(str(kind), obj))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure: relist after a pause, never die
                # Until the relist, reads go to the API server rather than to a stale copy.
                self._synced.clear()
                self.metrics.watch_restarts.inc()
                log.warning("CodingJob watch restarts in %.0fs: %s", pause, error)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))
