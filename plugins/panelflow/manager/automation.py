"""The Threads Manager's Automation Status endpoints: the day's status, the health badge, the
failed-actions queue and the emergency stop.

Same rules as the thread endpoints (panelflow.manager.app): reading needs a user who may read
DAGs; every change needs DAG edit (``PUT``) on all DAGs — a retry or a stop acts on the whole
automation, not on one thread — and is written twice: Airflow's audit log (``action_logging``,
the request) and the panel DB's ``automation_actions`` (what it did to which row), in the
transaction of the change.

The emergency stop pauses DAGs in the API server's own metadata session (what Airflow's
``PATCH /api/v2/dags`` does) and remembers exactly which ones it paused in ``emergency_stops``,
committed together: the Airflow session commits first inside the panel DB's open transaction, so
a failure of either leaves no stop that paused nothing or paused DAGs nobody can resume.
"""

# no ``from __future__ import annotations``: the routes' dependency types are closure variables
# that FastAPI must see as objects, not as names it would look up in this module's globals
from collections.abc import Callable
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, status
from sqlalchemy import select

from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.api_fastapi.logging.decorators import action_logging

from panelflow.manager import status as status_view
from panelflow.services import failed_actions as fa


@contextmanager
def panel_conn():
    """An autocommit connection to the panel DB (connection ``panel_db``), as the steps reach it."""
    from panelflow.hooks.panel_db import PanelDatabaseHook

    conn = PanelDatabaseHook().get_conn()
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def active_stop(conn) -> dict[str, Any] | None:
    row = conn.execute("SELECT id, pulled_by, pulled_at, paused_dag_ids FROM emergency_stops"
                       " WHERE resumed_at IS NULL").fetchone()
    return None if row is None else {"id": row[0], "pulled_by": row[1], "pulled_at": row[2].isoformat(),
                                     "paused_dag_ids": list(row[3])}


def pull_stop(session, conn, dag_ids: list[str], user: str) -> dict[str, Any]:
    """Pause every unpaused DAG of ``dag_ids``, remembering which: exactly those are resumed."""
    from airflow.models.dag import DagModel

    with conn.transaction():
        if conn.execute("SELECT 1 FROM emergency_stops WHERE resumed_at IS NULL FOR UPDATE").fetchone():
            raise HTTPException(status.HTTP_409_CONFLICT, "the emergency stop is already pulled; resume first")
        dags = session.scalars(select(DagModel).where(DagModel.dag_id.in_(dag_ids), DagModel.is_paused.is_(False))
                               .with_for_update()).all()
        ids = sorted(d.dag_id for d in dags)
        (stop_id,) = conn.execute("INSERT INTO emergency_stops (pulled_by, paused_dag_ids) VALUES (%s, %s)"
                                  " RETURNING id", (user, ids)).fetchone()
        fa.record(conn, user, "stop", "automation", stop_id, {"paused_dag_ids": ids})
        for d in dags:
            d.is_paused = True
        session.commit()
    return active_stop(conn)


def resume(session, conn, user: str) -> dict[str, Any]:
    """Unpause exactly the DAGs the active stop paused, and close it."""
    from airflow.models.dag import DagModel

    with conn.transaction():
        row = conn.execute("SELECT id, paused_dag_ids FROM emergency_stops WHERE resumed_at IS NULL"
                           " FOR UPDATE").fetchone()
        if row is None:
            raise HTTPException(status.HTTP_409_CONFLICT, "the emergency stop is not pulled")
        stop_id, ids = row[0], list(row[1])
        for d in session.scalars(select(DagModel).where(DagModel.dag_id.in_(ids)).with_for_update()):
            d.is_paused = False
        conn.execute("UPDATE emergency_stops SET resumed_by = %s, resumed_at = clock_timestamp() WHERE id = %s",
                     (user, stop_id))
        fa.record(conn, user, "resume", "automation", stop_id, {"unpaused_dag_ids": ids})
        session.commit()
    return {"resumed": ids}


