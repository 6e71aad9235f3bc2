"""The compose deployment's sign-in: the FAB auth manager, its roles, and the Threads Manager under it.

An API server on 127.0.0.1 runs with the auth manager ``docker-compose.yaml`` sets, on a metadata
DB of its own (empty), after the compose ``init`` service's own command (read from the file, run as
compose runs it: ``airflow db migrate`` with FAB's tables, the panel DB, the pools,
``python -m panelflow.auth_roles``) created the three users from ``PANELFLOW_<ROLE>_…`` variables.
Each user gets a token from FAB's ``POST /auth/token`` and is tried on what the Threads Manager
does — its page data, Interval, Enable Logging, and Airflow's own trigger (Run now), pause
(Enable/Disable), clear and backfill endpoints: Admin and Operator may change things, Viewer
only read (403), nobody signed in gets 401; Operator is not an admin (no connections, no editing
the overrides Variable behind the page's validation). ``make run``'s simple auth manager is
covered by test_threads_manager.py.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml

from harness import ROOT
from harness.airflow_cluster import STEP, AirflowCluster, write_catalog

DAG = "fab_probe_work"
TM = "/threads-manager"
USERS = {"admin": "pf-admin", "operator": "pf-operator", "viewer": "pf-viewer"}


def _compose_init() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["init"]


class Fab:
    def __init__(self, cluster: AirflowCluster, passwords: dict[str, str], init_env: dict[str, str]):
        self.cluster = cluster
        self.base = f"http://127.0.0.1:{cluster.api_port}"
        self.passwords = passwords
        self.init_env = init_env
        self.tokens = {role: self.token(USERS[role], passwords[role]) for role in USERS}

    def http(self, method: str, path: str, body=None, token: str | None = None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def token(self, username: str, password: str) -> str:
        status, body = self.http("POST", "/auth/token", {"username": username, "password": password})
        assert status == 201, (username, status, body)
        return body["access_token"]

    def as_(self, role: str, method: str, path: str, body=None):
        return self.http(method, path, body, token=self.tokens[role])

    def run_init_module(self, **changes: str | None) -> subprocess.CompletedProcess:
        env = {**self.init_env, **changes}
        return subprocess.run([sys.executable, "-m", "panelflow.auth_roles"], cwd=ROOT, capture_output=True, text=True,
                              timeout=180, env={k: v for k, v in env.items() if v is not None})

    def db(self):
        return psycopg.connect(self.cluster.postgres.uri(self.cluster.name), autocommit=True)


@pytest.fixture(scope="module")
def fab(postgres, migrated_panel_db):
    init = _compose_init()
    home = Path(tempfile.mkdtemp(prefix="panelflow-fab-"))
    catalog = write_catalog(home / "catalog", nodes={"master": "the control server"}, run_groups={}, threads=f"""
    - name: FabProbeWork
      description: A periodic thread the roles are tried on.
      domain: housekeeping
      schedule: {{kind: periodic, every: 15, align_to: 7}}
      run_groups: []
      nodes: [master]
      steps:
        - id: expire_sessions
          number: "1"
          seed: Update session data (expiry).
          run: {STEP}
    """)
    cluster = AirflowCluster(home, postgres, catalog, migrated_panel_db, name=f"airflow_fab_{secrets.token_hex(4)}",
                             env={"AIRFLOW__CORE__AUTH_MANAGER": init["environment"]["AIRFLOW__CORE__AUTH_MANAGER"]})
    passwords = {role: secrets.token_urlsafe(12) for role in USERS}
    accounts = {f"PANELFLOW_{role.upper()}_{field}": value for role in USERS
                for field, value in (("USERNAME", USERS[role]), ("PASSWORD", passwords[role]),
                                     ("EMAIL", f"{USERS[role]}@example.test"))}
    # compose's image has python and airflow on PATH: here they are the venv's
    init_env = {**cluster.env, **accounts,
                "PATH": os.pathsep.join((str(Path(sys.executable).parent), cluster.env.get("PATH", "")))}
    try:
        postgres.create_database(cluster.name)  # empty, as compose's postgres service starts: init migrates it
        out = subprocess.run(init["command"], shell=True, executable=shutil.which("bash"), cwd=ROOT, env=init_env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"compose init failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        out = subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], cwd=ROOT, env=cluster.env,
                             capture_output=True, text=True, timeout=300)  # no dag-processor: store the DAG now
        assert out.returncode == 0, out.stderr[-3000:]
        cluster.spawn("api-server", [sys.executable, "-m", "airflow", "api-server"])
        deadline = time.monotonic() + 180
        while True:
            cluster.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{cluster.api_port}/api/v2/monitor/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the API server did not answer in 180 s:\n{cluster.log('api-server')[-3000:]}")
                time.sleep(0.5)
        yield Fab(cluster, passwords, init_env)
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)


def _writes(fab: Fab) -> list[tuple[str, str, dict | None]]:
    """Every change the Threads Manager makes or calls, and Airflow's clear and backfill."""
    return [
        ("PUT", f"{TM}/api/threads/{DAG}/schedule", {"schedule": {"kind": "periodic", "every": 10, "align_to": 3}}),
        ("DELETE", f"{TM}/api/threads/{DAG}/schedule", None),
        ("PUT", f"{TM}/api/threads/{DAG}/logging", {"enabled": True}),
        ("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {}}),  # Run now
        ("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False}),  # Enable / Disable
        ("POST", f"/api/v2/dags/{DAG}/clearTaskInstances", {"dry_run": True, "only_failed": False}),
        ("POST", "/api/v2/backfills/dry_run", {"dag_id": DAG, "from_date": "2026-01-02T00:00:00Z",
                                               "to_date": "2026-01-02T01:00:00Z"}),
    ]


def _stored_overrides(fab: Fab) -> dict:
    with fab.db() as conn:
        row = conn.execute("SELECT val FROM variable WHERE key = 'panelflow_overrides'").fetchone()
    return json.loads(row[0]) if row else {}


def _runs(fab: Fab) -> int:
    with fab.db() as conn:
        return conn.execute("SELECT count(*) FROM dag_run WHERE dag_id = %s", (DAG,)).fetchone()[0]


@pytest.mark.parametrize("role", list(USERS))
def test_every_role_finds_the_page_in_airflows_navigation(fab, role):
    """The UI's navigation lists plugin pages from ``GET /api/v2/plugins``."""
    status, plugins = fab.as_(role, "GET", "/api/v2/plugins")
    assert status == 200, plugins
    views = [v for p in plugins["plugins"] for v in p["external_views"]]
    assert any(v["name"] == "Threads Manager" and v["destination"] == "nav" for v in views), views


def test_a_browser_signs_in_on_fabs_login_page_and_lands_on_the_page(fab):
    """The page's sign-in link leads to FAB's login form, whose redirect back carries the ``_token``
    cookie the page's checks accept (as they accept the simple auth manager's)."""
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with pytest.raises(urllib.error.HTTPError) as refused:
        browser.open(urllib.request.Request(fab.base + f"{TM}/", headers={"Accept": "text/html"}), timeout=60)
    assert refused.value.code == 401
    login = urllib.parse.urljoin(fab.base, re.search(r'href="([^"]+)"', refused.value.read().decode())[1])
    assert urllib.parse.urlsplit(login).path == "/auth/login/", login
    with browser.open(login, timeout=60) as r:
        form = r.read().decode()
    csrf = re.search(r'value="([^"]+)"', re.search(r'<input[^>]*name="csrf_token"[^>]*>', form)[0])[1]
    data = urllib.parse.urlencode({"username": USERS["operator"], "password": fab.passwords["operator"],
                                   "csrf_token": csrf}).encode()
    with browser.open(urllib.request.Request(login, data=data, headers={"Accept": "text/html"}), timeout=60) as r:
        landed, page = r.geturl(), r.read().decode()
    assert urllib.parse.urlsplit(landed).path == f"{TM}/" and f"signed in as <b>{USERS['operator']}</b>" in page
    assert "_token" in {c.name for c in jar}


def test_nobody_signed_in_gets_401_everywhere(fab):
    for method, path, body in [("GET", f"{TM}/api/threads", None), ("GET", f"{TM}/", None), *_writes(fab)]:
        status, answer = fab.http(method, path, body)
        assert status == 401, (method, path, status, answer)
    assert fab.http("POST", "/auth/token", {"username": USERS["viewer"], "password": "not-it"})[0] == 401


def test_viewer_reads_the_page_and_every_change_is_refused(fab):
    status, view = fab.as_("viewer", "GET", f"{TM}/api/threads")
    assert status == 200 and view["user"] == USERS["viewer"]
    row = next(r for r in view["threads"] if r["dag_id"] == DAG)
    assert (row["can_edit"], row["can_trigger"]) == (False, False)  # the page disables every action
    assert fab.as_("viewer", "GET", f"/api/v2/dags/{DAG}")[0] == 200
    before = (_runs(fab), _stored_overrides(fab).get(DAG))
    for method, path, body in _writes(fab):
        status, answer = fab.as_("viewer", method, path, body)
        assert status == 403, (method, path, status, answer)
    assert (_runs(fab), _stored_overrides(fab).get(DAG)) == before


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_operator_and_admin_run_the_threads(fab, role):
    user = USERS[role]
    status, view = fab.as_(role, "GET", f"{TM}/api/threads")
    assert status == 200
    row = next(r for r in view["threads"] if r["dag_id"] == DAG)
    assert (row["can_edit"], row["can_trigger"]) == (True, True)

    # Interval…: stored for the factory, by this user; then Reset to catalog
    status, answer = fab.as_(role, "PUT", f"{TM}/api/threads/{DAG}/schedule",
                             {"schedule": {"kind": "periodic", "every": 10, "align_to": 3}})
    assert status == 200, answer
    stored = _stored_overrides(fab)[DAG]
    assert stored["schedule"]["every"] == 10 and stored["updated_by"] == user
    assert fab.as_(role, "DELETE", f"{TM}/api/threads/{DAG}/schedule")[0] == 200
    assert _stored_overrides(fab).get(DAG, {}).get("schedule") is None  # an empty entry is dropped

    # Enable Logging on, then off
    assert fab.as_(role, "PUT", f"{TM}/api/threads/{DAG}/logging", {"enabled": True})[0] == 200
    assert _stored_overrides(fab)[DAG]["verbose_logging"] is True
    assert fab.as_(role, "PUT", f"{TM}/api/threads/{DAG}/logging", {"enabled": False})[0] == 200
    assert not _stored_overrides(fab).get(DAG, {}).get("verbose_logging")

    # Run now: a manual run exists
    runs = _runs(fab)
    status, run = fab.as_(role, "POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {}})
    assert status == 200, run
    assert run["run_type"] == "manual" and _runs(fab) == runs + 1

    # Disable, Enable
    for paused in (True, False):
        status, dag = fab.as_(role, "PATCH", f"/api/v2/dags/{DAG}", {"is_paused": paused})
        assert status == 200 and dag["is_paused"] is paused, dag

    # clear / retry task instances and backfills (dry runs: nothing to clear or run without a scheduler)
    status, cleared = fab.as_(role, "POST", f"/api/v2/dags/{DAG}/clearTaskInstances", {"dry_run": True})
    assert status == 200, cleared
    status, backfill = fab.as_(role, "POST", "/api/v2/backfills/dry_run",
                               {"dag_id": DAG, "from_date": "2026-01-02T00:00:00Z", "to_date": "2026-01-02T01:00:00Z"})
    assert status == 200 and backfill["total_entries"] >= 1, backfill


def test_operator_is_not_an_admin(fab):
    for method, path, body in [("GET", "/api/v2/connections", None),
                               ("PATCH", "/api/v2/variables/panelflow_overrides",
                                {"key": "panelflow_overrides", "value": "{}"}),
                               ("GET", "/api/v2/config", None)]:
        status, answer = fab.as_("operator", method, path, body)
        assert status == 403, (method, path, status, answer)
    assert fab.as_("admin", "GET", "/api/v2/connections")[0] == 200


def test_init_refuses_without_an_admin_password(fab):
    out = fab.run_init_module(PANELFLOW_ADMIN_PASSWORD=None)
    assert out.returncode != 0 and "PANELFLOW_ADMIN_PASSWORD" in out.stderr


def test_init_again_is_idempotent_and_follows_the_environment(fab):
    """A re-run (compose restarts init on every ``up``) changes nothing that is right, and puts
    back what is not: a rotated password, a user moved to another role, a permission added to
    Operator by hand."""
    from panelflow.auth_roles import operator_permissions

    def state():
        with fab.db() as conn:
            users = conn.execute("SELECT u.username, r.name FROM ab_user u JOIN ab_user_role ur ON ur.user_id = u.id "
                                 "JOIN ab_role r ON r.id = ur.role_id ORDER BY 1").fetchall()
            perms = conn.execute("SELECT a.name, v.name FROM ab_role r JOIN ab_permission_view_role pr ON pr.role_id = r.id "
                                 "JOIN ab_permission_view pv ON pv.id = pr.permission_view_id "
                                 "JOIN ab_permission a ON a.id = pv.permission_id JOIN ab_view_menu v ON v.id = pv.view_menu_id "
                                 "WHERE r.name = 'Operator'").fetchall()
        return users, set(perms)

    users, perms = state()
    assert users == sorted([(USERS["admin"], "Admin"), (USERS["operator"], "Operator"), (USERS["viewer"], "Viewer")])
    assert perms == set(operator_permissions())
    with fab.db() as conn:  # by hand: the operator made Admin, Operator given connections
        conn.execute("UPDATE ab_user_role SET role_id = (SELECT id FROM ab_role WHERE name = 'Admin') "
                     "WHERE user_id = (SELECT id FROM ab_user WHERE username = %s)", (USERS["operator"],))
        conn.execute("INSERT INTO ab_permission_view_role (id, permission_view_id, role_id) "
                     "SELECT nextval('ab_permission_view_role_id_seq'), pv.id, "
                     "(SELECT id FROM ab_role WHERE name = 'Operator') FROM ab_permission_view pv "
                     "JOIN ab_permission a ON a.id = pv.permission_id JOIN ab_view_menu v ON v.id = pv.view_menu_id "
                     "WHERE a.name = 'can_read' AND v.name = 'Connections'")
    rotated = secrets.token_urlsafe(12)
    out = fab.run_init_module(PANELFLOW_VIEWER_PASSWORD=rotated)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Viewer user {USERS['viewer']}: updated (password)" in out.stdout
    assert f"Admin user {USERS['admin']}: unchanged" in out.stdout
    assert state() == (users, perms)
    assert fab.http("POST", "/auth/token", {"username": USERS["viewer"], "password": fab.passwords["viewer"]})[0] == 401
    fab.passwords["viewer"] = rotated
    fab.tokens["viewer"] = fab.token(USERS["viewer"], rotated)
    assert fab.as_("viewer", "GET", f"{TM}/api/threads")[0] == 200
