"""The Threads Manager page in a real headless Chromium, against ``make run``'s Airflow on loopback.

One ``make run`` for the module (the whole catalog, demo data, an extra ``viewer`` user): the page
opened from Airflow's own navigation lists every thread; Run now creates a run (and Enable
Logging makes the next run's task log verbose); Disable pauses; an interval override changes the
DAG's next run once the dag-processor has re-parsed the file, a bad one is refused with the
catalog's message; anonymous, forged and read-only callers are refused by every endpoint.

Chromium is Debian's (``make system-deps`` installs it as root); under CI=true a missing one
fails the test. ``PANELFLOW_UPDATE_SCREENSHOT=1`` also writes the page's screenshot to
docs/threads-manager.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from panelflow.catalog import load_catalog
from panelflow.dev.postgres import free_port
from panelflow.schedules import describe
from harness.make_run import Api, start, stop

from harness import ROOT
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGE = "/threads-manager"


def chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (make test installs it as root: make system-deps)")
        pytest.skip("chromium is not installed (make system-deps)")
    return path


class Live:
    def __init__(self, home: Path, port: int):
        self.home = home
        self.base = f"http://127.0.0.1:{port}"
        passwords = json.loads((home / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
        self.passwords = passwords
        self.api = Api(port, passwords["admin"])
        self.viewer_token = self.token("viewer")

    def token(self, user: str) -> str:
        return self.http("POST", "/auth/token", {"username": user, "password": self.passwords[user]})[1]["access_token"]

    def http(self, method: str, path: str, body=None, token: str | None = None, accept: str = "application/json"):
        """(status, JSON body or text) — errors are answers here, not exceptions."""
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "Accept": accept})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()

    def dag(self, dag_id: str) -> dict:
        return self.api.call("GET", f"/api/v2/dags/{dag_id}")

    def overrides(self) -> dict:
        """The Variable as Airflow's REST API shows it ({} while there is none)."""
        status, body = self.http("GET", "/api/v2/variables/panelflow_overrides", token=self.api.token)
        assert status in (200, 404), (status, body)
        return json.loads(body["value"]) if status == 200 else {}

    def wait_for(self, what: str, check, timeout: float = 120, every: float = 1.0):
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(every)

    def finished_run(self, dag_id: str, run_id: str) -> dict:
        return self.wait_for(f"{dag_id} {run_id} to finish", lambda: (
            r if (r := self.api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))["state"] in ("success", "failed")
            else None), timeout=180, every=2)

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> list[dict]:
        return self.api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1")["content"]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@contextmanager
def page_stack(tmp_path_factory, name: str, threads: Iterable[str]) -> Iterator[Live]:
    """``make run`` for the page's browser tests: an ``admin`` and a ``viewer``, only ``threads``
    unpaused; ``.panel`` is its panel DB's URL."""
    chromium()  # fail or skip before paying for the start
    home = tmp_path_factory.mktemp(name) / "panelflow"
    ports = {"api": free_port(), "pg": free_port(), "smtp": free_port()}
    proc, _ = start(home, ports, AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer",
                    PANELFLOW_THREADS=",".join(threads))
    try:
        site = Live(home, ports["api"])
        site.panel = f"postgresql://postgres@127.0.0.1:{ports['pg']}/panel"
        yield site
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with page_stack(tmp_path_factory, "threads-manager",
                    ("monitoring_work", "domain_verification", "sessions_mgt_work")) as site:
        yield site


