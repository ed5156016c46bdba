"""The HTTP API: a thin shell over :class:`stoic.Operations`.

Every route calls one operation and returns a view from :mod:`stoic.views`
(the same JSON ``stoic ... --json`` prints). Errors are JSON
``{"error": {"code", "message"}}``: unknown names 404, bad input 422, an
action that makes no sense now 409, the database unreachable 503 — never a
500 for anything a client sent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from stoic import metrics
from stoic.api.auth import Admin, ApiSettings, AuthError, authenticate, is_admin
from stoic.errors import (
    ActionRefused,
    ConfigurationError,
    FailureNotFound,
    InvalidArgument,
    InvalidEvent,
    StoicError,
    TransientError,
    UnknownProjection,
)
from stoic.health import ProjectionHealth
from stoic.operations import MAX_REASON_CHARS, Operations
from stoic.projection import App
from stoic.store import FailureStatus, Store
from stoic.views import (
    AuditView,
    CheckpointView,
    FailureDetail,
    FailureSummary,
    ProjectionHealthView,
    ReconcileView,
    RewindView,
    SystemStatusView,
)

log = logging.getLogger("stoic.api")

STATIC = Path(__file__).parent / "static"
MAX_ID = 2**63 - 1
NO_NUL = r"^[^\x00]*$"

ProjectionName = Annotated[str, PathParam(min_length=1, max_length=200, pattern=NO_NUL)]
StreamId = Annotated[str, PathParam(min_length=1, max_length=1000, pattern=NO_NUL)]
FailureId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine code: not_found, invalid_request, refused, unauthenticated, ...")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Reason(BaseModel):
    """Why an admin acts: recorded in the audit log."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS, pattern=NO_NUL)


class RequiredReason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS, pattern=NO_NUL)


class ReplayRequest(RequiredReason):
    from_position: int = Field(ge=0, le=MAX_ID, description="Replay the events after this position.")


class RepairRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repair: bool = Field(default=False, description="Rebuild the mismatched streams.")
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS, pattern=NO_NUL)


class RebuildStreams(RequiredReason):
    streams: list[Annotated[str, Field(min_length=1, max_length=1000, pattern=NO_NUL)]] = Field(
        min_length=1, max_length=10_000)


class FailurePage(BaseModel):
    items: list[FailureDetail | FailureSummary]
    limit: int
    offset: int
    detailed: bool = Field(description="True when the caller is an admin and sees messages and tracebacks.")


class PauseView(BaseModel):
    projection: str
    paused: bool


class WhoAmI(BaseModel):
    actor: str
    mode: str = Field(description="token, or loopback (demo mode: no token configured).")


class ResegmentRequest(RequiredReason):
    to: int = Field(ge=1, le=256, description="The new number of segments.")
    timeout: float = Field(default=60.0, gt=0, le=600, description="Seconds to wait for the segments to drain.")


class ResegmentView(BaseModel):
    projection: str
    segments: int
    position: int = Field(description="The barrier: events up to here went to the old segments.")


class GenerationView(BaseModel):
    projection: str
    generation: int


class RetryAllView(BaseModel):
    projection: str
    retried: int
    failure_ids: list[int]


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    schema_version: int
    expected_schema_version: int
    head: int


_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (UnknownProjection, 404, "not_found"),
    (FailureNotFound, 404, "not_found"),
    (InvalidArgument, 422, "invalid_argument"),
    (InvalidEvent, 422, "invalid_argument"),
    (ConfigurationError, 409, "not_configured"),
    (ActionRefused, 409, "refused"),
    (TransientError, 503, "unavailable"),
]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)
}


def _reader(request: Request) -> None:
    """Open reads, unless the settings put them behind the admin token."""
    settings: ApiSettings = request.app.state.settings
    if settings.protect_reads:
        authenticate(request, settings)


BEARER = HTTPBearer(auto_error=False, description="The admin token (STOIC_ADMIN_TOKEN).")


def _admin(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None) -> Admin:
    """The admin behind the request (the bearer scheme is declared for OpenAPI; the
    check itself is :func:`authenticate`, in constant time)."""
    return authenticate(request, request.app.state.settings)


