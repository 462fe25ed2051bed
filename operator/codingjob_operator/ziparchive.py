"""The ZIP archive of a workspace tree, streamed chunk by chunk, compressed on several threads.

The workspace is untrusted (the agent wrote it), so the archive is bounded and honest:

* The tree is walked iteratively through directory file descriptors with ``O_NOFOLLOW``: a
  symlink is never followed, not even by a race, and no recursion limit applies.
* Each inode's data is stored once: further hard links become links to the first name.
* A sparse file is read only when its holes are small (:data:`HOLE_LIMIT`); reads are bounded by
  what is allocated, never by the apparent size (``truncate -s 8E``).
* Symlinks are kept only when their target is relative and resolves inside the workspace (an
  extractor must never be led to write outside its folder).
* Names are made safe for Windows and POSIX extractors, collisions (also case-insensitive ones)
  avoided; special files, unreadable and unsafe entries are skipped. Every renamed, linked or
  skipped entry is listed with its original name in :data:`MANIFEST_NAME`, the last entry.
* Memory is bounded, also at a million files (in one directory or in many): the central
  directory and the manifest are spooled to a temporary file; a large directory listing is
  sorted in runs spilled to a temporary file and merged; names already used in a directory are
  held as 8-byte digests (:class:`FoldedNames`).
* Open descriptors are bounded: the files waiting to be written leave room, in the soft limit of
  open files, for a walk :data:`MAX_DEPTH` deep (:func:`waiting_limit`).

Why not ``stream-zip`` (used before): it deflates every member on the calling thread and keeps
the central directory in memory; parallel compression of independent pieces (pigz's scheme) and
a spooled directory need control of the byte layout, which is what this module writes.
"""

from __future__ import annotations

import array
import collections
import concurrent.futures
import datetime
import functools
import hashlib
import heapq
import itertools
import json
import logging
import os
import re
import resource
import sqlite3
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from isal import isal_zlib
from isal.isal_zlib import crc32_combine

log = logging.getLogger(__name__)

#: ISA-L deflate level for compressible data. ISA-L's level 1 deflates source text about 3.5x
#: faster than zlib's level 1 and 10x faster than zip's level 6, for about 10% more bytes than
#: level 6: the archive is bound by CPU, not by the store (``make bench-archive``).
DEFLATE_LEVEL = 1
#: Files are compressed in independent pieces of this size (pigz's scheme), on several threads.
PIECE_SIZE = 1024 * 1024
#: Each piece is primed with this much of the data before it, so pieces compress as one stream.
DICTIONARY_SIZE = 32 * 1024
#: Small files are batched into one task up to this many bytes or files.
BATCH_BYTES = 1024 * 1024
BATCH_FILES = 256
#: Raw bytes handed to the compressing threads and not yet written: the memory bound.
IN_FLIGHT_BYTES = 16 * 1024 * 1024
#: Entries waiting to be written, at most (each file among them holds its descriptor).
WAITING_ENTRIES = 4 * BATCH_FILES
#: Pieces of one large file compressed ahead of the one being written.
LOOKAHEAD = 8
#: Pieces from this size on are sampled before choosing the level.
SNIFF_MIN_SIZE = 64 * 1024
SNIFF_SIZE = 16 * 1024
#: A sample that deflates to more than this share of its size is stored (level 0).
INCOMPRESSIBLE_RATIO = 0.97
#: A file with more holes than this is not expanded into the archive (its data would be zeros).
HOLE_LIMIT = 64 * 1024 * 1024
#: Deeper directories are skipped: each level holds one open descriptor.
MAX_DEPTH = 256
#: Descriptors left free besides the walk's directories, for the spools, SQLite and the caller.
SPARE_FDS = 64
#: Names longer than this (UTF-8 bytes) are shortened: most file systems allow 255.
MAX_COMPONENT_BYTES = 255
#: The list of renamed, linked and skipped entries, written last, one JSON object per line.
MANIFEST_NAME = ".codingjob-manifest.jsonl"
#: Output chunks are coalesced to about this size.
CHUNK_SIZE = 1024 * 1024
#: The central directory and the manifest stay in memory up to this size, then go to disk.
SPOOL_MEMORY = 4 * 1024 * 1024
#: Names of the directories being walked (all levels together) held in memory, sorted; a
#: listing that does not fit is sorted on disk. 64Ki names are about 5 MiB; a million would
#: be about 100 MiB, and a listing is held for as long as its directory is being walked.
LISTING_MEMORY_NAMES = 64 * 1024
#: A listing sorted on disk is cut into sorted runs of this many names, merged as it is read.
SORT_RUN_NAMES = 64 * 1024
#: Bytes read ahead from each run while merging.
SORT_READ_BYTES = 4 * 1024

