"""ZIP round trips over generated workspace trees, through the public ziparchive API: nested
and empty directories, file modes and times, symlinks pointing inside, outside and nowhere,
non-UTF-8 names and sparse files. The expected entries come from an independent walk of the
tree with lstat/readlink/realpath, not from the archiver's own walk; only the portable spelling
of each name component comes from the archiver's public (separately tested) name functions.
"""

from __future__ import annotations

import datetime
import errno
import io
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from codingjob_operator.ziparchive import (
    MANIFEST_NAME,
    ArchiveStats,
    safe_component,
    stream_workspace,
    unique_component,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

Entry = tuple[int, bytes, tuple[int, ...] | None]

utf8_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\\\0"), min_size=1, max_size=12
).filter(lambda n: n not in (".", ".."))


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


#: Names a Linux filesystem takes but UTF-8 cannot spell (they reach Python as surrogates).
raw_names = (
    st.builds(
        lambda head, bad, tail: head.encode() + bytes([bad]) + tail.encode(),
        st.text(alphabet="abcé-_. ", max_size=5),
        st.sampled_from([0x80, 0xBF, 0xC0, 0xE9, 0xFE, 0xFF]),
        st.text(alphabet="xyz文", max_size=5),
    )
    .filter(_not_utf8)
    .map(os.fsdecode)
)
names = st.one_of(utf8_names, utf8_names, raw_names)
#: Even seconds from 1980 on: what the DOS date field can hold exactly.
mtimes = st.integers(315_532_800 // 2, 2_100_000_000 // 2).map(lambda t: t * 2)

files = st.tuples(
    st.just("file"),
    st.binary(max_size=2048),
    st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444]),
    st.one_of(st.none(), st.integers(1, 4 * 1024 * 1024)),  # sparse: the size with a hole
    mtimes,
)
links = st.tuples(
    st.just("link"),
    st.one_of(
        st.sampled_from(["/etc/passwd", "/", "../../outside", "nowhere", ".", "sub/../x"]),
        names,
    ),
)
trees = st.recursive(
    st.one_of(files, files, links),
    lambda children: st.tuples(
        st.just("dir"),
        st.sampled_from([0o755, 0o700, 0o750]),
        st.dictionaries(names, children, max_size=4),
    ),
    max_leaves=20,
)
roots = st.dictionaries(names, trees, max_size=6)


def make(path: Path, node: tuple[Any, ...]) -> None:
    kind = node[0]
    if kind == "dir":
        path.mkdir()
        for name, child in node[2].items():
            make(path / name, child)
        path.chmod(node[1])
    elif kind == "link":
        path.symlink_to(node[1])
    else:
        _, data, mode, sparse, mtime = node
        with path.open("wb") as out:
            if sparse is not None:
                out.truncate(sparse)
                out.seek(sparse // 2)
            out.write(data)
        path.chmod(mode)
        os.utime(path, (mtime, mtime))


def link_stays(root: Path, link: Path) -> bool:
    """Whether a symlink resolves inside the workspace (a loop never does) through names the
    archive keeps as they are (a renamed component would leave the link dangling)."""
    target = os.readlink(link)
    if any(p not in ("", ".", "..") and safe_component(p) != p for p in target.split("/")):
        return False
    try:
        os.stat(link)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return False
    resolved = os.path.realpath(link)
    top = os.path.realpath(root)
    return resolved == top or resolved.startswith(top + os.sep)


def expected(root: Path) -> tuple[dict[str, Entry], int]:
    """name → (mode word, content, date_time of files) from lstat and readlink, and how many
    symlinks must be left out because they lead outside the workspace."""
    found: dict[str, Entry] = {}
    left_out = 0

    def walk(directory: Path, prefix: tuple[str, ...]) -> None:
        nonlocal left_out
        used = {MANIFEST_NAME.casefold()} if not prefix else set()
        for child_name in sorted(os.listdir(directory)):
            child = directory / child_name
            info = child.lstat()
            if stat.S_ISLNK(info.st_mode) and not link_stays(root, child):
                left_out += 1
                continue
            parts = (*prefix, unique_component(safe_component(child_name), used))
            name = "/".join(parts)
            if stat.S_ISLNK(info.st_mode):
                found[name] = (stat.S_IFLNK | 0o777, os.fsencode(os.readlink(child)), None)
            elif stat.S_ISDIR(info.st_mode):
                found[name + "/"] = (info.st_mode, b"", None)
                walk(child, parts)
            else:
                when = datetime.datetime.fromtimestamp(info.st_mtime, datetime.UTC)
                found[name] = (info.st_mode, child.read_bytes(), when.timetuple()[:6])

    walk(root, ())
    return found, left_out


def archived(archive: zipfile.ZipFile) -> dict[str, Entry]:
    result: dict[str, Entry] = {}
    for info in archive.infolist():
        mode = info.external_attr >> 16
        when = info.date_time if stat.S_ISREG(mode) else None
        result[info.filename] = (mode, archive.read(info), when)
    return result


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=roots)
def test_generated_trees_round_trip(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[str, tuple[Any, ...]]
) -> None:
    root = tmp_path_factory.mktemp("tree")
    for name, node in tree.items():
        make(root / name, node)
    stats = ArchiveStats()
    archive = zipfile.ZipFile(io.BytesIO(b"".join(stream_workspace(root, stats))))
    assert archive.testzip() is None
    want, left_out = expected(root)
    got = archived(archive)
    _, manifest, _ = got.pop(MANIFEST_NAME)
    assert got == want
    lines = [json.loads(line) for line in manifest.splitlines()]
    assert lines[0]["manifest"] == 1
    assert {k: lines[0][k] for k in ("files", "dirs", "symlinks", "skipped")} == {
        "files": stats.files,
        "dirs": stats.dirs,
        "symlinks": stats.symlinks,
        "skipped": stats.skipped,
    }
    assert sum(line.get("kind") == "skipped" for line in lines[1:]) == left_out
    kinds = [m for m, _, _ in want.values()]
    assert stats.files == sum(stat.S_ISREG(m) for m in kinds)
    assert stats.dirs == sum(stat.S_ISDIR(m) for m in kinds)
    assert stats.symlinks == sum(stat.S_ISLNK(m) for m in kinds)
    assert stats.skipped == left_out
    # Safe names: relative, no parent references, one entry per name.
    assert len(archive.namelist()) == len(set(archive.namelist()))
    for name in archive.namelist():
        assert not name.startswith("/") and ".." not in name.rstrip("/").split("/")
    event(f"entries: {min(len(want) // 10 * 10, 30)}+")
    if any(_not_utf8(os.fsencode(n)) for n in tree):
        event("non-UTF-8 name at the top")
