"""Run-group leases on the real panel DB: all-or-nothing, first come first served, stale holders
cleared, no deadlock between overlapping multi-group sets, and the waiting trigger woken by a
release. The whole thing inside real Airflow is tests/run_groups/test_run_group_exclusion.py."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from datetime import timedelta

import psycopg
import pytest

from panelflow.run_groups import leases as rg
from panelflow.run_groups.operators import ReleaseRunGroups, RenewRunGroupLease, RunGroupGuardOperator
from panelflow.run_groups.trigger import RunGroupLeaseTrigger

LEASE = timedelta(minutes=5)


@pytest.fixture(autouse=True)
def _empty(migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE run_group_leases, run_group_waiters RESTART IDENTITY CASCADE")


@pytest.fixture
def conn(migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as c:
        yield c


class Runs:
    """Stands in for Airflow's DAG-run states (the execution API) in these DB-level tests."""

    def __init__(self):
        self.states: dict[tuple[str, str], str] = {}
        self.asked: list[tuple[str, str]] = []

    def __call__(self, dag_id, run_id):
        self.asked.append((dag_id, run_id))
        return self.states.get((dag_id, run_id), "running")


def acquire(conn, dag, groups, runs, run="r1"):
    return rg.try_acquire(conn, dag, run, groups, lease=LEASE, run_state=runs)


def holders(sql):
    return dict(sql("SELECT run_group, dag_id FROM run_group_leases ORDER BY 1"))


def test_all_groups_or_none(conn, sql):
    runs = Runs()
    assert acquire(conn, "a", ["x", "y"], runs).acquired
    attempt = acquire(conn, "b", ["y", "z"], runs)
    assert not attempt.acquired and attempt.blockers == ("a/r1",)
    assert holders(sql) == {"x": "a", "y": "a"}  # z was free, and still not taken: all or nothing
    assert sql("SELECT dag_id, run_groups FROM run_group_waiters") == [("b", ["y", "z"])]
    assert rg.release(conn, "a", "r1") == 2
    attempt = acquire(conn, "b", ["y", "z"], runs)
    assert attempt.acquired and attempt.waited_since is not None
    assert holders(sql) == {"y": "b", "z": "b"}
    assert sql("SELECT count(*) FROM run_group_waiters") == [(0,)]
    # disjoint groups go side by side
    assert acquire(conn, "c", ["x"], runs).acquired


def test_reacquiring_is_idempotent_and_renews(conn, sql):
    runs = Runs()
    assert acquire(conn, "a", ["x"], runs).acquired
    sql("UPDATE run_group_leases SET expires_at = expires_at - interval '4 minutes', "
        "heartbeat_at = heartbeat_at - interval '4 minutes'")
    assert acquire(conn, "a", ["x"], runs).acquired  # a retried guard
    (left,) = sql("SELECT expires_at - clock_timestamp() FROM run_group_leases")[0]
    assert timedelta(minutes=4) < left <= LEASE
    assert sql("SELECT count(*) FROM run_group_waiters") == [(0,)]


def test_heartbeat_pushes_expiry_by_the_lease_length(conn, sql):
    runs = Runs()
    acquire(conn, "a", ["x", "y"], runs)
    sql("UPDATE run_group_leases SET expires_at = expires_at - interval '3 minutes', "
        "heartbeat_at = heartbeat_at - interval '3 minutes'")
    assert rg.renew(conn, "a", "r1") == 2
    for (left,) in sql("SELECT expires_at - heartbeat_at FROM run_group_leases"):
        assert left == LEASE
    assert rg.renew(conn, "a", "other-run") == 0


