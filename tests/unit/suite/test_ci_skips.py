"""Under CI=true a skipped test is a failed test (tests/conftest.py), checked with pytester."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import CI_SKIP_ALLOWED, ci_enabled

pytest_plugins = ["pytester"]

Runner = Callable[..., pytest.RunResult]
HOOKS = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"

SKIPPING = """
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("no widget here")

@pytest.fixture
def service():
    pytest.skip("service down")

def test_fixture_skips(service):
    pass

@pytest.mark.skip(reason="marked")
def test_marked():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""


@pytest.fixture
def run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str | None, str], pytest.RunResult]:
    def go(ci: str | None, body: str = SKIPPING) -> pytest.RunResult:
        pytester.makeconftest(HOOKS)
        pytester.makepyfile(test_it=body)
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest_inprocess("-p", "no:cacheprovider")

    return go


def test_every_kind_of_skip_fails_under_ci(run: Runner) -> None:
    result = run("true")
    # A skip in the test body fails it; one in setup (fixture, mark) is an error; xfail stays.
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped under CI=true*no widget here*"])


def test_skips_stay_skips_outside_ci(run: Runner) -> None:
    result = run(None)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_a_module_level_skip_fails_under_ci(run: Runner) -> None:
    body = 'import pytest\npytest.skip("module unusable", allow_module_level=True)\n'
    result = run("true", body)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*skipped under CI=true*module unusable*"])


def test_ci_detection() -> None:
    assert ci_enabled({"CI": "true"}) and ci_enabled({"CI": "1"})
    assert not ci_enabled({}) and not ci_enabled({"CI": "false"})


def test_the_allow_list_is_empty() -> None:
    # Adding an entry is a reviewed decision: this test changes with it.
    assert CI_SKIP_ALLOWED == {}
