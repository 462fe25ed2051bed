"""The ZIP stream when the workspace changes or fails under it: short reads, files that shrink,
a FIFO swapped in after the stat, a directory that cannot be opened, inode numbers past 2⁶³.
The agent may still be running, and the file system is not always a local disk."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from codingjob_operator import ziparchive
from codingjob_operator.ziparchive import (
    MANIFEST_NAME,
    ArchiveStats,
    ArchiveTooLargeError,
    stream_workspace,
)


def build_zip(root: Path) -> tuple[zipfile.ZipFile, list[dict[str, Any]]]:
    """The archive (checked) and the records of its manifest."""
    data = b"".join(stream_workspace(root, ArchiveStats(), workers=2))
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    _, *lines = archive.read(MANIFEST_NAME).decode("ascii").splitlines()
    return archive, [json.loads(line) for line in lines]


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@contextlib.contextmanager
def writer_after_5_s(fifo: Path) -> Iterator[list[bool]]:
    """Should the archiver open ``fifo`` and wait for a writer, one comes after 5 s (and is
    recorded), so that the test fails instead of hanging."""
    unblocked: list[bool] = []

    def write() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader waits
            return
        unblocked.append(True)

    timer = threading.Timer(5, write)
    timer.start()
    try:
        yield unblocked
    finally:
        timer.cancel()


def test_short_reads_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read may return less than asked (network and FUSE file systems, signals)."""
    monkeypatch.setattr(ziparchive, "PIECE_SIZE", 64 * 1024)
    data = b"".join(b"line %d of the log\n" % i for i in range(12_000))  # four pieces
    (tmp_path / "log").write_bytes(data)
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: real_pread(fd, min(n, 1000), at))
    archive, records = build_zip(tmp_path)
    assert archive.read("log") == data
    assert records == []


def test_a_file_that_shrinks_before_it_is_read_is_skipped_and_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "kept").write_bytes(b"k" * 5000)
    (tmp_path / "shrinks").write_bytes(b"s" * 5000)
    real_pread = os.pread

    def truncate_first(fd: int, length: int, offset: int) -> bytes:
        if fd_path(fd).endswith("/shrinks"):
            os.truncate(fd_path(fd), 100)  # the agent truncates it after the walk saw it
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", truncate_first)
    archive, records = build_zip(tmp_path)
    assert archive.read("kept") == b"k" * 5000
    assert "shrinks" not in archive.namelist()
    assert [(r["kind"], r["name"]) for r in records] == [("skipped", "shrinks")]
    assert records[0]["reason"] == "file shrank while being read (expected 5000 bytes at 0)"


def test_a_file_that_shrinks_between_pieces_fails_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first piece is written already: the stream cannot be repaired, it must not end as
    if it were a complete archive."""
    monkeypatch.setattr(ziparchive, "PIECE_SIZE", 64 * 1024)
    (tmp_path / "shrinks").write_bytes(b"s" * 200_000)
    real_pread = os.pread

    def truncate_later(fd: int, length: int, offset: int) -> bytes:
        if offset >= 128 * 1024 and fd_path(fd).endswith("/shrinks"):
            os.truncate(fd_path(fd), 130_000)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", truncate_later)
    with pytest.raises(OSError, match="file shrank while being read"):
        b"".join(stream_workspace(tmp_path, ArchiveStats(), workers=2))


def stat_sees_pipe_as(before: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk's stat of ``pipe`` answers what ``before`` was: the swap happens after it."""
    seen_before = os.stat(before)
    real_stat = os.stat
    monkeypatch.setattr(
        os,
        "stat",
        lambda path, *a, **k: seen_before if path == "pipe" else real_stat(path, *a, **k),
    )