def test_first_come_first_served(conn, sql):
    """A run holding nothing does not pass an earlier waiter that wants one of its groups, even
    when its own groups are free — so a run needing two groups is not starved."""
    runs = Runs()
    assert acquire(conn, "holder", ["x"], runs).acquired
    assert not acquire(conn, "wide", ["x", "y"], runs).acquired        # waits for x
    late = acquire(conn, "narrow", ["y"], runs)                        # y is free, but "wide" came first
    assert not late.acquired and late.blockers == ("wide/r1",)
    assert acquire(conn, "other", ["z"], runs).acquired                # nobody ahead wants z
    rg.release(conn, "holder", "r1")
    assert not acquire(conn, "narrow", ["y"], runs).acquired           # still behind "wide"
    assert acquire(conn, "wide", ["x", "y"], runs).acquired
    rg.release(conn, "wide", "r1")
    assert acquire(conn, "narrow", ["y"], runs).acquired


def test_an_ended_run_loses_its_leases_and_its_place(conn, sql):
    """The release never ran (run marked failed, worker gone): Airflow's run state decides."""
    runs = Runs()
    assert acquire(conn, "a", ["x", "y"], runs).acquired
    assert not acquire(conn, "b", ["y"], runs).acquired
    assert not acquire(conn, "c", ["y"], runs).acquired
    runs.states[("a", "r1")] = "failed"
    attempt = acquire(conn, "c", ["y"], runs)
    assert not attempt.acquired and attempt.cleared == ("a/r1",)       # a is gone, b is still ahead
    assert holders(sql) == {}
    runs.states[("b", "r1")] = None                                    # b's run was deleted
    attempt = acquire(conn, "c", ["y"], runs)
    assert attempt.acquired and attempt.cleared == ("b/r1",)
    assert sql("SELECT dag_id FROM run_group_waiters") == []


def test_an_expired_lease_is_taken_over_without_asking_airflow(conn, sql):
    runs = Runs()
    assert acquire(conn, "a", ["x"], runs).acquired
    sql("UPDATE run_group_leases SET heartbeat_at = heartbeat_at - interval '6 minutes', "
        "expires_at = expires_at - interval '6 minutes'")
    attempt = acquire(conn, "b", ["x"], runs)
    assert attempt.acquired and attempt.cleared == ("a/r1",)
    assert ("a", "r1") not in runs.asked                               # expired: no question needed


def test_a_waiter_nobody_polls_stops_holding_its_place(conn, sql):
    runs = Runs()
    acquire(conn, "holder", ["x"], runs)
    acquire(conn, "gone", ["x", "y"], runs)
    assert not acquire(conn, "next", ["y"], runs).acquired
    sql("UPDATE run_group_waiters SET seen_at = seen_at - %s WHERE dag_id = 'gone'", (rg.WAITER_TTL * 2,))
    assert acquire(conn, "next", ["y"], runs).acquired


def test_when_airflow_cannot_be_asked_the_holder_is_kept(conn, sql):
    runs = Runs()
    acquire(conn, "a", ["x"], runs)

    def unreachable(dag_id, run_id):
        raise ConnectionError("API server down")

    attempt = rg.try_acquire(conn, "b", "r1", ["x"], lease=LEASE, run_state=unreachable)
    assert not attempt.acquired and holders(sql) == {"x": "a"}


def test_overlapping_group_sets_never_share_and_never_deadlock(migrated_panel_db, sql):
    """The dining philosophers: five threads in a ring, each needing its two neighbouring groups,
    hammering acquire/release from five connections at once. Every hold is checked against the
    table as it is held; all of them get through."""
    ring = ["g0", "g1", "g2", "g3", "g4"]
    threads = {f"t{i}": [ring[i], ring[(i + 1) % 5]] for i in range(5)}
    runs = Runs()
    done = {name: 0 for name in threads}
    problems: list[str] = []

    def philosopher(name: str, groups: list[str]) -> None:
        rnd = random.Random(name)
        with psycopg.connect(migrated_panel_db, autocommit=True) as c:
            deadline = time.monotonic() + 20
            for n in range(6):
                run = f"run{n}"
                while not rg.try_acquire(c, name, run, groups, lease=LEASE, run_state=runs).acquired:
                    if time.monotonic() > deadline:
                        problems.append(f"{name} starved")
                        return
                    time.sleep(rnd.uniform(0, 0.01))
                held = c.execute("SELECT run_group, dag_id FROM run_group_leases WHERE run_group = ANY(%s)",
                                 (groups,)).fetchall()
                if sorted(held) != sorted((g, name) for g in groups):
                    problems.append(f"{name} {run} sees {held}")
                time.sleep(rnd.uniform(0, 0.01))
                rg.release(c, name, run)
                done[name] += 1

    workers = [threading.Thread(target=philosopher, args=item) for item in threads.items()]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert problems == []
    assert done == dict.fromkeys(threads, 6)
    assert sql("SELECT count(*) FROM run_group_leases") == [(0,)]