# DOS timestamps start in 1980 and the Unix timestamp extra field is a signed 32-bit number.
_MIN_TIME = datetime.datetime(1980, 1, 1, tzinfo=datetime.UTC)
_MAX_TIME = datetime.datetime(2038, 1, 19, tzinfo=datetime.UTC)
# Characters that Windows forbids in names, or that extractors read as separators.
_FORBIDDEN = frozenset('\\/:*?"<>|')
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"{d}{n}" for d in ("com", "lpt") for n in [*"123456789", "¹", "²", "³"]]
)
_UNSAFE_CHAR = re.compile(r'[\x00-\x1f\x7f\\/:*?"<>|\ud800-\udfff]')
_ZIP64_LIMIT = 0xFFFFFFFF
#: Files from this size on get zip64 sizes in their data descriptor (deflate may grow data).
_ZIP64_FILE = _ZIP64_LIMIT - (1 << 24)
_UTF8 = 1 << 11
_DESCRIPTOR = 1 << 3
_DEFLATED = 8
_STORED = 0


class UnsafeNameError(ValueError):
    """An entry name would be absolute or escape the archive root."""


class ArchiveTooLargeError(Exception):
    """The archive grew beyond its maximum size."""


@dataclass
class ArchiveStats:
    """Counts of what went into an archive, filled in while it streams."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes_in: int = 0
    skipped: int = 0
    renamed: int = 0

    @property
    def entries(self) -> int:
        """Files and links: the things a user counts as files (directories excluded)."""
        return self.files + self.symlinks + self.hardlinks


def zip_time(mtime: float) -> datetime.datetime:
    """A file's mtime as a ZIP timestamp, clamped to what the ZIP fields can hold."""
    when = datetime.datetime.fromtimestamp(int(mtime), datetime.UTC)
    return min(max(when, _MIN_TIME), _MAX_TIME)


# Names.


