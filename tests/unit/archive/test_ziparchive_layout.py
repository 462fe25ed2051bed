"""The ZIP stream's bytes, read the way readers other than Python's ``zipfile`` read them.

``zipfile`` reads the central directory only: it skips the local headers' sizes, CRCs and times,
ignores data descriptors and the end record's counts, and reads a deflate stream that never
ends. A streaming reader (Java's ``ZipInputStream``, ``bsdtar``, a browser's unzip of a download
still arriving) reads the other half: local header, deflate data up to the end of its stream,
data descriptor, next header. Info-ZIP's ``unzip`` applies the Unix mode only when the entry
was made on Unix, and takes the modification time from the UT extra field. This test's own
reader checks both halves field by field against APPNOTE.TXT and against each other.
"""

from __future__ import annotations

import datetime
import os
import stat
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from codingjob_operator import ziparchive
from codingjob_operator.ziparchive import MANIFEST_NAME, ArchiveStats, stream_workspace, zip_time

LOCAL = struct.Struct("<IHHHHHIIIHH")
CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
END = struct.Struct("<IHHHHIIH")
END64 = struct.Struct("<IQHHIIQQQQ")
LOCATOR = struct.Struct("<IIQI")
MARK32 = 0xFFFFFFFF
UTF8 = 1 << 11
DESCRIPTOR = 1 << 3
STORED, DEFLATED = 0, 8
#: Version needed to extract: 2.0 (deflate, directories) and 4.5 (zip64), APPNOTE 4.4.3.
PLAIN, ZIP64 = 20, 45
#: Version made by: Unix (3) in the high byte, so extractors apply the mode bits.
MADE_BY_UNIX = 3


@dataclass
class Member:
    """One entry, as its local header or its central directory record describes it."""

    name: str
    offset: int
    flags: int
    method: int
    dos_time: int
    dos_date: int
    crc: int
    compressed: int
    size: int
    mtime: int
    #: Central record only: the mode word and the MS-DOS attributes.
    external: int = 0
    #: Local header only: the entry's bytes, and whether the header announced zip64 sizes.
    content: bytes = b""
    local_zip64: bool = False

    def common(self) -> tuple[object, ...]:
        """The fields both halves hold, which must agree."""
        return (
            self.name, self.offset, self.flags, self.method, self.dos_time, self.dos_date,
            self.crc, self.compressed, self.size, self.mtime,
        )  # fmt: skip


@dataclass
class Directory:
    records: list[Member]
    start: int
    size: int
    zip64_end: bool


