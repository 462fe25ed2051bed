"""The gateway's HTTP API on the real cluster, as a script or chat bot would use it.

One job is submitted when the module starts; the error and isolation checks run while the
agent works, and the lifecycle test then follows it to the downloaded ZIP.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client

from tests.e2e.conftest import wait_for
from tests.e2e.gateway import Tenant, tenant

# One process runs the module: its tenants and seed job are module fixtures.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("gateway-api")]

TODO_APP_FILES = {"todo-app/index.html", "todo-app/app.js", "todo-app/todo.js"}
SEED_BODY = {"task": "Build me a todo app in React", "workspace": {"size": "1Gi"}}


@pytest.fixture(scope="module")
def team_a(kube_api: client.ApiClient, operator_release: str) -> Iterator[Tenant]:
    with tenant(kube_api, operator_release, "a") as t:
        yield t


@pytest.fixture(scope="module")
def team_b(kube_api: client.ApiClient, operator_release: str) -> Iterator[Tenant]:
    with tenant(kube_api, operator_release, "b") as t:
        yield t


@pytest.fixture(scope="module")
def job_a(gateway_url: str, team_a: Tenant) -> str:
    """The seed's request: a task and nothing else names the namespace (the token's own)."""
    with team_a.client(gateway_url) as api:
        response = api.post("/submit", json=SEED_BODY)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["job_id"] == f"{team_a.namespace}.{body['name']}"
    assert body["name"].startswith("job-")
    return str(body["job_id"])


def test_no_token_is_401(gateway_url: str, job_a: str) -> None:
    with httpx.Client(base_url=gateway_url, timeout=30) as anonymous:
        response = anonymous.get(f"/status/{job_a}")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.post("/submit", json=SEED_BODY).status_code == 401
        bad = anonymous.get(f"/status/{job_a}", headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 401
        assert "not accepted" in bad.json()["detail"]


def test_unknown_job_is_404(gateway_url: str, team_a: Tenant) -> None:
    with team_a.client(gateway_url) as api:
        response = api.get(f"/status/{team_a.namespace}.no-such-job")
        assert response.status_code == 404
        assert "not found" in response.json()["detail"]
        assert api.get("/status/Not_An_Id").status_code == 422


def test_bad_input_is_422_naming_the_field(gateway_url: str, team_a: Tenant) -> None:
    with team_a.client(gateway_url) as api:
        missing = api.post("/submit", json={"limits": {"maxSteps": 3}})
        assert missing.status_code == 422
        assert ["body", "task"] in [e["loc"] for e in missing.json()["detail"]]

        # Checked by the CodingJob schema in the API server and passed through readably.
        out_of_range = api.post("/submit", json={**SEED_BODY, "limits": {"maxSteps": 0}})
        assert out_of_range.status_code == 422, out_of_range.text
        errors = out_of_range.json()["detail"]
        assert errors[0]["loc"] == ["body", "limits", "maxSteps"], errors
        assert "1" in errors[0]["msg"]

        # A typo is an error, not silently pruned.
        typo = api.post("/submit", json={**SEED_BODY, "limts": {"maxSteps": 3}})
        assert typo.status_code == 422, typo.text
        assert typo.json()["detail"][0]["loc"] == ["body", "limts"]


def test_tenants_are_isolated(gateway_url: str, job_a: str, team_a: Tenant, team_b: Tenant) -> None:
    """A user bound only to namespace B can neither see, start nor download jobs in A."""
    with team_b.client(gateway_url) as api:
        status = api.get(f"/status/{job_a}")
        assert status.status_code == 403, status.text
        message = status.json()["detail"]
        assert f"system:serviceaccount:{team_b.namespace}:user" in message
        assert "cannot get resource" in message

        started = api.post("/submit", json={**SEED_BODY, "namespace": team_a.namespace})
        assert started.status_code == 403
        assert "cannot create resource" in started.json()["detail"]

        assert api.get(f"/jobs/{job_a}/download").status_code == 403
        assert api.get("/jobs", params={"namespace": team_a.namespace}).status_code == 403
        assert api.get("/watch", params={"namespace": team_a.namespace}).status_code == 403
        assert api.post(f"/jobs/{job_a}/suspend").status_code == 403
        assert api.delete(f"/jobs/{job_a}").status_code == 403
        assert api.get(f"/jobs/{job_a}/desktop/password").status_code == 403

        # Its own namespace is empty: A's job does not leak into B's list.
        assert api.get("/jobs").json()["items"] == []


def _events(api: httpx.Client, params: dict[str, str], until: Any, timeout: float) -> list[Any]:
    """Read server-sent events until ``until(events)`` holds."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    with api.stream("GET", "/watch", params=params, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("job", "deleted"):
                seen.append((kind, json.loads(line[6:])))
                if until(seen):
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"events not as expected after {timeout}s: {seen[-3:]}")