def _safe_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (os.fsdecode's surrogateescape)
        return f"%{code - 0xDC00:02X}"
    if code < 0x20 or code == 0x7F or char in _FORBIDDEN or 0xD800 <= code <= 0xDFFF:
        return "_"
    return char


def safe_component(name: str) -> str:
    """``name`` (one path component, surrogate-escaped when not UTF-8) as a portable name.

    Control and Windows-forbidden characters become ``_``, undecodable bytes ``%XX``; a trailing
    dot or space (Windows drops them) and device names (``CON``, ``nul.txt``) get a ``_``; a name
    longer than 255 bytes is cut and keeps a hash of the original.
    """
    safe = "".join(map(_safe_char, name)) if _UNSAFE_CHAR.search(name) else name
    if safe.endswith((".", " ")):
        safe = safe[:-1] + "_"
    if safe.split(".", 1)[0].rstrip(" ").casefold() in _RESERVED:
        safe = "_" + safe
    if len(safe.encode("utf-8")) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        cut = safe.encode("utf-8")[: MAX_COMPONENT_BYTES - 13].decode("utf-8", "ignore")
        safe = f"{cut}~{digest}"
    return safe


class NameSet(Protocol):
    """What :func:`unique_component` needs of the names used so far (casefolded)."""

    def __contains__(self, name: object, /) -> bool: ...

    def add(self, name: str, /) -> None: ...


class FoldedNames:
    """A set of (casefolded) names held as 8-byte digests in one open-addressed array.

    A million names take 16 MiB here, against about 90 MiB as a ``set`` of strings. Names
    equal up to case always share a digest, so no collision is ever missed; two different
    names share one with a probability of about n²/2⁶⁵ (3e-8 at a million), and then one of
    them gets a needless ``~N``: still unique, and deterministic (blake2b is unkeyed, unlike
    ``hash()``).
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._slots = array.array("Q", bytes(8 * 16))
        self._count = 0
        #: The last name looked up, its digest and slot: unique_component asks ``in``, then adds.
        self._last: tuple[str, int, int] | None = None
        for name in names:
            self.add(name)

    def __len__(self) -> int:
        return self._count

    def _find(self, name: str) -> tuple[int, int]:
        """The digest of ``name`` and the slot holding it, or the empty one where it would go."""
        if self._last is not None and self._last[0] == name:
            return self._last[1], self._last[2]
        data = name.encode("utf-8", "surrogatepass")
        digest = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") or 1
        index = self._slot(digest)  # digest 0 (as 1 above) marks an empty slot
        self._last = (name, digest, index)
        return digest, index

    def _slot(self, digest: int) -> int:
        slots = self._slots
        mask = len(slots) - 1
        index = digest & mask
        while slots[index] and slots[index] != digest:  # linear probing
            index = (index + 1) & mask
        return index

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._slots[self._find(name)[1]])

    def add(self, name: str) -> None:
        digest, index = self._find(name)
        if self._slots[index]:
            return
        self._slots[index] = digest
        self._count += 1
        if 3 * self._count > 2 * len(self._slots):  # at most 2/3 full: probes stay short
            old = self._slots
            self._slots = array.array("Q", bytes(16 * len(old)))
            self._last = None
            for kept in old:
                if kept:
                    self._slots[self._slot(kept)] = kept


def unique_component(safe: str, used: NameSet) -> str:
    """``safe``, or ``stem~N.ext`` when a name equal up to case is already in ``used``."""
    candidate = safe
    number = 0
    while candidate.casefold() in used:
        number += 1
        stem, dot, ext = safe.rpartition(".")
        candidate = f"{stem}~{number}.{ext}" if dot and stem else f"{safe}~{number}"
    used.add(candidate.casefold())
    return candidate


def entry_name(parts: tuple[str, ...] | list[str]) -> str:
    """Join already-safe components into a ZIP entry name, rejecting anything that could escape."""
    if not parts:
        raise UnsafeNameError("empty entry name")
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise UnsafeNameError(f"unsafe path component {part!r}")
    return "/".join(parts)


def link_inside(root_fd: int, link_dir: tuple[str, ...], target: str) -> bool:
    """Whether ``target`` of a symlink in directory ``link_dir`` resolves inside the root.

    Resolution follows the symlinks it meets inside the workspace, as the kernel would (a
    lexical check alone is fooled by ``a/../x`` when ``a`` links to ``..``); a missing
    component ends the real walk and the rest is resolved lexically.
    """
    if not target or target.startswith("/") or "\0" in target:
        return False
    parts = list(link_dir)
    pending = collections.deque(target.split("/"))
    real = True
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False
            parts.pop()
            continue
        if real:
            try:
                info = os.lstat("/".join([*parts, part]), dir_fd=root_fd)
            except OSError:
                real = False
            else:
                if stat.S_ISLNK(info.st_mode):
                    hops += 1
                    if hops > 40:  # the kernel's own limit (ELOOP)
                        return False
                    try:
                        inner = os.readlink("/".join([*parts, part]), dir_fd=root_fd)
                    except OSError:
                        return False
                    if not inner or inner.startswith("/"):
                        return False
                    pending.extendleft(reversed(inner.split("/")))
                    continue
                if not stat.S_ISDIR(info.st_mode):
                    real = False
        parts.append(part)
    return True


# Compression of pieces, on worker threads (ISA-L, zlib, crc32 and pread release the GIL).
# Deflate is ISA-L's (isal_zlib, zlib's API and stream format); zlib's level 0 writes the stored
# blocks of incompressible pieces, which ISA-L has no level for. Pieces of either kind end on a
# byte boundary, so they concatenate into one valid deflate stream.


@dataclass(frozen=True)
class _Piece:
    fd: int
    offset: int
    length: int
    last: bool


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise OSError(f"file shrank while being read (expected {length} bytes at {offset})")
        data += more
    return data


def choose_level(sample: bytes) -> int:
    """0 (stored blocks) when ``sample`` does not compress, else :data:`DEFLATE_LEVEL`.

    Already-compressed data (images, archives, git packs) costs full deflate CPU for nothing;
    level 0 still streams as deflate, at memcpy speed.
    """
    squeezed = isal_zlib.compress(sample, DEFLATE_LEVEL, wbits=-isal_zlib.MAX_WBITS)
    return 0 if len(squeezed) > INCOMPRESSIBLE_RATIO * len(sample) else DEFLATE_LEVEL


def compress_piece(piece: _Piece) -> tuple[bytes, int]:
    """The piece deflated (a sync-flushed fragment, or a final one), and its data's CRC-32."""
    data = _pread_exact(piece.fd, piece.length, piece.offset)
    crc = isal_zlib.crc32(data)
    level = DEFLATE_LEVEL
    if piece.length >= SNIFF_MIN_SIZE:
        level = choose_level(data[:SNIFF_SIZE])
    compressor: Any
    if not level:
        compressor = zlib.compressobj(0, zlib.DEFLATED, -zlib.MAX_WBITS)
    elif piece.offset:
        start = max(0, piece.offset - DICTIONARY_SIZE)
        primer = _pread_exact(piece.fd, piece.offset - start, start)
        compressor = isal_zlib.compressobj(
            level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS, zdict=primer
        )
    else:
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
    # A sync flush ends on a byte boundary without a final block, so the pieces of one file
    # concatenate into one valid deflate stream; only the last piece finishes it.
    flush = zlib.Z_FINISH if piece.last else zlib.Z_SYNC_FLUSH
    return compressor.compress(data) + compressor.flush(flush), crc


def _compress_batch(pieces: list[_Piece]) -> list[tuple[bytes, int] | OSError]:
    results: list[tuple[bytes, int] | OSError] = []
    for piece in pieces:
        try:
            results.append(compress_piece(piece))
        except OSError as error:
            results.append(error)
    return results


# The walk.


@dataclass
class _Entry:
    """One archive entry, in walk order; files carry the pieces being compressed for them."""

    name: str
    mode: int
    mtime: float
    data: bytes = b""  # directory: empty; symlink: the target
    fd: int = -1
    size: int = 0
    #: Raw bytes this entry counts against :data:`IN_FLIGHT_BYTES` while it waits.
    weight: int = 0
    pieces: list[tuple[concurrent.futures.Future[list[Any]], int]] = field(default_factory=list)


@dataclass
class _Frame:
    fd: int
    safe: tuple[str, ...]
    real: tuple[str, ...]
    names: Iterator[str]
    #: Names of this listing held in memory (counted against :data:`LISTING_MEMORY_NAMES`).
    held: int
    used: FoldedNames = field(default_factory=FoldedNames)


class _Listings:
    """Sorted directory listings, spilled to one temporary file when memory would not hold them.

    The order is exactly ``sorted(os.listdir(fd))``: runs are sorted as ``str`` and merged as
    ``str``, the file only holds their bytes (names never contain NUL, the separator).
    """

    def __init__(self) -> None:
        self.held = 0
        self._spill: IO[bytes] | None = None

    def sorted_names(self, dir_fd: int) -> tuple[Iterator[str], int]:
        """The names in ``dir_fd``, sorted, and how many of them stay in memory; the directory
        is read whole here, so an error reading it is raised here."""
        with os.scandir(dir_fd) as entries:
            names = [entry.name for entry in itertools.islice(entries, LISTING_MEMORY_NAMES)]
            fits = self.held + len(names) <= LISTING_MEMORY_NAMES
            if len(names) < LISTING_MEMORY_NAMES and fits:
                names.sort()
                self.held += len(names)
                return iter(names), len(names)
            runs = [self._write_run(names)]
            del names
            while run := [entry.name for entry in itertools.islice(entries, SORT_RUN_NAMES)]:
                runs.append(self._write_run(run))
        return heapq.merge(*(self._read_run(start, end) for start, end in runs)), 0

    def release(self, held: int) -> None:
        self.held -= held

    def _write_run(self, names: list[str]) -> tuple[int, int]:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()
        names.sort()
        start = self._spill.seek(0, os.SEEK_END)
        if names:  # an empty run would read back as one empty name
            self._spill.write(b"\0".join(map(os.fsencode, names)) + b"\0")
        self._spill.flush()
        return start, self._spill.tell()

    def _read_run(self, start: int, end: int) -> Iterator[str]:
        assert self._spill is not None
        fd = self._spill.fileno()
        rest = b""
        while start < end:
            block = os.pread(fd, min(SORT_READ_BYTES, end - start), start)
            if not block:
                raise OSError("directory listing spill file shrank")
            start += len(block)
            *names, rest = (rest + block).split(b"\0")
            yield from map(os.fsdecode, names)

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()


class _Manifest:
    """Renamed, linked and skipped entries, spooled as JSON lines."""

    def __init__(self, stats: ArchiveStats) -> None:
        self.stats = stats
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115  # closed by close()

    def add(self, kind: str, **fields: str | int) -> None:
        # ensure_ascii keeps undecodable bytes (surrogate escapes) as \udcXX: lossless, valid JSON.
        self.spool.write(json.dumps({"kind": kind, **fields}).encode("ascii") + b"\n")

    def skip(self, real: str, why: object) -> None:
        log.warning("not archived: %r (%s)", real, why)
        self.stats.skipped += 1
        self.add("skipped", name=real, reason=str(why))

    def content(self) -> Iterator[bytes]:
        head = {"manifest": 1, **{k: v for k, v in vars(self.stats).items()}}
        yield json.dumps(head).encode("ascii") + b"\n"
        self.spool.seek(0)
        while block := self.spool.read(CHUNK_SIZE):
            yield block

    def close(self) -> None:
        self.spool.close()


class _FirstLinks:
    """The first archive name of each inode with several links, in a temporary SQLite file.

    A workspace can hold any number of hard-linked inodes (a pnpm ``node_modules`` links every
    file), so the table lives on disk: SQLite keeps only its page cache (about 2 MiB) in memory.
    The file is unlinked at once and needs no journal: it dies with the archiver.
    """

    def __init__(self) -> None:
        handle, path = tempfile.mkstemp(prefix="codingjob-links-", suffix=".sqlite")
        os.close(handle)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
        finally:
            os.unlink(path)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(
            "CREATE TABLE first (dev INTEGER, ino INTEGER, name TEXT, PRIMARY KEY (dev, ino))"
        )
        # One transaction for the whole walk: rows are written out only when the cache is full.
        self._db.execute("BEGIN")

    def get(self, dev: int, ino: int) -> str | None:
        row = self._db.execute("SELECT name FROM first WHERE dev = ? AND ino = ?", (dev, ino))
        found = row.fetchone()
        return None if found is None else str(found[0])

    def add(self, dev: int, ino: int, name: str) -> None:
        self._db.execute("INSERT INTO first VALUES (?, ?, ?)", (dev, ino, name))

    def close(self) -> None:
        self._db.close()


def _walk(root_fd: int, manifest: _Manifest, stats: ArchiveStats) -> Iterator[_Entry]:
    """Entries under ``root_fd`` depth-first, names sorted per directory; opens files (``fd``)."""
    root_used = FoldedNames([MANIFEST_NAME.casefold()])  # kept free for the manifest
    listings = _Listings()
    stack = [_Frame(root_fd, (), (), *listings.sorted_names(root_fd), root_used)]
    first_links = _FirstLinks()
    try:
        while stack:
            frame = stack[-1]
            name = next(frame.names, None)
            if name is None:
                stack.pop()
                listings.release(frame.held)
                if frame.fd != root_fd:
                    os.close(frame.fd)
                continue
            real = "/".join((*frame.real, name))
            try:
                info = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
            except OSError as error:
                manifest.skip(real, error)
                continue
            safe = unique_component(safe_component(name), frame.used)
            arcname = entry_name((*frame.safe, safe))
            mode = info.st_mode
            kind = stat.S_IFMT(mode)
            if kind not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK):
                manifest.skip(real, f"special file ({stat.filemode(mode)[0]})")
                continue
            if safe != name:
                stats.renamed += 1
                manifest.add("renamed", name=arcname, original=real)
            if kind == stat.S_IFDIR:
                if len(stack) > MAX_DEPTH:
                    manifest.skip(real, f"deeper than {MAX_DEPTH} directories")
                    continue
                try:
                    sub_fd = os.open(
                        name,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=frame.fd,
                    )
                except OSError as error:
                    manifest.skip(real, error)
                    continue
                try:
                    listing, held = listings.sorted_names(sub_fd)
                except OSError as error:
                    os.close(sub_fd)
                    manifest.skip(real, error)
                    continue
                stats.dirs += 1
                yield _Entry(arcname + "/", mode, info.st_mtime)
                stack.append(
                    _Frame(sub_fd, (*frame.safe, safe), (*frame.real, name), listing, held)
                )
            elif kind == stat.S_IFLNK:
                try:
                    target = os.readlink(name, dir_fd=frame.fd)
                except OSError as error:
                    manifest.skip(real, error)
                    continue
                # Why: an extractor recreates the link as stored; one pointing outside the
                # folder (absolute, ../) would make later writes or readers escape it.
                if not link_inside(root_fd, frame.real, target):
                    manifest.skip(real, f"symlink target {target!r} is outside the workspace")
                    continue
                if any(
                    p not in ("", ".", "..") and safe_component(p) != p for p in target.split("/")
                ):
                    manifest.skip(real, f"symlink target {target!r} has names unsafe on Windows")
                    continue
                stats.symlinks += 1
                yield _Entry(arcname, stat.S_IFLNK | 0o777, info.st_mtime, os.fsencode(target))
            else:
                if info.st_size == 0:
                    # Nothing to read: stored as it is, without opening it.
                    entry, opened = _Entry(arcname, info.st_mode, info.st_mtime), info
                else:
                    found = _open_file(frame.fd, name, real, arcname, manifest)
                    if found is None:
                        continue
                    entry, opened = found
                if opened.st_nlink > 1:
                    dev, ino = _signed(opened.st_dev), _signed(opened.st_ino)
                    first = first_links.get(dev, ino)
                    if first is not None:
                        if entry.fd >= 0:
                            os.close(entry.fd)
                        # Each inode's data once: the other names link to the first one,
                        # relative and inside the archive by construction.
                        target = "../" * len(frame.safe) + first
                        stats.hardlinks += 1
                        manifest.add("hardlink", name=arcname, target=first, original=real)
                        yield _Entry(arcname, stat.S_IFLNK | 0o777, info.st_mtime, target.encode())
                        continue
                    first_links.add(dev, ino, arcname)
                stats.files += 1
                yield entry
    finally:
        for frame in stack:
            if frame.fd != root_fd:
                os.close(frame.fd)
        listings.close()
        first_links.close()


