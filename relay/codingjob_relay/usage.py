"""Each job's usage through the relay, kept in memory and in an append-only journal.

Every finished call appends one JSON line (the job's UID and the call's tokens and cost) and
flushes it to the kernel before the answer goes back, so a crash of the relay process loses
nothing that was answered; the file is fsynced once a second, so a crash of the node loses at
most the last second of records. Calls in flight when the relay stops are not recorded (their
answers never reached the job either). At start the journal is replayed and compacted to one
line per job, under an exclusive lock that the relay holds until it stops: a replacement relay
(a deleted pod's successor, on the same volume) waits until the old one has written its last
record, instead of compacting the journal away beneath it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

JOURNAL_NAME = "usage.jsonl"


@dataclass
class Usage:
    """Totals of one job (tokens as reported by the provider; cost in USD)."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cost: float = 0.0
    calls: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def add(self, other: Usage) -> None:
        self.prompt += other.prompt
        self.completion += other.completion
        self.cached += other.cached
        self.cost += other.cost
        self.calls += other.calls


class UsageStore:
    """Usage by job UID; :meth:`open` replays the journal in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / JOURNAL_NAME
        self._jobs: dict[str, Usage] = {}
        self._file: IO[str] | None = None
        self._lock: IO[str] | None = None
        self._dirty = False

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Why: the old relay may still answer its last calls while its successor starts; both
        # writing (and the successor compacting) would lose those calls from the budgets.
        self._lock = self.path.with_suffix(".lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the usage journal: another relay still holds %s", self.path)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        if self.path.exists():
            with self.path.open() as journal:
                for number, line in enumerate(journal, 1):
                    try:
                        record = json.loads(line)
                        uid = str(record.pop("uid"))
                        self._jobs.setdefault(uid, Usage()).add(Usage(**record))
                    except (ValueError, KeyError, TypeError):
                        # A torn last line after a crash: the call it held was not answered.
                        log.warning("skipping unreadable usage record %s:%d", self.path, number)
        self._compact()
        self._file = self.path.open("a")
        log.info("usage of %d jobs loaded from %s", len(self._jobs), self.path)

    def _compact(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as out:
            for uid, usage in self._jobs.items():
                out.write(json.dumps({"uid": uid, **asdict(usage)}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def get(self, uid: str) -> Usage:
        """The job's totals so far (a copy)."""
        usage = self._jobs.get(uid)
        return Usage(**asdict(usage)) if usage else Usage()

    def record(self, uid: str, call: Usage) -> Usage:
        """Add one call's usage to the job and journal it; the job's new totals."""
        if self._file is not None:
            self._file.write(json.dumps({"uid": uid, **asdict(call)}) + "\n")
            self._file.flush()
            self._dirty = True
        self._jobs.setdefault(uid, Usage()).add(call)
        return self.get(uid)

    def sync(self) -> None:
        """fsync the journal if anything was written since the last sync."""
        if self._file is not None and self._dirty:
            self._dirty = False
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()  # releases the flock: a waiting successor replays from here
            self._lock = None