def test_trigger_serializes_names_only():
    path, kwargs = RunGroupLeaseTrigger("a", "r1", ["x", "y"], lease_seconds=60, poll_seconds=0.5).serialize()
    assert path == "panelflow.run_groups.trigger.RunGroupLeaseTrigger"
    assert kwargs == {"lease_dag_id": "a", "lease_run_id": "r1", "run_groups": ["x", "y"], "lease_seconds": 60,
                      "poll_seconds": 0.5, "conn_id": "panel_db"}


def test_trigger_waits_then_takes_the_groups_on_release(conn, sql, monkeypatch):
    """Woken by the release's NOTIFY long before its next poll (10 s here)."""
    runs = Runs()
    monkeypatch.setattr(rg, "dagrun_state", runs)
    assert acquire(conn, "holder", ["x"], runs).acquired

    async def scenario():
        gen = RunGroupLeaseTrigger("waiter", "r1", ["x", "y"], lease_seconds=300, poll_seconds=10).run()
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(1.0)
        assert not first.done()  # in queue
        released = time.monotonic()
        await asyncio.to_thread(rg.release, conn, "holder", "r1")
        event = await asyncio.wait_for(first, timeout=5)
        took = time.monotonic() - released
        await gen.aclose()
        return event, took

    event, took = asyncio.run(scenario())
    # it ends the guard task itself, the summary as its XCom: no resume in a worker
    assert type(event).__name__ == "TaskSuccessEvent"
    summary = event.xcoms["return_value"]
    assert summary["run_groups"] == ["x", "y"] and summary["waited"] is True and summary["waited_since"]
    assert took < 2, took
    assert holders(sql) == {"x": "waiter", "y": "waiter"}


def test_release_callback_gives_back_only_what_the_ended_run_took(panel_db, conn, sql):
    """The DAG's end callback as the dag-processor calls it (``dag``, ``run_id``, ``dag_run``).
    A late callback must not free the groups a cleared run, already running again, took anew."""
    from types import SimpleNamespace

    runs = Runs()
    assert acquire(conn, "a", ["x", "y"], runs).acquired
    ended = sql("SELECT clock_timestamp()")[0][0]
    time.sleep(0.05)
    assert acquire(conn, "b", ["x"], runs).acquired is False   # b in queue behind a
    context = {"dag": SimpleNamespace(dag_id="a"), "run_id": "r1", "dag_run": SimpleNamespace(end_date=ended)}
    ReleaseRunGroups()(context)
    assert holders(sql) == {}
    assert sql("SELECT dag_id FROM run_group_waiters") == [("b",)]   # b's place is b's

    # a's run was cleared and took its groups again; the callback of its first end comes late
    assert acquire(conn, "b", ["x"], runs).acquired and rg.release(conn, "b", "r1")
    assert acquire(conn, "a", ["x", "y"], runs).acquired
    ReleaseRunGroups()(context)
    assert holders(sql) == {"x": "a", "y": "a"}
    ReleaseRunGroups()({"dag": SimpleNamespace(dag_id="a"), "run_id": "r1"})   # no run data: all of it
    assert holders(sql) == {}


# -- how the factory wires the guard -----------------------------------------------------------------