def _signed(number: int) -> int:
    """An unsigned 64-bit number as the signed one SQLite stores (same bits)."""
    return number - (1 << 64) if number >= 1 << 63 else number


def _open_file(
    dir_fd: int, name: str, real: str, arcname: str, manifest: _Manifest
) -> tuple[_Entry, os.stat_result] | None:
    try:
        # O_NOFOLLOW|O_NONBLOCK: a name swapped for a symlink or FIFO after the stat must
        # neither leak a file outside the workspace nor hang the archiver.
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError as error:
        manifest.skip(real, error)
        return None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise OSError("no longer a regular file")
        holes = opened.st_size - data_bytes(fd, opened)
        if holes > HOLE_LIMIT:
            # Why: `truncate -s 8E` costs the agent nothing; expanding it would fill the store.
            raise OSError(
                f"sparse file: {opened.st_size} bytes apparent, {holes} of them holes "
                f"(limit {HOLE_LIMIT})"
            )
    except OSError as error:
        os.close(fd)
        manifest.skip(real, error)
        return None
    return _Entry(arcname, opened.st_mode, opened.st_mtime, fd=fd, size=opened.st_size), opened


def data_bytes(fd: int, info: os.stat_result) -> int:
    """Bytes of ``fd`` that are data, not holes: bounded by the blocks actually allocated.

    ``st_blocks`` alone undercounts on compressing file systems (ZFS, btrfs), so a file that
    looks sparse by its blocks has its data extents measured with ``SEEK_DATA``/``SEEK_HOLE``.
    """
    allocated = info.st_blocks * 512
    if allocated + HOLE_LIMIT >= info.st_size:
        return info.st_size
    data = 0
    offset = 0
    try:
        for _ in range(100_000):
            start = os.lseek(fd, offset, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            data += end - start
            offset = end
            if offset >= info.st_size:
                break
        else:
            return allocated  # too fragmented to measure: trust the blocks
    except OSError:  # ENXIO: no data after offset; EINVAL: not supported
        pass
    return max(data, allocated) if data else allocated


# The ZIP layout.


@functools.lru_cache(maxsize=4096)
def _times(mtime: float) -> tuple[int, int, bytes]:
    """DOS time and date, and the Unix-time extra field, of a modification time."""
    when = zip_time(mtime)
    return (
        (when.hour << 11) | (when.minute << 5) | (when.second // 2),
        ((when.year - 1980) << 9) | (when.month << 5) | when.day,
        struct.pack("<HHBi", 0x5455, 5, 1, int(when.timestamp())),
    )


@dataclass
class _Writer:
    """Writes entries as bytes to ``emit`` and their central directory records to a spool."""

    emit: Callable[[bytes], None]
    max_size: int | None
    offset: int = 0
    count: int = 0
    directory: IO[bytes] = field(
        default_factory=lambda: tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
    )

    def write(self, data: bytes) -> None:
        self.offset += len(data)
        if self.max_size is not None and self.offset > self.max_size:
            raise ArchiveTooLargeError(
                f"the workspace archive exceeds the maximum archive size of {self.max_size} bytes"
            )
        self.emit(data)

    def _header(
        self,
        name: bytes,
        flags: int,
        method: int,
        mtime: float,
        crc: int,
        csize: int,
        usize: int,
        zip64: bool = False,
    ) -> tuple[bytes, int, int]:
        dos_time, dos_date, extra = _times(mtime)
        csize32, usize32 = csize, usize
        if zip64:
            # Sizes follow in the (8-byte) data descriptor; the extra field announces zip64.
            extra += struct.pack("<HHQQ", 0x0001, 16, 0, 0)
            csize32 = usize32 = _ZIP64_LIMIT
        header = struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            45 if zip64 else 20,
            flags,
            method,
            dos_time,
            dos_date,
            crc,
            csize32,
            usize32,
            len(name),
            len(extra),
        )
        return header + name + extra, dos_time, dos_date

    def entry_known(self, entry: _Entry) -> None:
        """Write an entry whose bytes are at hand (directory, link), stored with its CRC."""
        name = entry.name.encode("utf-8")
        start = self.offset
        size = len(entry.data)
        crc = zlib.crc32(entry.data)
        header, dos_time, dos_date = self._header(
            name, _UTF8, _STORED, entry.mtime, crc, size, size
        )
        self.write(header)
        if entry.data:
            self.write(entry.data)
        self._record(name, _UTF8, _STORED, dos_time, dos_date, crc, size, size, start, entry)

    def entry_streamed(
        self,
        entry: _Entry,
        chunks: Callable[[], Iterator[bytes]],
        crc: Callable[[], int],
        usize: Callable[[], int] | None = None,
    ) -> Iterator[None]:
        """Write a deflated entry from ``chunks()``; CRC (and size) are known once they end.

        A generator: it pauses after each chunk, so the caller can pass the bytes on before the
        next one (a large file never sits in memory whole). ``entry.size`` is the file's size;
        ``usize`` gives it afterwards when it was unknown.
        """
        name = entry.name.encode("utf-8")
        start = self.offset
        zip64 = entry.size >= _ZIP64_FILE
        flags = _UTF8 | _DESCRIPTOR
        header, dos_time, dos_date = self._header(
            name, flags, _DEFLATED, entry.mtime, 0, 0, 0, zip64
        )
        self.write(header)
        csize = 0
        for chunk in chunks():
            csize += len(chunk)
            self.write(chunk)
            yield
        size = usize() if usize is not None else entry.size
        if zip64:
            self.write(struct.pack("<IIQQ", 0x08074B50, crc(), csize, size))
        else:
            if csize >= _ZIP64_LIMIT or size >= _ZIP64_LIMIT:
                raise ArchiveTooLargeError(f"{entry.name}: grew beyond 4 GiB while being read")
            self.write(struct.pack("<IIII", 0x08074B50, crc(), csize, size))
        self._record(name, flags, _DEFLATED, dos_time, dos_date, crc(), csize, size, start, entry)

    def _record(
        self,
        name: bytes,
        flags: int,
        method: int,
        dos_time: int,
        dos_date: int,
        crc: int,
        csize: int,
        usize: int,
        offset: int,
        entry: _Entry,
    ) -> None:
        extra64 = b""
        fields = []
        if usize >= _ZIP64_LIMIT:
            fields.append(usize)
            usize = _ZIP64_LIMIT
        if csize >= _ZIP64_LIMIT:
            fields.append(csize)
            csize = _ZIP64_LIMIT
        if offset >= _ZIP64_LIMIT:
            fields.append(offset)
            offset = _ZIP64_LIMIT
        if fields:
            extra64 = struct.pack(f"<HH{len(fields)}Q", 0x0001, 8 * len(fields), *fields)
        extra = _times(entry.mtime)[2] + extra64
        external = (entry.mode & 0xFFFF) << 16 | (0x10 if stat.S_ISDIR(entry.mode) else 0)
        record = struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            (3 << 8) | 45,  # made by Unix, so extractors apply the mode bits
            45 if extra64 else 20,
            flags,
            method,
            dos_time,
            dos_date,
            crc,
            csize,
            usize,
            len(name),
            len(extra),
            0,
            0,
            0,
            external,
            offset,
        )
        self.directory.write(record + name + extra)
        self.count += 1

    def finish(self) -> Iterator[None]:
        """Write the spooled central directory and the end records; a generator pausing after
        each block (a million entries make a directory of about 100 MB)."""
        start = self.offset
        self.directory.seek(0)
        while block := self.directory.read(CHUNK_SIZE):
            self.write(block)
            yield
        size = self.offset - start
        if self.count >= 0xFFFF or start >= _ZIP64_LIMIT or size >= _ZIP64_LIMIT:
            end64 = self.offset
            self.write(
                struct.pack(
                    "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, self.count, self.count, size, start
                )
            )
            self.write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
            self.write(
                struct.pack(
                    "<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, _ZIP64_LIMIT, _ZIP64_LIMIT, 0
                )
            )
        else:
            self.write(
                struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, self.count, self.count, size, start, 0)
            )
        self.directory.close()


