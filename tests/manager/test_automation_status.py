"""The Threads Manager's Automation Status: emergency stop, health badge and the day's status on the
real metadata and panel DBs, then the whole page in a real headless Chromium against ``make run``.

The first tests call the functions the endpoints call (panelflow.manager.automation and .status)
with an Airflow session and a panel-DB connection; the browser tests share one ``make run`` for the
module (demo data, an extra ``viewer`` user) and check what a user sees and that the numbers equal
the panel DB's. ``PANELFLOW_UPDATE_SCREENSHOT=1`` also writes docs/automation-status.png and
docs/failed-actions.png.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi import HTTPException

from manager.test_threads_manager import page_stack   # at module level: it marks the module a stack (harness.classify)
from panelflow.catalog import load_catalog

OWN_TABLES = "automation_actions, failed_action_dismissals, emergency_stops, step_run_counts"
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture
def panel(panel_db, sql, migrated_panel_db):
    import psycopg

    sql(f"TRUNCATE {OWN_TABLES} RESTART IDENTITY")
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        yield conn
    sql(f"TRUNCATE {OWN_TABLES} RESTART IDENTITY")


@pytest.fixture
def metadata(airflow_db):
    """An Airflow session on an emptied metadata DB with one bundle for the test's DAG rows."""
    from airflow.jobs.job import Job
    from airflow.models.dag import DagModel
    from airflow.models.dag_version import DagVersion
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    def empty(session):
        for model in (DagRun, DagVersion, DagModel, Job):
            session.query(model).delete()

    with create_session() as session:
        empty(session)
        if session.get(DagBundleModel, "tests") is None:
            session.add(DagBundleModel(name="tests"))
    with create_session() as session:
        yield session
        session.rollback()
        empty(session)


def _dags(session, **paused):
    from airflow.models.dag import DagModel

    for dag_id, is_paused in paused.items():
        session.add(DagModel(dag_id=dag_id, bundle_name="tests", is_paused=is_paused))
    session.commit()


def _paused(session) -> dict[str, bool]:
    from airflow.models.dag import DagModel

    session.expire_all()
    return {d.dag_id: d.is_paused for d in session.query(DagModel)}


def test_emergency_stop_then_resume_restores_exactly_the_enabled_set(metadata, panel, sql):
    from panelflow.manager.automation import active_stop, pull_stop, resume

    _dags(metadata, billing_work=False, sessions_mgt_work=True, monitoring_work=False, not_ours=False)
    ours = ["billing_work", "sessions_mgt_work", "monitoring_work"]

    stop = pull_stop(metadata, panel, ours, "admin")
    assert stop["paused_dag_ids"] == ["billing_work", "monitoring_work"] and stop["pulled_by"] == "admin"
    assert _paused(metadata) == {"billing_work": True, "sessions_mgt_work": True, "monitoring_work": True,
                                 "not_ours": False}
    with pytest.raises(HTTPException) as again:
        pull_stop(metadata, panel, ours, "admin")
    assert again.value.status_code == 409 and active_stop(panel)["id"] == stop["id"]

    assert resume(metadata, panel, "admin2") == {"resumed": ["billing_work", "monitoring_work"]}
    assert _paused(metadata) == {"billing_work": False, "sessions_mgt_work": True, "monitoring_work": False,
                                 "not_ours": False}
    assert active_stop(panel) is None
    with pytest.raises(HTTPException) as twice:
        resume(metadata, panel, "admin2")
    assert twice.value.status_code == 409
    assert sql("SELECT pulled_by, resumed_by, paused_dag_ids, resumed_at >= pulled_at FROM emergency_stops") == [
        ("admin", "admin2", ["billing_work", "monitoring_work"], True)]
    assert sql("SELECT username, action, target_kind FROM automation_actions ORDER BY id") == [
        ("admin", "stop", "automation"), ("admin2", "resume", "automation")]


def _heartbeat(session, at):
    from airflow.jobs.job import Job

    job = Job()
    job.job_type, job.state, job.latest_heartbeat, job.start_date = "SchedulerJob", "running", at, at
    session.add(job)
    session.commit()


def _version(session, dag_id, created):
    from airflow.models.dag_version import DagVersion

    session.add(DagVersion(dag_id=dag_id, version_number=1, bundle_name="tests", created_at=created))
    session.commit()


