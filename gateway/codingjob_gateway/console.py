"""The web console: server-rendered pages (jobs, submit form, a job with its live desktop) and the
desktop websocket. One small ES module (static/console.js) keeps the pages live through the
event stream; noVNC's own ES modules draw the desktop. No front-end build.

The console authenticates with the same Kubernetes token as the API, kept in an HttpOnly,
SameSite=Strict cookie after the login form checked it; forms that change something also check
the Origin header, so another site cannot act with a logged-in user's cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from codingjob_gateway.app import Gateway, api_error_response
from codingjob_gateway.auth import TOKEN_COOKIE, NotAuthenticated, bearer_token
from codingjob_gateway.jobs import GROUP, PLURAL, VERSION, JobId, JobView, job_view
from codingjob_gateway.kube import ApiError, Identity, PortForward

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: x11vnc listens here in the agent pod (docs/pod-contract.md).
VNC_PORT = 5900
#: The console's login lasts this long; then the token is asked for again.
COOKIE_SECONDS = 8 * 3600


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, *, user: str | None = None, script: str | None = None) -> str:
    """A whole HTML document in the console's layout."""
    who = (
        f'<form method="post" action="/logout" class="who"><span>{_e(user)}</span> '
        '<button type="submit">Log out</button></form>'
        if user
        else ""
    )
    module = f'<script type="module" src="/static/{script}"></script>' if script else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · CodingJob</title>
<link rel="stylesheet" href="/static/console.css">
{module}
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><a href="/" class="brand">CodingJob</a>{who}</header>
<main id="main">
{body}
</main>
</body>
</html>
"""


def _job_row(view: JobView) -> str:
    tokens = view.tokens.used
    download = f'<a href="/jobs/{_e(view.job_id)}/download">ZIP</a>' if view.download_url else ""
    return (
        f'<tr data-job="{_e(view.job_id)}">'
        f'<th scope="row"><a href="/ui/jobs/{_e(view.job_id)}">{_e(view.name)}</a></th>'
        f'<td data-field="phase">{_e(view.phase)}</td>'
        f'<td data-field="steps">{view.steps}</td>'
        f'<td data-field="tokens">{tokens}</td>'
        f'<td class="task">{_e(view.task[:120])}</td>'
        f'<td data-field="download">{download}</td>'
        "</tr>"
    )


def jobs_page(namespace: str, views: list[JobView], user: str, error: str = "") -> str:
    rows = "\n".join(_job_row(v) for v in views) or ""
    alert = f'<p role="alert" class="error">{_e(error)}</p>' if error else ""
    body = f"""
<h1>Jobs in <code>{_e(namespace)}</code></h1>
{alert}
<section aria-labelledby="submit-h">
<h2 id="submit-h">New job</h2>
<form method="post" action="/ui/submit" class="submit">
<input type="hidden" name="namespace" value="{_e(namespace)}">
<label for="task">Task</label>
<textarea id="task" name="task" rows="3" required maxlength="32768"
 placeholder="Build me a todo app in React"></textarea>
<details><summary>Options</summary>
<label for="model">Model name</label>
<input id="model" name="model" placeholder="the operator's default">
<label for="max_steps">Most steps</label>
<input id="max_steps" name="max_steps" type="number" min="1">
</details>
<button type="submit">Start job</button>
</form>
</section>
<section aria-labelledby="list-h">
<h2 id="list-h">Jobs</h2>
<table id="jobs" data-namespace="{_e(namespace)}">
<thead><tr><th scope="col">Name</th><th scope="col">Phase</th><th scope="col">Steps</th>
<th scope="col">Tokens</th><th scope="col">Task</th><th scope="col">Result</th></tr></thead>
<tbody aria-live="polite">
{rows}
</tbody>
</table>
</section>
"""
    return page(f"Jobs in {namespace}", body, user=user, script="console.js")


def job_page(view: JobView, user: str) -> str:
    job = _e(view.job_id)
    hidden = "" if view.download_url else " hidden"
    body = f"""
