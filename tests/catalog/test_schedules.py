"""Catalog schedules → the runs Airflow's scheduler will actually make."""

from __future__ import annotations

import pendulum
import pytest
from airflow.serialization.encoders import coerce_to_core_timetable
from airflow.timetables.base import TimeRestriction

from panelflow.catalog import load_catalog
from panelflow.catalog.model import DaemonSchedule, FixedSchedule, IntervalSchedule, ManualSchedule, PeriodicSchedule
from panelflow.factory import WAIT_TASK_ID, build_dags
from panelflow.operators import WaitForPendingWorkOperator
from panelflow.schedules import describe, timetable_for

LONDON = "Europe/London"


def runs(timetable, start, n):
    """The next ``n`` (run_after, data_interval) the scheduler would create from ``start``."""
    tt = coerce_to_core_timetable(timetable)
    out, last = [], None
    for _ in range(n):
        info = tt.next_dagrun_info(last_automated_data_interval=last,
                                   restriction=TimeRestriction(earliest=start, latest=None, catchup=True))
        out.append((info.run_after, info.data_interval))
        last = info.data_interval
    return out


def test_periodic_aligned():
    tt = timetable_for(PeriodicSchedule(kind="periodic", every=5, align_to=2), LONDON)
    got = [r.in_tz(LONDON).strftime("%H:%M") for r, _ in runs(tt, pendulum.datetime(2026, 3, 2, 9, 0, tz=LONDON), 14)]
    assert got == ["09:02", "09:07", "09:12", "09:17", "09:22", "09:27", "09:32", "09:37", "09:42", "09:47",
                   "09:52", "09:57", "10:02", "10:07"]


def test_periodic_hourly_and_trigger_interval():
    tt = timetable_for(PeriodicSchedule(kind="periodic", every=60, align_to=25), LONDON)
    (a, ia), (b, ib) = runs(tt, pendulum.datetime(2026, 3, 2, 9, 0, tz=LONDON), 2)
    assert (a.in_tz(LONDON).strftime("%H:%M"), b.in_tz(LONDON).strftime("%H:%M")) == ("09:25", "10:25")
    assert ia.start == ia.end == a  # a trigger timetable: the run is a point in time


def test_periodic_with_data_interval_covers_the_period():
    tt = timetable_for(PeriodicSchedule(kind="periodic", every=15, align_to=6, data_interval=True), LONDON)
    (_, first), (_, second) = runs(tt, pendulum.datetime(2026, 3, 2, 9, 0, tz=LONDON), 2)
    assert first.end - first.start == pendulum.duration(minutes=15)
    assert second.start == first.end


def test_fixed_times_across_the_autumn_dst_change():
    """03:20 and 15:20 London stay 03:20 and 15:20 local when BST ends (25 Oct 2026)."""
    tt = timetable_for(FixedSchedule(kind="fixed", at=["15:20", "03:20"]), LONDON)
    got = runs(tt, pendulum.datetime(2026, 10, 24, tz=LONDON), 5)
    local = [r.in_tz(LONDON).strftime("%d %H:%M") for r, _ in got]
    assert local == ["24 03:20", "24 15:20", "25 03:20", "25 15:20", "26 03:20"]
    utc = [r.in_tz("UTC").strftime("%d %H:%M") for r, _ in got]
    assert utc == ["24 02:20", "24 14:20", "25 03:20", "25 15:20", "26 03:20"]


def test_fixed_time_across_the_spring_dst_change():
    tt = timetable_for(FixedSchedule(kind="fixed", at=["01:30"], timezone="Europe/London"), LONDON)
    got = [r.in_tz("UTC").strftime("%d %H:%M") for r, _ in runs(tt, pendulum.datetime(2026, 3, 28, tz=LONDON), 3)]
    # 01:30 GMT; on 29 March 01:00–02:00 does not exist, so that run comes once, at 02:30 BST;
    # then 01:30 BST again.
    assert got == ["28 01:30", "29 01:30", "30 00:30"]


