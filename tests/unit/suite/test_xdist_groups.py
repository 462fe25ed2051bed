"""The parallel runs keep a group of tests in one process (`--dist loadgroup`): the e2e modules
that install a release of their own, and every integration test on the cluster. Checked with
pytester, in real xdist workers. pytest 9.2 with pytest-xdist 3.8 grouped nothing, silently:
xdist writes the group into a node id that pytest 9.2 no longer reads (pytest-xdist#1386), and
two workers installed the same release at once."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[3]

#: Each test records which worker ran it. Four tests per module, a second apart, so that an
#: ungrouped run would hand them to both workers.
MODULE = """
import os, pathlib, time, pytest
{mark}

@pytest.mark.parametrize("i", range(4))
def test_case(i):
    time.sleep(0.25)
    pathlib.Path(os.environ["RECORDS"], f"{{__name__}}-{{i}}").write_text(
        os.environ["PYTEST_XDIST_WORKER"]
    )
"""


def _run(pytester: pytest.Pytester, modules: dict[str, str], passed: int) -> dict[str, set[str]]:
    """Run ``modules`` in two workers; the workers each module's tests ran in."""
    records = pytester.mkdir("records")
    pytester.makepyfile(**{name: MODULE.format(mark=mark) for name, mark in modules.items()})
    pytester.makeini("[pytest]\nmarkers =\n    cluster: on the cluster\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RECORDS", str(records))
        result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup")
    result.assert_outcomes(passed=passed)
    workers: dict[str, set[str]] = {}
    for record in records.iterdir():
        workers.setdefault(record.name.rsplit("-", 1)[0], set()).add(record.read_text())
    return workers


def test_a_module_group_runs_in_one_worker(pytester: pytest.Pytester) -> None:
    workers = _run(
        pytester,
        {
            "test_release": 'pytestmark = pytest.mark.xdist_group("release")',
            "test_other": 'pytestmark = pytest.mark.xdist_group("other")',
        },
        passed=8,
    )
    assert {name: len(found) for name, found in workers.items()} == {
        "test_release": 1,
        "test_other": 1,
    }


def test_integration_tests_on_the_cluster_share_one_worker(pytester: pytest.Pytester) -> None:
    """tests/integration/conftest.py: the cluster tests of every module in one process, the
    other modules each whole, beside them."""
    pytester.makeconftest((REPO / "tests" / "integration" / "conftest.py").read_text())
    workers = _run(
        pytester,
        {
            "test_chart": "pytestmark = pytest.mark.cluster",
            "test_operator": "pytestmark = pytest.mark.cluster",
            "test_images": "",
            "test_archive": "",
        },
        passed=16,
    )
    assert all(len(found) == 1 for found in workers.values()), workers
    assert workers["test_chart"] == workers["test_operator"]
