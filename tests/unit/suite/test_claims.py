"""docs/claims.md maps every promise of the README to tests; every test it names must exist
(collected by pytest), and a row without a test must say it is pending."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CLAIMS = REPO / "docs" / "claims.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py::\w+)`")
#: Rows allowed to name no test yet, each with the branch that brings it.
PENDING: dict[str, str] = {}


def rows() -> dict[str, str]:
    """Claim number -> the row's text, for every row of the claims tables."""
    found = {}
    for line in CLAIMS.read_text().splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|", line)
        if match:
            assert match.group(1) not in found, f"claim {match.group(1)} is numbered twice"
            found[match.group(1)] = line
    return found


def collected(files: set[str]) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}


def test_every_row_names_a_test_or_is_pending() -> None:
    table = rows()
    assert len(table) >= 50
    for number, line in table.items():
        if number in PENDING:
            assert f"pending (branch {PENDING[number]})" in line, line
        else:
            assert TEST_ID.search(line), f"claim {number} names no test: {line}"
    assert set(PENDING) <= set(table)


def test_every_test_in_the_claims_table_is_collected() -> None:
    ids = {i for line in rows().values() for i in TEST_ID.findall(line)}
    files = {i.split("::")[0] for i in ids}
    missing = sorted(ids - collected(files))
    assert missing == [], f"docs/claims.md names tests pytest does not collect: {missing}"


def test_the_id_pattern_finds_what_it_must() -> None:
    line = "| 9 | x | `tests/unit/a/test_b.py::test_c`<br>`tests/e2e/test_d.py::test_e` | y |"
    assert TEST_ID.findall(line) == [
        "tests/unit/a/test_b.py::test_c",
        "tests/e2e/test_d.py::test_e",
    ]
