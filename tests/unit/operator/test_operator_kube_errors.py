"""How API errors map to the operator's exceptions (kube.py's one translation point)."""

from __future__ import annotations

import json

import pytest
import urllib3
from codingjob_operator.kube import InvalidObject, KubeError, NamespaceTerminating, _wrap
from kubernetes.client.exceptions import ApiException


def failing(status: int, body: object) -> ApiException:
    error = ApiException(status=status, reason="Forbidden")
    error.body = body if isinstance(body, str) else json.dumps(body)
    return error


def raise_(error: Exception) -> None:
    raise error


TERMINATING = {
    "kind": "Status",
    "status": "Failure",
    "message": 'jobs.batch "x" is forbidden: unable to create new content in namespace t-a '
    "because it is being terminated",
    "reason": "Forbidden",
    "details": {
        "name": "x",
        "kind": "jobs",
        "causes": [
            {
                "reason": "NamespaceTerminating",
                "message": "namespace t-a is being terminated",
                "field": "metadata.namespace",
            }
        ],
    },
    "code": 403,
}


def test_a_terminating_namespace_is_told_apart_from_other_refusals() -> None:
    with pytest.raises(NamespaceTerminating) as caught:
        _wrap(lambda: raise_(failing(403, TERMINATING)))
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "body",
    [
        {**TERMINATING, "details": {"causes": [{"reason": "Other"}]}},
        {**TERMINATING, "details": None},
        {"message": "forbidden: User cannot create jobs"},
        "not json at all",
        ["a", "list"],
    ],
)
def test_other_403s_stay_plain_kube_errors(body: object) -> None:
    with pytest.raises(KubeError) as caught:
        _wrap(lambda: raise_(failing(403, body)))
    assert type(caught.value) is KubeError and caught.value.status == 403


def test_422_is_an_invalid_object() -> None:
    with pytest.raises(InvalidObject):
        _wrap(lambda: raise_(failing(422, {"message": "spec.x: Invalid value"})))


def test_no_answer_at_all_is_a_transient_kube_error() -> None:
    """A read timeout (the pod proxy to a sandbox going away) is retried, not a crash."""
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/api/v1/x", "Read timed out.")  # type: ignore[arg-type]
    with pytest.raises(KubeError) as raised:
        _wrap(lambda: raise_(timeout))
    assert raised.value.status == 0 and "Read timed out" in str(raised.value)
    with pytest.raises(KubeError):
        _wrap(lambda: raise_(urllib3.exceptions.ProtocolError("Connection aborted.")))