def test_factory_guards_every_guarded_run_and_releases_at_its_end(tmp_path):
    from harness.airflow_cluster import write_catalog

    from panelflow.catalog import load_catalog
    from panelflow.factory import WAIT_TASK_ID, build_dags

    step = "panelflow.steps.sessions.expire_sessions"
    catalog = write_catalog(tmp_path / "catalog", nodes={"master": "m"}, run_groups={"a": 2, "b": 1}, threads=f"""
    - name: GuardedWork
      description: Two independent steps and a mapped one.
      domain: housekeeping
      schedule: {{kind: periodic, every: 5}}
      run_groups: [b, a]
      nodes: [master]
      timeout_minutes: 20
      steps:
        - {{id: one, number: "1", seed: One., run: {step}}}
        - {{id: two, number: "2", seed: Two., run: {step}, after: [one]}}
        - {{id: each, number: "3", seed: Each., run: panelflow.steps.microsoft365.tenant_sync.sync_tenant,
            map_over: panelflow.steps.microsoft365.tenant_sync.tenants_to_sync}}
    - name: GuardedDaemon
      description: A daemon with a run group.
      domain: housekeeping
      schedule: {{kind: daemon, queue: group_actions.o365}}
      run_groups: [a]
      nodes: [master]
      steps:
        - {{id: work, number: "1", seed: Work., run: {step}}}
    - name: FreeWork
      description: No run group.
      domain: housekeeping
      schedule: {{kind: manual}}
      nodes: [master]
      steps:
        - {{id: one, number: "1", seed: One., run: {step}}}
    """)
    dags = build_dags(load_catalog(catalog), overrides={})

    dag = dags["guarded_work"]
    guard = dag.get_task(rg.GUARD_TASK_ID)
    assert isinstance(guard, RunGroupGuardOperator) and guard.run_groups == ["a", "b"]
    assert guard.lease_minutes == 20 + rg.LEASE_MARGIN_MINUTES
    # it starts in the triggerer (no task process), its trigger told which run it is by templates
    assert guard.start_from_trigger and guard.start_trigger_args.trigger_cls == f"{RunGroupLeaseTrigger.__module__}." \
        f"{RunGroupLeaseTrigger.__name__}"
    assert guard.start_trigger_args.trigger_kwargs["run_groups"] == ["a", "b"]
    assert set(guard.template_fields) == {"lease_dag_id", "lease_run_id"} <= set(guard.start_trigger_args.trigger_kwargs)
    assert guard.execution_timeout is None   # waiting in queue is not the guard running long
    # a setup without a teardown: clearing any step clears the guard too
    assert guard.is_setup and not any(t.is_teardown for t in dag.tasks)
    assert guard.upstream_task_ids == set()
    assert guard.downstream_task_ids == {"one", "each__items"}   # every step starts after it
    assert guard.pool == "default_pool"   # a deferred guard takes no run-group pool slot
    # the groups go back when the run ends, however (DAG callbacks, in the dag-processor)
    for callbacks in (dag.on_success_callback, dag.on_failure_callback):
        assert sum(isinstance(cb, ReleaseRunGroups) for cb in callbacks) == 1
    for task in dag.tasks:
        assert any(isinstance(cb, RenewRunGroupLease) for cb in task.on_execute_callback or []), task.task_id

    daemon = dags["guarded_daemon"]
    assert daemon.get_task(WAIT_TASK_ID).downstream_task_ids == {rg.GUARD_TASK_ID}  # idle: not even queued
    assert daemon.get_task("work").upstream_task_ids == {rg.GUARD_TASK_ID}

    free = dags["free_work"]
    assert free.task_ids == ["one"] and not free.get_task("one").on_execute_callback
    assert not free.on_success_callback and not free.on_failure_callback


def test_every_real_thread_with_run_groups_is_guarded():
    from panelflow.catalog import load_catalog
    from panelflow.factory import build_dags

    catalog = load_catalog()
    dags = build_dags(catalog, overrides={})
    for thread in catalog.live_threads:
        dag = dags[thread.dag_id]
        guarded = rg.GUARD_TASK_ID in dag.task_ids
        assert guarded == bool(thread.run_groups and dag.tasks), thread.name
        if guarded:
            assert dag.get_task(rg.GUARD_TASK_ID).run_groups == sorted(thread.run_groups)
