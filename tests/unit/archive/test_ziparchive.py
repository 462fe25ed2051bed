"""The workspace ZIP stream: names, modes, links, sparse files, manifest, limits (no network)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import socket
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from codingjob_operator import ziparchive
from codingjob_operator.ziparchive import (
    MANIFEST_NAME,
    ArchiveStats,
    ArchiveTooLargeError,
    FoldedNames,
    UnsafeNameError,
    choose_level,
    crc32_combine,
    entry_name,
    link_inside,
    safe_component,
    stream_workspace,
    unique_component,
    zip_time,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def build_zip(root: Path, **kwargs: int) -> tuple[zipfile.ZipFile, ArchiveStats]:
    stats = ArchiveStats()
    data = b"".join(stream_workspace(root, stats, **kwargs))
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive, stats


def files_of(archive: zipfile.ZipFile) -> set[str]:
    """Entry names without the manifest."""
    return set(archive.namelist()) - {MANIFEST_NAME}


def manifest(archive: zipfile.ZipFile) -> tuple[dict[str, object], list[dict[str, str]]]:
    """The manifest's summary line and its records."""
    head, *lines = archive.read(MANIFEST_NAME).decode("ascii").splitlines()
    return json.loads(head), [json.loads(line) for line in lines]


def unix_mode(info: zipfile.ZipInfo) -> int:
    return info.external_attr >> 16


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (["a"], "a"),
        (["dir", "sub", "file.txt"], "dir/sub/file.txt"),
        (["üñí", "日本語.md"], "üñí/日本語.md"),
        (["with space", "-dash", ".hidden"], "with space/-dash/.hidden"),
    ],
)
def test_entry_name_joins_components(parts: list[str], expected: str) -> None:
    assert entry_name(parts) == expected


@pytest.mark.parametrize(
    "parts",
    [[], [""], [".."], ["a", ".."], ["."], ["/etc"], ["a/b"], ["a\0b"], ["", "etc"], ["a\\b"]],
)
def test_entry_name_rejects_escapes(parts: list[str]) -> None:
    with pytest.raises(UnsafeNameError):
        entry_name(parts)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("plain.txt", "plain.txt"),
        ("日本語.md", "日本語.md"),
        (os.fsdecode(b"caf\xe9.txt"), "caf%E9.txt"),
        (os.fsdecode(b"\x80\xff"), "%80%FF"),  # the ends of the range of undecodable bytes
        ("a\\b", "a_b"),
        ("c:evil", "c_evil"),
        ('q"u<o>t|e?*', "q_u_o_t_e__"),
        ("tab\there\nnl", "tab_here_nl"),
        ("\x7fdel", "_del"),
        ("trailing.", "trailing_"),
        ("space ", "space_"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("Com1.log", "_Com1.log"),
        ("lpt9", "_lpt9"),
        ("console", "console"),
        (".hidden", ".hidden"),
    ],
)
def test_names_are_made_portable(name: str, safe: str) -> None:
    assert safe_component(name) == safe


def test_long_names_are_cut_with_a_hash_of_the_original() -> None:
    a, b = safe_component("x" * 300), safe_component("x" * 299 + "y")
    # As much of the name as 255 bytes hold: 242 of it, "~" and 12 hex digits of its hash.
    assert a == "x" * 242 + "~" + hashlib.sha256(b"x" * 300).hexdigest()[:12]
    assert len(b.encode()) == 255
    assert a != b
    assert len(safe_component("é" * 200).encode()) <= 255


@pytest.mark.parametrize("table", [set, FoldedNames], ids=["set", "digests"])
def test_collisions_up_to_case_get_a_number(table: Callable[[], Any]) -> None:
    used = table()
    assert [unique_component(n, used) for n in ["A.txt", "a.txt", "a.TXT", "b", "B"]] == [
        "A.txt",
        "a~1.txt",
        "a~2.TXT",
        "b",
        "B~1",
    ]
    assert len(used) == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="aAbBßSs.~1é\udce9", max_size=6), max_size=300))