@pytest.fixture(scope="module")
def browser(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(live, browser):
    """Signed in through Airflow's own login form as admin, on the Threads Manager from the nav."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(live.base + "/auth/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(live.passwords["admin"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(live.base + "/")
    page.get_by_role("link", name=re.compile("Threads")).first.click()  # the plugin's nav entry
    page.wait_for_url("**/plugin/threads-manager")
    yield page
    context.close()


def frame(page):
    return page.frame_locator("iframe[title='Threads Manager']")


def row(page, dag_id: str):
    return frame(page).locator(f"tr[data-dag-id='{dag_id}']")


def refresh(page) -> None:
    with page.expect_response(lambda r: r.url.endswith(f"{PAGE}/api/threads") and r.ok):
        frame(page).locator("#refresh").click()
    page.wait_for_timeout(200)  # rendered


def test_every_endpoint_refuses_anonymous_forged_and_read_only_callers(live):
    endpoints = [("GET", f"{PAGE}/", None), ("GET", f"{PAGE}/api/threads", None),
                 ("GET", f"{PAGE}/static/manager.js", None),
                 ("PUT", f"{PAGE}/api/threads/sessions_mgt_work/schedule", {"schedule": {"kind": "manual"}}),
                 ("DELETE", f"{PAGE}/api/threads/sessions_mgt_work/schedule", None),
                 ("PUT", f"{PAGE}/api/threads/sessions_mgt_work/logging", {"enabled": True})]
    for method, path, body in endpoints:
        assert live.http(method, path, body)[0] == 401, (method, path)
        assert live.http(method, path, body, token="forged.jwt.token")[0] == 403, (method, path)
    # a browser without a session gets a sign-in link rather than JSON
    status, html = live.http("GET", f"{PAGE}/", accept="text/html")
    assert status == 401 and "sign in to Airflow" in html and "/auth/login" in html

    # a viewer reads everything, changes nothing
    assert live.http("GET", f"{PAGE}/", token=live.viewer_token)[0] == 200
    status, view = live.http("GET", f"{PAGE}/api/threads", token=live.viewer_token)
    assert status == 200 and view["user"] == "viewer"
    live_rows = [t for t in view["threads"] if t["dag_id"]]
    assert len(live_rows) == 61 and not any(t["can_edit"] or t["can_trigger"] for t in live_rows)
    for method, path, body in endpoints[3:]:
        status, answer = live.http(method, path, body, token=live.viewer_token)
        assert (status, answer) == (403, {"detail": "Forbidden"}), (method, path)
    assert live.http("GET", "/api/v2/variables/panelflow_overrides", token=live.api.token)[0] == 404  # nothing written

    # the nav entry and the app are registered with Airflow
    plugins = live.api.call("GET", "/api/v2/plugins")["plugins"]
    mine = next(p for p in plugins if p["name"] == "panelflow_threads_manager")
    assert mine["fastapi_apps"][0]["url_prefix"] == PAGE
    assert mine["external_views"][0] | {"href": f"{PAGE}/", "url_route": "threads-manager"} == mine["external_views"][0]


def test_the_page_lists_every_thread_with_its_columns(live, page, catalog):
    rows = frame(page).locator("tr[data-dag-id]")
    rows.first.wait_for()
    live_ids = {t.dag_id for t in catalog.live_threads}
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.dagId)")) == live_ids
    tz = catalog.settings.timezone
    paused = {d["dag_id"]: d["is_paused"] for d in live.api.call("GET", "/api/v2/dags?limit=100")["dags"]}
    for thread in catalog.live_threads:
        cells = row(page, thread.dag_id).locator("td")
        text = [c.strip() for c in cells.all_inner_texts()]
        assert text[0] == ("paused" if paused[thread.dag_id] else "enabled"), text
        assert text[1].startswith(thread.name), text
        assert text[2].startswith(describe(thread.schedule, tz)), text
        assert text[3].split() == thread.nodes
        assert text[4].split() == (thread.run_groups or ["—"]), (text, thread.run_groups)
    assert row(page, "sessions_mgt_work").locator("td.schedule").inner_text().startswith("every 15 min, aligned at :07")
    assert row(page, "billing_work").locator("td.schedule").inner_text().startswith("at 01:30 Europe/London")
    assert row(page, "group_action_work_sip").locator("td.schedule").inner_text().startswith("daemon")

    legacy = [t for t in catalog.threads if t.legacy]
    legacy_rows = frame(page).locator("tr.legacy")
    assert legacy_rows.count() == len(legacy) == 8
    for t in legacy:
        assert f"superseded by {t.legacy.superseded_by}" in frame(page).locator(f"tr.legacy[data-thread='{t.name}']").inner_text()

    # filter by domain tag: only that domain's threads stay visible
    frame(page).locator("#filter-domain").select_option("billing")
    visible = frame(page).locator("tr[data-dag-id]:visible")
    billing = {t.dag_id for t in catalog.live_threads if t.domain == "billing"}
    assert set(visible.evaluate_all("rs => rs.map(r => r.dataset.dagId)")) == billing
    assert frame(page).locator("tr.legacy:visible").count() == 0
    frame(page).locator("#filter-domain").select_option("")
    assert frame(page).locator("tr[data-dag-id]:visible").count() == 61


def test_enable_logging_then_run_now_gives_a_verbose_run(live, page):
    """Enable Logging is kept as an override; Run now (the page's dialog → Airflow's REST API)
    creates a manual run with the thread's params, whose task log carries the step's inputs and
    result at DEBUG. (A run without it has no such lines: tests/manager/test_overrides.py.)"""
    # MonitoringWork: one task, priority 3 (its task is queued ahead of the start-up burst of runs)
    dag_id, task = "monitoring_work", "process_monitors_and_metrics"
    row(page, dag_id).locator("input[data-action=logging]").check()
    live.wait_for("the logging override", lambda: live.overrides().get(dag_id, {}).get("verbose_logging"))
    assert "Enable Logging on for MonitoringWork" in frame(page).locator("#banner").inner_text()

    before = {r["dag_run_id"] for r in live.api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]}
    row(page, dag_id).locator("button[data-action=run]").click()
    dialog = frame(page).locator("#run-dialog")
    dialog.wait_for()
    assert json.loads(dialog.locator("textarea[name=conf]").input_value()) == {}  # the thread's params: none
    dialog.locator("button[data-confirm=run]").click()
    dialog.wait_for(state="hidden")
    assert "run manual__" in frame(page).locator("#banner").inner_text()
    runs = live.api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
    (new,) = [r for r in runs if r["dag_run_id"] not in before]
    assert new["run_type"] == "manual" and new["triggering_user_name"] == "admin" and new["conf"] == {}

    assert live.finished_run(dag_id, new["dag_run_id"])["state"] == "success"
    lines = [str(e.get("event")) for e in live.task_log(dag_id, new["dag_run_id"], task)
             if e.get("level") == "debug" and "verbose logging (Threads Manager)" in str(e.get("event"))]
    assert len(lines) == 2, lines
    assert f"panelflow.steps.monitoring.{task}(" in lines[0] and '"interval"' in lines[0]
    assert "returned after" in lines[1] and '"down_now"' in lines[1]

    # the page shows it: last run, its state and a bar in the chart; the logging badge
    refresh(page)
    last = row(page, dag_id).locator("td.last-run").inner_text()
    assert "ago" in last and ("success" in last or "manual" not in last)   # a scheduled run may be newer by now
    bar = row(page, dag_id).locator(f"svg.chart rect[data-run-id='{new['dag_run_id']}']")
    assert bar.get_attribute("data-state") == "success"
    assert row(page, dag_id).locator(".badge.verbose").count() == 1
    assert row(page, dag_id).locator("input[data-action=logging]").is_checked()


def test_disable_pauses_a_run_waits_in_the_queue_and_enable_unpauses(live, page):
    dag_id = "domain_verification"
    assert live.dag(dag_id)["is_paused"] is False
    row(page, dag_id).locator("button[data-action=disable]").click()
    live.wait_for("the pause", lambda: live.dag(dag_id)["is_paused"])
    row(page, dag_id).locator("button[data-action=enable]").wait_for()
    assert row(page, dag_id).get_attribute("data-status") == "paused"
    assert "paused" in row(page, dag_id).locator("td.next-run").inner_text()

    # Run now on a paused thread: the run waits "In Queue" (JeraSoft's column) until it is enabled
    row(page, dag_id).locator("button[data-action=run]").click()
    dialog = frame(page).locator("#run-dialog")
    dialog.locator(".paused-warning").wait_for()
    dialog.locator("button[data-confirm=run]").click()
    dialog.wait_for(state="hidden")
    queued = [r for r in live.api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?state=queued")["dag_runs"]]
    assert len(queued) == 1 and queued[0]["run_type"] == "manual"
    assert re.match(r"1 run queued \d\d:\d\d:\d\d", row(page, dag_id).locator("td.queue").inner_text())

    row(page, dag_id).locator("button[data-action=enable]").click()
    live.wait_for("the unpause", lambda: not live.dag(dag_id)["is_paused"])
    row(page, dag_id).locator("button[data-action=disable]").wait_for()
    assert row(page, dag_id).get_attribute("data-status") == "enabled"


def test_an_interval_override_changes_the_next_run_after_a_parse(live, page):
    dag_id = "domain_verification"  # catalog: every 10 min, aligned at :08
    before = live.dag(dag_id)
    assert before["timetable_summary"] == "8-59/10 * * * *"

    def open_dialog():
        row(page, dag_id).locator("button[data-action=interval]").click()
        dialog = frame(page).locator("#interval-dialog")
        dialog.wait_for()
        return dialog

    dialog = open_dialog()
    assert "every 10 min, aligned at :08" in dialog.locator(".catalog-schedule").inner_text()
    dialog.locator("input[name=every]").fill("20")
    dialog.locator("input[name=align_to]").fill("5")
    dialog.locator("button[data-confirm=save]").click()
    dialog.wait_for(state="hidden")
    assert live.overrides()[dag_id]["schedule"] == {"kind": "periodic", "every": 20, "align_to": 5,
                                                    "data_interval": False}
    assert live.overrides()[dag_id]["updated_by"] == "admin"
    logged = live.api.call("GET", "/api/v2/eventLogs?event=threads_manager_set_interval")["event_logs"]
    assert [(e["dag_id"], e["owner"]) for e in logged] == [(dag_id, "admin")]  # Airflow's audit log
    # the dag-processor re-parses the file (the page queued it) and the scheduler's next run moves
    after = live.wait_for("the re-parse with the override",
                          lambda: d if (d := live.dag(dag_id))["timetable_summary"] == "5-59/20 * * * *" else None)
    minute = int(after["next_dagrun_run_after"][14:16])
    assert minute in (5, 25, 45), after["next_dagrun_run_after"]
    refresh(page)
    schedule = row(page, dag_id).locator("td.schedule")
    assert schedule.inner_text().startswith("every 20 min, aligned at :05")
    assert "catalog: every 10 min, aligned at :08" in schedule.inner_text()
    assert schedule.locator(".badge.override").count() == 1 and schedule.locator(".badge.pending").count() == 0
    next_run = row(page, dag_id).locator("td.next-run").inner_text()
    assert re.search(r":(05|25|45):00$", next_run), next_run  # the scheduler's new next run, in the catalog's zone

    # a bad value is refused with the catalog's reason and changes nothing
    dialog = open_dialog()
    dialog.locator("input[name=every]").fill("90")
    dialog.locator("button[data-confirm=save]").click()
    error = dialog.locator(".error")
    error.filter(has_text="less than or equal to 60").wait_for()
    assert error.inner_text() == ("422: thread DomainVerification, field schedule.every: "
                                  "Input should be less than or equal to 60")
    assert live.overrides()[dag_id]["schedule"]["every"] == 20
    dialog.locator("button[value=cancel]").click()
    dialog.wait_for(state="hidden")


def test_screenshot_then_back_to_the_catalog(live, page, tmp_path):
    """The page as the tests left it (an override, Enable Logging on, runs in the charts), then undone."""
    frame(page).locator("#filter-status").select_option("enabled")
    page.set_viewport_size({"width": 1600, "height": 1400})
    refresh(page)
    shot = tmp_path / "threads-manager.png"
    page.screenshot(path=str(shot))
    page.set_viewport_size({"width": 1600, "height": 1000})
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    if os.environ.get("PANELFLOW_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / "threads-manager.png")
    frame(page).locator("#filter-status").select_option("")

    row(page, "monitoring_work").locator("input[data-action=logging]").uncheck()
    live.wait_for("logging off", lambda: "monitoring_work" not in live.overrides())

    dag_id = "domain_verification"
    row(page, dag_id).locator("button[data-action=interval]").click()
    dialog = frame(page).locator("#interval-dialog")
    dialog.locator("button[data-confirm=reset]").click()
    dialog.wait_for(state="hidden")
    assert live.overrides() == {}
    live.wait_for("the catalog schedule again", lambda: live.dag(dag_id)["timetable_summary"] == "8-59/10 * * * *")


def test_the_read_only_view_has_no_actions(live, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies([{"name": "_token", "value": live.viewer_token, "url": live.base}])
    page = context.new_page()
    page.goto(live.base + PAGE + "/")
    page.locator("tr[data-dag-id]").first.wait_for()
    assert page.locator("tr[data-dag-id]").count() == 61
    assert page.locator("button[data-action]:enabled").count() == 0
    assert page.locator("input[data-action=logging]:enabled").count() == 0
    context.close()