<h1>Job <code>{_e(view.name)}</code> <small>in {_e(view.namespace)}</small></h1>
<section id="job" data-job="{job}" aria-labelledby="state-h">
<h2 id="state-h" class="visually-hidden">State</h2>
<dl class="state" aria-live="polite">
<div><dt>Phase</dt><dd data-field="phase">{_e(view.phase)}</dd></div>
<div><dt>Steps</dt><dd data-field="steps">{view.steps}</dd></div>
<div><dt>Tokens</dt><dd data-field="tokens">{view.tokens.used}</dd></div>
<div><dt>Reason</dt><dd data-field="reason">{_e(view.reason or "")}</dd></div>
</dl>
<p class="task"><strong>Task:</strong> {_e(view.task)}</p>
<p class="actions">
<a id="download" class="button" href="/jobs/{job}/download"{hidden}>Download workspace (ZIP)</a>
<form method="post" action="/ui/jobs/{job}/suspend"><button>Suspend</button></form>
<form method="post" action="/ui/jobs/{job}/resume"><button>Resume</button></form>
<form method="post" action="/ui/jobs/{job}/delete"><button class="danger">Delete</button></form>
</p>
</section>
<section aria-labelledby="desktop-h">
<h2 id="desktop-h">Desktop</h2>
<p id="desktop-status" role="status">Connecting when the agent pod runs…</p>
<div id="desktop" role="img" aria-label="Live view of the agent's desktop (view only)"></div>
<p><button type="button" id="show-password">Show VNC password</button>
<output id="password" hidden></output></p>
<p>Jupyter: <code>kubectl -n {_e(view.namespace)} port-forward svc/{_e(view.name)}-desktop
8888</code>, then <a href="http://localhost:8888/lab">http://localhost:8888/lab</a> (token in
Secret <code>{_e(view.name)}-session</code>).</p>
</section>
<section aria-labelledby="events-h">
<h2 id="events-h">Events</h2>
<ul id="events"></ul>
</section>
<section aria-labelledby="transcript-h">
<h2 id="transcript-h">Transcript so far</h2>
<pre id="transcript" tabindex="0"></pre>
</section>
"""
    return page(f"Job {view.name}", body, user=user, script="job.js")


LOGIN_BODY = """
<h1>Log in</h1>
{alert}
<form method="post" action="/login">
<label for="token">Kubernetes bearer token</label>
<textarea id="token" name="token" rows="4" required autocomplete="off"></textarea>
<p class="hint">For example <code>kubectl create token NAME -n NAMESPACE</code>. It is checked by
the API server and every action runs with its rights.</p>
<button type="submit">Log in</button>
</form>
"""


#: The console's pages load only their own scripts and styles and talk only to the gateway, so
#: an injected script or a framing page has nothing to work with.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class Html(HTMLResponse):
    """A console page, with the console's security headers."""

    def __init__(self, content: str, status_code: int = 200) -> None:
        super().__init__(
            content,
            status_code,
            headers={
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
                "Cache-Control": "no-store",
            },
        )


