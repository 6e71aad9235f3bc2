"""The Automation Status view and the health badge: what the automation did on a day, and whether it is well.

WHMCS's Automation Status, read from two places: the runs and failures of each thread from
Airflow's metadata DB (through the API server's session), and the business counts from the panel
DB's ``step_run_counts`` (panelflow.services.run_counts), worded by the catalog's step ``labels``
— the page has no words of its own for a count, so a new count needs only a catalog line.

A day is a calendar day in the catalog's time zone, and a run belongs to the day its data
interval ends on (its run-after time for a run without one): the rule ``step_run_counts.run_day``
follows, so a run's failures and its counts land on the same day.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from panelflow.catalog import Catalog
from panelflow.services import run_counts

CHART_DAYS = 30
HEARTBEAT_LIMIT = timedelta(minutes=2)
PERIODS_WITHOUT_SUCCESS = 3


def today(catalog: Catalog) -> date:
    return datetime.now(ZoneInfo(catalog.settings.timezone)).date()


def _bounds(day: date, tz: str, days: int = 1) -> tuple[datetime, datetime]:
    zone = ZoneInfo(tz)
    return (datetime.combine(day, time(), zone).astimezone(timezone.utc),
            datetime.combine(day + timedelta(days=days), time(), zone).astimezone(timezone.utc))


def _runs_by_day(session: Session, dag_ids: list[str], first: date, last: date, tz: str) -> dict:
    """{(dag_id, day): (runs, failed)} for the days first…last, counted in the metadata DB."""
    from airflow.models.dagrun import DagRun

    start, end = _bounds(first, tz, (last - first).days + 1)
    moment = func.coalesce(DagRun.data_interval_end, DagRun.run_after)
    day = func.date(func.timezone(tz, moment))
    rows = session.execute(
        select(DagRun.dag_id, day, func.count(), func.count(case((DagRun._state == "failed", 1))))
        .where(DagRun.dag_id.in_(dag_ids), moment >= start, moment < end)
        .group_by(DagRun.dag_id, day))
    return {(dag_id, d): (runs, failed) for dag_id, d, runs, failed in rows}


def day_view(session: Session, conn, catalog: Catalog, day: date, readable: set[str]) -> dict[str, Any]:
    """One row per readable live thread for ``day``: runs, failures, counts in words, a 30-day chart."""
    tz = catalog.settings.timezone
    live = [t for t in catalog.live_threads if t.dag_id in readable]
    first = day - timedelta(days=CHART_DAYS - 1)
    runs = _runs_by_day(session, [t.dag_id for t in live], first, day, tz)
    totals = run_counts.day_totals(conn, day)
    rows = []
    for t in live:
        labelled = [f"{s}.{k}" for s, k, _ in catalog.labels(t)]
        chart = []
        series = run_counts.daily_series(conn, t.name, day, CHART_DAYS) if labelled else \
            [(first + timedelta(days=i), {}) for i in range(CHART_DAYS)]
        for d, counts in series:
            n_runs, n_failed = runs.get((t.dag_id, d), (0, 0))
            chart.append({"day": d.isoformat(), "runs": n_runs, "failed": n_failed,
                          "counts": {k: counts[k] for k in labelled if k in counts}})
        n_runs, n_failed = runs.get((t.dag_id, day), (0, 0))
        counts = run_counts.worded(catalog, t, totals.get(t.name, {}))
        rows.append({"name": t.name, "dag_id": t.dag_id, "domain": t.domain, "runs": n_runs, "failed": n_failed,
                     "counts": counts, "summary": f"{t.name}: " + ", ".join(c["text"] for c in counts) if counts
                     else None, "labels": [{"key": f"{s}.{k}", "words": w} for s, k, w in catalog.labels(t)],
                     "chart": chart})
    rows.sort(key=lambda r: (not r["counts"], not r["runs"], r["name"].lower()))
    return {"day": day.isoformat(), "timezone": tz, "threads": rows}


def _fixed_due(thread, schedule, now: datetime, tz: str, minutes: int) -> datetime | None:
    """The latest run-at time whose deadline has passed by ``now`` (within the last two days)."""
    zone = ZoneInfo(schedule.timezone or tz)
    limit = now - timedelta(minutes=minutes)
    local = limit.astimezone(zone)
    best = None
    for back in (0, 1, 2):
        d = local.date() - timedelta(days=back)
        for at in schedule.at:
            hh, mm = (int(x) for x in at.split(":"))
            t = datetime.combine(d, time(hh, mm), zone).astimezone(timezone.utc)
            if t <= limit and (best is None or t > best):
                best = t
    return best


def health(session: Session, conn, catalog: Catalog, overrides: dict, now: datetime | None = None) -> dict[str, Any]:
    """Green, or red with every reason named: a stale scheduler, a fixed thread late for its latest
    due run, a periodic thread without a success for three of its periods, an emergency stop."""
    from airflow.jobs.job import Job
    from airflow.models.dag import DagModel
    from airflow.models.dag_version import DagVersion
    from airflow.models.dagrun import DagRun

    now = now or datetime.now(timezone.utc)
    tz = catalog.settings.timezone
    reasons: list[dict[str, Any]] = []
    beat = session.scalar(select(func.max(Job.latest_heartbeat)).where(Job.job_type == "SchedulerJob"))
    if beat is None or now - beat > HEARTBEAT_LIMIT:
        reasons.append({"kind": "scheduler", "text": "the scheduler's heartbeat is " + (
            f"{int((now - beat).total_seconds())} s old" if beat else "missing") + " (limit 2 minutes)"})

    stop = conn.execute("SELECT pulled_by, pulled_at, cardinality(paused_dag_ids) FROM emergency_stops"
                        " WHERE resumed_at IS NULL").fetchone()
    if stop:
        reasons.append({"kind": "emergency_stop", "text": f"all automation stopped by {stop[0]} at "
                        f"{stop[1].isoformat()} ({stop[2]} threads paused)"})

    live = catalog.live_threads
    ids = [t.dag_id for t in live]
    paused = dict(session.execute(select(DagModel.dag_id, DagModel.is_paused).where(DagModel.dag_id.in_(ids))).all())
    first_seen = dict(session.execute(select(DagVersion.dag_id, func.min(DagVersion.created_at))
                                      .where(DagVersion.dag_id.in_(ids)).group_by(DagVersion.dag_id)).all())
    last_success = dict(session.execute(select(DagRun.dag_id, func.max(DagRun.run_after))
                                        .where(DagRun.dag_id.in_(ids), DagRun._state == "success")
                                        .group_by(DagRun.dag_id)).all())
    for t in live:
        if paused.get(t.dag_id) is not False:
            continue  # a paused (or not yet parsed) thread is not expected to run
        override = overrides.get(t.dag_id)
        schedule = override.schedule if override and override.schedule else t.schedule
        seen = first_seen.get(t.dag_id)
        if schedule.kind == "fixed" and t.deadline is not None:
            minutes = t.deadline.after_run_at_minutes
            due = _fixed_due(t, schedule, now, tz, minutes)
            if due is None or seen is None or due < seen:
                continue  # the DAG did not exist yet at its latest due time
            done = session.scalar(select(func.count()).select_from(DagRun).where(
                DagRun.dag_id == t.dag_id, DagRun._state == "success", DagRun.run_after >= due,
                DagRun.end_date <= due + timedelta(minutes=minutes)))
            if not done:
                reasons.append({"kind": "deadline", "thread": t.name, "text": (
                    f"{t.name} has not succeeded for its run due {due.astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M} "
                    f"within {minutes} minutes")})
        elif schedule.kind == "periodic":
            window = timedelta(minutes=schedule.every * PERIODS_WITHOUT_SUCCESS)
            if seen is None or now - seen < window:
                continue  # not three periods old yet
            last = last_success.get(t.dag_id)
            if last is None or now - last > window:
                reasons.append({"kind": "periodic", "thread": t.name, "text": (
                    f"{t.name} has had no successful run for {PERIODS_WITHOUT_SUCCESS} periods "
                    f"({schedule.every} min each)")})
    return {"status": "red" if reasons else "green", "reasons": reasons, "checked_at": now.isoformat(),
            "scheduler_heartbeat": beat.isoformat() if beat else None}
