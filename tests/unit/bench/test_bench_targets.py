"""Benchmarks cannot rot: every `make bench-*` runs in its quick mode as part of `make test`.

The quick runs themselves happen in `make test` (`bench-quick-local`, `bench-quick-cluster`); these
tests check the wiring that puts each benchmark there, so a new one cannot be left out.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MAKEFILE = (REPO / "Makefile").read_text()
#: The aggregate targets, which run the others.
AGGREGATES = {"bench-quick", "bench-quick-local", "bench-quick-cluster"}


def recipe(target: str) -> str:
    """The recipe lines (tab-indented, after the rule line) of ``target`` in the Makefile."""
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", MAKEFILE, re.MULTILINE)
    assert match, f"no rule for {target} in the Makefile"
    return match.group(1)


def variable(name: str) -> list[str]:
    match = re.search(rf"^{name} :?= (.*)$", MAKEFILE, re.MULTILINE)
    assert match, f"no {name} in the Makefile"
    return match.group(1).split()


def prerequisites(target: str) -> list[str]:
    match = re.search(rf"^{re.escape(target)}:([^#\n]*)", MAKEFILE, re.MULTILINE)
    assert match, f"no rule for {target} in the Makefile"
    return match.group(1).split()


BENCHMARKS = sorted(set(re.findall(r"^(bench-[a-z0-9-]+):", MAKEFILE, re.MULTILINE)) - AGGREGATES)


def test_there_are_benchmarks() -> None:
    assert {"bench-agent", "bench-operator", "bench-context", "bench-archive"} <= set(BENCHMARKS)


@pytest.mark.parametrize("target", BENCHMARKS)
def test_benchmark_passes_bench_args(target: str) -> None:
    assert "$(BENCH_ARGS)" in recipe(target), f"{target} must pass $(BENCH_ARGS) to its script"


@pytest.mark.parametrize("target", BENCHMARKS)
def test_benchmark_is_in_exactly_one_quick_list(target: str) -> None:
    lists = [name for name in ("BENCH_LOCAL", "BENCH_CLUSTER") if target in variable(name)]
    assert len(lists) == 1, f"{target} must be in BENCH_LOCAL or BENCH_CLUSTER (found: {lists})"


def test_quick_lists_name_only_benchmarks() -> None:
    assert set(variable("BENCH_LOCAL")) | set(variable("BENCH_CLUSTER")) <= set(BENCHMARKS)


def test_make_test_runs_the_quick_benchmarks() -> None:
    steps = prerequisites("test")
    assert "bench-quick-local" in steps
    assert "bench-quick-cluster" in steps
    # The cluster ones after the cluster tests have brought the cluster up, the others early.
    assert steps.index("bench-quick-local") < steps.index("test-integration")
    assert steps.index("bench-quick-cluster") > steps.index("test-integration")
    for aggregate, listing in (
        ("bench-quick-local", "BENCH_LOCAL"),
        ("bench-quick-cluster", "BENCH_CLUSTER"),
    ):
        body = recipe(aggregate)
        assert f"$({listing})" in body and "BENCH_ARGS=--quick" in body


@pytest.mark.parametrize("target", BENCHMARKS)
def test_benchmark_script_has_a_quick_mode(target: str) -> None:
    scripts = re.findall(r"(\S+\.py)\b", recipe(target))
    assert len(scripts) == 1, f"{target}: expected one script in its recipe, found {scripts}"
    out = subprocess.run(
        [sys.executable, REPO / scripts[0], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout
