"""ZIP entries for a workspace tree, streamed: the archive is produced chunk by chunk, never whole.

The tree is walked through directory file descriptors with ``O_NOFOLLOW``, so a symlink anywhere
in the (untrusted) workspace is stored as a link and never followed, not even by a race. Entry
names are relative, ``/``-separated, never absolute and never contain ``..``.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from stream_zip import ZIP_AUTO, MemberFile, Method, stream_zip

log = logging.getLogger(__name__)

#: Deflate level: zlib's default, the same as ``zip -r``.
DEFLATE_LEVEL = 6
#: How much of a file is read (and deflated) at a time.
READ_SIZE = 256 * 1024
#: Size of the chunks the archive stream yields.
CHUNK_SIZE = 1024 * 1024
#: Files from this size on are sampled (two pieces of SNIFF_SIZE) before choosing the level.
SNIFF_MIN_SIZE = 512 * 1024
SNIFF_SIZE = 32 * 1024
#: A sample that deflates to more than this share of its size is treated as incompressible.
INCOMPRESSIBLE_RATIO = 0.97

# DOS timestamps start in 1980 and the Unix timestamp extra field is a signed 32-bit number.
_MIN_TIME = datetime.datetime(1980, 1, 1, tzinfo=datetime.UTC)
_MAX_TIME = datetime.datetime(2038, 1, 19, tzinfo=datetime.UTC)

Kind = Literal["dir", "file", "symlink"]


class UnsafeNameError(ValueError):
    """An entry name would be absolute or escape the archive root."""


@dataclass
class ArchiveStats:
    """Counts of what went into an archive, filled in while it streams."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_in: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def entries(self) -> int:
        """Files and symlinks: the things a user counts as files (directories excluded)."""
        return self.files + self.symlinks


def entry_name(parts: Iterable[str]) -> str:
    """Join path components into a ZIP entry name, rejecting anything that could escape the root."""
    cleaned = []
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise UnsafeNameError(f"unsafe path component {part!r}")
        cleaned.append(_printable(part))
    if not cleaned:
        raise UnsafeNameError("empty entry name")
    return "/".join(cleaned)


def _printable(part: str) -> str:
    """The component as valid UTF-8; a raw-bytes name keeps a visible escape."""
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(part)
        fixed = raw.decode("utf-8", "backslashreplace")
        log.warning("name %r is not UTF-8; stored as %r", raw, fixed)
        return fixed
    return part


def zip_time(mtime: float) -> datetime.datetime:
    """A file's mtime as a ZIP timestamp, clamped to what the ZIP fields can hold."""
    when = datetime.datetime.fromtimestamp(int(mtime), datetime.UTC)
    return min(max(when, _MIN_TIME), _MAX_TIME)


def _compressobj() -> zlib._Compress:
    return zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)


def _file_method(size: int, level: int = DEFLATE_LEVEL) -> Method:
    # ZIP_AUTO picks zip64 only when the size or the offset needs it, so small archives stay
    # readable by old tools while files and archives beyond 4 GiB are correct.
    return ZIP_AUTO(size, level=level)


def deflate_level(fd: int, size: int) -> int:
    """The deflate level for a file: 0 (stored blocks) when samples of it do not compress.

    Already-compressed data (images, archives, git packs) costs full deflate CPU for nothing;
    level 0 still streams as deflate (no CRC needed up front), at memcpy speed.
    """
    if size < SNIFF_MIN_SIZE:
        return DEFLATE_LEVEL
    sample = os.pread(fd, SNIFF_SIZE, 0) + os.pread(fd, SNIFF_SIZE, size // 2)
    squeezed = zlib.compress(sample, 1, wbits=-zlib.MAX_WBITS)
    return 0 if len(squeezed) > INCOMPRESSIBLE_RATIO * len(sample) else DEFLATE_LEVEL


def _read_chunks(fd: int) -> Iterator[bytes]:
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while chunk := os.read(fd, READ_SIZE):
            yield chunk
    finally:
        os.close(fd)


def walk_members(root: str | os.PathLike[str], stats: ArchiveStats) -> Iterator[MemberFile]:
    """``stream_zip`` members for everything under ``root``, in sorted depth-first order.

    Directories (empty or not) become ``name/`` entries with their mode, symlinks become link
    entries holding the target, regular files are deflated; sockets, FIFOs and devices, and
    entries that cannot be read, are skipped and listed in ``stats.skipped``.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from _walk_dir(root_fd, (), stats)
    finally:
        os.close(root_fd)


def _walk_dir(dir_fd: int, prefix: tuple[str, ...], stats: ArchiveStats) -> Iterator[MemberFile]:
    with os.scandir(dir_fd) as it:
        names = sorted(entry.name for entry in it)
    for name in names:
        parts = (*prefix, name)
        try:
            arcname = entry_name(parts)
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (OSError, UnsafeNameError) as error:
            _skip(stats, "/".join(parts), error)
            continue
        mode = info.st_mode
        modified = zip_time(info.st_mtime)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError as error:
                _skip(stats, arcname, error)
                continue
            stats.symlinks += 1
            # The link's own mode word (S_IFLNK) is what tells unzip to recreate a symlink.
            yield (
                arcname,
                modified,
                stat.S_IFLNK | 0o777,
                _file_method(len(target)),
                (os.fsencode(target),),
            )
        elif stat.S_ISDIR(mode):
            try:
                sub_fd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except OSError as error:
                _skip(stats, arcname + "/", error)
                continue
            try:
                stats.dirs += 1
                yield arcname + "/", modified, mode, _file_method(0), ()
                yield from _walk_dir(sub_fd, parts, stats)
            finally:
                os.close(sub_fd)
        elif stat.S_ISREG(mode):
            try:
                # O_NOFOLLOW|O_NONBLOCK: a name swapped for a symlink or FIFO after the stat must
                # neither leak a file outside the workspace nor hang the archiver.
                fd = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
                )
                opened = os.fstat(fd)
            except OSError as error:
                _skip(stats, arcname, error)
                continue
            if not stat.S_ISREG(opened.st_mode):
                os.close(fd)
                _skip(stats, arcname, "no longer a regular file")
                continue
            try:
                level = deflate_level(fd, opened.st_size)
            except OSError as error:
                os.close(fd)
                _skip(stats, arcname, error)
                continue
            stats.files += 1
            yield (
                arcname,
                modified,
                opened.st_mode,
                _file_method(opened.st_size, level),
                _counted(_read_chunks(fd), stats),
            )
        else:
            _skip(stats, arcname, f"special file (mode {stat.filemode(mode)})")


def _counted(chunks: Iterator[bytes], stats: ArchiveStats) -> Iterator[bytes]:
    for chunk in chunks:
        stats.bytes_in += len(chunk)
        yield chunk


def _skip(stats: ArchiveStats, name: str, why: object) -> None:
    log.warning("not archived: %s (%s)", name, why)
    stats.skipped.append(name)


def stream_workspace(root: str | os.PathLike[str], stats: ArchiveStats) -> Iterator[bytes]:
    """The ZIP archive of ``root`` as a stream of chunks; ``stats`` is complete once it ends."""
    return iter(
        stream_zip(
            walk_members(root, stats),
            chunk_size=CHUNK_SIZE,
            get_compressobj=_compressobj,
        )
    )
