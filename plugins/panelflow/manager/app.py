"""The Threads Manager's FastAPI app: the page, its data, and the overrides it sets.

Airflow mounts plugin apps without any authentication, so each route depends on Airflow's own
security dependencies: reading needs a user who may read DAGs (the list holds only the DAGs
they may read), changing a thread's interval or logging needs DAG edit (``PUT``) on that DAG —
the permission pausing it needs. Run now and Enable/Disable are not here: the page calls
Airflow's REST API for them, so Airflow checks them itself. Changes are written to Airflow's
audit log (``action_logging``) like the REST API's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.api_fastapi.logging.decorators import action_logging

from panelflow.catalog import CatalogError
from panelflow.manager import URL_PREFIX, approvals, automation, data, store
from panelflow.overrides import OverrideError, validate_schedule
from panelflow.schedules import describe

HERE = Path(__file__).resolve().parent
STATIC = {"manager.js": "text/javascript", "automation.js": "text/javascript", "manager.css": "text/css"}
_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))


def readable_dag_ids(user: GetUserDep, session: SessionDep) -> set[str]:
    """The DAGs this user may read; someone who may read none gets 403, an anonymous caller 401."""
    auth = get_auth_manager()
    ids = auth.get_authorized_dag_ids(user=user, method="GET", session=session)
    if not ids and not auth.is_authorized_dag(method="GET", user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: you may not read any thread (DAG)")
    return ids


ReadableDags = Annotated[set[str], Depends(readable_dag_ids)]


def _catalog():
    try:
        return data.current_catalog()
    except CatalogError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the catalog does not load: {exc}") from None


def _live_thread(dag_id: str):
    catalog, _ = _catalog()
    for t in catalog.live_threads:
        if t.dag_id == dag_id:
            return catalog, t
    legacy = next((t for t in catalog.threads if t.dag_id == dag_id), None)
    if legacy is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"{legacy.name} is a legacy thread (superseded by {legacy.legacy.superseded_by}): it has no DAG")
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no thread with dag_id {dag_id!r} in the catalog")


def _airflow_root(request: Request) -> str:
    """Where Airflow is served (``[api] base_url``'s path), seen from this mounted app."""
    return request.scope.get("root_path", "").removesuffix(URL_PREFIX)


def _auth_error(request: Request, exc: HTTPException):
    if exc.status_code == status.HTTP_401_UNAUTHORIZED and "text/html" in request.headers.get("accept", ""):
        root = _airflow_root(request)
        try:
            login = get_auth_manager().get_url_login(next_url=f"{root}{URL_PREFIX}/")
        except Exception:  # noqa: BLE001 - a login link is a convenience
            login = f"{root}/"
        body = _templates.get_template("login_required.html").render(login=login, detail=exc.detail)
        return HTMLResponse(body, status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app() -> FastAPI:
    app = FastAPI(title="panelflow Threads Manager", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(HTTPException, _auth_error)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, readable: ReadableDags, user: GetUserDep) -> HTMLResponse:
        catalog, _ = _catalog()
        return HTMLResponse(_templates.get_template("index.html").render(
            airflow_root=_airflow_root(request), page_root=request.scope.get("root_path", URL_PREFIX),
            timezone=catalog.settings.timezone, user=user.get_name(),
        ))

    @app.get("/static/{name}")
    def static(name: str, readable: ReadableDags) -> Response:
        if name not in STATIC:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
        return Response((HERE / "static" / name).read_text(), media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/api/threads")
    def threads(readable: ReadableDags, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        catalog, catalog_problem = _catalog()
        auth = get_auth_manager()
        live = {t.dag_id for t in catalog.live_threads} & readable
        editable = auth.filter_authorized_dag_ids(dag_ids=live, user=user, method="PUT")
        triggerable = {d for d in live if auth.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                                 details=DagDetails(id=d), user=user)}
        overrides, problems = store.read(catalog)
        view = data.threads_view(session, catalog, readable=readable, editable=editable, triggerable=triggerable,
                                 overrides=overrides, override_problems=problems)
        view["user"] = user.get_name()
        view["stored_override_problem"] = problems.get("*")
        view["catalog_problem"] = catalog_problem
        return view

    def _save(session, catalog, dag_id: str, user, change):
        try:
            return store.update(session, catalog, dag_id, user.get_name(), change)
        except store.ShadowedError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except OverrideError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None

    def _answer(override, thread, catalog) -> dict[str, Any]:
        return {"dag_id": thread.dag_id,
                "override": None if override is None else override.model_dump(mode="json"),
                "schedule": describe(override.schedule if override and override.schedule else thread.schedule,
                                          catalog.settings.timezone),
                "catalog_schedule": describe(thread.schedule, catalog.settings.timezone)}

    edit = [Depends(requires_access_dag("PUT"))]

    @app.put("/api/threads/{dag_id}/schedule",
             dependencies=[*edit, Depends(action_logging("threads_manager_set_interval"))])
    def set_interval(dag_id: str, session: SessionDep, user: GetUserDep,
                     schedule: Annotated[Any, Body(embed=True)]) -> dict[str, Any]:
        """MachPanel's Update Time Interval: validated like the catalog, applied at the next parse."""
        catalog, thread = _live_thread(dag_id)
        try:
            checked = validate_schedule(thread, schedule, catalog.settings.timezone)
        except OverrideError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
        value = checked.model_dump(mode="json")
        return _answer(_save(session, catalog, dag_id, user, lambda e: {**e, "schedule": value}), thread, catalog)

    @app.delete("/api/threads/{dag_id}/schedule",
                dependencies=[*edit, Depends(action_logging("threads_manager_reset_interval"))])
    def reset_interval(dag_id: str, session: SessionDep, user: GetUserDep) -> dict[str, Any]:
        catalog, thread = _live_thread(dag_id)
        return _answer(_save(session, catalog, dag_id, user, lambda e: {**e, "schedule": None}), thread, catalog)

    @app.put("/api/threads/{dag_id}/logging",
             dependencies=[*edit, Depends(action_logging("threads_manager_set_logging"))])
    def set_logging(dag_id: str, session: SessionDep, user: GetUserDep,
                    enabled: Annotated[bool, Body(embed=True, strict=True)]) -> dict[str, Any]:
        """MachPanel's Enable Logging: verbose task logs for this thread from its next task on."""
        catalog, thread = _live_thread(dag_id)
        return _answer(_save(session, catalog, dag_id, user, lambda e: {**e, "verbose_logging": enabled or None}),
                       thread, catalog)

    automation.add_routes(app, ReadableDags, lambda: _catalog()[0], lambda catalog: store.read(catalog)[0])
    approvals.add_routes(app, _templates, automation.panel_conn)   # an approver's e-mailed link: no sign-in
    return app
