"""Whole DAG runs through Airflow (``dag.test()``, real metadata DB, real panel DB, real SMTP).

Each run costs ~8 s of Airflow start-up, so there are only two: a green SessionsMgtWork run and
a failing run whose alert must reach the SMTP server.
"""

from __future__ import annotations

import os
import textwrap
from urllib.parse import urlsplit

import pendulum

from panelflow.catalog import default_catalog_dir, load_catalog
from panelflow.factory import build_dags


def test_sessions_mgt_work_runs_green(airflow_db, panel_db, sql):
    when = pendulum.datetime(2026, 11, 20, 12, 7, tz="UTC")
    sql("INSERT INTO sessions (session_key, user_kind, user_id, started_at, last_seen_at, expires_at) VALUES "
        "('gone', 'customer', 1, %s::timestamptz - interval '3 hours', %s::timestamptz - interval '2 hours', %s::timestamptz - interval '1 hour'),"
        "('here', 'customer', 2, %s::timestamptz - interval '1 hour', %s, %s::timestamptz + interval '1 hour')",
        (when, when, when, when, when, when))
    sql("INSERT INTO session_history (session_key, user_kind, user_id, started_at, ended_at, end_reason) VALUES "
        "('ancient', 'customer', 3, '2025-01-01', '2025-01-02', 'expired')")
    dag = build_dags()["sessions_mgt_work"]
    run = dag.test(logical_date=when)
    assert run.state == "success"
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert {k: ti.state for k, ti in tis.items()} == {"run_group_guard": "success", "expire_sessions": "success",
                                                      "delete_old_session_history": "success"}
    assert sql("SELECT count(*) FROM run_group_leases")[0][0] == 0   # the run gave its group back
    assert [r[0] for r in sql("SELECT session_key FROM sessions")] == ["here"]
    assert [r[0] for r in sql("SELECT session_key FROM session_history")] == ["gone"]


def test_failed_step_mails_its_owners(airflow_db, panel_db, smtp_server, tmp_path, monkeypatch):
    """A step whose panel DB is unreachable fails; the thread's alert address gets one e-mail."""
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    (catalog_dir / "settings.yaml").write_text((default_catalog_dir() / "settings.yaml").read_text())
    (catalog_dir / "housekeeping.yaml").write_text(textwrap.dedent("""
        threads:
          - name: SessionsMgtWork
            description: Expires panel sessions.
            domain: housekeeping
            schedule: {kind: periodic, every: 15, align_to: 7}
            run_groups: []   # no run-group guard: the step itself is what fails here
            nodes: [master]
            retries: 0
            alert_to: [ops-oncall@panelflow.example, dba@panelflow.example]
            steps:
              - id: expire_sessions
                number: "1"
                seed: Update session data (expiry).
                run: panelflow.steps.sessions.expire_sessions
    """))
    # the panel DB connection points at a database that does not exist: a real failure
    panel = urlsplit(os.environ["AIRFLOW_CONN_PANEL_DB"])
    monkeypatch.setenv("AIRFLOW_CONN_PANEL_DB", panel._replace(path="/no_such_panel_db").geturl())
    # dag.test() re-parses the DAG folder: let dags/threads.py read this catalog too
    monkeypatch.setenv("PANELFLOW_CATALOG", str(catalog_dir))
    dag = build_dags(load_catalog(catalog_dir))["sessions_mgt_work"]
    run = dag.test(logical_date=pendulum.datetime(2026, 11, 20, 12, 22, tz="UTC"))
    assert run.state == "failed"
    assert len(smtp_server.messages) == 1
    msg = smtp_server.messages[0]
    assert sorted(smtp_server.envelopes[0].rcpt_tos) == ["dba@panelflow.example", "ops-oncall@panelflow.example"]
    assert msg["Subject"].startswith("[panelflow] SessionsMgtWork failed: expire_sessions (run ")
    assert "try 1" in msg["Subject"]
    body = msg.get_body(("html",)).get_content()
    assert "SessionsMgtWork (sessions_mgt_work)" in body
    assert "expire_sessions: Update session data (expiry)." in body
    assert "no_such_panel_db" in body  # the error's last lines
    assert "/dags/sessions_mgt_work/runs/" in body and "/tasks/expire_sessions" in body  # link to the log
