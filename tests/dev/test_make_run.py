"""``make run``'s supervisor for real: Airflow up with every DAG and pool, SessionsMgtWork green
when triggered over the REST API, Ctrl-C leaves no process behind, a second start reuses the data.

The slowest test of the suite (two start-ups of the four Airflow components, ~2 min).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil

from panelflow.catalog import load_catalog
from panelflow.dev.postgres import free_port

from harness import ROOT
from harness.make_run import Api, start, stop

# the threads started unpaused (PANELFLOW_THREADS): all 61 at once would keep two shared cores busy;
# the tests enable what they run (Api.run_now)
ONLY = "send_email_notifications_work,SessionsMgtWork"


def test_make_run_end_to_end(tmp_path):
    home = tmp_path / "panelflow"
    ports = {"api": free_port(), "pg": free_port(), "smtp": free_port()}
    proc, lines = start(home, ports, PANELFLOW_THREADS=ONLY)
    try:
        out = "".join(lines)
        assert "demo data: sessions 200" in out
        password = json.loads((home / "secrets.json").read_text())["admin_password"]
        assert f"login: admin / {password}" in out
        api = Api(ports["api"], password)

        catalog = load_catalog()
        dags = api.call("GET", "/api/v2/dags?limit=200")
        assert dags["total_entries"] == 61
        assert {d["dag_id"] for d in dags["dags"]} == {t.dag_id for t in catalog.live_threads}
        assert {d["dag_id"] for d in dags["dags"] if not d["is_paused"]} == {
            "send_email_notifications_work", "sessions_mgt_work"}
        assert api.call("GET", "/api/v2/importErrors")["total_entries"] == 0
        pools = {p["name"]: p["slots"] for p in api.call("GET", "/api/v2/pools?limit=100")["pools"]}
        assert {k: v["slots"] for k, v in catalog.pools().items()}.items() <= pools.items()

        # run SessionsMgtWork from the API, as the UI's trigger button does
        run = api.run_now("sessions_mgt_work")
        run_id = run["dag_run_id"]
        deadline = time.monotonic() + 180
        state = run["state"]
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(2)
            state = api.call("GET", f"/api/v2/dags/sessions_mgt_work/dagRuns/{run_id}")["state"]
        assert state == "success"
        tis = api.call("GET", f"/api/v2/dags/sessions_mgt_work/dagRuns/{run_id}/taskInstances")["task_instances"]
        assert {t["task_id"]: t["state"] for t in tis} == {
            "run_group_guard": "success", "expire_sessions": "success", "delete_old_session_history": "success"}
        summary = api.call("GET", f"/api/v2/dags/sessions_mgt_work/dagRuns/{run_id}/taskInstances/expire_sessions/xcomEntries/return_value")
        assert "moved_to_history" in str(summary["value"])

        # the outbox sender delivers the demo notices into make run's SMTP sink (a Maildir)
        run = api.run_now("send_email_notifications_work")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = api.call("GET", f"/api/v2/dags/send_email_notifications_work/dagRuns/{run['dag_run_id']}")["state"]
            if state in ("success", "failed"):
                break
            time.sleep(2)
        assert state == "success"
        import email

        delivered = [email.message_from_bytes(p.read_bytes())["Subject"] for p in (home / "mail" / "new").iterdir()]
        notices = [s for s in delivered if s.startswith("Your service is ready")]
        # every demo notice exactly once, whichever run sent it (BillingWork's scheduled run mails too)
        assert len(notices) == len(set(notices)) == 20

        # the README's backfill, through the airflow CLI with .panelflow/env.sh
        subprocess.run(
            ["bash", "-c", f". {home}/env.sh && {sys.executable} -m airflow backfill create --dag-id sessions_mgt_work "
             "--from-date 2026-11-20T00:00:00 --to-date 2026-11-20T00:30:00 --max-active-runs 1"],
            check=True, capture_output=True, cwd=ROOT, env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        )
        wanted = {"backfill__2026-11-20T00:07:00+00:00", "backfill__2026-11-20T00:22:00+00:00"}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            runs = api.call("GET", "/api/v2/dags/sessions_mgt_work/dagRuns?limit=100")["dag_runs"]
            states = {r["dag_run_id"]: r["state"] for r in runs if r["dag_run_id"] in wanted}
            if len(states) == 2 and set(states.values()) <= {"success", "failed"}:
                break
            time.sleep(2)
        assert states == dict.fromkeys(wanted, "success")

        billing_work_from_the_api_and_a_backfilled_gap(api, home, ports)
        probes_and_syncs_against_make_runs_own_sandbox(api, home)
    finally:
        stop(proc)

    # a second run reuses the data: same login, no second demo load
    proc, lines = start(home, ports)
    out = "".join(lines)
    assert "demo data:" not in out and f"login: admin / {password}" in out
    # and if the supervisor itself is killed outright, its children still go (parent-death
    # signal + watchdog) — with the scheduler's LocalExecutor workers started, which is when a
    # single SIGTERM is not enough for the scheduler
    api = Api(ports["api"], password)
    run = api.run_now("send_email_notifications_work")
    deadline = time.monotonic() + 120
    while api.call("GET", f"/api/v2/dags/send_email_notifications_work/dagRuns/{run['dag_run_id']}")["state"] \
            not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(2)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any("LocalExecutor" in " ".join(p.cmdline()) or "LocalExecutor" in p.name() for p in family)
    proc.kill()
    proc.wait(10)
    gone, alive = psutil.wait_procs(family, timeout=60)
    assert alive == []


def wait_for_run(api: Api, dag_id: str, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    return "timed out"


def airflow_cli(home: Path, args: str) -> str:
    return subprocess.run(["bash", "-c", f". {home}/env.sh && {sys.executable} -m airflow {args}"], check=True,
                          capture_output=True, text=True, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}).stdout


def wait_for_backfills(api: Api, count: int, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfills = api.call("GET", "/api/v2/backfills?dag_id=billing_work&limit=50")["backfills"]
        if len(backfills) == count and all(b["completed_at"] for b in backfills):
            return
        time.sleep(3)
    raise AssertionError(f"backfills not completed: {backfills}")


def billing_work_from_the_api_and_a_backfilled_gap(api: Api, home: Path, ports: dict[str, int]) -> None:
    """BillingWork green on the demo data when run from the API (the UI's trigger), then a
    7-day gap backfilled from the CLI billed once per day, and backfilled again with
    ``--reprocess-behavior completed`` changing nothing."""
    import psycopg

    panel = next(line.split("=", 1)[1] for line in (home / "env.sh").read_text().splitlines()
                 if line.startswith("export AIRFLOW_CONN_PANEL_DB="))

    def gateway_charges() -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['gateway']}/_sandbox/charges", timeout=10) as r:
            body = json.load(r)
        return body["data"]

    # "run now": bills yesterday (London) on the demo provider
    run = api.run_now("billing_work")
    assert wait_for_run(api, "billing_work", run["dag_run_id"]) == "success"
    tis = api.call("GET", f"/api/v2/dags/billing_work/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    assert {t["task_id"]: t["state"] for t in tis} == dict.fromkeys(
        ["run_group_guard", "billing_process", "reseller_commissions", "ocs_call_record_bills",
         "sip_billing_and_exports", "o365_price_update_notifications"], "success")
    summary = api.call("GET", f"/api/v2/dags/billing_work/dagRuns/{run['dag_run_id']}/taskInstances/billing_process"
                              "/xcomEntries/return_value")["value"]
    with psycopg.connect(panel) as conn:
        invoices = conn.execute("SELECT count(*) FROM invoices WHERE kind = 'recurring'").fetchone()[0]
        paid = conn.execute("SELECT count(*) FROM invoices WHERE status = 'paid'").fetchone()[0]
    assert invoices > 0 and paid > 0 and "invoices" in str(summary)
    charged = [c["metadata"]["invoice_number"] for c in gateway_charges()]
    assert len(charged) == len(set(charged)) >= paid  # one charge per invoice (the scheduled run may be charging too)

    # a 7-day gap (ten to four days ago): subscriptions due on each of those days
    today = datetime.now(ZoneInfo("Europe/London")).date()
    gap = [today - timedelta(days=d) for d in range(10, 3, -1)]
    with psycopg.connect(panel) as conn:
        conn.execute("""INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,
                                                   started_on)
                        SELECT c.id, 'Backfill plan', 5.00, c.currency, 'monthly', d, d
                        FROM customers c CROSS JOIN unnest(%s::date[]) d WHERE c.id <= 20""", (gap,))
    first, last = (f"{d.isoformat()}T01:30:00+00:00" for d in (gap[0], gap[-1]))  # GMT: London = UTC
    if datetime(gap[0].year, gap[0].month, gap[0].day, tzinfo=ZoneInfo("Europe/London")).utcoffset():
        first, last = (f"{d.isoformat()}T00:30:00+00:00" for d in (gap[0], gap[-1]))  # summer time
    airflow_cli(home, f"backfill create --dag-id billing_work --from-date {first} --to-date {last} --max-active-runs 3")
    wait_for_backfills(api, 1)
    runs = [r for r in api.call("GET", "/api/v2/dags/billing_work/dagRuns?limit=100")["dag_runs"]
            if r["run_type"] == "backfill"]
    assert len(runs) == 7 and {r["state"] for r in runs} == {"success"}

    def billed() -> dict:
        with psycopg.connect(panel) as conn:
            per_day = dict(conn.execute(
                "SELECT billing_date, count(*) FROM invoices WHERE billing_date = ANY(%s) GROUP BY 1", (gap,)))
            lines = conn.execute("SELECT count(*) FROM invoice_lines l JOIN subscriptions s ON s.id = l.subscription_id"
                                 " WHERE s.plan = 'Backfill plan'").fetchone()[0]
            everything = conn.execute("SELECT (SELECT count(*) FROM invoices), (SELECT count(*) FROM invoice_lines),"
                                      " (SELECT count(*) FROM payments), (SELECT count(*) FROM email_outbox)").fetchone()
        return {"per_day": per_day, "lines": lines, "everything": everything, "charges": len(gateway_charges())}

    after_backfill = billed()
    assert after_backfill["per_day"] == dict.fromkeys(gap, 20)  # each missed day billed, once per customer
    assert after_backfill["lines"] == 7 * 20

    # the same range again, reprocessing completed runs: the days are billed already, nothing changes
    airflow_cli(home, f"backfill create --dag-id billing_work --from-date {first} --to-date {last} "
                      "--max-active-runs 3 --reprocess-behavior completed")
    wait_for_backfills(api, 2)
    assert billed() == after_backfill


def probes_and_syncs_against_make_runs_own_sandbox(api: Api, home: Path) -> None:
    """MonitoringWork probes make run's own components (all up), DomainNameDataSyncThread syncs
    the sandbox registrar, SyncFromBackendWork the Dataverse sandbox's CRM organisation, BBSyncWork
    the BlackBerry UEM sandbox, IngramCancelNoticesWork cancels the demo's order at the Ingram
    sandbox (and queues its one e-mail), and the threads with nothing configured here (help-desk boxes,
    Active Directory, Exchange, Hyper-V) still run green."""
    import psycopg

    panel = next(line.split("=", 1)[1] for line in (home / "env.sh").read_text().splitlines()
                 if line.startswith("export AIRFLOW_CONN_PANEL_DB="))
    dags = ["monitoring_work", "sync_health_metrics_work", "domain_name_data_sync_thread", "synch_dns_records_work",
            "help_desk_work", "help_desk_command", "usage_report_schedule_work", "quota_over_used_work",
            "overusage_resource_notification", "provisioning_work", "sync_csp_offers", "azure_rate_work",
            "reconciliate_o365_subs_work", "office365_work", "office365_sync_work", "o365_sync_admin_logs_work",
            "office365_tenant_first_sync_work", "sync_from_backend_work", "group_action_work_crm", "bb_sync_work",
            "ingram_cancel_notices_work",
            # the Windows backends' threads: no directory, Exchange server or Hyper-V host here
            "sync_ad_users_work", "group_action_work_ad", "group_action_work_ex", "exchange_database_stats_work",
            "group_action_work_vps", "server_stats_work"]
    runs = {d: api.run_now(d)["dag_run_id"] for d in dags}
    states = {d: wait_for_run(api, d, run_id) for d, run_id in runs.items()}
    assert states == dict.fromkeys(dags, "success")
    with psycopg.connect(panel) as conn:
        checks = dict(conn.execute("SELECT m.name, c.status FROM monitor_checks c JOIN monitors m ON m.id = c.monitor_id"
                                   " WHERE c.checked_at = (SELECT max(checked_at) FROM monitor_checks)").fetchall())
        synced = conn.execute("SELECT count(*) FROM registrar_domains").fetchone()[0]
        offers = conn.execute("SELECT count(*) FROM csp_offers").fetchone()[0]
        rates = conn.execute("SELECT count(*) FROM azure_rates WHERE source = 'retail_prices'").fetchone()[0]
        m365_users = conn.execute("SELECT count(DISTINCT tenant_id), count(*) FROM m365_users").fetchone()
        crm = conn.execute("SELECT count(*) FROM crm_users u JOIN crm_organizations o ON o.id = u.organization_id"
                           " WHERE o.conn_id = 'dynamics' AND o.synced_at IS NOT NULL").fetchone()[0]
        uem = conn.execute("SELECT count(DISTINCT u.id), count(d.*) FROM bb_users u"
                           " LEFT JOIN bb_devices d ON d.bb_user_id = u.id").fetchone()
        ingram = conn.execute("SELECT c.status, c.ingram_status, count(o.*) FROM ingram_cancellations c"
                              " LEFT JOIN email_outbox o ON o.dedupe_key = 'ingram-cancellation:' || c.id"
                              " GROUP BY c.id").fetchall()
    assert checks == dict.fromkeys(["Airflow API server", "SMTP relay", "Panel database", "Card gateway",
                                    "Registrar API", "Microsoft sandbox"], "up")
    assert synced >= 20 and offers > 0 and rates > 0
    assert m365_users[0] == 2 and m365_users[1] > 0  # both sandbox tenants synced, one mapped task each
    assert crm == 25                                   # the Dataverse sandbox's organisation, every user
    assert uem[0] == 5 and uem[1] >= 5                 # the UEM sandbox's users, each with its devices
    assert ingram == [("cancelled", "CANCELLED", 1)]   # cancelled at Ingram once, one notice


def test_make_run_on_a_server_named_by_the_environment(tmp_path):
    """PANELFLOW_DATABASE_URL: no embedded PostgreSQL; that server holds both databases and is
    left running when make run stops (it is not make run's to stop)."""
    import psycopg

    from panelflow.dev.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "their-pg", durable=False).start()
    try:
        home = tmp_path / "panelflow"
        ports = {"api": free_port(), "pg": free_port(), "smtp": free_port()}
        proc, lines = start(home, ports, PANELFLOW_THREADS=ONLY,
                             PANELFLOW_DATABASE_URL=server.uri("").rstrip("/"))
        try:
            assert not (home / "pgdata").exists()
            password = json.loads((home / "secrets.json").read_text())["admin_password"]
            assert Api(ports["api"], password).call("GET", "/api/v2/dags?limit=1")["total_entries"] == 61
            with psycopg.connect(server.uri("panel")) as conn:
                assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 200  # demo data there
        finally:
            stop(proc)
        assert server.proc.poll() is None  # still running
    finally:
        server.stop()
