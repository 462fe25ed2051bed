"""A million files through the ZIP stream, in a child process whose peak memory is asserted.

Two shapes in one workspace: 900,000 files in one directory (the adversarial one: its listing
and its used names are the whole million, and each file has a second link outside the
workspace, as pnpm's store gives every file in ``node_modules``, so the table of hard-linked
inodes holds them all) and 100 directories of 1,000 (the usual tree). The
entries are read back from the ZIP's central directory by this test's own parser (``zipfile``
would hold a million ``ZipInfo`` objects), in order, so a lost, renamed or misplaced file fails.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from codingjob_operator.ziparchive import MANIFEST_NAME

MiB = 1024 * 1024
#: The bound the issue sets for the archiver's peak resident memory.
MAX_RSS = 128 * MiB
FLAT = 900_000
TREE_DIRS = 100
TREE_FILES = 1_000
REPO = Path(__file__).resolve().parents[3]

#: The child: archive argv[1] into argv[2], print the stats and the peak RSS of this process.
_ARCHIVE = """
import json, os, sys
from codingjob_operator.ziparchive import ArchiveStats, stream_workspace
from tests.fixtures.process import high_water_rss
stats = ArchiveStats()
with open(sys.argv[2], "wb") as out:
    for chunk in stream_workspace(sys.argv[1], stats):
        out.write(chunk)
print(json.dumps({"stats": vars(stats), "peak": high_water_rss(os.getpid())}))
"""


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch directory, on tmpfs when it has room: a million inodes are made and removed
    about twice as fast there as on disk."""
    shm = Path("/dev/shm")
    where = None
    if shm.is_dir() and os.access(shm, os.W_OK):
        room = os.statvfs(shm)
        # Room for the million inodes and the 111 MiB archive, with some to spare.
        if room.f_bavail * room.f_frsize > 512 * MiB and room.f_favail > 1_200_000:
            where = shm
    path = Path(tempfile.mkdtemp(prefix="codingjob-million-", dir=where))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_files(directory: Path, names: Iterator[str], linked_from: Path | None = None) -> None:
    """Empty files ``names`` in ``directory``; with ``linked_from``, each made there first and
    hard-linked into ``directory``."""
    directory.mkdir()
    made = directory
    if linked_from is not None:
        linked_from.mkdir()
        made = linked_from
    fd = os.open(made, os.O_RDONLY | os.O_DIRECTORY)
    into = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mknod(name, stat.S_IFREG | 0o644, dir_fd=fd)  # one syscall per empty file
            if linked_from is not None:
                os.link(name, name, src_dir_fd=fd, dst_dir_fd=into)
    finally:
        os.close(fd)
        os.close(into)


def central_directory(path: Path) -> Iterator[str]:
    """Entry names from the (zip64) central directory, in the order it lists them."""
    with path.open("rb") as archive:
        archive.seek(-22, os.SEEK_END)
        signature, *_, count, size, offset, _ = struct.unpack("<IHHHHIIH", archive.read(22))
        assert signature == 0x06054B50
        if count == 0xFFFF:
            archive.seek(-22 - 20, os.SEEK_END)
            signature, _, end64, _ = struct.unpack("<IIQI", archive.read(20))
            assert signature == 0x07064B50
            archive.seek(end64)
            record = struct.unpack("<IQHHIIQQQQ", archive.read(56))
            assert record[0] == 0x06064B50
            count, size, offset = record[7], record[8], record[9]
        archive.seek(offset)
        for _ in range(count):
            head = struct.unpack("<IHHHHHHIIIHHHHHII", archive.read(46))
            assert head[0] == 0x02014B50
            name = archive.read(head[10]).decode("utf-8")
            archive.seek(head[11] + head[12], os.SEEK_CUR)
            yield name
        assert archive.tell() == offset + size


def expected_names() -> Iterator[str]:
    yield "flat/"
    yield from (f"flat/{i:06d}" for i in range(FLAT - 2))
    yield from ("flat/Zz", "flat/zZ~1")  # equal up to case: the second is renamed
    yield "tree/"
    for d in range(TREE_DIRS):
        yield f"tree/d{d:02d}/"
        yield from (f"tree/d{d:02d}/{i:03d}" for i in range(TREE_FILES))
    yield MANIFEST_NAME


def test_a_million_files_in_bounded_memory(scratch: Path) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    started = time.monotonic()
    flat = itertools.chain(map("{:06d}".format, range(FLAT - 2)), ["zZ", "Zz"])
    make_files(workspace / "flat", flat, linked_from=scratch / "store")
    (workspace / "tree").mkdir()
    for d in range(TREE_DIRS):
        make_files(workspace / "tree" / f"d{d:02d}", map("{:03d}".format, range(TREE_FILES)))
    made = time.monotonic()

    zip_path = scratch / "workspace.zip"
    child = subprocess.run(
        [sys.executable, "-c", _ARCHIVE, str(workspace), str(zip_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout)
    archived = time.monotonic()

    stats = result["stats"]
    assert stats["files"] == FLAT + TREE_DIRS * TREE_FILES == 1_000_000
    assert (stats["dirs"], stats["renamed"], stats["skipped"]) == (2 + TREE_DIRS, 1, 0)
    mismatch = next(
        (
            (got, want)
            for got, want in itertools.zip_longest(central_directory(zip_path), expected_names())
            if got != want
        ),
        None,
    )
    assert mismatch is None, f"(central directory entry, expected): {mismatch}"
    print(
        f"made in {made - started:.1f} s, archived in {archived - made:.1f} s "
        f"({zip_path.stat().st_size / MiB:.0f} MiB), peak RSS {result['peak'] / MiB:.0f} MiB"
    )
    assert 0 < result["peak"] < MAX_RSS
