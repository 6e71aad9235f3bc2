"""Deadline alerts: a thread whose catalog entry has ``deadline: {after_run_at_minutes: N}`` gets
an Airflow 3 Deadline Alert, and a run not finished N minutes after it was due calls
:func:`missed_deadline` once — which records the miss and queues one e-mail to the thread's alert
addresses (``panelflow.services.deadlines``).

Airflow's machinery, not a check of our own: the scheduler stores a deadline when the run is
queued, drops it when the run ends in time, and when it passes queues the callback. It is an
``AsyncCallback``, run by the triggerer: a ``SyncCallback`` would go to the executor's
``[operators] default_queue``, which no panelflow Celery worker consumes (each consumes its own
node's queue), while the triggerer always runs (the daemon threads need it). The panel-DB work
itself is synchronous and short; it runs in a thread (``sync_to_async``), as the daemon trigger
reads its connection, so the triggerer's event loop is never blocked.

The reference is the run's **queued time** (``DAGRUN_QUEUED_AT``): the scheduler queues a
scheduled run when it is due, so that is its run-at time (BillingWork's 01:30), and a manual run
counts from its trigger. The logical date would be wrong for threads with ``data_interval: true``:
their logical date is the *start* of the day they cover, a day before the run is due.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk.definitions.callback import AsyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

CALLBACK = "panelflow.deadlines.missed_deadline"
log = logging.getLogger(__name__)


def deadline_alert(*, thread: str, minutes: int, to: list[str]) -> DeadlineAlert:
    """The DAG's Deadline Alert; the callback is named by path, so parsing imports nothing more."""
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback(CALLBACK, kwargs={"thread": thread, "to": list(to), "minutes": minutes}),
        name=f"{thread} not finished {minutes} min after its run-at time",
    )


def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


async def missed_deadline(thread: str, to: list[str], minutes: int, context: dict | None = None) -> bool:
    """Airflow's callback for a missed deadline: one ``deadline_misses`` row, one e-mail.

    ``context`` is what Airflow 3.3 gives a deadline callback: the run (``dag_run``, as the REST
    API shows it) and the deadline (``deadline.deadline_time``). Safe to call twice.
    """
    from asgiref.sync import sync_to_async

    return await sync_to_async(record_missed_deadline)(thread, to, minutes, context)


def record_missed_deadline(thread: str, to: list[str], minutes: int, context: dict | None = None) -> bool:
    """The callback's work, synchronous: the miss and its e-mail in one panel-DB transaction."""
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.services.deadlines import record_miss

    context = context or {}
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    deadline_at = _when(deadline.get("deadline_time"))
    due_at = _when(run.get("queued_at"))
    if deadline_at is None and due_at is not None:
        deadline_at = due_at + timedelta(minutes=minutes)
    ended = _when(run.get("end_date"))
    if ended is not None and deadline_at is not None and ended <= deadline_at:
        # Airflow drops a deadline when its run succeeds, not when it fails: a run that failed
        # before its deadline was finished in time (its failure has an alert of its own).
        log.info("%s run %s ended (%s) before its deadline: not a miss", thread, run.get("dag_run_id"),
                 run.get("state"))
        return False
    with PanelDatabaseHook().get_conn() as conn:
        return record_miss(conn, dag_id=run["dag_id"], run_id=run["dag_run_id"], thread=thread,
                           deadline_at=deadline_at, to=to, minutes=minutes, due_at=due_at, state=run.get("state"))