def test_folded_names_rename_exactly_as_a_set_does(names: list[str]) -> None:
    """Through its growth from 16 slots on: digests lose no collision (and add none here)."""
    as_set: set[str] = set()
    folded = FoldedNames()
    assert [unique_component(n, folded) for n in names] == [
        unique_component(n, as_set) for n in names
    ]
    assert len(folded) == len(as_set)


@pytest.mark.parametrize(
    ("mtime", "expected"),
    [
        (0, datetime.datetime(1980, 1, 1, tzinfo=datetime.UTC)),
        (1_700_000_000.7, datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)),
        (4_000_000_000, datetime.datetime(2038, 1, 19, tzinfo=datetime.UTC)),
    ],
)
def test_zip_time_clamps_to_what_zip_can_hold(mtime: float, expected: datetime.datetime) -> None:
    assert zip_time(mtime) == expected


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "main.py").write_text("print('hi')\n" * 100)
    (root / "empty").mkdir()
    (root / "deep" / "er" / "est").mkdir(parents=True)
    (root / "zero").write_bytes(b"")
    (root / "ünïcødé 文件.txt").write_text("unicode\n")
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho ok\n")
    run.chmod(0o755)
    private = root / "private"
    private.write_text("secret-ish")
    private.chmod(0o600)
    (root / "link-inside").symlink_to("src/pkg/main.py")
    (root / "link-dir").symlink_to("src")
    (root / "link-outside").symlink_to("/etc/passwd")
    (root / "link-dangling").symlink_to("../nowhere")
    os.mkfifo(root / "fifo")
    return root


def test_tree_round_trips(workspace: Path) -> None:
    archive, stats = build_zip(workspace)
    infos = {info.filename: info for info in archive.infolist()}
    assert files_of(archive) == {
        "deep/",
        "deep/er/",
        "deep/er/est/",
        "empty/",
        "link-dir",
        "link-inside",
        "private",
        "run.sh",
        "src/",
        "src/pkg/",
        "src/pkg/main.py",
        "zero",
        "ünïcødé 文件.txt",
    }
    assert archive.read("src/pkg/main.py") == (workspace / "src/pkg/main.py").read_bytes()
    assert archive.read("zero") == b""
    assert archive.read("ünïcødé 文件.txt") == b"unicode\n"
    assert infos["src/pkg/main.py"].compress_type == zipfile.ZIP_DEFLATED
    assert (stats.files, stats.symlinks, stats.dirs, stats.entries) == (5, 2, 6, 7)
    assert stats.skipped == 3
    head, records = manifest(archive)
    assert head["skipped"] == 3
    assert {r["name"]: r["kind"] for r in records} == {
        "fifo": "skipped",
        "link-outside": "skipped",
        "link-dangling": "skipped",
    }


def test_modes_are_kept(workspace: Path) -> None:
    archive, _ = build_zip(workspace)
    assert unix_mode(archive.getinfo("run.sh")) == stat.S_IFREG | 0o755
    assert unix_mode(archive.getinfo("private")) == stat.S_IFREG | 0o600
    assert stat.S_ISDIR(unix_mode(archive.getinfo("empty/")))
    assert archive.getinfo("empty/").is_dir()


def test_symlinks_inside_are_stored_as_links_not_followed(workspace: Path) -> None:
    archive, _ = build_zip(workspace)
    for name, target in [("link-inside", b"src/pkg/main.py"), ("link-dir", b"src")]:
        info = archive.getinfo(name)
        assert stat.S_ISLNK(unix_mode(info)), name
        assert archive.read(name) == target
    # The directory behind link-dir is archived once, under its real name only.
    assert not any(n.startswith("link-dir/") for n in archive.namelist())


