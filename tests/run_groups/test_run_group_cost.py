"""What run groups cost a run, on a real LocalExecutor cluster (tests/harness/airflow_cluster.py):
the guard and the release take no task process, clearing a step queues the rerun for its groups
again, and how long a guarded one-step run takes end to end (printed)."""

from __future__ import annotations

import re
import statistics
from datetime import datetime

import psycopg
import pytest

from harness.airflow_cluster import local_cluster

RUNS = 20


def when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@pytest.fixture(scope="module")
def cluster(postgres, migrated_panel_db):
    with local_cluster(postgres, migrated_panel_db) as c:
        yield c


@pytest.fixture(autouse=True)
def _empty_leases(migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE run_group_leases, run_group_waiters RESTART IDENTITY CASCADE")


def _count(url: str, query: str, params=()) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()[0]


def _sent_to_executor(cluster, dag: str, run_id: str) -> set[str]:
    """Task ids of ``run_id`` the scheduler queued for its executor (it logs each one)."""
    pattern = re.compile(rf"<TaskInstance: {re.escape(dag)}\.(\w+) {re.escape(run_id)} \[(?:scheduled|queued)\]")
    return set(pattern.findall(cluster.log("scheduler")))


def test_guard_and_release_take_no_task_process(cluster, migrated_panel_db):
    api = cluster.api
    run = api.trigger("ring_a_work")
    assert api.wait_runs("ring_a_work", [run], timeout=120) == {run: "success"}
    tis = {ti["task_id"]: ti for ti in api.task_instances("ring_a_work", run)}
    assert set(tis) == {"run_group_guard", "expire_sessions"}   # no release task
    guard, step = tis["run_group_guard"], tis["expire_sessions"]
    assert guard["state"] == "success" and step["state"] == "success"
    # the step ran in a worker process; the guard never did: no pid, never queued for an executor
    assert step["pid"] and step["queued_when"]
    assert guard["pid"] is None and guard["queued_when"] is None
    sent = _sent_to_executor(cluster, "ring_a_work", run)
    assert "expire_sessions" in sent and "run_group_guard" not in sent, sent
    assert api.xcom("ring_a_work", run, "run_group_guard")["run_groups"] == ["ring_a", "ring_b"]
    # the groups went back without a task: the DAG's success callback, in the dag-processor
    api.wait_for(lambda: _count(migrated_panel_db, "SELECT count(*) FROM run_group_leases") == 0, 60,
                 "the release callback")


def test_clearing_a_step_takes_the_groups_again(cluster, migrated_panel_db):
    """Clearing a finished run's step clears its guard (a setup) too: the rerun waits in queue
    while a partner holds a shared group, and its step starts only after the partner ended."""
    api = cluster.api
    first = api.trigger("ring_a_work")
    assert api.wait_runs("ring_a_work", [first], timeout=120) == {first: "success"}
    api.wait_for(lambda: _count(migrated_panel_db, "SELECT count(*) FROM run_group_leases") == 0, 60,
                 "the release callback")

    lock = psycopg.connect(migrated_panel_db)   # the partner's step blocks on its first query
    try:
        lock.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        partner = api.trigger("ring_b_work")   # shares ring_b with ring_a
        api.wait_for(lambda: any(ti["task_id"] == "expire_sessions" and ti["state"] == "running"
                                 for ti in api.task_instances("ring_b_work", partner)), 60, "the partner's step")
        cleared = api.call("POST", "/api/v2/dags/ring_a_work/clearTaskInstances", {
            "dag_run_id": first, "task_ids": ["expire_sessions"], "dry_run": False, "only_failed": False,
            "reset_dag_runs": True})
        assert {ti["task_id"] for ti in cleared["task_instances"]} == {"run_group_guard", "expire_sessions"}
        # the rerun is in queue: its guard waits in the triggerer behind the partner
        api.wait_for(lambda: _count(migrated_panel_db, "SELECT count(*) FROM run_group_waiters WHERE dag_id = "
                                    "'ring_a_work' AND run_id = %s", (first,)) == 1, 60, "the rerun in queue")
        tis = {ti["task_id"]: ti for ti in api.task_instances("ring_a_work", first)}
        assert tis["run_group_guard"]["state"] == "deferred" and tis["expire_sessions"]["state"] in (None, "none")
    finally:
        lock.rollback()
        lock.close()
    assert api.wait_runs("ring_b_work", [partner], timeout=120) == {partner: "success"}
    assert api.wait_runs("ring_a_work", [first], timeout=120) == {first: "success"}
    tis = {ti["task_id"]: ti for ti in api.task_instances("ring_a_work", first)}
    partner_step = next(ti for ti in api.task_instances("ring_b_work", partner) if ti["task_id"] == "expire_sessions")
    assert tis["run_group_guard"]["try_number"] == 2 and tis["expire_sessions"]["try_number"] == 2
    assert tis["run_group_guard"]["pid"] is None   # the rerun's guard too ended in the triggerer
    assert when(tis["expire_sessions"]["start_date"]) >= when(partner_step["end_date"])
    api.wait_for(lambda: _count(migrated_panel_db, "SELECT count(*) FROM run_group_leases") == 0, 60,
                 "the rerun's release")


def test_one_step_run_end_to_end(cluster):
    """Printed, not asserted (the CPU is shared): a guarded one-step thread's run, from its
    creation to its end, one run after the other, and where the time goes (medians)."""
    api = cluster.api
    took, parts = [], {"queued → guard end": [], "guard end → step start": [], "step": [], "step end → run end": []}
    for _ in range(RUNS):
        run = api.trigger("ring_a_work")
        assert api.wait_runs("ring_a_work", [run], timeout=120) == {run: "success"}
        r = api.call("GET", f"/api/v2/dags/ring_a_work/dagRuns/{run}")
        tis = {ti["task_id"]: ti for ti in api.task_instances("ring_a_work", run)}
        guard, step = tis["run_group_guard"], tis["expire_sessions"]
        took.append((when(r["end_date"]) - when(r["queued_at"])).total_seconds())
        for name, (a, b) in {"queued → guard end": (r["queued_at"], guard["end_date"]),
                             "guard end → step start": (guard["end_date"], step["start_date"]),
                             "step": (step["start_date"], step["end_date"]),
                             "step end → run end": (step["end_date"], r["end_date"])}.items():
            parts[name].append((when(b) - when(a)).total_seconds())
    took.sort()
    p95 = took[min(len(took) - 1, round(0.95 * len(took)) - 1)]
    print(f"\none-step guarded run, queued → end, {RUNS} runs: p50 {statistics.median(took):.1f} s, "
          f"p95 {p95:.1f} s, max {took[-1]:.1f} s; medians: "
          + ", ".join(f"{k} {statistics.median(v):.1f} s" for k, v in parts.items()))
