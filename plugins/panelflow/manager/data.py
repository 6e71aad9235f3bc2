"""What the Threads Manager shows: catalog facts joined with Airflow's state of each DAG.

Read in the API server through Airflow's own session: a handful of set-based queries for all
threads at once (pause state and next run, the latest runs of each DAG, the queue), whatever
the number of threads.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from panelflow.catalog import Catalog, CatalogError, default_catalog_dir, load_catalog
from panelflow.overrides import ThreadOverride
from panelflow.schedules import describe

RECENT_RUNS = 20  # bars in each thread's chart

_lock = threading.Lock()
_cached: tuple[tuple, Catalog] | None = None
_problem: tuple[tuple, str] | None = None  # the catalog files' stamp when they last failed to load


def current_catalog() -> tuple[Catalog, str | None]:
    """The catalog, re-read when a file of it changes, and why the files on disk are not it.

    A catalog being edited may be broken for a moment: the page keeps showing the last valid one
    (the DAGs are still those too: a broken catalog fails the DAG file's parse) and says why.
    """
    global _cached, _problem
    directory = Path(default_catalog_dir())
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(directory.glob("*.yaml")))
    with _lock:
        if (_cached is None or _cached[0] != stamp) and (_problem is None or _problem[0] != stamp):
            try:
                _cached, _problem = (stamp, load_catalog(directory)), None
            except CatalogError as exc:
                _problem = (stamp, str(exc))
        if _cached is None:
            raise CatalogError([_problem[1] if _problem else "no catalog"])
        return _cached[1], (_problem[1] if _problem else None)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def schedule_shape(schedule) -> dict[str, Any] | None:
    return schedule.model_dump(exclude_defaults=False) if schedule is not None else None


def _airflow_state(session: Session, dag_ids: list[str]) -> dict[str, dict[str, Any]]:
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import DagRunState, TaskInstanceState

    state: dict[str, dict[str, Any]] = {d: {"dag": None, "runs": [], "queued_runs": 0, "queued_since": None,
                                            "waiting_tasks": 0, "waiting_since": None,
                                            "run_group_waits": 0, "run_group_waiting_since": None} for d in dag_ids}
    for dm in session.scalars(select(DagModel).where(DagModel.dag_id.in_(dag_ids))):
        state[dm.dag_id]["dag"] = {
            "is_paused": dm.is_paused,
            "is_stale": dm.is_stale,
            "has_import_errors": bool(dm.has_import_errors),
            "next_run": _iso(dm.next_dagrun_create_after),
            "timetable_summary": dm.timetable_summary,
            "last_parsed": _iso(dm.last_parsed_time),
        }

    ranked = (
        select(DagRun.dag_id, DagRun.run_id, DagRun.run_type, DagRun._state.label("state"), DagRun.run_after,
               DagRun.queued_at, DagRun.start_date, DagRun.end_date,
               func.row_number().over(partition_by=DagRun.dag_id,
                                      order_by=(DagRun.run_after.desc(), DagRun.id.desc())).label("rank"))
        .where(DagRun.dag_id.in_(dag_ids))
        .subquery()
    )
    for r in session.execute(select(ranked).where(ranked.c.rank <= RECENT_RUNS).order_by(ranked.c.dag_id,
                                                                                          ranked.c.rank)):
        duration = (r.end_date - r.start_date).total_seconds() if r.start_date and r.end_date else None
        state[r.dag_id]["runs"].append({
            "run_id": r.run_id, "run_type": r.run_type, "state": r.state, "run_after": _iso(r.run_after),
            "queued_at": _iso(r.queued_at), "start_date": _iso(r.start_date), "end_date": _iso(r.end_date),
            "duration": duration,
        })

    # "In Queue": runs created but not started (a manual run waiting, a paused thread's run) …
    for dag_id, count, since in session.execute(
        select(DagRun.dag_id, func.count(), func.min(func.coalesce(DagRun.queued_at, DagRun.run_after)))
        .where(DagRun.dag_id.in_(dag_ids), DagRun._state == DagRunState.QUEUED)
        .group_by(DagRun.dag_id)
    ):
        state[dag_id].update(queued_runs=count, queued_since=_iso(since))
    # … and tasks of running runs waiting for a worker or a run-group (pool) slot
    for dag_id, count, since in session.execute(
        select(TaskInstance.dag_id, func.count(),
               func.min(func.coalesce(TaskInstance.queued_dttm, TaskInstance.scheduled_dttm)))
        .join(DagRun, (DagRun.dag_id == TaskInstance.dag_id) & (DagRun.run_id == TaskInstance.run_id))
        .where(TaskInstance.dag_id.in_(dag_ids), DagRun._state == DagRunState.RUNNING,
               TaskInstance.state.in_([TaskInstanceState.SCHEDULED, TaskInstanceState.QUEUED]))
        .group_by(TaskInstance.dag_id)
    ):
        state[dag_id].update(waiting_tasks=count, waiting_since=_iso(since))
    # … and runs in queue for their run groups: their guard is deferred while another thread holds one
    from panelflow.run_groups.leases import GUARD_TASK_ID

    for dag_id, count, since in session.execute(
        select(TaskInstance.dag_id, func.count(), func.min(TaskInstance.start_date))
        .where(TaskInstance.dag_id.in_(dag_ids), TaskInstance.task_id == GUARD_TASK_ID,
               TaskInstance.state == TaskInstanceState.DEFERRED)
        .group_by(TaskInstance.dag_id)
    ):
        state[dag_id].update(run_group_waits=count, run_group_waiting_since=_iso(since))
    return state


def threads_view(session: Session, catalog: Catalog, *, readable: set[str], editable: set[str],
                 triggerable: set[str], overrides: dict[str, ThreadOverride],
                 override_problems: dict[str, str]) -> dict[str, Any]:
    """Every thread the user may read (live ones with their DAG's state; legacy ones greyed)."""
    tz = catalog.settings.timezone
    live = [t for t in catalog.live_threads if t.dag_id in readable]
    airflow = _airflow_state(session, [t.dag_id for t in live])
    replaced_by: dict[str, list[str]] = {}
    for t in catalog.threads:
        if t.legacy:
            replaced_by.setdefault(t.legacy.superseded_by, []).append(t.name)
    rows: list[dict[str, Any]] = []
    for t in live:
        override = overrides.get(t.dag_id)
        effective = override.schedule if override and override.schedule else t.schedule
        runs = airflow[t.dag_id]["runs"]
        rows.append({
            "name": t.name,
            "dag_id": t.dag_id,
            "description": t.description,
            "domain": t.domain,
            "tags": [t.domain, *t.tags],
            "legacy": None,
            "replaces": replaced_by.get(t.name, []),
            "kind": t.schedule.kind,
            "schedule": describe(effective, tz),
            "catalog_schedule": describe(t.schedule, tz),
            "catalog_schedule_shape": schedule_shape(t.schedule),
            "override": None if override is None else {
                "schedule": schedule_shape(override.schedule),
                "schedule_text": describe(override.schedule, tz) if override.schedule else None,
                "verbose_logging": override.verbose_logging,
                "updated_by": override.updated_by,
                "updated_at": _iso(override.updated_at),
            },
            "override_problem": override_problems.get(t.dag_id),
            "verbose_logging": bool(override and override.verbose_logging),
            "nodes": t.nodes,
            "run_groups": t.run_groups,
            "priority": catalog.priority(t),
            "steps_built": len(t.runnable_steps()),
            "steps_total": len(t.steps),
            **{k: v for k, v in airflow[t.dag_id].items() if k != "runs"},
            "last_run": runs[0] if runs else None,
            "recent_runs": runs,
            "can_edit": t.dag_id in editable,
            "can_trigger": t.dag_id in triggerable and t.schedule.kind != "daemon",
        })
    if readable:  # legacy threads have no DAG: catalog facts only, shown to anyone who reads threads
        for t in catalog.threads:
            if t.legacy:
                rows.append({"name": t.name, "dag_id": None, "description": t.description, "domain": None,
                             "tags": [], "legacy": {"superseded_by": t.legacy.superseded_by, "note": t.legacy.note}})
    rows.sort(key=lambda r: r["name"].lower())
    return {
        "timezone": tz,
        "domains": sorted({t.domain for t in live if t.domain}),
        "threads": rows,
    }