def _refusal(exc: Exception) -> HTTPException:
    if isinstance(exc, LookupError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


def add_routes(app: FastAPI, readable_dep, catalog: Callable, overrides: Callable) -> None:
    """Mount the endpoints on the Threads Manager's app (``catalog()`` → the current catalog)."""
    edit = [Depends(requires_access_dag("PUT"))]

    def logged(event: str) -> list:
        return [*edit, Depends(action_logging(f"threads_manager_{event}"))]

    @app.get("/api/automation/status")
    def day_status(readable: readable_dep, session: SessionDep,
                   day: Annotated[date | None, Query()] = None) -> dict[str, Any]:
        cat = catalog()
        with panel_conn() as conn:
            return status_view.day_view(session, conn, cat, day or status_view.today(cat), readable)

    @app.get("/api/automation/health")
    def health(readable: readable_dep, session: SessionDep) -> dict[str, Any]:
        """The badge, also for external monitors: ``status`` is ``green`` or ``red`` with ``reasons``."""
        cat = catalog()
        with panel_conn() as conn:
            return status_view.health(session, conn, cat, overrides(cat))

    @app.get("/api/automation/failed")
    def failed(readable: readable_dep, user: GetUserDep) -> dict[str, Any]:
        from airflow.api_fastapi.app import get_auth_manager

        with panel_conn() as conn:
            queue = fa.list_failed(conn)
            queue["audit"] = fa.audit(conn, 20)
        queue["can_edit"] = get_auth_manager().is_authorized_dag(method="PUT", user=user)
        return queue

    @app.get("/api/automation/stop")
    def stop_state(readable: readable_dep, user: GetUserDep) -> dict[str, Any]:
        from airflow.api_fastapi.app import get_auth_manager

        with panel_conn() as conn:
            return {"stop": active_stop(conn),
                    "can_edit": get_auth_manager().is_authorized_dag(method="PUT", user=user)}

    @app.post("/api/automation/failed/jobs/{job_id}/retry", dependencies=logged("retry_job"))
    def retry_job(job_id: int, user: GetUserDep) -> dict[str, Any]:
        with panel_conn() as conn:
            try:
                return fa.retry_job(conn, job_id, user.get_name())
            except (fa.NotRetryable, LookupError) as exc:
                raise _refusal(exc) from None

    @app.post("/api/automation/failed/jobs/retry", dependencies=logged("retry_jobs"))
    def retry_jobs(user: GetUserDep, ids: Annotated[list[int], Body(embed=True, max_length=1000)]) -> dict[str, Any]:
        """Retry all shown: the page sends the ids it shows, so nothing failed since is retried unseen."""
        with panel_conn() as conn:
            return fa.retry_jobs(conn, ids, user.get_name())

    @app.post("/api/automation/failed/{kind}/{target_id}/dismiss", dependencies=logged("dismiss"))
    def dismiss(kind: str, target_id: int, user: GetUserDep) -> dict[str, Any]:
        if kind not in fa.KINDS:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown kind {kind!r}")
        with panel_conn() as conn:
            return fa.dismiss(conn, kind, target_id, user.get_name())

    @app.post("/api/automation/failed/messages/{message_id}/resend", dependencies=logged("resend"))
    def resend(message_id: int, user: GetUserDep,
               confirm: Annotated[bool, Body(embed=True, strict=True)] = False) -> dict[str, Any]:
        with panel_conn() as conn:
            try:
                return fa.resend_message(conn, message_id, user.get_name(), confirm_uncertain=confirm)
            except (fa.NotRetryable, LookupError) as exc:
                raise _refusal(exc) from None

    @app.post("/api/automation/failed/charges/{invoice_id}/retry", dependencies=logged("retry_charge"))
    def retry_charge(invoice_id: int, user: GetUserDep) -> dict[str, Any]:
        """A new attempt now, numbered and keyed by the payments service as every attempt is (the
        billing day's other open invoices are due too and are charged with it)."""
        from panelflow.hooks.payment_gateway import PaymentGatewayHook
        from panelflow.services.payments import charge_due_invoices
        from panelflow.step import StepReport

        with panel_conn() as conn:
            try:
                reopened = fa.reopen_charge(conn, invoice_id, user.get_name())
            except (fa.NotRetryable, LookupError) as exc:
                raise _refusal(exc) from None
            day = reopened["billing_date"]
            with PaymentGatewayHook() as gateway:
                result = charge_due_invoices(conn, gateway, first_day=day, end_day=day + timedelta(days=1),
                                             clock=conn.execute("SELECT now()").fetchone()[0], report=StepReport())
            (attempt, outcome) = conn.execute("SELECT attempt, status FROM payment_attempts WHERE invoice_id = %s"
                                              " ORDER BY attempt DESC LIMIT 1", (invoice_id,)).fetchone()
        return {**reopened, "attempt": attempt, "outcome": outcome, "charged": result["charged"],
                "declined": result["declined"]}

    @app.post("/api/automation/stop", dependencies=logged("emergency_stop"))
    def stop(user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        ids = [t.dag_id for t in catalog().live_threads]
        with panel_conn() as conn:
            return pull_stop(session, conn, ids, user.get_name())

    @app.post("/api/automation/resume", dependencies=logged("emergency_resume"))
    def resume_all(user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        with panel_conn() as conn:
            return resume(session, conn, user.get_name())