def extra_fields(extra: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    at = 0
    while at < len(extra):
        tag, size = struct.unpack_from("<HH", extra, at)
        assert tag not in fields, f"extra field {tag:#06x} twice"
        fields[tag] = extra[at + 4 : at + 4 + size]
        assert len(fields[tag]) == size, "extra field runs past its header"
        at += 4 + size
    return fields


def unix_time(fields: dict[int, bytes]) -> int:
    """The UT extra field (0x5455): flags 1 (modification time), then the signed time."""
    body = fields.pop(0x5455)
    assert len(body) == 5 and body[0] == 1
    return int(struct.unpack("<i", body[1:])[0])


def read_local(data: bytes) -> tuple[list[Member], int]:
    """Entries front to back as a streaming reader sees them; returns where they end."""
    members = []
    at = 0
    while data[at : at + 4] == b"PK\x03\x04":
        _, version, flags, method, dos_time, dos_date, crc, csize, usize, nlen, elen = (
            LOCAL.unpack_from(data, at)
        )
        name = data[at + LOCAL.size : at + LOCAL.size + nlen].decode("utf-8")
        fields = extra_fields(data[at + LOCAL.size + nlen : at + LOCAL.size + nlen + elen])
        mtime = unix_time(fields)
        zip64 = fields.pop(0x0001, None)
        assert not fields, f"{name}: unexpected extra fields {sorted(fields)}"
        assert version == (ZIP64 if zip64 is not None else PLAIN), name
        body = at + LOCAL.size + nlen + elen
        if method == DEFLATED:
            # Sizes unknown when the header was written: flag bit 3, zeros (or the zip64
            # markers), and the real values in a descriptor after the data.
            assert flags == UTF8 | DESCRIPTOR, name
            assert crc == 0, name
            if zip64 is not None:
                assert zip64 == bytes(16) and (csize, usize) == (MARK32, MARK32), name
            else:
                assert (csize, usize) == (0, 0), name
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            content = inflater.decompress(memoryview(data)[body:])
            # The deflate stream must end (a final block): nothing else tells a streaming
            # reader where the data stops.
            assert inflater.eof, f"{name}: the deflate stream does not end"
            end = len(data) - len(inflater.unused_data)
            shape = "<IIQQ" if zip64 is not None else "<IIII"
            signature, crc, csize, usize = struct.unpack_from(shape, data, end)
            assert signature == 0x08074B50, name
            assert csize == end - body, name
            following = end + struct.calcsize(shape)
        else:
            assert method == STORED and flags == UTF8 and zip64 is None, name
            assert usize == csize, name
            content = data[body : body + csize]
            following = body + csize
        assert usize == len(content), name
        assert crc == zlib.crc32(content), name
        members.append(
            Member(
                name, at, flags, method, dos_time, dos_date, crc, csize, usize, mtime,
                content=content, local_zip64=zip64 is not None,
            )
        )  # fmt: skip
        at = following
    return members, at


def read_directory(data: bytes, base: int = 0) -> Directory:
    """The end records and the central directory; ``data`` starts at archive offset ``base``
    and ends with the end record."""
    end = len(data) - END.size
    signature, disk, directory_disk, here, total, size, start, comment = END.unpack_from(data, end)
    assert (signature, disk, directory_disk, comment) == (0x06054B50, 0, 0, 0)
    zip64_end = MARK32 in (size, start) or 0xFFFF in (here, total)
    if zip64_end:
        # Every field that may overflow is the marker; the real values are in the zip64 record.
        assert (here, total, size, start) == (0xFFFF, 0xFFFF, MARK32, MARK32)
        locator = end - LOCATOR.size
        signature, disk, record, disks = LOCATOR.unpack_from(data, locator)
        assert (signature, disk, disks) == (0x07064B50, 0, 1)
        assert record - base == locator - END64.size
        signature, length, made, needed, disk, directory_disk, here, total, size, start = (
            END64.unpack_from(data, record - base)
        )
        assert (signature, length, disk, directory_disk) == (0x06064B50, END64.size - 12, 0, 0)
        assert needed == ZIP64 and made & 0xFF >= ZIP64
        assert start + size == record
    else:
        assert start + size == base + end
    assert here == total
    records = []
    at = start - base
    for _ in range(total):
        (
            signature, made, needed, flags, method, dos_time, dos_date, crc, csize, usize,
            nlen, elen, clen, disk, internal, external, offset,
        ) = CENTRAL.unpack_from(data, at)  # fmt: skip
        assert signature == 0x02014B50
        assert made >> 8 == MADE_BY_UNIX
        assert (clen, disk, internal) == (0, 0, 0), "no comment, one disk, not marked as text"
        name = data[at + CENTRAL.size : at + CENTRAL.size + nlen].decode("utf-8")
        fields = extra_fields(data[at + CENTRAL.size + nlen : at + CENTRAL.size + nlen + elen])
        mtime = unix_time(fields)
        assert needed == (ZIP64 if 1 in fields else PLAIN) <= made & 0xFF, name
        # Zip64 values in APPNOTE's order, each present only when its field holds the marker.
        zip64 = fields.pop(1, b"")
        values = iter(struct.unpack(f"<{len(zip64) // 8}Q", zip64))
        usize, csize, offset = (next(values) if v == MARK32 else v for v in (usize, csize, offset))
        assert next(values, None) is None and not fields, name
        records.append(
            Member(name, offset, flags, method, dos_time, dos_date, crc, csize, usize, mtime,
                   external=external)
        )  # fmt: skip
        at += CENTRAL.size + nlen + elen
    assert at == start - base + size, "the directory's size is that of its records"
    return Directory(records, start, size, zip64_end)


def read_zip(data: bytes) -> tuple[list[Member], Directory]:
    """Both halves of a whole archive, checked against each other."""
    members, local_end = read_local(data)
    directory = read_directory(data)
    assert directory.start == local_end, "the central directory follows the last entry"
    assert [r.common() for r in directory.records] == [m.common() for m in members]
    for member, record in zip(members, directory.records, strict=True):
        member.external = record.external
    return members, directory


def archive(root: Path) -> tuple[list[Member], Directory]:
    return read_zip(b"".join(stream_workspace(root, ArchiveStats(), workers=2)))


def dos_datetime(dos_time: int, dos_date: int) -> datetime.datetime:
    return datetime.datetime(
        (dos_date >> 9) + 1980,
        (dos_date >> 5) & 0xF,
        dos_date & 0x1F,
        dos_time >> 11,
        (dos_time >> 5) & 0x3F,
        (dos_time & 0x1F) * 2,
        tzinfo=datetime.UTC,
    )


def test_every_field_of_a_mixed_tree(tmp_path: Path) -> None:
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir").chmod(0o750)
    (tmp_path / "dir" / "code.py").write_bytes(b"print('hi')\n" * 300)
    (tmp_path / "dir" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "dir" / "run.sh").chmod(0o755)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "link").symlink_to("dir/code.py")
    os.link(tmp_path / "dir" / "code.py", tmp_path / "twin")
    # Odd seconds (DOS time keeps even ones), a time before 1980 and one past 2038.
    times = {"dir/code.py": 1_600_000_001, "dir/run.sh": 86_400, "empty": 2**32 - 7}
    for name, when in times.items():
        os.utime(tmp_path / name, (when, when))
    before = int(time.time())
    found, directory = archive(tmp_path)
    after = int(time.time())
    members = {m.name: m for m in found}
    assert [m.name for m in found] == [
        "dir/",
        "dir/code.py",
        "dir/run.sh",
        "dir/sub/",
        "empty",
        "link",
        "twin",
        MANIFEST_NAME,
    ]
    assert not directory.zip64_end
    for name, when in times.items():
        member = members[name]
        clamped = zip_time(when)
        assert member.mtime == int(clamped.timestamp()), name
        assert dos_datetime(member.dos_time, member.dos_date) == clamped.replace(
            second=clamped.second // 2 * 2
        ), name
    assert dos_datetime(members["dir/code.py"].dos_time, members["dir/code.py"].dos_date) == (
        datetime.datetime(2020, 9, 13, 12, 26, 40, tzinfo=datetime.UTC)
    )
    assert before <= members[MANIFEST_NAME].mtime <= after
    # The mode word of the entry's kind, and MS-DOS's directory bit for directories.
    assert members["dir/"].external == (stat.S_IFDIR | 0o750) << 16 | 0x10
    assert members["dir/code.py"].external == (stat.S_IFREG | 0o644) << 16
    assert members["dir/run.sh"].external == (stat.S_IFREG | 0o755) << 16
    assert members["link"].external == (stat.S_IFLNK | 0o777) << 16
    assert members["twin"].external == (stat.S_IFLNK | 0o777) << 16
    assert members["link"].content == b"dir/code.py" == members["twin"].content
    # Files with data are deflated; what is at hand (directories, links, empty files) stored.
    deflated = {m.name for m in found if m.method == DEFLATED}
    assert deflated == {"dir/code.py", "dir/run.sh", MANIFEST_NAME}
    assert members["dir/code.py"].content == b"print('hi')\n" * 300
    assert members["dir/code.py"].compressed < 100
    assert not any(m.local_zip64 for m in found)


