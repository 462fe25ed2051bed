"""kopf handlers: wiring only. Each CodingJob gets a daemon that runs reconcile passes (see
:mod:`codingjob_operator.reconciler`); watch events on the job, its pods and its archiver Job wake
the daemon early. Run with ``kopf run -m codingjob_operator.handlers`` or ``codingjob-operator``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime
import logging
import time
from collections import defaultdict
from typing import Any

import kopf

from codingjob_operator import metrics, names
from codingjob_operator.config import OperatorConfig
from codingjob_operator.kube import KubeError, NamespaceTerminating, default_kube
from codingjob_operator.metrics import Metrics
from codingjob_operator.models import GROUP, PLURAL, VERSION, OnDelete
from codingjob_operator.reconciler import MAX_DELAY, Reconciler, RetryLater
from codingjob_operator.storage import (
    ArtifactStore,
    PermanentStorageError,
    TransientStorageError,
)

FINALIZER = "codingjob.dev/finalizer"
ANNOTATIONS_PREFIX = "codingjob.dev"
CHILD_LABELS = {names.MANAGED_BY_LABEL: names.MANAGED_BY, names.NAME_LABEL: names.APP_NAME}
RECONCILE_WORKERS = 16
ERROR_BACKOFF = (5.0, 10.0, 30.0, 60.0, 120.0, MAX_DELAY)
#: How often a job of a namespace being deleted is looked at until its own deletion comes.
NAMESPACE_TERMINATING_DELAY = 30.0
#: Archiving before a deletion may take the archive deadline plus this (stopping the agent).
ARCHIVE_ON_DELETE_MARGIN_SECONDS = 300
#: How often archiving before a deletion checks on the archiver.
ARCHIVE_ON_DELETE_POLL_SECONDS = 3.0


class Wakeups:
    """One asyncio.Event per CodingJob, keyed by (namespace, job label value)."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)

    def event(self, namespace: str, job: str) -> asyncio.Event:
        return self._events[(namespace, names.label_value(job))]

    def wake(self, namespace: str | None, job_label: str | None) -> None:
        if namespace and job_label and (namespace, job_label) in self._events:
            self._events[(namespace, job_label)].set()

    def forget(self, namespace: str, job: str) -> None:
        self._events.pop((namespace, names.label_value(job)), None)


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Set kopf's bookkeeping to the project's own prefixes and build the shared clients."""
    config = OperatorConfig()
    # Peering (several replicas, one active) always meets on the ClusterKopfPeering, also when
    # only some namespaces are watched; a short lifetime makes a standby take over a dead
    # replica's jobs within it (a replica that stops cleanly hands over at once).
    settings.peering.clusterwide = True
    settings.peering.lifetime = config.peering_lifetime_seconds
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = True
    # Our own transitions post events explicitly; kopf's per-handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    store = ArtifactStore(config.storage) if config.storage is not None else None
    if store is None:
        logging.getLogger(__name__).warning(
            "CODINGJOB_STORAGE_* not set: finished jobs are not archived, workspaces are kept"
        )
    kube = default_kube()
    # Once per process: kopf retries a failed startup handler, and the port stays bound.
    if getattr(memo, "metrics", None) is None:
        memo.metrics = Metrics()
        if config.metrics_port:
            metrics.serve(memo.metrics, config.metrics_port)
    memo.reconciler = Reconciler(kube, config, store, metrics=memo.metrics)
    memo.wakeups = Wakeups()
    # Reconcile passes block on API and storage calls; a pool of their own keeps them from
    # starving other work of the default executor.
    memo.executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=RECONCILE_WORKERS, thread_name_prefix="reconcile"
    )


@kopf.on.cleanup()
def shutdown(*, memo: Any, **_: Any) -> None:
    """Let running passes finish and release the pool."""
    if getattr(memo, "executor", None) is not None:
        memo.executor.shutdown(wait=True, cancel_futures=True)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def supervise(
    *,
    namespace: str | None,
    name: str,
    memo: Any,
    stopped: kopf.DaemonStopped,
    logger: Any,
    **_: Any,
) -> None:
    """Reconcile the CodingJob until it is deleted: at the requested delay or when woken."""
    assert namespace is not None  # CodingJobs are namespaced
    reconciler: Reconciler = memo.reconciler
    wakeup = memo.wakeups.event(namespace, name)
    recorder: Metrics = memo.metrics
    failures = 0
    try:
        while not stopped:
            wakeup.clear()
            started = time.monotonic()
            try:
                # A copy of the context carries kopf's event-posting state into the thread.
                context = contextvars.copy_context()
                result = await asyncio.get_running_loop().run_in_executor(
                    memo.executor, context.run, reconciler.reconcile, namespace, name
                )
                delay, failures = result.delay, 0
            except NamespaceTerminating:
                # The namespace controller deletes the pod before the CodingJob: the pod looks
                # lost, and recreating it is refused. Not an error and nothing to retry soon;
                # the job's own deletion (next) stops this daemon.
                delay = NAMESPACE_TERMINATING_DELAY
                logger.info("namespace being deleted: nothing new is created in it")
            except (RetryLater, KubeError, TransientStorageError) as error:
                delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                recorder.reconcile_errors.labels("transient").inc()
                logger.warning(f"reconcile failed, retrying in {delay:.0f}s: {error}")
            except Exception:
                delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                recorder.reconcile_errors.labels("crash").inc()
                logger.exception(f"reconcile crashed, retrying in {delay:.0f}s")
            recorder.reconcile_duration.observe(time.monotonic() - started)
            # After a failure, wake-ups (often our own status patch) must not cut the backoff.
            await _sleep(wakeup if failures == 0 else None, stopped, max(0.5, delay))
    finally:
        memo.wakeups.forget(namespace, name)
        # Deleted, or this replica was paused by a peer of higher priority: no longer ours.
        recorder.forget(namespace, name)


async def _sleep(wakeup: asyncio.Event | None, stopped: kopf.DaemonStopped, delay: float) -> None:
    """Sleep until ``delay`` passed, the job was woken, or the daemon must stop."""
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stopped.wait())]
    if wakeup is not None:
        waits.append(asyncio.ensure_future(wakeup.wait()))
    try:
        await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def codingjob_changed(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """A spec change (suspend, resume) is acted on at once, not at the next timed pass."""
    memo.wakeups.wake(namespace, names.label_value(name))


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def pod_changed(*, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """The agent pod or an archiver pod changed: reconcile its CodingJob now (async: the
    wake-up events belong to the event loop and are not thread-safe)."""
    memo.wakeups.wake(namespace, labels.get(names.JOB_LABEL))


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
async def job_changed(*, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """The archiver Job changed: reconcile its CodingJob now."""
    memo.wakeups.wake(namespace, labels.get(names.JOB_LABEL))


def _archives_on_delete(*, spec: kopf.Spec, memo: Any, **_: Any) -> bool:
    reconciler: Reconciler = memo.reconciler
    storage = reconciler.config.storage
    on_delete = (spec.get("artifacts") or {}).get("onDelete", OnDelete.ARCHIVE.value)
    # With retention Delete the archive would be deleted right after: nothing to keep.
    return storage is not None and storage.retention == "Retain" and on_delete != "Discard"


@kopf.on.delete(GROUP, VERSION, PLURAL, id="archive-on-delete", when=_archives_on_delete)
async def archive_on_delete(
    *,
    namespace: str | None,
    name: str,
    memo: Any,
    logger: Any,
    runtime: datetime.timedelta,
    **_: Any,
) -> None:
    """A deleted, unfinished CodingJob: stop the agent, archive, then let it go (the finalizer
    holds it meanwhile), for at most the archive deadline plus a margin.

    Waits here, step by step, instead of raising kopf's TemporaryError while the archiver
    works: that is logged as an error, and waiting for an archive is not one."""
    reconciler: Reconciler = memo.reconciler
    if namespace is None:
        return
    limit = reconciler.config.archive_deadline_seconds + ARCHIVE_ON_DELETE_MARGIN_SECONDS
    # ``runtime`` counts from the first attempt, across restarts and failovers.
    deadline = time.monotonic() + limit - runtime.total_seconds()
    loop = asyncio.get_running_loop()
    while True:
        try:
            # A copy of the context carries kopf's event-posting state into the thread.
            context = contextvars.copy_context()
            done = await loop.run_in_executor(
                memo.executor, context.run, reconciler.archive_before_delete, namespace, name
            )
        except NamespaceTerminating:
            # The whole namespace goes: nothing new (no archiver) can be created in it, and
            # its PVCs are deleted with it. Holding the CodingJob would only hang the namespace.
            logger.info("namespace being deleted: the workspace goes unarchived")
            return
        except (RetryLater, KubeError, TransientStorageError) as error:
            raise kopf.TemporaryError(f"archiving before deletion: {error}", delay=10) from error
        if done:
            return
        if time.monotonic() > deadline:
            # Bounded: a deletion must not hang on a store or archiver that never finishes.
            logger.error(f"gave up archiving before deletion after {limit}s; the workspace goes")
            return
        await asyncio.sleep(ARCHIVE_ON_DELETE_POLL_SECONDS)


def _deletes_objects(*, memo: Any, **_: Any) -> bool:
    reconciler: Reconciler = memo.reconciler
    storage = reconciler.config.storage
    return storage is not None and storage.retention == "Delete"


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_deletes_objects)
def delete_archive(
    *, namespace: str | None, name: str, uid: str, memo: Any, logger: Any, **_: Any
) -> None:
    """With retention Delete, the archive objects go with the CodingJob."""
    reconciler: Reconciler = memo.reconciler
    if reconciler.store is None or namespace is None:
        return
    prefix = names.archive_prefix(namespace, name, uid)
    try:
        count = reconciler.store.delete_prefix(prefix)
    except TransientStorageError as error:
        raise kopf.TemporaryError(f"object storage unavailable: {error}", delay=30) from error
    except PermanentStorageError as error:
        # Do not block the deletion forever; the objects stay and the log says so.
        logger.error(f"could not delete s3://{reconciler.store.bucket}/{prefix}: {error}")
        return
    logger.info(f"deleted {count} objects under s3://{reconciler.store.bucket}/{prefix}")