@pytest.mark.parametrize(
    ("links", "kept"),
    [
        ({"l": "a/b"}, {"l"}),
        ({"l": "./a/../a/b"}, {"l"}),
        ({"l": "missing/file"}, {"l"}),  # dangling but inside
        ({"l": "/etc/passwd"}, set()),
        ({"l": "../outside"}, set()),
        ({"l": "a/../../outside"}, set()),
        # Lexically inside ("a/x"), but up goes through a link to "..": outside for the kernel.
        ({"up": "..", "l": "up/../x"}, set()),
        ({"a/up": "..", "l": "a/up/../x"}, {"a/up"}),
        ({"a/up": "..", "l": "a/up/a/b"}, {"l", "a/up"}),
        ({"l": "l"}, set()),  # a loop resolves nowhere
        ({"l": "a/with:colon"}, set()),  # not portable
    ],
)
def test_symlinks_are_kept_only_when_they_resolve_inside(
    tmp_path: Path, links: dict[str, str], kept: set[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_text("b")
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    archive, stats = build_zip(tmp_path)
    stored = {n for n in files_of(archive) if stat.S_ISLNK(unix_mode(archive.getinfo(n)))}
    assert stored == kept
    assert stats.skipped == len(links) - len(kept)


def test_link_resolution_follows_links_met_inside(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "back").symlink_to("..")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert link_inside(fd, ("d",), "e")
        assert link_inside(fd, ("d",), "back/d/e")
        assert not link_inside(fd, ("d",), "back/..")
        assert not link_inside(fd, ("d", "e"), "../../..")
    finally:
        os.close(fd)


def test_hostile_names_are_renamed_and_listed_with_their_original(tmp_path: Path) -> None:
    hostile = [
        b"a\\..\\..\\evil",
        b"c:\\win",
        b"CON",
        b"new\nline",
        b"caf\xe9",
        b"x" * 255,
        b"Dup",
        b"dup",
    ]
    for raw in hostile:
        (tmp_path / os.fsdecode(raw)).write_bytes(raw)
    archive, stats = build_zip(tmp_path)
    names = files_of(archive)
    assert len(names) == len(hostile)
    for name in names:
        assert not set(name) & set('\\:*?"<>|') and name.isprintable(), name
        assert ".." not in name.split("/")
    _, records = manifest(archive)
    renamed = {r["original"]: r["name"] for r in records if r["kind"] == "renamed"}
    # "Dup" keeps its name, and 255 bytes of "x" are still a valid name.
    assert stats.renamed == len(renamed) == len(hostile) - 2
    for raw in hostile:
        original = os.fsdecode(raw)
        assert archive.read(renamed.get(original, original)) == raw
    assert renamed["dup"] == "dup~1"


def test_special_files_are_skipped_and_listed(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    (tmp_path / "ok").write_text("ok")
    archive, stats = build_zip(tmp_path)
    assert files_of(archive) == {"ok"}
    _, records = manifest(archive)
    assert sorted((r["name"], r["reason"]) for r in records) == [
        ("fifo", "special file (p)"),
        ("sock", "special file (s)"),
    ]
    assert stats.skipped == 2


def test_unreadable_files_are_skipped_and_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "locked").write_text("x")
    (tmp_path / "open").write_text("y")
    real_open = os.open

    def refuse(path: str, flags: int, *args: object, **kwargs: object) -> int:
        # chmod 0 does not stop root, which CI may be: refuse the open itself.
        if path == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    archive, stats = build_zip(tmp_path)
    assert files_of(archive) == {"open"}
    _, records = manifest(archive)
    assert [(r["name"], r["kind"]) for r in records] == [("locked", "skipped")]
    assert "Permission denied" in records[0]["reason"]
    assert stats.skipped == 1


def test_hard_links_store_the_data_once(tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "first").write_bytes(data)
    for i in range(1000):
        os.link(tmp_path / "a" / "first", tmp_path / f"link{i:04}")
    archive, stats = build_zip(tmp_path)
    assert (stats.files, stats.hardlinks, stats.bytes_in) == (1, 1000, len(data))
    total = sum(info.compress_size for info in archive.infolist())
    assert total < len(data) * 1.01 + 100_000
    link = archive.getinfo("link0000")
    assert stat.S_ISLNK(unix_mode(link))
    assert archive.read("link0000") == b"a/first"
    _, records = manifest(archive)
    assert sum(r["kind"] == "hardlink" for r in records) == 1000


def test_hard_link_in_a_subdirectory_points_up(tmp_path: Path) -> None:
    (tmp_path / "z").mkdir()
    (tmp_path / "a").write_text("x")
    os.link(tmp_path / "a", tmp_path / "z" / "b")
    archive, _ = build_zip(tmp_path)
    assert archive.read("z/b") == b"../a"


def test_sparse_files_are_bounded_by_what_is_allocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ziparchive, "HOLE_LIMIT", 1024 * 1024)
    with (tmp_path / "8E").open("wb") as out:
        try:
            out.truncate(8 * 1024**6 - 1)  # `truncate -s 8E`: nothing allocated
        except OSError:  # EFBIG: this file system's limit is lower
            out.truncate(2**40)
    with (tmp_path / "small-holes").open("wb") as out:
        out.write(b"head")
        out.truncate(512 * 1024)
    with (tmp_path / "data-then-hole").open("wb") as out:
        out.write(os.urandom(64 * 1024))
        out.seek(10 * 1024 * 1024)
        out.write(b"tail")
    archive, stats = build_zip(tmp_path)
    assert files_of(archive) == {"small-holes"}
    assert archive.read("small-holes") == b"head" + bytes(512 * 1024 - 4)
    assert stats.bytes_in == 512 * 1024
    _, records = manifest(archive)
    assert {r["name"] for r in records} == {"8E", "data-then-hole"}
    assert all("sparse file" in r["reason"] for r in records)


def test_data_bytes_are_the_data_extents_of_a_sparse_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ziparchive, "HOLE_LIMIT", 64 * 1024)  # measured, not taken as it is
    with (tmp_path / "sparse").open("wb") as out:
        out.write(b"a" * 4096)
        out.seek(1024 * 1024)
        out.write(b"b" * 4096)
        out.truncate(3 * 1024 * 1024)
    fd = os.open(tmp_path / "sparse", os.O_RDONLY)
    try:
        info = os.fstat(fd)
        # Never below what is allocated (compressing file systems count fewer blocks).
        assert ziparchive.data_bytes(fd, info) == max(2 * 4096, info.st_blocks * 512)
    finally:
        os.close(fd)


