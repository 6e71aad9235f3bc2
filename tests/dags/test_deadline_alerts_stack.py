"""Airflow 3.3's own Deadline Alerts fire panelflow's callback: a real scheduler notices the missed
deadline and a real triggerer runs ``panelflow.deadlines.missed_deadline`` — one ``deadline_misses``
row and one e-mail, delivered to aiosmtpd by SendEmailNotificationsWork's step; and the late run,
let go, keeps its step's counts once (``step_run_counts``, written by the StepOperator in a worker).

A stack of its own (its module starts one: ``live``, ``airflow_stack``). The run is held queued by
pausing its DAG, so it certainly misses a deadline of one minute (the catalog's smallest).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

import pendulum

from harness.airflow_cluster import AirflowCluster, write_catalog
from panelflow.step import Interval
from panelflow.steps.mail import send_due_emails

THREAD = """
- name: LateWork
  description: A thread that cannot finish in time.
  domain: housekeeping
  schedule: {kind: manual}
  nodes: [master]
  alert_to: [ops-oncall@panelflow.example]
  deadline: {after_run_at_minutes: 1}
  steps:
    - id: expire_sessions
      number: "1"
      seed: Update session data (expiry).
      run: panelflow.steps.sessions.expire_sessions
"""


def test_a_missed_deadline_fires_once_through_the_scheduler_and_triggerer(postgres, migrated_panel_db, panel_db, sql,
                                                                         smtp_server):
    sql("TRUNCATE deadline_misses")
    home = Path(tempfile.mkdtemp(prefix="panelflow-deadline-"))
    catalog = write_catalog(home / "catalog", nodes={"master": "the control server"}, run_groups={}, threads=THREAD)
    cluster = AirflowCluster(home, postgres, catalog, migrated_panel_db, name=f"airflow_deadline_{secrets.token_hex(4)}",
                             env={"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5"})
    try:
        cluster.start(components=("scheduler", "triggerer", "api-server"), dag_ids=("late_work",))
        api = cluster.api
        api.call("PATCH", "/api/v2/dags/late_work", {"is_paused": True})  # the run stays queued
        run_id = api.trigger("late_work")
        rows = api.wait_for(lambda: sql("SELECT dag_id, run_id, thread FROM deadline_misses"), timeout=240,
                            what="the deadline callback's row", every=1)
        assert rows == [("late_work", run_id, "LateWork")]
        assert api.run_state("late_work", run_id) == "queued"
        ((to, key),) = sql("SELECT to_address, dedupe_key FROM email_outbox")
        assert (to, key) == ("ops-oncall@panelflow.example", f"deadline:late_work:{run_id}")
        ((deadline_at,),) = sql("SELECT deadline_at FROM deadline_misses")
        # let the late run go: it succeeds, its step's counts are kept once, and nothing more is mailed
        sql("TRUNCATE step_run_counts")
        api.call("PATCH", "/api/v2/dags/late_work", {"is_paused": False})
        assert api.wait_runs("late_work", [run_id], timeout=180) == {run_id: "success"}
        assert sql("SELECT task_id, map_index, thread, step_id, try_number, counts ? 'moved_to_history'"
                   " FROM step_run_counts WHERE run_id = %s", (run_id,)) == [
            ("expire_sessions", -1, "LateWork", "expire_sessions", 1, True)]
        assert sql("SELECT count(*) FROM email_outbox")[0][0] == 1
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
    at = pendulum.instance(deadline_at).add(minutes=1)
    sent = send_due_emails(panel_db, Interval(at, at))
    # past 06:00 London the billing domain's daily digest (settings.yaml) goes in the same run
    assert sent["sent"] == 1 + sent.get("digests_queued", 0)
    (msg,) = [m for m in smtp_server.messages if "daily digest" not in m["Subject"]]
    assert msg["Subject"] == f"[panelflow] LateWork missed its deadline (run {run_id})"
    sql("TRUNCATE deadline_misses, step_run_counts")