def _run(session, dag_id, run_after, state, end=None):
    from airflow.models.dagrun import DagRun

    run = DagRun(dag_id=dag_id, run_id=f"scheduled__{run_after.isoformat()}", run_type="scheduled",
                 run_after=run_after, logical_date=run_after, state=state, data_interval=(run_after, run_after))
    run.end_date = end
    session.add(run)
    session.commit()


def test_health_is_red_with_every_reason_named(metadata, panel, catalog):
    from panelflow.manager.automation import pull_stop
    from panelflow.manager.status import health

    now = T0  # 12:00 UTC = 12:00 Europe/London: BillingWork's 01:30 run is due, its 240-minute deadline passed
    _heartbeat(metadata, now - timedelta(seconds=30))
    assert health(metadata, panel, catalog, {}, now) | {"checked_at": None} == {
        "status": "green", "reasons": [], "checked_at": None, "scheduler_heartbeat": (now - timedelta(seconds=30)).isoformat()}

    _dags(metadata, billing_work=False, sessions_mgt_work=False, domain_verification=False)
    for dag_id in ("billing_work", "sessions_mgt_work", "domain_verification"):
        _version(metadata, dag_id, now - timedelta(days=3))
    due = datetime(2026, 11, 22, 1, 30, tzinfo=timezone.utc)
    _run(metadata, "billing_work", due, "success", end=due + timedelta(minutes=300))       # finished, but late
    _run(metadata, "sessions_mgt_work", now - timedelta(minutes=50), "success", end=now)   # every 15: 3 periods = 45
    _run(metadata, "domain_verification", now - timedelta(minutes=8), "success", end=now)  # every 10: fine
    red = health(metadata, panel, catalog, {}, now + timedelta(minutes=3))
    assert red["status"] == "red"
    assert {(r["kind"], r.get("thread")) for r in red["reasons"]} == {
        ("scheduler", None), ("deadline", "BillingWork"), ("periodic", "SessionsMgtWork")}
    texts = " | ".join(r["text"] for r in red["reasons"])
    assert "heartbeat is 210 s old" in texts and "BillingWork has not succeeded for its run due 2026-11-22 01:30 " \
        "within 240 minutes" in texts and "SessionsMgtWork has had no successful run for 3 periods" in texts

    _run(metadata, "billing_work", due + timedelta(seconds=1), "success", end=due + timedelta(minutes=20))
    pull_stop(metadata, panel, ["domain_verification"], "admin")   # paused threads are not judged …
    red = health(metadata, panel, catalog, {}, now + timedelta(minutes=3))
    assert {r["kind"] for r in red["reasons"]} == {"scheduler", "periodic", "emergency_stop"}  # … the stop is


def test_the_day_view_words_the_recorded_counts_with_the_catalogs_labels(metadata, panel, catalog):
    from panelflow.manager.status import day_view
    from panelflow.services import run_counts

    day = date(2026, 11, 22)
    _dags(metadata, billing_work=False, send_email_notifications_work=False)
    for n, (d, summary) in enumerate([(day, {"invoices": 212, "charged": 198, "declined": 14,
                                             "invoice_emails_queued": 212, "days": "x"}),
                                      (day - timedelta(days=1), {"invoices": 3, "charged": 3})]):
        run_counts.record(panel, dag_id="billing_work", run_id=f"r{n}", task_id="billing_process", map_index=-1,
                          thread="BillingWork", step_id="billing_process", run_day=d, try_number=1, summary=summary)
        _run(metadata, "billing_work", datetime.combine(d, datetime.min.time(), timezone.utc) + timedelta(hours=1, minutes=30),
             "success" if n == 0 else "failed")
    view = day_view(metadata, panel, catalog, day, {"billing_work", "send_email_notifications_work"})
    (billing, mail) = view["threads"]
    assert billing["summary"] == ("BillingWork: 212 invoices, 198 charges approved, 14 declined, "
                                  "212 invoice e-mails queued")
    assert (billing["runs"], billing["failed"], mail["runs"], mail["summary"]) == (1, 0, 0, None)
    assert len(billing["chart"]) == 30 and billing["chart"][-1]["day"] == "2026-11-22"
    assert billing["chart"][-2] == {"day": "2026-11-21", "runs": 1, "failed": 1,
                                    "counts": {"billing_process.invoices": 3, "billing_process.charged": 3}}


# -- the page in a real browser against make run ---------------------------------------------