def test_a_file_of_the_zip64_size_streams_8_byte_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that may pass 4 GiB while deflated announces zip64 in its local header, so a
    streaming reader expects the 8-byte sizes of its descriptor (the threshold is lowered
    here: the real one takes 4 GiB)."""
    monkeypatch.setattr(ziparchive, "_ZIP64_FILE", 4096)
    (tmp_path / "at").write_bytes(b"a" * 4096)
    (tmp_path / "below").write_bytes(b"b" * 4095)
    found, _ = archive(tmp_path)
    zip64 = {m.name: m.local_zip64 for m in found}
    assert zip64 == {"at": True, "below": False, MANIFEST_NAME: False}
    assert [m.content for m in found[:2]] == [b"a" * 4096, b"b" * 4095]


class Capture:
    """Keeps what a writer emits, except the payload of large entries (not kept, only counted):
    the archive offsets reach 4 GiB without 4 GiB in memory."""

    def __init__(self, start: int) -> None:
        self.offset = start
        self.kept: list[tuple[int, bytes]] = []

    def __call__(self, data: bytes) -> None:
        if len(data) < 1024 * 1024:
            self.kept.append((self.offset, bytes(data)))
        self.offset += len(data)

    def tail(self) -> tuple[int, bytes]:
        """The archive offset and the bytes of the writes after the last large one."""
        contiguous = []
        at = self.offset
        for offset, data in reversed(self.kept):
            if offset + len(data) != at:
                break
            contiguous.append(data)
            at = offset
        return at, b"".join(reversed(contiguous))


def run(steps: Iterator[None]) -> None:
    for _ in steps:
        pass


def test_an_entry_at_the_4_gib_marks_moves_them_to_zip64_fields() -> None:
    """An offset, size and compressed size of exactly 0xFFFFFFFF cannot be written as such: that
    value is the marker that sends a reader to the zip64 extra field."""
    capture = Capture(MARK32)
    writer = ziparchive._Writer(capture, None, offset=MARK32)
    block = memoryview(bytes(64 * 1024 * 1024))

    def chunks() -> Iterator[bytes]:
        left = MARK32
        while left:
            yield block[: min(left, len(block))]  # type: ignore[misc]
            left -= min(left, len(block))

    entry = ziparchive._Entry("big", stat.S_IFREG | 0o644, 1_600_000_000.0, size=MARK32)
    run(writer.entry_streamed(entry, chunks, lambda: 0x1234ABCD))
    run(writer.finish())
    header = capture.kept[0][1]
    assert capture.kept[0][0] == MARK32
    assert LOCAL.unpack_from(header)[1] == ZIP64
    base, tail = capture.tail()
    descriptor = struct.unpack_from("<IIQQ", tail)
    assert descriptor == (0x08074B50, 0x1234ABCD, MARK32, MARK32)
    assert base == MARK32 + len(header) + MARK32
    directory = read_directory(tail, base)
    assert directory.zip64_end
    assert directory.start == base + 24
    [record] = directory.records
    assert (record.name, record.offset, record.size, record.compressed, record.crc) == (
        "big",
        MARK32,
        MARK32,
        MARK32,
        0x1234ABCD,
    )


@pytest.mark.parametrize(("room", "zip64_end"), [(0, True), (1, False)])
def test_a_directory_from_the_4_gib_mark_on_has_a_zip64_end(room: int, zip64_end: bool) -> None:
    """The central directory's offset goes to the zip64 end record from 0xFFFFFFFF on: the
    plain end record can hold 0xFFFFFFFE, not the marker."""
    entry = ziparchive._Entry("dir/", stat.S_IFDIR | 0o755, 1_600_000_000.0)
    length = LOCAL.size + len("dir/") + 9  # the header, its name and the UT extra field
    start = MARK32 - length - room
    capture = Capture(start)
    writer = ziparchive._Writer(capture, None, offset=start)
    writer.entry_known(entry)
    run(writer.finish())
    data = b"".join(data for _, data in capture.kept)
    members, local_end = read_local(data)
    directory = read_directory(data, start)
    assert directory.start == start + local_end == MARK32 - room
    assert directory.zip64_end is zip64_end
    assert [r.offset for r in directory.records] == [start]
    assert [m.name for m in members] == ["dir/"]