def waiting_limit() -> int:
    """How many entries may wait to be written: :data:`WAITING_ENTRIES`, fewer when the soft
    limit of open files (1024 in containers under containerd 2, as under systemd) would not
    leave room for the descriptors open now, a walk :data:`MAX_DEPTH` deep and
    :data:`SPARE_FDS`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return WAITING_ENTRIES
    room = soft - len(os.listdir("/proc/self/fd")) - MAX_DEPTH - SPARE_FDS
    return max(1, min(WAITING_ENTRIES, room))


def default_workers() -> int:
    """Compressing threads: the CPUs this process may run on, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def stream_workspace(
    root: str | os.PathLike[str],
    stats: ArchiveStats,
    *,
    max_size: int | None = None,
    workers: int | None = None,
) -> Iterator[bytes]:
    """The ZIP archive of ``root`` as a stream of chunks; ``stats`` is complete once it ends.

    Raises :class:`ArchiveTooLargeError` once the archive passes ``max_size`` bytes, and
    ``OSError`` when a file fails in the middle of being read (the stream is then unusable).
    """
    out: list[bytes] = []
    buffered = 0

    def emit(data: bytes) -> None:
        nonlocal buffered
        out.append(data)
        buffered += len(data)

    writer = _Writer(emit, max_size)
    manifest = _Manifest(stats)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=workers or default_workers(), thread_name_prefix="deflate"
    )
    pending: collections.deque[_Entry] = collections.deque()
    waiting = waiting_limit()
    batch: list[_Piece] = []
    batch_bytes = 0
    in_flight = 0

    def submit() -> None:
        nonlocal batch, batch_bytes
        if batch:
            future = pool.submit(_compress_batch, batch)
            owners = batch_owners[:]
            for index, owner in enumerate(owners):
                owner.pieces.append((future, index))
            batch, batch_bytes = [], 0
            batch_owners.clear()

    batch_owners: list[_Entry] = []

    def submit_piece(entry: _Entry, offset: int) -> None:
        length = min(PIECE_SIZE, entry.size - offset)
        piece = _Piece(entry.fd, offset, length, offset + length >= entry.size)
        entry.pieces.append((pool.submit(_compress_batch, [piece]), 0))

    def write_head() -> Iterator[bytes]:
        nonlocal in_flight
        entry = pending.popleft()
        try:
            for _ in _write_entry(writer, entry, manifest, stats, submit_piece):
                yield from drain()
            # Entries written at once (directories, links, empty files) pass here only: without
            # this, a tree of a million of them would sit in `out` until the manifest.
            yield from drain()
        finally:
            if entry.fd >= 0:
                os.close(entry.fd)
                entry.fd = -1
            in_flight -= entry.weight

    def drain() -> Iterator[bytes]:
        nonlocal buffered
        if buffered >= CHUNK_SIZE:
            yield b"".join(out)
            out.clear()
            buffered = 0

    try:
        for entry in _walk(root_fd, manifest, stats):
            if entry.fd >= 0:
                if entry.size <= PIECE_SIZE:
                    batch.append(_Piece(entry.fd, 0, entry.size, True))
                    batch_owners.append(entry)
                    batch_bytes += entry.size
                    if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_FILES:
                        submit()
                    entry.weight = max(entry.size, 1)
                else:
                    submit()
                    # A window of pieces ahead; the rest are submitted as these are written.
                    for offset in range(0, min(entry.size, LOOKAHEAD * PIECE_SIZE), PIECE_SIZE):
                        submit_piece(entry, offset)
                    entry.weight = min(entry.size, LOOKAHEAD * PIECE_SIZE)
                in_flight += entry.weight
            pending.append(entry)
            while in_flight > IN_FLIGHT_BYTES or len(pending) > waiting:
                submit()
                yield from write_head()
        submit()
        while pending:
            yield from write_head()
        manifest_entry = _Entry(MANIFEST_NAME, stat.S_IFREG | 0o644, _now())
        for _ in _write_manifest(writer, manifest_entry, manifest):
            yield from drain()
        for _ in writer.finish():
            yield from drain()
        if out:
            yield b"".join(out)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for entry in pending:
            if entry.fd >= 0:
                os.close(entry.fd)
        os.close(root_fd)
        manifest.close()
        writer.directory.close()