def test_the_manifest_name_is_kept_free(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("the agent's own")
    archive, _ = build_zip(tmp_path)
    renamed = MANIFEST_NAME.replace(".jsonl", "~1.jsonl")
    assert archive.read(renamed) == b"the agent's own"
    head, _ = manifest(archive)
    assert head["renamed"] == 1


def test_size_cap_stops_the_stream(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(os.urandom(3 * 1024 * 1024))
    with pytest.raises(ArchiveTooLargeError, match="2097152 bytes"):
        build_zip(tmp_path, max_size=2 * 1024 * 1024)
    archive, _ = build_zip(tmp_path, max_size=4 * 1024 * 1024)
    assert len(archive.read("blob")) == 3 * 1024 * 1024


def test_deep_trees_are_walked_without_recursion_and_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ziparchive, "MAX_DEPTH", 40)
    path = tmp_path
    for _ in range(60):
        path = path / "d"
        path.mkdir()
    archive, stats = build_zip(tmp_path)
    assert stats.dirs == 40
    assert stats.skipped == 1
    assert max(n.count("/") for n in archive.namelist()) == 40


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 1024 * 1024 + 1, 5 * 1024 * 1024 + 333])
def test_files_in_many_pieces_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(ziparchive, "PIECE_SIZE", 256 * 1024)
    half = size // 2
    data = (b"text line %d\n" * (half // 10 + 1))[:half] + os.urandom(size - half)
    (tmp_path / "f").write_bytes(data)
    archive, stats = build_zip(tmp_path, workers=3)
    assert archive.read("f") == data
    assert zlib.crc32(data) == archive.getinfo("f").CRC
    assert stats.bytes_in == size


@settings(max_examples=60, deadline=None)
@given(a=st.binary(max_size=3000), b=st.binary(max_size=3000))
def test_crc32_combine_matches_zlib(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_names_are_relative_and_safe(workspace: Path) -> None:
    archive, _ = build_zip(workspace)
    for name in archive.namelist():
        assert not name.startswith("/")
        assert ".." not in name.split("/")


def test_empty_workspace_is_a_valid_zip_with_only_the_manifest(tmp_path: Path) -> None:
    archive, stats = build_zip(tmp_path)
    assert archive.namelist() == [MANIFEST_NAME]
    assert stats.entries == 0


def test_nothing_is_written_to_the_workspace(workspace: Path) -> None:
    before = {p: p.lstat() for p in workspace.rglob("*")}
    build_zip(workspace)
    after = {p: p.lstat() for p in workspace.rglob("*")}
    assert before.keys() == after.keys()
    for path, info in before.items():
        assert (info.st_mtime_ns, info.st_size) == (after[path].st_mtime_ns, after[path].st_size)


def test_file_timestamps_are_kept(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    os.utime(tmp_path / "f", (1_600_000_000, 1_600_000_000))
    archive, _ = build_zip(tmp_path)
    assert archive.getinfo("f").date_time == (2020, 9, 13, 12, 26, 40)


names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=40
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)


@settings(max_examples=40, deadline=None)
@given(files=st.dictionaries(names, st.binary(max_size=4096), max_size=8))
def test_any_file_names_and_contents_round_trip(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]
) -> None:
    root = tmp_path_factory.mktemp("prop")
    for name, content in files.items():
        (root / name).write_bytes(content)
    archive, stats = build_zip(root)
    assert stats.files == len(files)
    _, records = manifest(archive)
    renamed = {r["name"]: r["original"] for r in records if r["kind"] == "renamed"}
    assert {renamed.get(n, n): archive.read(n) for n in files_of(archive)} == files


def test_incompressible_files_are_stored_at_level_0_and_still_round_trip(tmp_path: Path) -> None:
    random_data = os.urandom(2 * 1024 * 1024)
    text = b"def f(x):\n    return x + 1\n" * 40_000
    (tmp_path / "blob.bin").write_bytes(random_data)
    (tmp_path / "code.py").write_bytes(text)
    archive, _ = build_zip(tmp_path)
    blob, code = archive.getinfo("blob.bin"), archive.getinfo("code.py")
    # Stored blocks: a few bytes of framing per 64 KiB, no attempt to squeeze.
    assert blob.file_size <= blob.compress_size <= blob.file_size * 1.001
    assert code.compress_size < code.file_size / 20
    assert archive.read("blob.bin") == random_data
    assert archive.read("code.py") == text


@pytest.mark.parametrize(
    ("content", "level"),
    [
        (b"\0" * 16384, ziparchive.DEFLATE_LEVEL),
        (b"def f(x):\n    return x\n" * 1000, ziparchive.DEFLATE_LEVEL),
        (os.urandom(16384), 0),
    ],
    # Named: random bytes in the id would differ between the processes of a parallel run.
    ids=["zeros", "source", "random"],
)
def test_level_from_a_sample(content: bytes, level: int) -> None:
    assert choose_level(content) == level


def test_files_beyond_4_gib_use_zip64(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sparse zeros: no disk space, little CPU, a small stream (holes allowed for this test).
    monkeypatch.setattr(ziparchive, "HOLE_LIMIT", 8 * 1024**3)
    size = 4 * 1024**3 + 12345
    with (tmp_path / "huge.img").open("wb") as out:
        out.truncate(size)
    (tmp_path / "after.txt").write_text("still here\n")
    archive, stats = build_zip(tmp_path)
    huge = archive.getinfo("huge.img")
    assert huge.file_size == size
    assert stats.bytes_in == size + len("still here\n")
    assert archive.read("after.txt") == b"still here\n"
    block = bytes(64 * 1024 * 1024)
    crc = 0
    for _ in range(size // len(block)):
        crc = zlib.crc32(block, crc)
    assert zlib.crc32(block[: size % len(block)], crc) == huge.CRC


def test_more_than_65535_entries_use_a_zip64_directory(tmp_path: Path) -> None:
    # node_modules trees easily hold this many files.
    count = 70_000
    for i in range(count // 1000):
        sub = tmp_path / f"d{i}"
        sub.mkdir()
        for j in range(1000):
            (sub / str(j)).touch()
    archive, stats = build_zip(tmp_path)
    assert stats.files == count
    assert len(archive.infolist()) == count + count // 1000 + 1


def test_a_large_file_streams_in_small_chunks(tmp_path: Path) -> None:
    """The stream never holds a large file whole: chunks stay near CHUNK_SIZE."""
    data = os.urandom(24 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    stats = ArchiveStats()
    sizes = []
    parts = []
    for chunk in stream_workspace(tmp_path, stats):
        sizes.append(len(chunk))
        parts.append(chunk)
    assert max(sizes) <= ziparchive.CHUNK_SIZE + ziparchive.PIECE_SIZE + 64 * 1024
    assert len(sizes) >= 12
    archive = zipfile.ZipFile(io.BytesIO(b"".join(parts)))
    assert archive.read("big.bin") == data


def test_entries_written_at_once_are_streamed_in_small_chunks(tmp_path: Path) -> None:
    """Directories and empty files (written without a compressing thread) do not pile up in
    the stream's buffer until the end: at a million files that buffer was 200 MiB."""
    for i in range(40):
        sub = tmp_path / f"d{i:02d}"
        sub.mkdir()
        for j in range(1500):
            os.mknod(sub / f"{j:04d}")
    stats = ArchiveStats()
    sizes = [len(chunk) for chunk in stream_workspace(tmp_path, stats)]
    assert stats.files == 60_000
    assert sum(sizes) > 5 * ziparchive.CHUNK_SIZE  # 2.8 MiB of local headers, then the rest
    # A chunk is emitted once CHUNK_SIZE is reached; the last write may add up to one more.
    assert max(sizes) < 2 * ziparchive.CHUNK_SIZE


def _listing_tree(root: Path) -> None:
    """Directories of mixed names: case collisions, non-UTF-8 bytes, renames, nesting."""
    names = [f"n{i:03d}" for i in range(0, 120, 7)] + ["Zz", "zZ", "a:b", "a_b", "ÉTÉ", "été"]
    names += [os.fsdecode(b"x\xe9y"), os.fsdecode(b"x%E9y"), "~", "a.b", "A.B", "a~1.b"]
    for sub in ["", "big", "big/inner", "big/inner/deeper", "small"]:
        (root / sub).mkdir(exist_ok=True)
        for name in names:
            (root / sub / name).write_bytes(f"{sub}/{name}".encode("utf-8", "surrogateescape"))


def test_listings_sorted_on_disk_give_the_same_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _listing_tree(tmp_path)
    expected, expected_stats = build_zip(tmp_path)
    # Runs of 4 names, at most 10 names in memory: the parent listings fill the budget, so
    # the deeper ones are merged from disk, even small ones.
    monkeypatch.setattr(ziparchive, "LISTING_MEMORY_NAMES", 10)
    monkeypatch.setattr(ziparchive, "SORT_RUN_NAMES", 4)
    monkeypatch.setattr(ziparchive, "SORT_READ_BYTES", 7)
    spilled, spilled_stats = build_zip(tmp_path)
    assert spilled.namelist() == expected.namelist()
    assert spilled_stats == expected_stats
    for info in expected.infolist():
        if info.filename != MANIFEST_NAME:
            assert spilled.read(info.filename) == expected.read(info.filename)
    assert manifest(spilled)[1] == manifest(expected)[1]
    assert expected_stats.renamed > 5