PAGE = "/threads-manager"
WRITES = [("POST", f"{PAGE}/api/automation/failed/jobs/1/retry", None),
          ("POST", f"{PAGE}/api/automation/failed/jobs/retry", {"ids": [1]}),
          ("POST", f"{PAGE}/api/automation/failed/job/1/dismiss", None),
          ("POST", f"{PAGE}/api/automation/failed/messages/1/resend", {"confirm": True}),
          ("POST", f"{PAGE}/api/automation/failed/charges/1/retry", None),
          ("POST", f"{PAGE}/api/automation/stop", None),
          ("POST", f"{PAGE}/api/automation/resume", None)]
READS = [f"{PAGE}/api/automation/status", f"{PAGE}/api/automation/health", f"{PAGE}/api/automation/failed",
         f"{PAGE}/api/automation/stop", f"{PAGE}/static/automation.js"]


# the threads make run starts unpaused here: the ones these tests read, and one to disable
ENABLED = ("billing_work", "send_email_notifications_work", "group_action_work_ex", "domain_verification")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with page_stack(tmp_path_factory, "automation-status", ENABLED) as site:
        yield site


@pytest.fixture(scope="module")
def page(live):
    """Admin's session (Airflow's ``_token`` cookie) on the page itself, outside Airflow's iframe."""
    from playwright.sync_api import sync_playwright

    from manager.test_threads_manager import CHROMIUM_ARGS, chromium

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        context.add_cookies([{"name": "_token", "value": live.api.token, "url": live.base}])
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(live.base + PAGE + "/")
        page.locator("tr[data-dag-id]").first.wait_for()
        yield page
        browser.close()


