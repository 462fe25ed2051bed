"""The shared watch behind the event streams, against an in-memory stand-in for the API's list
and watch (the real API server is in tests/e2e/test_gateway_api.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from codingjob_gateway.hub import Change, JobHub
from codingjob_gateway.metrics import Metrics


def job(namespace: str, name: str, phase: str = "Pending") -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": "1"},
        "spec": {"task": "t"},
        "status": {"phase": phase},
    }


class FakeApi:
    """Lists ``objects`` and then streams whatever the test puts into ``events``."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.lists = 0

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        assert (method, path) == ("GET", "/apis/codingjob.dev/v1alpha1/codingjobs")
        self.lists += 1
        return {"metadata": {"resourceVersion": "5"}, "items": list(self.objects)}

    async def watch(
        self, path: str, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        while (event := await self.events.get()) is not None:
            yield event


async def next_change(queue: asyncio.Queue[Change | None]) -> Change | None:
    return await asyncio.wait_for(queue.get(), 2)


def test_snapshot_then_changes_of_the_namespace_only() -> None:
    async def scenario() -> None:
        api = FakeApi([job("a", "one"), job("b", "other")])
        hub = JobHub(api, Metrics())  # type: ignore[arg-type]
        assert await hub.wait_synced(2)
        async with hub.subscribe("a") as sub_a, hub.subscribe("b", "other") as sub_b:
            first = await next_change(sub_a.queue)
            assert first is not None and first.object["metadata"]["name"] == "one"
            assert (await next_change(sub_b.queue)).object["metadata"]["name"] == "other"  # type: ignore[union-attr]
            await api.events.put({"type": "MODIFIED", "object": job("a", "one", "Running")})
            await api.events.put(
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
            )
            await api.events.put({"type": "ADDED", "object": job("a", "two")})
            running = await next_change(sub_a.queue)
            assert running is not None and running.object["status"]["phase"] == "Running"
            added = await next_change(sub_a.queue)
            assert added is not None and added.type == "ADDED"
            assert sub_b.queue.empty()
        assert hub.get("a", "two") is not None
        assert hub.get("a", "nope") is None
        await hub.stop()
        # A stopped watch serves nothing: reads go to the API server.
        assert hub.get("a", "one") is None

    asyncio.run(scenario())


def test_a_slow_subscriber_is_told_to_resync() -> None:
    async def scenario() -> None:
        api = FakeApi([])
        hub = JobHub(api, Metrics(), queue_size=2)  # type: ignore[arg-type]
        assert await hub.wait_synced(2)
        async with hub.subscribe("a") as slow:
            for i in range(5):
                await api.events.put({"type": "ADDED", "object": job("a", f"j{i}")})
            await asyncio.sleep(0.2)
            drained = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
            assert drained[-1] is None
            assert slow.dropped
        await hub.stop()

    asyncio.run(scenario())


def test_relist_after_an_error_reports_what_vanished() -> None:
    async def scenario() -> None:
        api = FakeApi([job("a", "gone"), job("a", "stays")])
        hub = JobHub(api, Metrics())  # type: ignore[arg-type]
        assert await hub.wait_synced(2)
        async with hub.subscribe("a") as sub:
            await next_change(sub.queue)
            await next_change(sub.queue)
            api.objects = [job("a", "stays")]
            # The watch's resourceVersion is too old: the API says 410 and the hub relists.
            await api.events.put({"type": "ERROR", "object": {"code": 410, "message": "too old"}})
            deleted = await asyncio.wait_for(sub.queue.get(), 5)
            assert hub.get("a", "gone") is None
            assert deleted is not None
            assert (deleted.type, deleted.object["metadata"]["name"]) == ("DELETED", "gone")
        assert api.lists == 2
        await hub.stop()

    asyncio.run(scenario())
