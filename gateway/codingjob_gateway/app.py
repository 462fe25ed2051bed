"""The HTTP API: ``POST /submit``, ``GET /status/{job_id}``, the job collection, the event stream,
downloads, metrics. Every job operation is one API server call made as the caller.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codingjob_gateway import jobs
from codingjob_gateway.auth import TOKEN_COOKIE, Authenticator, NotAuthenticated, bearer_token
from codingjob_gateway.hub import JobHub
from codingjob_gateway.jobs import (
    GROUP,
    PLURAL,
    VERSION,
    BadJobId,
    JobId,
    JobView,
    SubmitRequest,
    build_codingjob,
    field_errors,
    job_view,
)
from codingjob_gateway.kube import ApiError, ApiUnavailable, Identity, KubeClient
from codingjob_gateway.metrics import Metrics
from codingjob_gateway.settings import GatewaySettings

log = logging.getLogger("codingjob_gateway")

#: Body fields of /submit that are not spec fields (for naming the field of an API error).
SUBMIT_FIELDS = {"task", "namespace", "namePrefix", "labels"}


class Gateway:
    """What the routes share: settings, the API client, the caches and the shared watch."""

    def __init__(self, settings: GatewaySettings, kube: KubeClient) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = Metrics()
        self.auth = Authenticator(kube, settings.review_cache_seconds)
        self.hub = JobHub(kube, self.metrics, settings.sse_queue_size)

    def default_namespace(self, who: Identity) -> str:
        """A ServiceAccount works in its own namespace; anyone else in the configured one."""
        return who.service_account_namespace or self.settings.default_namespace

    def job_path(self, job: JobId, sub: str = "") -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{job.namespace}/{PLURAL}/{job.name}{sub}"

    async def read_job(self, job: JobId, who: Identity) -> dict[str, Any]:
        """The CodingJob as the caller may see it.

        Served from the shared watch when it holds the job and a SubjectAccessReview (cached
        briefly) says the caller may get it: many clients polling a status cost the API server
        nothing. Otherwise, or when refused, one GET as the caller, so a refusal carries the API
        server's own message and a job the watch has not seen yet is still found.
        """
        cached = self.hub.get(job.namespace, job.name)
        if cached is not None:
            allowed, _ = await self.auth.may(who, job.namespace, "get", PLURAL, GROUP, job.name)
            if allowed:
                return cached
        return await self.kube.request("GET", self.job_path(job), as_user=who)


class HttpError(Exception):
    """An error answer with a JSON ``detail``."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.headers = headers or {}


async def caller(request: Request) -> Identity:
    """The authenticated caller: bearer token (or the console's cookie) through TokenReview."""
    gw: Gateway = request.app.state.gateway
    token = bearer_token(request.headers.get("authorization"), request.cookies.get(TOKEN_COOKIE))
    return await gw.auth.identify(token)


Caller = Annotated[Identity, Depends(caller)]


def api_error_response(error: ApiError) -> tuple[int, str]:
    """The gateway's status for an API server error: the caller's 403/404/409 as they are, bad
    input as 422, an unreachable or failing API server as 503."""
    if isinstance(error, ApiUnavailable) or error.status >= 500 or error.status == 0:
        return 503, f"the Kubernetes API server is unavailable: {error.message}"
    if error.status in (400, 422):
        return 422, error.message
    if error.status == 401:
        # The gateway's own credentials were refused: a server-side problem, not the caller's.
        return 503, f"the gateway could not authenticate to the Kubernetes API: {error.message}"
    return error.status, error.message


class SubmitResponse(BaseModel):
    job_id: str = Field(description="NAMESPACE.NAME of the created CodingJob.")
    namespace: str
    name: str
    status_url: str


class JobList(BaseModel):
    items: list[JobView]
    continue_: str | None = Field(
        None, alias="continue", description="Pass as ?continue= for the next page."
    )


class JobEvent(BaseModel):
    type: str
    reason: str
    message: str
    count: int = 1
    time: str | None = None