def test_a_fifo_swapped_in_after_the_stat_is_skipped_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk saw a regular file; the open finds a FIFO that no one writes to."""
    (tmp_path / "regular").write_bytes(b"r" * 100)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "z").write_bytes(b"after")
    stat_sees_pipe_as(tmp_path / "regular", monkeypatch)
    with writer_after_5_s(tmp_path / "pipe") as unblocked:
        archive, records = build_zip(tmp_path)
    assert not unblocked, "the archiver waited on the FIFO"
    assert set(archive.namelist()) == {"regular", "z", MANIFEST_NAME}
    assert [(r["name"], r["reason"]) for r in records] == [("pipe", "no longer a regular file")]


def test_a_directory_swapped_for_a_fifo_after_the_stat_is_skipped_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "pipe")
    stat_sees_pipe_as(tmp_path / "dir", monkeypatch)
    with writer_after_5_s(tmp_path / "pipe") as unblocked:
        archive, records = build_zip(tmp_path)
    assert not unblocked, "the archiver waited on the FIFO"
    assert set(archive.namelist()) == {"dir/", MANIFEST_NAME}
    assert [(r["name"], r["reason"]) for r in records] == [
        ("pipe", "[Errno 20] Not a directory: 'pipe'")
    ]


def test_a_root_that_is_not_a_directory_fails_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with writer_after_5_s(tmp_path / "pipe") as unblocked, pytest.raises(NotADirectoryError):
        next(stream_workspace(tmp_path / "pipe", ArchiveStats()))
    assert not unblocked, "the archiver waited on the FIFO"


def test_entries_failing_at_each_step_are_skipped_with_why_and_their_siblings_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name gone before its stat, a directory that cannot be opened, one that cannot be
    listed: each is listed in the manifest with the error, and the walk goes on."""
    (tmp_path / "a-gone").write_text("a")
    for name in ["b-locked", "c-unlistable", "d"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    (tmp_path / "e").write_text("e")
    real_stat, real_open, real_scandir = os.stat, os.open, os.scandir

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if path == "a-gone":  # deleted by the agent after the listing
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_stat(path, *args, **kwargs)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "b-locked":  # chmod 0 does not stop root, which CI may be
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    def scandir(path: Any) -> Any:
        if isinstance(path, int) and fd_path(path).endswith("/c-unlistable"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "scandir", scandir)
    archive, records = build_zip(tmp_path)
    assert set(archive.namelist()) == {"d/", "d/f", "e", MANIFEST_NAME}
    assert [(r["kind"], r["name"], r["reason"]) for r in records] == [
        ("skipped", "a-gone", "[Errno 2] No such file or directory: 'a-gone'"),
        ("skipped", "b-locked", "[Errno 13] Permission denied: 'b-locked'"),
        ("skipped", "c-unlistable", "[Errno 13] Permission denied"),
    ]


def test_a_stream_stopped_deep_down_leaves_no_descriptor_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size cap stops the walk two directories down: their descriptors, the spools and
    the table of links are closed all the same (the archiver may be a long-lived process)."""
    # Each file is written as soon as it is walked, so the walk is still in a/b.
    monkeypatch.setattr(ziparchive, "IN_FLIGHT_BYTES", 1024)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "blob").write_bytes(os.urandom(3 * 1024 * 1024))
    (deep / "later").write_text("x")
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(ArchiveTooLargeError):
        b"".join(stream_workspace(tmp_path, ArchiveStats(), max_size=1024 * 1024, workers=2))
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_bytes_waiting_to_be_written_stay_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw bytes handed to the compressing threads and not yet written stay within
    IN_FLIGHT_BYTES (lowered here), one entry more at most: files of 20 KiB under a bound of
    64 KiB are at most 4 open at once. A file whose window alone passes the bound is written
    on its own."""
    monkeypatch.setattr(ziparchive, "IN_FLIGHT_BYTES", 64 * 1024)
    monkeypatch.setattr(ziparchive, "PIECE_SIZE", 16 * 1024)
    monkeypatch.setattr(ziparchive, "CHUNK_SIZE", 1)  # a chunk per write: looked at between
    files = {f"f{i:02}": os.urandom(20 * 1024) for i in range(30)}
    files["m-big"] = os.urandom(200 * 1024)  # a window of 8 pieces: 128 KiB
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    chunks = []
    most = 0
    for chunk in stream_workspace(tmp_path, ArchiveStats(), workers=2):
        chunks.append(chunk)
        links = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
        most = max(most, sum(link.startswith(f"{tmp_path}/") for link in links))
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert {name: archive.read(name) for name in files} == files
    assert most == 4


class _Inode:
    """A stat result whose inode number is replaced (the rest read through)."""

    def __init__(self, real: os.stat_result, ino: int) -> None:
        self._real = real
        self.st_ino = ino

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_hard_links_of_inodes_numbered_past_2_to_the_63_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inode numbers use all 64 bits on some file systems (overlay, FUSE, NFS); the table of
    first names stores them as SQLite's signed 64-bit integers."""
    numbers = {}
    for name, ino in [("a", 1 << 63), ("b", (1 << 64) - 1), ("c", (1 << 63) - 1)]:
        (tmp_path / name).write_text(f"data of {name}")
        os.link(tmp_path / name, tmp_path / f"{name}-link")
        numbers[(tmp_path / name).stat().st_ino] = ino
    real_fstat = os.fstat

    def fstat(fd: int) -> Any:
        info = real_fstat(fd)
        return _Inode(info, numbers[info.st_ino]) if info.st_ino in numbers else info

    monkeypatch.setattr(os, "fstat", fstat)
    archive, records = build_zip(tmp_path)
    for name in "abc":
        assert archive.read(name) == f"data of {name}".encode()
        link = archive.getinfo(f"{name}-link")
        assert stat.S_ISLNK(link.external_attr >> 16)
        assert archive.read(link) == name.encode()
    assert sorted((r["name"], r["target"]) for r in records) == [
        ("a-link", "a"),
        ("b-link", "b"),
        ("c-link", "c"),
    ]


def test_many_small_files_deep_down_fit_in_the_limit_of_open_files(tmp_path: Path) -> None:
    """The soft limit of open files is 1024 in containers under containerd 2, as under
    systemd (512 here, for fewer files). Each file waiting to be written holds its descriptor,
    and so does each directory being walked: they must stay within the limit, or files are
    skipped with "Too many open files"."""
    deep = tmp_path.joinpath(*["d"] * 60)
    deep.mkdir(parents=True)
    for i in range(600):
        (deep / f"{i:03}").write_bytes(b"x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
    try:
        archive, records = build_zip(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert records == []
    assert sum(not name.endswith("/") for name in archive.namelist()) == 600 + 1


def test_the_files_waiting_leave_room_in_the_limit_of_open_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = {"soft": 0}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limit["soft"], resource.RLIM_INFINITY))

    def waiting_at(soft: int) -> int:
        limit["soft"] = soft
        return ziparchive.waiting_limit()

    assert waiting_at(resource.RLIM_INFINITY) == waiting_at(100_000) == ziparchive.WAITING_ENTRIES
    assert waiting_at(300) == 1  # not even room for the walk: one file at a time
    open_now = len(os.listdir("/proc/self/fd"))
    room = 1024 - open_now - ziparchive.MAX_DEPTH - ziparchive.SPARE_FDS
    assert waiting_at(1024) == room