def test_job_from_submit_to_zip(
    gateway_url: str, job_a: str, team_a: Tenant, minio_forward: int
) -> None:
    """submit → status progresses (live in the event stream) → download redirect → the ZIP."""
    with team_a.client(gateway_url) as api:
        first = api.get(f"/status/{job_a}").json()
        assert first["phase"] in {"Pending", "Running"}
        assert first["task"] == SEED_BODY["task"]
        assert first["download_url"] is None
        early = api.get(f"/jobs/{job_a}/download", follow_redirects=False)
        assert early.status_code == 409

        # Progress arrives through the shared watch without polling.
        events = _events(
            api,
            {"job": job_a},
            lambda seen: any(v["steps"] >= 1 and v["tokens"]["used"] > 0 for _, v in seen),
            240,
        )
        assert all(v["job_id"] == job_a for _, v in events)

        listed = api.get("/jobs", params={"limit": 10}).json()["items"]
        assert [v["job_id"] for v in listed] == [job_a]
        assert api.get("/jobs", params={"phase": "Failed"}).json()["items"] == []

        transcript = api.get(f"/jobs/{job_a}/transcript")
        assert transcript.status_code == 200

        done = wait_for(
            "the job to finish",
            lambda: (
                (s := api.get(f"/status/{job_a}").json())["phase"] in {"Succeeded", "Failed"} and s
            ),
            360,
            interval=2,
        )
        assert done["phase"] == "Succeeded", done
        assert done["reason"] == "Completed"
        assert done["steps"] >= 5
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in done["conditions"])
        assert done["download_url"], done

        redirect = api.get(f"/jobs/{job_a}/download", follow_redirects=False)
        assert redirect.status_code == 302
        assert redirect.headers["location"] == done["download_url"]
        # The presigned URL needs no token: a chat message's link works as it is.
        zipped = httpx.get(redirect.headers["location"], timeout=60)
        assert zipped.status_code == 200
        names = set(zipfile.ZipFile(io.BytesIO(zipped.content)).namelist())
        assert names >= TODO_APP_FILES, sorted(names)

        events_list = api.get(f"/jobs/{job_a}/events").json()
        assert events_list, "no Kubernetes events for the job"

        metrics = httpx.get(f"{gateway_url}/metrics", timeout=10).text
        assert "codingjob_gateway_jobs_submitted_total" in metrics
        assert 'route="/status/{job_id}"' in metrics


def test_suspend_resume_and_cancel(gateway_url: str, team_a: Tenant) -> None:
    with team_a.client(gateway_url) as api:
        body = {
            **SEED_BODY,
            "task": "never finishes",
            "model": {"name": "scripted/never-finish"},
            "namePrefix": "forever-",
        }
        created = api.post("/submit", json=body)
        assert created.status_code == 201, created.text
        job = created.json()["job_id"]
        suspended = api.post(f"/jobs/{job}/suspend")
        assert suspended.status_code == 200
        assert suspended.json()["suspended"] is True
        wait_for("Suspended", lambda: api.get(f"/status/{job}").json()["phase"] == "Suspended", 120)
        resumed = api.post(f"/jobs/{job}/resume").json()
        assert resumed["suspended"] is False
        cancelled = api.delete(f"/jobs/{job}")
        assert cancelled.status_code == 202
        wait_for("the job gone", lambda: api.get(f"/status/{job}").status_code == 404, 120)