def create_app(settings: GatewaySettings, kube: KubeClient) -> FastAPI:
    """The gateway application; ``kube`` is its API client (closed on shutdown)."""
    gw = Gateway(settings, kube)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        gw.hub.start()
        try:
            yield
        finally:
            await gw.hub.stop()
            await kube.close()

    app = FastAPI(
        title="CodingJob gateway",
        version="0.1.0",
        description="Submit and follow CodingJobs over HTTP. Authenticate with a Kubernetes "
        "bearer token (`Authorization: Bearer <token>`); every request runs with that "
        "identity's RBAC rights. A job id is `NAMESPACE.NAME`.",
        lifespan=lifespan,
        # /docs is served by add_api_docs from the image's own Swagger UI, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gw
    add_api_docs(app, settings.swagger_ui_dir)

    # --- errors, metrics, request log --------------------------------------------------------

    @app.exception_handler(HttpError)
    async def _http_error(_: Request, error: HttpError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        status, message = api_error_response(error)
        gw.metrics.api_errors.labels(str(error.status)).inc()
        return JSONResponse({"detail": message}, status)

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(_: Request, error: NotAuthenticated) -> JSONResponse:
        return JSONResponse(
            {"detail": str(error)}, 401, headers={"WWW-Authenticate": 'Bearer realm="codingjob"'}
        )

    @app.exception_handler(BadJobId)
    async def _bad_id(_: Request, error: BadJobId) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"loc": ["path", "job_id"], "msg": str(error), "type": "value_error"}]},
            422,
        )

    app.add_middleware(ObserveRequests, gateway=gw)

    # --- authentication ----------------------------------------------------------------------

    def job_id(raw: str, who: Identity) -> JobId:
        return JobId.parse(raw, gw.default_namespace(who))

    # --- the seed's API ----------------------------------------------------------------------

    @app.post(
        "/submit",
        status_code=201,
        response_model=SubmitResponse,
        tags=["jobs"],
        summary="Start a CodingJob",
        responses={401: {}, 403: {}, 422: {}, 503: {}},
    )
    async def submit(body: SubmitRequest, request: Request, who: Caller) -> SubmitResponse:
        """Create a CodingJob (named by the API server) in the caller's namespace or
        ``namespace``; any other body field is a CodingJob spec field (camelCase)."""
        namespace = body.namespace or gw.default_namespace(who)
        manifest = build_codingjob(body, namespace)
        try:
            created = await kube.request(
                "POST",
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                as_user=who,
                body=manifest,
                # Unknown fields are an error, not silently pruned: a typo must not be ignored.
                params={"fieldValidation": "Strict"},
            )
        except ApiError as error:
            if error.status in (400, 422) and not isinstance(error, ApiUnavailable):
                raise HttpError(422, field_errors(dict(error.body), SUBMIT_FIELDS)) from error
            raise
        gw.metrics.jobs_submitted.inc()
        job = JobId(namespace, created["metadata"]["name"])
        meta = created["metadata"]
        log.info(
            "job submitted",
            extra={"job_namespace": namespace, "job_name": job.name, "job_uid": meta.get("uid")},
        )
        return SubmitResponse(
            job_id=str(job),
            namespace=namespace,
            name=job.name,
            status_url=f"{_base(request)}/status/{job}",
        )

    @app.get(
        "/status/{job_id}",
        response_model=JobView,
        tags=["jobs"],
        summary="A job's phase, progress and download link",
        responses={401: {}, 403: {}, 404: {}, 503: {}},
    )
    async def status(job_id: str, request: Request, who: Caller) -> JobView:
        """Phase, steps, tokens, conditions, reason; ``download_url`` once archived. A bare
        NAME means the caller's own namespace."""
        obj = await gw.read_job(_job(job_id, who), who)
        return job_view(obj, _base(request))

    # --- the collection ----------------------------------------------------------------------

    @app.get("/jobs", response_model=JobList, tags=["jobs"], summary="List jobs")
    async def list_jobs(
        request: Request,
        who: Caller,
        namespace: str | None = None,
        phase: Annotated[list[str] | None, Query()] = None,
        label_selector: Annotated[str | None, Query(alias="labelSelector")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        continue_: Annotated[str | None, Query(alias="continue")] = None,
    ) -> JobList:
        """Jobs of one namespace, newest first within the page, paginated by the API server
        (``limit`` / ``continue``). ``phase`` filters the page (it may come back shorter)."""
        ns = namespace or gw.default_namespace(who)
        if not jobs.NAMESPACE_PATTERN.match(ns):
            raise HttpError(
                422, [{"loc": ["query", "namespace"], "msg": "not a namespace", "type": "value"}]
            )
        params = {"limit": str(limit)}
        if label_selector:
            params["labelSelector"] = label_selector
        if continue_:
            params["continue"] = continue_
        listing = await kube.request(
            "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", as_user=who, params=params
        )
        views = [job_view(o, _base(request)) for o in listing.get("items") or []]
        if phase:
            views = [v for v in views if v.phase in phase]
        views.sort(key=lambda v: v.created or "", reverse=True)
        token = (listing.get("metadata") or {}).get("continue") or None
        return JobList.model_validate({"items": views, "continue": token})

    @app.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"], summary="One job")
    async def get_job(job_id: str, request: Request, who: Caller) -> JobView:
        obj = await gw.read_job(_job(job_id, who), who)
        return job_view(obj, _base(request))

    @app.delete("/jobs/{job_id}", status_code=202, tags=["jobs"], summary="Cancel and delete")
    async def delete_job(job_id: str, who: Caller) -> dict[str, str]:
        """Cancel a job: the CodingJob is deleted and every child goes with it."""
        job = _job(job_id, who)
        await kube.request(
            "DELETE", gw.job_path(job), as_user=who, body={"propagationPolicy": "Background"}
        )
        return {"job_id": str(job), "status": "deleting"}

    async def set_suspend(job_id: str, who: Identity, request: Request, value: bool) -> JobView:
        job = _job(job_id, who)
        obj = await kube.request(
            "PATCH",
            gw.job_path(job),
            as_user=who,
            body={"spec": {"suspend": value}},
            content_type="application/merge-patch+json",
        )
        return job_view(obj, _base(request))

    @app.post("/jobs/{job_id}/suspend", response_model=JobView, tags=["jobs"])
    async def suspend(job_id: str, request: Request, who: Caller) -> JobView:
        """Pause: the agent pod is deleted, the workspace and conversation are kept."""
        return await set_suspend(job_id, who, request, True)

    @app.post("/jobs/{job_id}/resume", response_model=JobView, tags=["jobs"])
    async def resume(job_id: str, request: Request, who: Caller) -> JobView:
        """Resume a suspended job in a new pod, from the workspace journal."""
        return await set_suspend(job_id, who, request, False)

    @app.get(
        "/jobs/{job_id}/download",
        status_code=302,
        tags=["jobs"],
        summary="Redirect to the workspace ZIP",
        responses={302: {"description": "to the current presigned URL"}, 409: {}},
    )
    async def download(job_id: str, who: Caller) -> RedirectResponse:
        """A stable link: it redirects to the job's current presigned URL, which the operator
        re-signs before it expires for as long as the CodingJob exists."""
        job = _job(job_id, who)
        obj = await gw.read_job(job, who)
        url = (obj.get("status") or {}).get("downloadURL")
        if not url:
            phase = (obj.get("status") or {}).get("phase") or "Pending"
            raise HttpError(409, f"job {job} has no archive yet (phase {phase})")
        return RedirectResponse(url, 302, headers={"Cache-Control": "no-store"})

    @app.get("/jobs/{job_id}/events", response_model=list[JobEvent], tags=["jobs"])
    async def job_events(job_id: str, who: Caller) -> list[JobEvent]:
        """The Kubernetes events of the job (transitions, warnings), oldest first."""
        job = _job(job_id, who)
        listing = await kube.request(
            "GET",
            f"/api/v1/namespaces/{job.namespace}/events",
            as_user=who,
            params={
                "fieldSelector": f"involvedObject.kind=CodingJob,involvedObject.name={job.name}"
            },
        )
        events = [
            JobEvent(
                type=e.get("type") or "Normal",
                reason=e.get("reason") or "",
                message=e.get("message") or "",
                count=e.get("count") or 1,
                time=e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp"),
            )
            for e in listing.get("items") or []
        ]
        return sorted(events, key=lambda e: e.time or "")

    @app.get("/jobs/{job_id}/transcript", response_class=PlainTextResponse, tags=["jobs"])
    async def transcript(
        job_id: str, who: Caller, tail: Annotated[int, Query(ge=1, le=5000)] = 500
    ) -> PlainTextResponse:
        """The agent's step log so far (the agent container's output, last ``tail`` lines).
        Once the pod is gone the whole conversation is in the ZIP
        (``.context-manager/context.jsonl``)."""
        job = _job(job_id, who)
        obj = await gw.read_job(job, who)
        pod = (obj.get("status") or {}).get("podName") or f"{job.name}-agent"
        try:
            text = await kube.request_text(
                "GET",
                f"/api/v1/namespaces/{job.namespace}/pods/{pod}/log",
                as_user=who,
                params={"container": "agent", "tailLines": str(tail)},
            )
        except ApiError as error:
            if error.status not in (400, 404):
                raise
            text = (
                "(no agent pod now: the full transcript is .context-manager/context.jsonl "
                "in the ZIP)\n"
            )
        return PlainTextResponse(text, headers={"Cache-Control": "no-store"})

    @app.get("/jobs/{job_id}/desktop/password", tags=["desktop"])
    async def desktop_password(job_id: str, who: Caller) -> JSONResponse:
        """The job's VNC password, read as the caller from Secret ``<job>-session``."""
        job = _job(job_id, who)
        secret = await kube.request(
            "GET", f"/api/v1/namespaces/{job.namespace}/secrets/{job.name}-session", as_user=who
        )
        encoded = (secret.get("data") or {}).get("vnc-password", "")
        password = base64.b64decode(encoded).decode() if encoded else ""
        return JSONResponse({"password": password}, headers={"Cache-Control": "no-store"})

    # --- the event stream --------------------------------------------------------------------

    @app.get(
        "/watch",
        tags=["jobs"],
        summary="Server-sent events of job changes",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def watch(
        request: Request,
        who: Caller,
        namespace: str | None = None,
        job: str | None = None,
    ) -> StreamingResponse:
        """``event: job`` with a job's status view on every change (the current jobs first),
        ``event: deleted`` when one goes. One shared API watch serves all streams; each stream
        needs the caller's right to watch CodingJobs in the namespace."""
        if job is not None:
            target = _job(job, who)
            ns, name = target.namespace, target.name
        else:
            ns, name = namespace or gw.default_namespace(who), None
        allowed, reason = await gw.auth.may(who, ns, "watch", PLURAL, GROUP)
        if not allowed:
            raise HttpError(
                403,
                f'{PLURAL}.{GROUP} is forbidden: User "{who.username}" cannot watch resource '
                f'"{PLURAL}" in API group "{GROUP}" in the namespace "{ns}"'
                + (f": {reason}" if reason else ""),
            )
        if not await gw.hub.wait_synced(settings.api_timeout_seconds):
            raise HttpError(503, "the job watch has not synced with the Kubernetes API server")
        base = _base(request)
        return StreamingResponse(
            _stream(gw, ns, name, base),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # --- operations --------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _job(raw: str, who: Identity) -> JobId:
        return job_id(raw, who)

    return app


async def _stream(gw: Gateway, namespace: str, job: str | None, base: str) -> AsyncIterator[str]:
    async with gw.hub.subscribe(namespace, job) as sub:
        yield "retry: 2000\n\n"
        while True:
            try:
                change = await _next(sub.queue, gw.settings.sse_heartbeat_seconds)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if change is None:
                yield "event: resync\ndata: {}\n\n"
                return
            view = job_view(change.object, base).model_dump(mode="json")
            kind = "deleted" if change.type == "DELETED" else "job"
            yield f"event: {kind}\ndata: {json.dumps(view)}\n\n"


async def _next(queue: Any, timeout: float) -> Any:
    return await asyncio.wait_for(queue.get(), timeout)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _route_template(app: Any, scope: Scope) -> str:
    """The matched route's template (``/status/{job_id}``): bounded metric label values."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    for candidate in getattr(app, "routes", []):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(getattr(candidate, "path", "other"))
    return "other"


class ObserveRequests:
    """Counts, times and logs every HTTP request (plain ASGI: streams pass through untouched)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gw = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        started = False

        async def observe_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                # An event stream lasts as long as its client: only its start is latency.
                self._record(scope, status, time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, observe_start)
        except Exception:
            if not started:
                self._record(scope, 500, time.perf_counter() - start)
            raise

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = _route_template(scope.get("app"), scope)
        method = str(scope.get("method", ""))
        self.gw.metrics.requests.labels(route, method, str(status)).inc()
        self.gw.metrics.latency.labels(route).observe(elapsed)
        if route not in ("/metrics", "/healthz"):
            log.info(
                "%s %s %d",
                method,
                route,
                status,
                extra={
                    "route": route,
                    "method": method,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )


def add_api_docs(app: FastAPI, assets: Path) -> None:
    """``/docs``: Swagger UI from the image's own copy of swagger-ui-dist. Not FastAPI's default,
    which loads it from a CDN: a third-party script on the origin of the console's session
    cookie could act as the signed-in user, and an air-gapped cluster reaches no CDN."""
    if not (assets / "swagger-ui-bundle.js").is_file():
        log.warning("no Swagger UI in %s: no /docs (the API is described at /openapi.json)", assets)
        return
    app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )
