"""Catalog schedule → Airflow 3 timetable.

Trigger timetables are the default (a run at each tick, data interval of zero length). A thread
that owns a period (billing) asks for ``data_interval: true`` and gets a data-interval timetable,
so its run knows the exact span it covers and a backfill of a missed day covers that day.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import (
    CronDataIntervalTimetable,
    CronTriggerTimetable,
    DeltaDataIntervalTimetable,
    DeltaTriggerTimetable,
    MultipleCronTriggerTimetable,
)

CONTINUOUS = "@continuous"


def periodic_cron(every: int, align_to: int) -> str:
    """JeraSoft "period 5 align to 2" runs at :02, :07, :12 …; the pattern restarts each hour."""
    return f"{align_to} * * * *" if every == 60 else f"{align_to}-59/{every} * * * *"


def fixed_cron(at: str) -> str:
    hour, minute = at.split(":")
    return f"{int(minute)} {int(hour)} * * *"


def timetable_for(schedule, timezone: str):
    """The ``schedule=`` argument of a thread's DAG: a timetable, ``@continuous`` or ``None``."""
    kind = schedule.kind
    if kind == "manual":
        return None
    if kind == "daemon":
        return CONTINUOUS
    if kind == "periodic":
        cron = periodic_cron(schedule.every, schedule.align_to)
        if schedule.data_interval:
            return CronDataIntervalTimetable(cron, timezone=timezone)
        return CronTriggerTimetable(cron, timezone=timezone)
    if kind == "interval":
        delta = timedelta(hours=schedule.hours, days=schedule.days)
        return DeltaDataIntervalTimetable(delta) if schedule.data_interval else DeltaTriggerTimetable(delta)
    if kind == "fixed":
        tz = schedule.timezone or timezone
        crons = [fixed_cron(t) for t in schedule.at]
        if schedule.data_interval:
            return CronDataIntervalTimetable(crons[0], timezone=tz)
        if len(crons) == 1:
            return CronTriggerTimetable(crons[0], timezone=tz)
        return MultipleCronTriggerTimetable(*crons, timezone=tz)
    raise ValueError(f"unknown schedule kind {kind!r}")


def describe(schedule, timezone: str) -> str:
    """The schedule in words, as the Threads Manager shows it."""
    kind = schedule.kind
    if kind == "manual":
        return "manual (trigger only)"
    if kind == "daemon":
        return f"daemon (wakes on {schedule.queue})"
    if kind == "periodic":
        text = f"every {schedule.every} min"
        text += f", aligned at :{schedule.align_to:02d}" if schedule.align_to else ""
    elif kind == "interval":
        parts = [f"{schedule.days} d" if schedule.days else "", f"{schedule.hours} h" if schedule.hours else ""]
        text = "every " + " ".join(p for p in parts if p)
    else:
        text = f"at {' and '.join(schedule.at)} {schedule.timezone or timezone}"
    return text + (", each run covering the period before it" if schedule.data_interval else "")