def panel_sql(live, query, params=None):
    import psycopg

    with psycopg.connect(live.panel, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else cur.rowcount


def status_of(live, day=None) -> dict[str, dict]:
    path = f"{PAGE}/api/automation/status" + (f"?day={day}" if day else "")
    code, view = live.http("GET", path, token=live.api.token)
    assert code == 200, view
    return {t["name"]: t for t in view["threads"]} | {"": view}


def shot(page, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PANELFLOW_UPDATE_SCREENSHOT") == "1":
        from harness import ROOT

        (ROOT / "docs" / name).write_bytes(path.read_bytes())


def test_writes_refuse_anonymous_forged_and_viewer_callers_and_reads_need_a_reader(live):
    for method, path, body in WRITES:
        assert live.http(method, path, body)[0] == 401, (method, path)
        assert live.http(method, path, body, token="forged.jwt.token")[0] == 403, (method, path)
        assert live.http(method, path, body, token=live.viewer_token) == (403, {"detail": "Forbidden"}), path
    for path in READS:
        assert live.http("GET", path)[0] == 401, path
        assert live.http("GET", path, token="forged.jwt.token")[0] == 403, path
        assert live.http("GET", path, token=live.viewer_token)[0] == 200, path
    code, queue = live.http("GET", f"{PAGE}/api/automation/failed", token=live.viewer_token)
    assert code == 200 and queue["can_edit"] is False and queue["audit"] == []   # nothing was recorded
    assert panel_sql(live, "SELECT count(*) FROM emergency_stops") == [(0,)]
    # the workflow approval page is mounted beside them and asks no sign-in: the link's token is the credential
    code, body = live.http("GET", f"{PAGE}/workflow-approval?token=nope&decision=approved", accept="text/html")
    assert code == 404 and "This link is not valid." in body


def _exchange_jobs(live) -> dict[str, int]:
    return dict(panel_sql(live, "SELECT status, count(*) FROM group_action_jobs WHERE backend = 'exchange'"
                                " GROUP BY status"))


def _two_rejected_exchange_jobs(live) -> None:
    """Two Exchange jobs its backend rejects (an action it does not know), worked by a Run now."""
    from psycopg.types.json import Jsonb

    failed_before = _exchange_jobs(live).get("failed", 0)
    for n in (1, 2):
        panel_sql(live, "INSERT INTO group_action_jobs (backend, action, payload) VALUES ('exchange',"
                        " 'launch_rocket', %s)", (Jsonb({"mailbox": f"user{n}@contoso.test"}),))
    run = live.api.call("POST", "/api/v2/dags/group_action_work_ex/dagRuns", {"logical_date": None, "conf": {}})
    live.finished_run("group_action_work_ex", run["dag_run_id"])
    assert _exchange_jobs(live) == {"failed": failed_before + 2}


def test_the_status_view_equals_the_panel_db_and_shows_the_30_day_chart(live, page, tmp_path):
    _two_rejected_exchange_jobs(live)
    billing_run = live.wait_for("BillingWork's start-up run", lambda: next(
        (r for r in live.api.call("GET", "/api/v2/dags/billing_work/dagRuns?state=success")["dag_runs"]), None),
        timeout=600, every=5)
    day = billing_run["data_interval_end"][:10]   # London = UTC in December
    assert day == status_of(live)[""]["day"]

    def mail_sent_by_the_thread() -> int:
        """Outbox messages sent while one of the day's SendEmailNotificationsWork tasks ran: its run
        group (mail_outbox) keeps SendEmailCampaignWork, which sends from the same outbox, apart."""
        dag = "send_email_notifications_work"
        runs = {r["dag_run_id"] for r in live.api.call("GET", f"/api/v2/dags/{dag}/dagRuns?limit=1000")["dag_runs"]
                if (r["data_interval_end"] or r["run_after"])[:10] == day}
        tis = live.api.call("GET", f"/api/v2/dags/{dag}/dagRuns/~/taskInstances?task_id=send_due_notifications"
                                   "&limit=1000")["task_instances"]
        windows = [(t["start_date"], t["end_date"]) for t in tis if t["dag_run_id"] in runs and t["state"] == "success"]
        if not windows:
            return 0
        return panel_sql(live, "SELECT count(*) FROM email_outbox o WHERE o.status = 'sent' AND EXISTS ("
                               " SELECT 1 FROM unnest(%s::timestamptz[], %s::timestamptz[]) w(s, e)"
                               " WHERE o.sent_at BETWEEN w.s AND w.e)",
                         ([w[0] for w in windows], [w[1] for w in windows]))[0][0]

    def truth():
        billed = date.fromisoformat(day) - timedelta(days=1)   # the billing day the run charged
        (invoices, approved, declined), = panel_sql(live, """
            SELECT count(DISTINCT i.id), count(*) FILTER (WHERE a.status = 'approved'),
                   count(*) FILTER (WHERE a.status = 'declined')
            FROM invoices i LEFT JOIN payment_attempts a ON a.invoice_id = i.id
            WHERE i.kind = 'recurring' AND i.billing_date = %s""", (billed,))
        jobs = _exchange_jobs(live)
        return {"BillingWork": {"billing_process.invoices": invoices, "billing_process.charged": approved,
                                "billing_process.declined": declined},
                "SendEmailNotificationsWork": {"send_due_notifications.sent": mail_sent_by_the_thread()},
                "GroupActionWorkEx": {"process_exchange_group_actions.failed": jobs.get("failed", 0)}}

    def shown():
        view = status_of(live, day)
        return {name: {c["key"]: c["n"] for c in view[name]["counts"] if c["key"] in keys}
                for name, keys in truth().items()}

    # runs go on while this reads: equal once a read of both sides agrees
    live.wait_for("the status view to equal the panel DB", lambda: shown() == truth(), timeout=180, every=3)
    expected = truth()
    assert expected["BillingWork"]["billing_process.invoices"] > 0
    assert expected["SendEmailNotificationsWork"]["send_due_notifications.sent"] > 0
    view = status_of(live, day)
    assert f"{expected['BillingWork']['billing_process.invoices']} invoices, " in view["BillingWork"]["summary"]
    assert view["GroupActionWorkEx"]["runs"] >= 1

    page.locator("nav.tabs a[data-tab=status]").click()
    page.locator("#status-day").fill(day)
    page.locator("#status-day").dispatch_event("change")
    row = page.locator("#status-table tr[data-dag-id=billing_work]")
    row.locator("td.words").filter(has_text="invoices").wait_for()
    assert row.locator("td.words").inner_text() == view["BillingWork"]["summary"]
    bars = row.locator("svg.daychart rect")
    assert bars.count() >= 3 and {bars.nth(i).get_attribute("data-day") for i in range(bars.count())} == {day}
    ex = page.locator("#status-table tr[data-dag-id=group_action_work_ex]")
    failed_jobs = expected["GroupActionWorkEx"]["process_exchange_group_actions.failed"]
    assert f"{failed_jobs} jobs rejected or failed" in ex.locator("td.words").inner_text()
    assert page.locator("#health").get_attribute("class").startswith("health ")
    code, health = live.http("GET", f"{PAGE}/api/automation/health", token=live.viewer_token)
    assert code == 200 and health["status"] in ("green", "red") and health["scheduler_heartbeat"]
    assert all(r["text"] for r in health["reasons"])
    shot(page, "automation-status.png", tmp_path)


def test_a_rejected_job_is_in_the_failed_actions_queue_and_retry_makes_one_new_attempt(live, page, tmp_path):
    _two_rejected_exchange_jobs(live)
    job_id, = [r[0] for r in panel_sql(live, "SELECT id FROM group_action_jobs WHERE backend = 'exchange'"
                                             " AND status = 'failed' ORDER BY id LIMIT 1")]
    page.locator("nav.tabs a[data-tab=failed]").click()
    row = page.locator(f"#failed-jobs tr[data-kind=job][data-id='{job_id}']")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[:3] == ["exchange", "mailbox user1@contoso.test", "launch_rocket"], cells
    assert "unknown exchange action 'launch_rocket'" in cells[3] and cells[4] == "1"
    assert page.locator("#failed-charges tr[data-kind=charge]").count() >= 1   # the demo's declined card
    shot(page, "failed-actions.png", tmp_path)

    row.locator("button[data-act=retry]").click()
    page.locator("#banner").filter(has_text=f"Job {job_id} is pending again").wait_for()
    status, attempts = panel_sql(live, "SELECT status, attempts FROM group_action_jobs WHERE id = %s", (job_id,))[0]
    assert (status, attempts) in (("pending", 1), ("running", 2), ("failed", 2))
    (user, action), = panel_sql(live, "SELECT username, action FROM automation_actions WHERE target_id = %s",
                                (str(job_id),))
    assert (user, action) == ("admin", "retry")
    logged = live.api.call("GET", "/api/v2/eventLogs?event=threads_manager_retry_job")["event_logs"]
    assert [e["owner"] for e in logged] == ["admin"]

    run = live.api.call("POST", "/api/v2/dags/group_action_work_ex/dagRuns", {"logical_date": None, "conf": {}})
    live.finished_run("group_action_work_ex", run["dag_run_id"])
    assert panel_sql(live, "SELECT status, attempts FROM group_action_jobs WHERE id = %s", (job_id,)) == [
        ("failed", 2)]                                                      # exactly one new attempt
    assert {a for (a,) in panel_sql(live, "SELECT attempts FROM group_action_jobs WHERE backend = 'exchange'"
                                          " AND id <> %s", (job_id,))} == {1}   # the other jobs were not retried

    other = page.locator("#failed-jobs tr[data-kind=job]").filter(has_not_text="user1@").first
    other_id = other.get_attribute("data-id")
    other.locator("button[data-act=dismiss]").click()
    page.locator("#banner").filter(has_text=f"job {other_id} dismissed").wait_for()
    page.locator(f"#failed-jobs tr[data-id='{other_id}']").wait_for(state="detached")
    assert panel_sql(live, "SELECT dismissed_by FROM failed_action_dismissals WHERE kind = 'job' AND target_id = %s",
                     (int(other_id),)) == [("admin",)]


def test_the_emergency_stop_pauses_every_enabled_thread_and_resume_restores_exactly_them(live, page):
    def paused() -> dict[str, bool]:
        return {d["dag_id"]: d["is_paused"] for d in live.api.call("GET", "/api/v2/dags?limit=100")["dags"]}

    live.api.call("PATCH", "/api/v2/dags/domain_verification", {"is_paused": True})  # one disabled beforehand
    before = paused()
    enabled = sorted(d for d, p in before.items() if not p)
    assert before["domain_verification"] and enabled == sorted(set(ENABLED) - {"domain_verification"})

    page.locator("#stop").click()
    page.locator("#confirm-dialog button[data-ok]").click()
    page.locator("#stop-banner").wait_for()
    assert f"{len(enabled)} threads paused" in page.locator("#stop-banner").inner_text()
    assert all(paused().values())
    (pulled_by, ids), = panel_sql(live, "SELECT pulled_by, paused_dag_ids FROM emergency_stops WHERE resumed_at IS NULL")
    assert (pulled_by, ids) == ("admin", enabled)
    page.locator("nav.tabs a[data-tab=threads]").click()
    assert page.locator("#stop-banner").is_visible()               # on every tab of the page
    code, health = live.http("GET", f"{PAGE}/api/automation/health", token=live.api.token)
    assert health["status"] == "red" and "emergency_stop" in {r["kind"] for r in health["reasons"]}

    page.locator("#resume").click()
    page.locator("#stop-banner").wait_for(state="hidden")
    assert paused() == before
    assert [r[0] for r in panel_sql(live, "SELECT action FROM automation_actions WHERE target_kind = 'automation'"
                                          " ORDER BY id")] == ["stop", "resume"]
    live.api.call("PATCH", "/api/v2/dags/domain_verification", {"is_paused": False})
