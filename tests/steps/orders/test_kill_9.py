"""kill -9 of the worker in the middle of an order, then the retry: no job, item or log line twice.

The worker (a subprocess running ProvisioningWork 1) is stopped inside its queueing transaction —
the test holds a lock on ``group_action_jobs`` that its INSERT waits for — and killed with SIGKILL
there. PostgreSQL rolls the open transaction back once the dead client's backend notices; the
retry then does the work once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg

from harness import ROOT
from panelflow.services.group_actions import process_group_actions
from panelflow.steps.orders.service_queue import process_service_queue_orders

from .conftest import run_at, utc
from .test_service_queue import AD_USER, MAILBOX

APP = "orders-kill-9"
T1, T2, T3 = (run_at(utc(2026, 12, 7, 10, m)) for m in (0, 10, 20))

WORKER = """
import os, sys
from datetime import datetime, timedelta, timezone
import psycopg
from panelflow.step import Interval
from panelflow.steps.orders.service_queue import process_service_queue_orders

class PanelDb:
    def get_conn(self):
        return psycopg.connect(os.environ["AIRFLOW_CONN_PANEL_DB"])

end = datetime(2026, 12, 7, 10, 10, tzinfo=timezone.utc)
print(process_service_queue_orders(PanelDb(), Interval(end - timedelta(minutes=10), end, "Europe/London")))
"""


def _wait_for(sql, query, expected, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sql(query, (APP,))[0][0] == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"{query!r} never gave {expected!r}")


def test_killed_mid_order_then_retried_queues_each_item_once(world, panel_db, sql, migrated_panel_db):
    a = world.order([AD_USER, MAILBOX])
    b = world.order([{**AD_USER, "payload": {**AD_USER["payload"], "sam_account_name": "bsmith",
                                            "user_principal_name": "bsmith@acme.example"}}])
    process_service_queue_orders(panel_db, T1)
    process_group_actions(panel_db, "ad", lambda action, payload: {"object_guid": payload["sam_account_name"]}, T1)

    blocker = psycopg.connect(migrated_panel_db)
    blocker.execute("LOCK TABLE group_action_jobs IN EXCLUSIVE MODE")     # INSERTs wait; reads go on
    env = {**os.environ, "PGAPPNAME": APP, "PYTHONPATH": str(ROOT / "plugins")}
    worker = subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        _wait_for(sql, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                       " AND wait_event_type = 'Lock' AND xact_start IS NOT NULL", 1)
        # settled (its own committed statement), and the mailbox's job is being written
        assert [s for _, s, _, _ in world.items(a)] == ["succeeded", "waiting"]
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        blocker.rollback()
        blocker.close()
        if worker.poll() is None:
            worker.kill()
    _wait_for(sql, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", 0)

    # the killed transaction left nothing: no job for item 2, no "queued:2" line
    assert [(b_, a_) for _, b_, a_, _, _ in world.jobs()] == [("ad", "create_user"), ("ad", "create_user")]
    assert [s for _, s, _, _ in world.items(a)] == ["succeeded", "waiting"]

    for interval in (T2, T2, T3):                                         # the retry, a rerun, the next run
        process_service_queue_orders(panel_db, interval)
    jobs = world.jobs()
    assert [(backend, action) for _, backend, action, _, _ in jobs] == [
        ("ad", "create_user"), ("ad", "create_user"), ("exchange", "create_mailbox")]
    assert jobs[2][3]["ad_user"] == "jdoe"
    assert [(p, s, j) for p, s, j, _ in world.items(a)] == [(1, "succeeded", jobs[0][0]), (2, "queued", jobs[2][0])]
    assert [e for _, e, _ in world.logs(a)] == ["queued:1", "succeeded:1", "queued:2"]
    assert [e for _, e, _ in world.logs(b)] == ["queued:1", "succeeded:1"]
    assert sql("SELECT count(*) = count(DISTINCT (order_id, event)) FROM service_queue_logs")[0][0]
