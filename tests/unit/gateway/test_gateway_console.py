"""The console's server-rendered pages: escaped text, labelled controls, nothing secret."""

from __future__ import annotations

from codingjob_gateway.console import CSP, job_page, jobs_page
from codingjob_gateway.jobs import job_view

HOSTILE = '<script>alert("x")</script>'


def _job(**status: object) -> dict[str, object]:
    return {
        "metadata": {"namespace": "team-a", "name": "job-abcde"},
        "spec": {"task": f"Build {HOSTILE} now"},
        "status": {"phase": "Running", "steps": 3, "tokens": {"used": 120}, **status},
    }


def test_task_text_is_escaped_everywhere() -> None:
    view = job_view(_job(reason=HOSTILE))
    for html in (jobs_page("team-a", [view], "alice", error=HOSTILE), job_page(view, "alice")):
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_job_page_has_live_fields_and_no_password() -> None:
    html = job_page(job_view(_job()), "alice")
    for field in ("phase", "steps", "tokens", "reason"):
        assert f'data-field="{field}"' in html
    assert 'id="desktop"' in html and 'aria-label="Live view' in html
    assert '<output id="password" hidden></output>' in html
    # No archive yet: the download button is there but hidden.
    assert 'id="download" class="button" href="/jobs/team-a.job-abcde/download" hidden' in html
    archived = job_page(job_view(_job(phase="Succeeded", downloadURL="http://s3/x")), "alice")
    assert 'href="/jobs/team-a.job-abcde/download">' in archived


def test_every_form_control_is_labelled() -> None:
    html = jobs_page("team-a", [], "alice")
    for control in ("task", "model", "max_steps"):
        assert f'<label for="{control}">' in html and f'id="{control}"' in html
    assert '<html lang="en">' in html


def test_csp_allows_only_the_gateway_itself() -> None:
    assert "default-src 'self'" in CSP
    assert "frame-ancestors 'none'" in CSP
    assert "unsafe-inline" not in CSP