AdminDep = Annotated[Admin, Depends(_admin)]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_app(store: Store, app: App | None = None, settings: ApiSettings | None = None,
               operations: Operations | None = None) -> FastAPI:
    """Builds the API over a store (and the application, to know its projections)."""
    settings = settings or ApiSettings()
    ops = operations or Operations(store, app=app)
    api = FastAPI(title="Stoic", version="1", summary="Health, metrics and admin actions of a Stoic system.",
                  responses=_RESPONSES)
    api.state.operations, api.state.settings = ops, settings

    read = [Depends(_reader)]

    @api.exception_handler(AuthError)
    def _auth(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, headers)

    @api.exception_handler(StoicError)
    def _stoic(request: Request, exc: StoicError) -> JSONResponse:
        for kind, status, code in _ERRORS:
            if isinstance(exc, kind):
                return _error(status, code, str(exc))
        return _error(400, "bad_request", str(exc))

    @api.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for item in exc.errors()[:5]:
            where = ".".join(str(p) for p in item.get("loc", ()))
            parts.append(f"{where}: {item.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @api.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): bad input, like the rest
            return _error(422, "invalid_request", str(exc.detail))
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @api.exception_handler(Exception)
    def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path,
                      extra={"action": "api_error"})
        return _error(500, "internal", "internal error; the server log has the details")

    # -- open: liveness, readiness, health, metrics -------------------------------------------

    @api.get("/health", tags=["health"], response_model=Liveness)
    def liveness() -> Liveness:
        """The process is up (does not touch the database)."""
        return Liveness(status="ok")

    @api.get("/health/ready", tags=["health"], response_model=Readiness, responses={503: {"model": Readiness}})
    def readiness() -> Any:
        """The database answers and its schema is the one this version expects."""
        try:
            version, head = store.schema_version(), store.head()
        except StoicError as exc:
            return _error(503, "unavailable", f"database not reachable: {type(exc).__name__}")
        ready = Readiness(status="ready" if version == store.expected_schema_version else "schema_mismatch",
                          schema_version=version, expected_schema_version=store.expected_schema_version, head=head)
        return ready if ready.status == "ready" else JSONResponse(ready.model_dump(), status_code=503)

    @api.get("/health/projections", tags=["health"], dependencies=read,
             response_model=list[ProjectionHealthView])
    def projections_health(request: Request) -> list[ProjectionHealthView]:
        """Every projection's status, causes, lag and failures."""
        detailed = is_admin(request, settings)
        return [_health(h, detailed) for h in ops.health()]

    @api.get("/health/projections/{name}", tags=["health"], dependencies=read, response_model=ProjectionHealthView)
    def projection_health(request: Request, name: ProjectionName) -> ProjectionHealthView:
        return _health(ops.projection_health(name), is_admin(request, settings))

    @api.get("/health/projections/{name}/checkpoint", tags=["health"], dependencies=read,
             response_model=CheckpointView)
    def checkpoint(name: ProjectionName) -> CheckpointView:
        return CheckpointView.of(ops.checkpoint(name))

    @api.get("/health/projections/{name}/failures", tags=["health"], dependencies=read, response_model=FailurePage)
    def projection_failures(request: Request, name: ProjectionName, status: FailureStatus | None = None,
                            limit: Limit = 50, offset: Offset = 0) -> FailurePage:
        """A projection's failures, newest first. Messages and tracebacks only for admins."""
        failures = ops.failures(name, status, None, limit, offset)
        return _page(failures, limit, offset, is_admin(request, settings))

    @api.get("/metrics", tags=["health"], dependencies=read, response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def prometheus() -> Response:
        """Prometheus text format: this process's counters and the store's shared state."""
        return Response(metrics.render(ops), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- admin ----------------------------------------------------------------------------------

    @api.get("/admin/whoami", tags=["admin"], response_model=WhoAmI)
    def whoami(who: AdminDep) -> WhoAmI:
        """Cheap check of admin credentials: who the audit log will name."""
        mode = "token" if settings.admin_token is not None else "loopback"
        return WhoAmI(actor=who.actor, mode=mode)

    @api.get("/admin/status", tags=["admin"], response_model=SystemStatusView)
    def system_status(who: AdminDep) -> SystemStatusView:
        """Projections, failures by status, workers and their heartbeats, head position."""
        return SystemStatusView.of(ops.status())

    @api.get("/admin/audit", tags=["admin"], response_model=list[AuditView])
    def audit(who: AdminDep, limit: Limit = 100, offset: Offset = 0,
              action: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None) -> list[AuditView]:
        """Recorded admin actions, newest first."""
        return [AuditView.of(a) for a in ops.audit(limit, offset, action)]

    @api.get("/admin/failures", tags=["admin"], response_model=FailurePage)
    def failures(who: AdminDep,
                 projection: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
                 status: FailureStatus | None = None,
                 stream_id: Annotated[str | None, Query(max_length=1000, pattern=NO_NUL)] = None,
                 limit: Limit = 50, offset: Offset = 0) -> FailurePage:
        """Failures with their messages and tracebacks, newest first."""
        return _page(ops.failures(projection, status, stream_id, limit, offset), limit, offset, True)

    @api.get("/admin/failures/{failure_id}", tags=["admin"], response_model=FailureDetail)
    def failure(who: AdminDep, failure_id: FailureId) -> FailureDetail:
        return FailureDetail.of(ops.failure(failure_id))

    @api.post("/admin/failures/{failure_id}/retry", tags=["admin"], response_model=FailureDetail)
    def retry(who: AdminDep, failure_id: FailureId, body: Reason | None = None) -> FailureDetail:
        """Retries a retrying or dead failure now (the projection's holder does it)."""
        return FailureDetail.of(ops.retry(failure_id, who.actor, body.reason if body else None))

    @api.post("/admin/failures/{failure_id}/revive", tags=["admin"], response_model=FailureDetail)
    def revive(who: AdminDep, failure_id: FailureId, body: Reason | None = None) -> FailureDetail:
        """Gives a dead failure its whole retry schedule again."""
        return FailureDetail.of(ops.revive(failure_id, who.actor, body.reason if body else None))

    @api.post("/admin/failures/{failure_id}/skip", tags=["admin"], response_model=FailureDetail)
    def skip(who: AdminDep, failure_id: FailureId, body: RequiredReason) -> FailureDetail:
        """Gives up on the event for good; its parked followers are applied."""
        return FailureDetail.of(ops.skip(failure_id, who.actor, body.reason))

    @api.post("/admin/failures/{failure_id}/resolve", tags=["admin"], response_model=FailureDetail)
    def resolve(who: AdminDep, failure_id: FailureId, body: RequiredReason) -> FailureDetail:
        """Marks the failure fixed by hand; its parked followers are applied."""
        return FailureDetail.of(ops.resolve(failure_id, who.actor, body.reason))

    @api.post("/admin/projections/{name}/failures/retry-all", tags=["admin"], response_model=RetryAllView)
    def retry_all(who: AdminDep, name: ProjectionName, body: Reason | None = None) -> RetryAllView:
        changed = ops.retry_all(name, who.actor, body.reason if body else None)
        return RetryAllView(projection=name, retried=len(changed), failure_ids=[f.id for f in changed])

    @api.post("/admin/projections/{name}/pause", tags=["admin"], response_model=PauseView)
    def pause(who: AdminDep, name: ProjectionName, body: Reason | None = None) -> PauseView:
        ops.pause(name, who.actor, body.reason if body else None)
        return PauseView(projection=name, paused=True)

    @api.post("/admin/projections/{name}/resume", tags=["admin"], response_model=PauseView)
    def resume(who: AdminDep, name: ProjectionName, body: Reason | None = None) -> PauseView:
        ops.resume(name, who.actor, body.reason if body else None)
        return PauseView(projection=name, paused=False)

    @api.post("/admin/projections/{name}/reset", tags=["admin"], response_model=RewindView, status_code=202)
    def reset(who: AdminDep, name: ProjectionName, body: RequiredReason) -> RewindView:
        """Clears the read model and rebuilds it from position 0 (the holder does the work)."""
        return RewindView.of(ops.reset(name, who.actor, body.reason))

    @api.post("/admin/projections/{name}/replay", tags=["admin"], response_model=RewindView, status_code=202)
    def replay(who: AdminDep, name: ProjectionName, body: ReplayRequest) -> RewindView:
        """Moves an idempotent projection's checkpoint back and applies the events again."""
        return RewindView.of(ops.replay(name, body.from_position, who.actor, body.reason))

    @api.get("/admin/projections/{name}/reconcile", tags=["admin"], response_model=ReconcileView)
    def reconcile(who: AdminDep, name: ProjectionName) -> ReconcileView:
        """Compares every stream's read-model state with the fold of its events, and runs the global checks."""
        return ReconcileView.of(ops.reconcile(name, who.actor))

    @api.get("/admin/projections/{name}/reconcile/{stream_id:path}", tags=["admin"], response_model=ReconcileView)
    def reconcile_stream(who: AdminDep, name: ProjectionName, stream_id: StreamId) -> ReconcileView:
        """Compares one stream's read-model state with the fold of its events."""
        return ReconcileView.of(ops.reconcile(name, who.actor, stream_id=stream_id))

    @api.post("/admin/projections/{name}/reconcile", tags=["admin"], response_model=ReconcileView)
    def reconcile_and_repair(who: AdminDep, name: ProjectionName, body: RepairRequest) -> ReconcileView:
        """Reconciles and, with ``repair``, asks the holder to rebuild the mismatched streams."""
        return ReconcileView.of(ops.reconcile(name, who.actor, repair=body.repair, reason=body.reason))

    @api.post("/admin/projections/{name}/streams/rebuild", tags=["admin"], response_model=RewindView,
              status_code=202)
    def rebuild_streams(who: AdminDep, name: ProjectionName, body: RebuildStreams) -> RewindView:
        """Rebuilds some streams on their own: their rows removed, their events applied again."""
        return RewindView.of(ops.rebuild_streams(name, body.streams, who.actor, body.reason))

    @api.post("/admin/projections/{name}/rebuild", tags=["admin"], response_model=RewindView, status_code=202)
    def rebuild(who: AdminDep, name: ProjectionName, body: RequiredReason) -> RewindView:
        """Builds a new generation of a versioned read model beside the serving one; it
        switches in atomically once caught up and verified."""
        return RewindView.of(ops.rebuild(name, who.actor, body.reason))

    @api.post("/admin/projections/{name}/rollback", tags=["admin"], response_model=GenerationView)
    def rollback(who: AdminDep, name: ProjectionName, body: RequiredReason) -> GenerationView:
        """Serves the generation the last switch replaced again (while its tables exist)."""
        return GenerationView(projection=name, generation=ops.rollback(name, who.actor, body.reason))

    @api.post("/admin/projections/{name}/drop-previous", tags=["admin"], response_model=GenerationView)
    def drop_previous(who: AdminDep, name: ProjectionName, body: Reason | None = None) -> GenerationView:
        """Drops the tables of the generation the last switch replaced."""
        return GenerationView(projection=name,
                              generation=ops.drop_previous(name, who.actor, body.reason if body else None))

    @api.post("/admin/projections/{name}/resegment", tags=["admin"], response_model=ResegmentView)
    def resegment(who: AdminDep, name: ProjectionName, body: ResegmentRequest) -> ResegmentView:
        """Changes a projection's number of segments: drains every segment to a barrier
        (the head now), then swaps the rows in one transaction. Blocks until done or
        ``timeout`` (then nothing changed: 503)."""
        barrier = ops.resegment(name, body.to, who.actor, body.reason, timeout=body.timeout)
        return ResegmentView(projection=name, segments=body.to, position=barrier)

    # -- dashboard ----------------------------------------------------------------------------

    @api.get("/", include_in_schema=False, response_class=HTMLResponse)
    def dashboard() -> HTMLResponse:
        page = STATIC / "index.html"
        if not page.exists():
            return HTMLResponse("<h1>Stoic</h1><p>See <a href='/docs'>/docs</a>.</p>")
        return HTMLResponse(page.read_text(encoding="utf-8"), headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "frame-ancestors 'none'", "Referrer-Policy": "no-referrer"})

    return api


# Causes whose sentence may carry data: the error that opened the breaker (a driver's
# message can name hosts, users, even passwords) and an operator's name and reason.
# Open readers get the code's fixed sentence; admins the whole one.
_OPEN_CAUSES = {
    "breaker_open": "circuit breaker open: a dependency keeps failing (admins see the last error)",
    "paused": "paused by an operator (admins see who and why)",
}


def _health(health: ProjectionHealth, detailed: bool) -> ProjectionHealthView:
    view = ProjectionHealthView.of(health)
    if detailed:
        return view
    causes = [c.model_copy(update={"message": _OPEN_CAUSES[c.code]}) if c.code in _OPEN_CAUSES else c
              for c in view.causes]
    return view.model_copy(update={"causes": causes})


def _page(failures: list[Any], limit: int, offset: int, detailed: bool) -> FailurePage:
    view = FailureDetail if detailed else FailureSummary
    return FailurePage(items=[view.of(f) for f in failures], limit=limit, offset=offset, detailed=detailed)
