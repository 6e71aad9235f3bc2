"""The shared group-action queue processor (panelflow.services.group_actions) on the real panel DB:
priority order, outcomes, retries, stale jobs, secrets, and processors racing for one queue."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
RUN = Interval(T0 - timedelta(minutes=5), T0)


@pytest.fixture
def queue(panel_db, sql):
    sql("TRUNCATE group_action_jobs RESTART IDENTITY CASCADE")

    def add(action, payload=None, priority=5, backend="test"):
        from psycopg.types.json import Jsonb

        return sql("INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES (%s, %s, %s, %s) "
                   "RETURNING id", (backend, action, Jsonb(payload or {}), priority))[0][0]

    return add


def _jobs(sql):
    return {r[0]: r[1:] for r in sql("SELECT id, status, attempts, result, error, payload FROM group_action_jobs")}


def test_priority_order_outcomes_and_secrets(queue, panel_db, sql):
    from panelflow.services.group_actions import JobDeferred, JobRejected, process_group_actions

    ok = queue("create", {"name": "b", "password": "S3cret!"}, priority=5)
    first = queue("create", {"name": "a"}, priority=0)
    rejected = queue("create", {"name": "bad"}, priority=3)
    deferred = queue("create", {"name": "later", "password": "Keep-me-1"}, priority=3)
    broken = queue("create", {"name": "boom"}, priority=9)
    unknown = queue("launch_rocket", {}, priority=0)
    other_backend = queue("create", {"name": "x"}, priority=0, backend="other")
    order = []

    def handler(action, payload):
        order.append(payload["name"])
        if payload["name"] == "bad":
            raise JobRejected("The password does not meet the length, complexity, or history requirement")
        if payload["name"] == "later":
            raise JobDeferred("LDAP server 127.0.0.1:636 timed out")
        if payload["name"] == "boom":
            raise KeyError("dn")
        return {"created": payload["name"]}

    summary = process_group_actions(panel_db, "test", handler, RUN, actions=["create"])
    assert order == ["a", "bad", "later", "b", "boom"]            # priority 0 first, then id; unknown never run
    jobs = _jobs(sql)
    assert jobs[first][:3] == ("succeeded", 1, {"created": "a"})
    assert jobs[ok][:3] == ("succeeded", 1, {"created": "b"}) and "password" not in jobs[ok][4]
    assert jobs[rejected][0] == "failed" and "complexity" in jobs[rejected][3]
    assert jobs[deferred][:2] == ("pending", 1) and jobs[deferred][4]["password"] == "Keep-me-1"
    assert jobs[broken][0] == "failed" and jobs[broken][3] == "KeyError: 'dn'"
    assert jobs[unknown][0] == "failed" and "unknown test action 'launch_rocket'" in jobs[unknown][3]
    assert jobs[other_backend][:2] == ("pending", 0)
    assert (summary["claimed"], summary["succeeded"], summary["failed"], summary["retry_later"]) == (6, 2, 3, 1)


def test_deferred_until_max_attempts_then_failed(queue, panel_db, sql):
    from panelflow.services.group_actions import JobDeferred, process_group_actions

    job = queue("create", {"name": "later", "password": "x"})

    def handler(action, payload):
        raise JobDeferred("timed out")

    for n in range(1, 4):
        process_group_actions(panel_db, "test", handler, Interval(T0, T0 + timedelta(minutes=5 * n)),
                              {"job_max_attempts": 3})
    status, attempts, _, error, payload = _jobs(sql)[job]
    assert (status, attempts, error) == ("failed", 3, "attempt 3 of 3: timed out") and "password" not in payload
    process_group_actions(panel_db, "test", handler, Interval(T0, T0 + timedelta(hours=1)), {"job_max_attempts": 3})
    assert _jobs(sql)[job][1] == 3                                  # a failed job is never taken again


def test_a_job_left_running_by_a_killed_worker_is_taken_again_once_stale(queue, panel_db, sql):
    from panelflow.services.group_actions import process_group_actions

    job = queue("create", {"name": "a"})
    sql("UPDATE group_action_jobs SET status = 'running', attempts = 1, started_at = %s WHERE id = %s",
        (T0 - timedelta(minutes=20), job))
    seen = []
    process_group_actions(panel_db, "test", lambda a, p: seen.append(p) or {}, RUN, {"job_stale_minutes": 30})
    assert seen == [] and _jobs(sql)[job][0] == "running"          # still within the task's timeout
    summary = process_group_actions(panel_db, "test", lambda a, p: seen.append(p) or {"ok": True},
                                    Interval(T0, T0 + timedelta(minutes=15)), {"job_stale_minutes": 30})
    assert len(seen) == 1 and _jobs(sql)[job][:2] == ("succeeded", 2) and summary["reclaimed"] == 1


def test_two_processors_racing_for_one_queue_never_run_a_job_twice(queue, panel_db, sql):
    from panelflow.services.group_actions import process_group_actions

    ids = [queue("create", {"name": f"u{i}"}, priority=i % 3) for i in range(40)]
    runs: dict[int, int] = {}
    by: dict[str, int] = {}
    lock = threading.Lock()

    def worker(name):
        def handler(action, payload):
            with lock:
                runs[payload["name"]] = runs.get(payload["name"], 0) + 1
                by[name] = by.get(name, 0) + 1
            time.sleep(0.01)
            return {"by": name}

        process_group_actions(panel_db, "test", handler, RUN, {"jobs_per_run": 100})

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("p1", "p2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert runs == {f"u{i}": 1 for i in range(40)}
    assert by["p1"] > 0 and by["p2"] > 0 and by["p1"] + by["p2"] == 40
    jobs = _jobs(sql)
    assert all(jobs[i][:2] == ("succeeded", 1) for i in ids)


def test_jobs_per_run_bounds_the_loop(queue, panel_db, sql):
    from panelflow.services.group_actions import process_group_actions

    for i in range(5):
        queue("create", {"name": f"u{i}"})
    summary = process_group_actions(panel_db, "test", lambda a, p: {}, RUN, {"jobs_per_run": 2})
    assert summary["claimed"] == 2
    assert sorted(r[0] for r in sql("SELECT status FROM group_action_jobs")) == ["pending"] * 3 + ["succeeded"] * 2