def test_fixed_time_in_its_own_time_zone():
    tt = timetable_for(FixedSchedule(kind="fixed", at=["09:00"], timezone="America/New_York"), LONDON)
    ((run, _),) = runs(tt, pendulum.datetime(2026, 6, 1, tz="UTC"), 1)
    assert run.in_tz("America/New_York").strftime("%H:%M") == "09:00"


def test_billing_owns_its_day():
    """BillingWork at 01:30 with a data interval: each run covers the day that ended at 01:30."""
    billing = load_catalog().thread("BillingWork")
    assert billing.schedule.data_interval
    tt = timetable_for(billing.schedule, LONDON)
    (run, interval), (_, nxt) = runs(tt, pendulum.datetime(2026, 10, 23, 12, tz=LONDON), 2)
    assert interval.start.in_tz(LONDON).strftime("%d %H:%M") == "24 01:30"
    assert interval.end.in_tz(LONDON).strftime("%d %H:%M") == "25 01:30"
    assert run == interval.end and nxt.start == interval.end
    assert interval.end - interval.start == pendulum.duration(hours=25)  # the night the clocks go back
    assert nxt.end - nxt.start == pendulum.duration(hours=24)


def test_interval_kinds():
    tt = timetable_for(IntervalSchedule(kind="interval", hours=6), LONDON)
    (a, _), (b, _) = runs(tt, pendulum.datetime(2026, 3, 2, tz="UTC"), 2)
    assert b - a == pendulum.duration(hours=6)
    tt = timetable_for(IntervalSchedule(kind="interval", days=1, data_interval=True), LONDON)
    ((_, interval),) = runs(tt, pendulum.datetime(2026, 3, 2, tz="UTC"), 1)
    assert interval.end - interval.start == pendulum.duration(days=1)


def test_manual_and_daemon():
    assert timetable_for(ManualSchedule(kind="manual"), LONDON) is None
    assert timetable_for(DaemonSchedule(kind="daemon", queue="group_actions.general"), LONDON) == "@continuous"


@pytest.mark.parametrize(
    "schedule, words",
    [
        (PeriodicSchedule(kind="periodic", every=5, align_to=2), "every 5 min, aligned at :02"),
        (FixedSchedule(kind="fixed", at=["15:20", "03:20"]), "at 03:20 and 15:20 Europe/London"),
        (DaemonSchedule(kind="daemon", queue="group_actions.sip"), "daemon (wakes on group_actions.sip)"),
        (IntervalSchedule(kind="interval", hours=4), "every 4 h"),
        (FixedSchedule(kind="fixed", at=["01:30"], data_interval=True),
         "at 01:30 Europe/London, each run covering the period before it"),
    ],
)
def test_schedule_in_words(schedule, words):
    assert describe(schedule, LONDON) == words


def test_daemon_dag_defers_first(tmp_path):
    """A daemon thread with built steps: continuous, one run at a time, first task waits in the triggerer."""
    from panelflow.catalog.model import Step, Thread

    cat = load_catalog()
    thread = Thread(
        name="GroupActionWorkGeneral", description="x", domain="hosting", nodes=["processing"],
        schedule=DaemonSchedule(kind="daemon", queue="group_actions.general"),
        steps=[Step(id="expire_sessions", number="1", seed="s", run="panelflow.steps.sessions.expire_sessions")],
    )
    cat.threads = [thread]
    dag = build_dags(cat)["group_action_work_general"]
    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    assert dag.max_active_runs == 1
    wait = dag.get_task(WAIT_TASK_ID)
    assert isinstance(wait, WaitForPendingWorkOperator) and wait.queue_name == "group_actions.general"
    assert [t.task_id for t in wait.downstream_list] == ["expire_sessions"]
    assert dag.get_task("expire_sessions").upstream_task_ids == {WAIT_TASK_ID}