def add_console(app: FastAPI, gw: Gateway) -> None:
    """Mount the console's pages, static files and the desktop websocket on ``app``."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if (gw.settings.novnc_dir / "core" / "rfb.js").is_file():
        app.mount("/novnc", StaticFiles(directory=gw.settings.novnc_dir), name="novnc")
    else:
        log.warning("no noVNC in %s: the console shows no live desktop", gw.settings.novnc_dir)

    async def who(request: Request) -> Identity | None:
        token = bearer_token(None, request.cookies.get(TOKEN_COOKIE))
        try:
            return await gw.auth.identify(token)
        except NotAuthenticated:
            return None

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        # Browsers send Origin on every cross-site POST; its absence means a same-site request
        # or a non-browser client (which has no cookie to abuse).
        return origin is None or origin.split("://", 1)[-1] == request.headers.get("host")

    def to_login() -> RedirectResponse:
        return RedirectResponse("/login", 303)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request, namespace: str | None = None, error: str = "") -> Response:
        user = await who(request)
        if user is None:
            return to_login()
        ns = namespace or gw.default_namespace(user)
        try:
            listing = await gw.kube.request(
                "GET",
                f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}",
                as_user=user,
                params={"limit": "200"},
            )
            views = [job_view(o) for o in listing.get("items") or []]
        except ApiError as api_error:
            status, message = api_error_response(api_error)
            return Html(jobs_page(ns, [], user.username, message), status)
        views.sort(key=lambda v: v.created or "", reverse=True)
        return Html(jobs_page(ns, views, user.username, error))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form() -> Html:
        return Html(page("Log in", LOGIN_BODY.format(alert="")))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, token: Annotated[str, Form()]) -> Response:
        token = token.strip()
        try:
            await gw.auth.identify(token)
        except NotAuthenticated as error:
            alert = f'<p role="alert" class="error">{_e(error)}</p>'
            return Html(page("Log in", LOGIN_BODY.format(alert=alert)), 401)
        response = RedirectResponse("/", 303)
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            max_age=COOKIE_SECONDS,
            httponly=True,  # page scripts never see the token
            samesite="strict",  # never sent with another site's requests
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        response = to_login()
        response.delete_cookie(TOKEN_COOKIE)
        return response

    @app.post("/ui/submit", include_in_schema=False)
    async def ui_submit(
        request: Request,
        task: Annotated[str, Form()],
        namespace: Annotated[str, Form()] = "",
        model: Annotated[str, Form()] = "",
        max_steps: Annotated[str, Form()] = "",
    ) -> Response:
        user = await who(request)
        if user is None:
            return to_login()
        if not same_origin(request):
            return Response("cross-site form post refused", 403)
        spec: dict[str, Any] = {"task": task}
        if model.strip():
            spec["model"] = {"name": model.strip()}
        if max_steps.strip():
            if not max_steps.strip().isdigit():
                return RedirectResponse(f"/?namespace={namespace}&error=Most+steps:+a+number", 303)
            spec["limits"] = {"maxSteps": int(max_steps)}
        ns = namespace or gw.default_namespace(user)
        try:
            created = await gw.kube.request(
                "POST",
                f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}",
                as_user=user,
                body={
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "CodingJob",
                    "metadata": {"generateName": "job-", "namespace": ns},
                    "spec": spec,
                },
                params={"fieldValidation": "Strict"},
            )
        except ApiError as error:
            _, message = api_error_response(error)
            return RedirectResponse(f"/?namespace={ns}&error={_quote(message)}", 303)
        gw.metrics.jobs_submitted.inc()
        return RedirectResponse(f"/ui/jobs/{JobId(ns, created['metadata']['name'])}", 303)

    @app.get("/ui/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    async def ui_job(request: Request, job_id: str) -> Response:
        user = await who(request)
        if user is None:
            return to_login()
        job = JobId.parse(job_id, gw.default_namespace(user))
        try:
            obj = await gw.read_job(job, user)
        except ApiError as error:
            status, message = api_error_response(error)
            body = f'<h1>Job {_e(job)}</h1><p role="alert" class="error">{_e(message)}</p>'
            return Html(page("Job", body, user=user.username), status)
        return Html(job_page(job_view(obj), user.username))

    @app.post("/ui/jobs/{job_id}/{action}", include_in_schema=False)
    async def ui_action(request: Request, job_id: str, action: str) -> Response:
        user = await who(request)
        if user is None:
            return to_login()
        if not same_origin(request) or action not in ("suspend", "resume", "delete"):
            return Response("refused", 403)
        job = JobId.parse(job_id, gw.default_namespace(user))
        try:
            if action == "delete":
                await gw.kube.request(
                    "DELETE",
                    gw.job_path(job),
                    as_user=user,
                    body={"propagationPolicy": "Background"},
                )
                return RedirectResponse(f"/?namespace={job.namespace}", 303)
            await gw.kube.request(
                "PATCH",
                gw.job_path(job),
                as_user=user,
                body={"spec": {"suspend": action == "suspend"}},
                content_type="application/merge-patch+json",
            )
        except ApiError as error:
            status, message = api_error_response(error)
            return Html(page("Error", f'<p role="alert">{_e(message)}</p>'), status)
        return RedirectResponse(f"/ui/jobs/{job}", 303)

    @app.websocket("/jobs/{job_id}/desktop/vnc")
    async def desktop(websocket: WebSocket, job_id: str) -> None:
        """RFB (VNC) bytes between noVNC in the browser and the agent pod's x11vnc, through
        the API server's port-forward opened with the caller's rights."""
        origin = websocket.headers.get("origin")
        # A websocket is not bound by the same-origin policy: refuse other sites explicitly.
        if origin is not None and origin.split("://", 1)[-1] != websocket.headers.get("host"):
            await websocket.close(code=4403, reason="cross-site websocket refused")
            return
        token = bearer_token(
            websocket.headers.get("authorization"), websocket.cookies.get(TOKEN_COOKIE)
        )
        try:
            user = await gw.auth.identify(token)
            job = JobId.parse(job_id, gw.default_namespace(user))
            obj = await gw.read_job(job, user)
            pod = (obj.get("status") or {}).get("podName") or f"{job.name}-agent"
            forward = await gw.kube.port_forward(job.namespace, pod, VNC_PORT, user)
        except NotAuthenticated:
            await websocket.close(code=4401, reason="not authenticated")
            return
        except ApiError as error:
            status, message = api_error_response(error)
            await websocket.close(code=4000 + status, reason=message[:120])
            return
        protocols = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in protocols else None)
        gw.metrics.desktop_sessions.inc()
        try:
            await _bridge(websocket, forward)
        finally:
            gw.metrics.desktop_sessions.dec()
            await forward.close()


async def _bridge(websocket: WebSocket, forward: PortForward) -> None:
    """Copy bytes both ways until either side ends."""

    async def upstream() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                data = await websocket.receive_bytes()
                await forward.write(data)

    async def downstream() -> None:
        while (data := await forward.read()) is not None:
            await websocket.send_bytes(data)

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None:
                log.info("desktop stream ended: %s", task.exception())
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await websocket.close()


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])