def _now() -> float:
    return datetime.datetime.now(datetime.UTC).timestamp()


def _write_entry(
    writer: _Writer,
    entry: _Entry,
    manifest: _Manifest,
    stats: ArchiveStats,
    submit_piece: Callable[[_Entry, int], None],
) -> Iterator[None]:
    """Write ``entry`` (a generator pausing after each chunk); a file's later pieces are
    submitted as earlier ones are written, keeping :data:`LOOKAHEAD` pieces in flight."""
    if entry.fd < 0:
        writer.entry_known(entry)
        return
    future, index = entry.pieces[0]
    first = future.result()[index]
    if isinstance(first, OSError):
        # Nothing written yet: the file is skipped, not the archive.
        stats.files -= 1
        manifest.skip(entry.name, first)
        return
    crc = first[1]
    total = max(1, -(-entry.size // PIECE_SIZE))  # pieces in all
    submitted = len(entry.pieces)
    # Written pieces are let go of: only the window holds results.
    window = collections.deque(entry.pieces[1:])
    entry.pieces.clear()
    head: list[bytes] = [first[0]]
    del first, future

    def chunks() -> Iterator[bytes]:
        nonlocal crc, submitted
        yield head.pop()
        for number in range(2, total + 1):
            if submitted * PIECE_SIZE < entry.size:
                submit_piece(entry, submitted * PIECE_SIZE)
                window.append(entry.pieces.pop())
                submitted += 1
            later, at = window.popleft()
            result = later.result()[at]
            del later
            if isinstance(result, OSError):
                raise result  # mid-entry: the stream cannot be repaired
            length = PIECE_SIZE if number < total else entry.size - PIECE_SIZE * (total - 1)
            crc = crc32_combine(crc, result[1], length)
            data = result[0]
            del result
            yield data
            del data

    stats.bytes_in += entry.size
    # The CRC is complete only after the chunks: it goes into the data descriptor.
    yield from writer.entry_streamed(entry, chunks, lambda: crc)


def _write_manifest(writer: _Writer, entry: _Entry, manifest: _Manifest) -> Iterator[None]:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc = 0
    size = 0

    def chunks() -> Iterator[bytes]:
        nonlocal crc, size
        for block in manifest.content():
            crc = zlib.crc32(block, crc)
            size += len(block)
            yield compressor.compress(block)
        yield compressor.flush()

    entry.size = 0
    yield from writer.entry_streamed(entry, chunks, lambda: crc, lambda: size)
