"""The gateway's pure parts: job ids, the submit body, the status view, API errors as fields."""

from __future__ import annotations

from typing import Any

import pytest
from codingjob_gateway import jobs
from codingjob_gateway.app import api_error_response
from codingjob_gateway.jobs import BadJobId, JobId, SubmitRequest, build_codingjob, field_errors
from codingjob_gateway.kube import ApiError, ApiUnavailable, Identity
from codingjob_operator import models


def test_api_coordinates_match_the_operator() -> None:
    assert (jobs.GROUP, jobs.VERSION, jobs.PLURAL, jobs.KIND) == (
        models.GROUP,
        models.VERSION,
        models.PLURAL,
        models.KIND,
    )


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("team-a.todo-x1", None, JobId("team-a", "todo-x1")),
        ("team-a.my.dotted.name", None, JobId("team-a", "my.dotted.name")),
        ("todo-x1", "mine", JobId("mine", "todo-x1")),
    ],
)
def test_job_id_parses(text: str, default: str | None, expected: JobId) -> None:
    assert JobId.parse(text, default) == expected
    assert JobId.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "default"),
    [("todo", None), ("Team.x", None), ("a.", None), (".x", None), ("a.B_C", None), ("", "d")],
)
def test_bad_job_ids_are_refused(text: str, default: str | None) -> None:
    with pytest.raises(BadJobId):
        JobId.parse(text, default)


def test_service_account_namespace() -> None:
    assert Identity("system:serviceaccount:team-a:bot").service_account_namespace == "team-a"
    assert Identity("alice").service_account_namespace is None
    assert Identity("system:serviceaccount:x").service_account_namespace is None


def test_submit_maps_spec_fields_verbatim() -> None:
    request = SubmitRequest.model_validate(
        {
            "task": "Build me a todo app in React",
            "limits": {"maxSteps": 5},
            "className": "small",
            "labels": {"team": "a"},
        }
    )
    assert build_codingjob(request, "team-a") == {
        "apiVersion": "codingjob.dev/v1alpha1",
        "kind": "CodingJob",
        "metadata": {"generateName": "job-", "namespace": "team-a", "labels": {"team": "a"}},
        "spec": {
            "task": "Build me a todo app in React",
            "limits": {"maxSteps": 5},
            "className": "small",
        },
    }


def test_seed_body_is_enough() -> None:
    manifest = build_codingjob(SubmitRequest.model_validate({"task": "x"}), "ns")
    assert manifest["spec"] == {"task": "x"}
    assert manifest["metadata"] == {"generateName": "job-", "namespace": "ns"}


def _obj(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "team-a",
            "name": "job-abcde",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"task": "t", "suspend": True},
        "status": status,
    }


def test_view_of_a_new_job_is_pending() -> None:
    view = jobs.job_view(_obj({}), "http://gw")
    assert view.phase == "Pending"
    assert view.steps == 0 and view.tokens.used == 0
    assert view.download_url is None
    assert view.suspended is True
    assert view.links.download == "http://gw/jobs/team-a.job-abcde/download"
    assert view.links.status == "http://gw/status/team-a.job-abcde"


def test_view_of_an_archived_job() -> None:
    status = {
        "phase": "Succeeded",
        "steps": 14,
        "tokens": {"used": 4821, "limit": 100000, "pruned": 0},
        "reason": "Completed",
        "conditions": [
            {
                "type": "Complete",
                "status": "True",
                "reason": "Completed",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:01:00Z",
                "observedGeneration": 1,
            }
        ],
        "artifact": {"url": "http://s3/x.zip", "urlExpiresAt": "2026-01-02T00:00:00Z"},
        "downloadURL": "http://s3/x.zip",
        "somethingNew": {"a": 1},
    }
    view = jobs.job_view(_obj(status))
    assert (view.phase, view.steps, view.tokens.used, view.reason) == (
        "Succeeded",
        14,
        4821,
        "Completed",
    )
    assert view.conditions[0].type == "Complete"
    assert view.download_url == "http://s3/x.zip"
    assert view.download_expires_at == "2026-01-02T00:00:00Z"


def test_schema_errors_name_the_body_field() -> None:
    status = {
        "kind": "Status",
        "status": "Failure",
        "reason": "Invalid",
        "message": 'CodingJob.codingjob.dev "job-" is invalid: spec.limits.maxSteps: ...',
        "details": {
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: 0: should be >= 1",
                    "field": "spec.limits.maxSteps",
                },
                {
                    "reason": "FieldValueInvalid",
                    "message": "bad",
                    "field": "spec.tolerations[0].key",
                },
                {"reason": "FieldValueInvalid", "message": "bad label", "field": "metadata.labels"},
            ]
        },
    }
    errors = field_errors(status, {"task"})
    assert [e["loc"] for e in errors] == [
        ["body", "limits", "maxSteps"],
        ["body", "tolerations", "0", "key"],
        ["body", "labels"],
    ]
    assert errors[0]["msg"] == "Invalid value: 0: should be >= 1"


def test_unknown_fields_are_named() -> None:
    status = {
        "kind": "Status",
        "reason": "BadRequest",
        "message": 'strict decoding error: unknown field "spec.limts"',
    }
    assert field_errors(status, set())[0]["loc"] == ["body", "limts"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ApiUnavailable("refused"), 503),
        (ApiError(500, "etcd"), 503),
        (ApiError(403, "forbidden"), 403),
        (ApiError(404, "not found"), 404),
        (ApiError(409, "exists"), 409),
        (ApiError(400, "bad selector"), 422),
        (ApiError(401, "gateway token expired"), 503),
    ],
)
def test_api_errors_map_to_gateway_statuses(error: ApiError, status: int) -> None:
    assert api_error_response(error)[0] == status
