"""Child names are deterministic, DNS-safe, capped and unique; labels are valid label values."""

from __future__ import annotations

import re
from dataclasses import asdict

import pytest
from codingjob_operator import names

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONG = "a" * 253
LONG_DOTTED = ("segment." * 31) + "end"


@pytest.mark.parametrize(
    ("base", "suffix", "expected"),
    [
        ("todo-app", "agent", "todo-app-agent"),
        ("todo-app", "", "todo-app"),
        ("x", "workspace", "x-workspace"),
        # Pinned: a name that changes between operator versions would orphan children.
        # Invalid characters (dots are fine in a CodingJob name, not in a label) get a hash.
        ("my.job", "agent", "my-job-bc373230-agent"),
        ("My_Job", "agent", "my-job-1ce4a870-agent"),
        ("a" * 60, "agent", "a" * 48 + "-11ee3912-agent"),
    ],
)
def test_dns_label_table(base: str, suffix: str, expected: str) -> None:
    assert names.dns_label(base, suffix) == expected


@pytest.mark.parametrize(
    "job",
    ["a", "todo-app", "my.job.v2", "a" * 63, "a" * 64, LONG, LONG_DOTTED, "-weird-", "9lives"],
)
def test_every_child_name_is_a_dns_label(job: str) -> None:
    for field, value in asdict(names.child_names(job)).items():
        assert DNS_LABEL.match(value), (field, value)
        assert len(value) <= 63, (field, value)


def test_long_names_with_a_common_prefix_do_not_collide() -> None:
    a = names.child_names("x" * 100 + "-one")
    b = names.child_names("x" * 100 + "-two")
    assert a.pod != b.pod and a.workspace != b.workspace


def test_names_are_deterministic_and_distinct_per_child() -> None:
    first, second = names.child_names(LONG_DOTTED), names.child_names(LONG_DOTTED)
    assert first == second
    values = list(asdict(first).values())
    assert len(set(values)) == len(values)


@pytest.mark.parametrize("job", ["todo-app", "a" * 63, "a" * 64, LONG, LONG_DOTTED])
def test_labels_are_valid_label_values(job: str) -> None:
    labels = names.labels(job, "agent")
    assert labels == {
        "app.kubernetes.io/name": "codingjob-agent",
        "app.kubernetes.io/instance": names.label_value(job),
        "app.kubernetes.io/managed-by": "codingjob-operator",
        "app.kubernetes.io/component": "agent",
        "codingjob.dev/job": names.label_value(job),
    }
    for value in labels.values():
        assert len(value) <= 63 and LABEL_VALUE.match(value), value


def test_short_label_value_is_the_name_itself() -> None:
    assert names.label_value("todo-app") == "todo-app"
    assert names.label_value("a" * 64) != names.label_value("a" * 65)


def test_object_keys() -> None:
    assert names.archive_key("team-a", "todo", "u-1") == "team-a/todo/u-1/workspace.zip"
    assert names.transcript_key("team-a", "todo", "u-1") == "team-a/todo/u-1/context.txt"
    assert names.archive_prefix("team-a", "todo", "u-1") == "team-a/todo/u-1/"


def test_a_name_without_suffix_is_the_base_itself() -> None:
    assert names.dns_label("todo-app") == "todo-app"


def test_a_name_of_exactly_63_characters_is_kept_whole() -> None:
    assert names.dns_label("a" * 57, "agent") == "a" * 57 + "-agent"
    assert names.label_value("a" * 63) == "a" * 63


@pytest.mark.parametrize(
    ("base", "suffix", "max_length", "expected"),
    [
        # Nothing valid left of the name: the label still starts with a letter.
        ("...", "agent", 63, "x-ab5df625-agent"),
        # The cut ends at a dash: no `--` before the hash.
        ("a" * 47 + "-" + "b" * 20, "agent", 63, "a" * 47 + "-cf1cd29a-agent"),
        # A suffix that leaves no room for the base: still a valid label.
        ("job", "archive-credentials", 20, "x-5e8c9902-archive-credentials"),
    ],
)
def test_shortened_names_start_and_end_with_an_alphanumeric(
    base: str, suffix: str, max_length: int, expected: str
) -> None:
    name = names.dns_label(base, suffix, max_length)
    assert name == expected
    assert DNS_LABEL.match(name)


def test_a_shortened_label_value_uses_all_63_characters_and_ends_alphanumeric() -> None:
    assert names.label_value("a" * 64) == "a" * 54 + "-ffe054fe"
    # The cut ends at a dot: it is dropped, so the value does not end in `.-`.
    assert names.label_value("a" * 53 + "." + "b" * 20) == "a" * 53 + "-faf921a0"
