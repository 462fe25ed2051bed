"""The workspace ZIP stream: entry names, modes, symlinks, empty dirs, timestamps (no network)."""

from __future__ import annotations

import datetime
import io
import os
import stat
import zipfile
import zlib
from pathlib import Path

import pytest
from codingjob_operator import ziparchive
from codingjob_operator.ziparchive import (
    ArchiveStats,
    UnsafeNameError,
    deflate_level,
    entry_name,
    stream_workspace,
    zip_time,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def build_zip(root: Path) -> tuple[zipfile.ZipFile, ArchiveStats]:
    stats = ArchiveStats()
    data = b"".join(stream_workspace(root, stats))
    return zipfile.ZipFile(io.BytesIO(data)), stats


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
    [[], [""], [".."], ["a", ".."], ["."], ["/etc"], ["a/b"], ["a\0b"], ["", "etc"]],
)
def test_entry_name_rejects_escapes(parts: list[str]) -> None:
    with pytest.raises(UnsafeNameError):
        entry_name(parts)


def test_non_utf8_name_keeps_a_visible_escape() -> None:
    raw = os.fsdecode(b"caf\xe9.txt")
    assert entry_name([raw]) == "caf\\xe9.txt"


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
    assert set(infos) == {
        "deep/",
        "deep/er/",
        "deep/er/est/",
        "empty/",
        "link-dangling",
        "link-dir",
        "link-inside",
        "link-outside",
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
    assert stats.files == 5
    assert stats.symlinks == 4
    assert stats.dirs == 6
    assert stats.entries == 9
    assert stats.skipped == ["fifo"]


def test_modes_are_kept(workspace: Path) -> None:
    archive, _ = build_zip(workspace)
    assert unix_mode(archive.getinfo("run.sh")) == stat.S_IFREG | 0o755
    assert unix_mode(archive.getinfo("private")) == stat.S_IFREG | 0o600
    assert stat.S_ISDIR(unix_mode(archive.getinfo("empty/")))
    assert archive.getinfo("empty/").is_dir()


def test_symlinks_are_stored_as_links_not_followed(workspace: Path) -> None:
    archive, _ = build_zip(workspace)
    for name, target in [
        ("link-inside", b"src/pkg/main.py"),
        ("link-dir", b"src"),
        ("link-outside", b"/etc/passwd"),
        ("link-dangling", b"../nowhere"),
    ]:
        info = archive.getinfo(name)
        assert stat.S_ISLNK(unix_mode(info)), name
        assert archive.read(name) == target
    # The directory behind link-dir is archived once, under its real name only.
    assert not any(n.startswith("link-dir/") for n in archive.namelist())


def test_names_are_relative_and_safe(workspace: Path) -> None:
    archive, _ = build_zip(workspace)
    for name in archive.namelist():
        assert not name.startswith("/")
        assert ".." not in name.split("/")


def test_empty_workspace_is_a_valid_empty_zip(tmp_path: Path) -> None:
    archive, stats = build_zip(tmp_path)
    assert archive.namelist() == []
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
    assert {n: archive.read(n) for n in archive.namelist()} == files


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
        (b"", 6),
        (b"\0" * (1024 * 1024), 6),
        (os.urandom(1024 * 1024), 0),
        (os.urandom(100 * 1024), 6),  # small files are not sampled
        (b"a" * 512 * 1024 + os.urandom(512 * 1024), 6),  # compressible at the start
    ],
)
def test_deflate_level_from_samples(tmp_path: Path, content: bytes, level: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert deflate_level(fd, len(content)) == level
    finally:
        os.close(fd)


def test_files_beyond_4_gib_use_zip64(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sparse zeros at deflate level 1: no disk space, little CPU, a small stream.
    monkeypatch.setattr(ziparchive, "DEFLATE_LEVEL", 1)
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
    assert len(archive.infolist()) == count + count // 1000
