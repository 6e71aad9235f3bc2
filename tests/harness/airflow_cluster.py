"""A real Airflow 3 on loopback for the tests that need the scheduler, the triggerer and the
workers themselves (run-group exclusion, daemon pick-up, Celery queue routing).

``make run`` (tests/dev/test_make_run.py) brings the whole product up: demo data, sandboxes and all
61 DAGs, ~1 min a start. These tests need less and need it faster: the components are started
directly — the same ``airflow.cfg.template``, the same ``dags/threads.py`` and factory, the same
``python -m panelflow.pools`` — on a small catalog of the test's own, a metadata DB of their own
on the suite's embedded PostgreSQL, and the suite's migrated panel DB. Each component runs in
its own process group and is stopped by the fixture that started it (by pid), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from panelflow.dev.supervise import kill_leftovers

from harness import ROOT

TESTS = ROOT / "tests"
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
_TEMPLATE_DB = "airflow_cluster_template"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the test's Celery workers: each names itself, so a task
    instance's ``hostname`` says which worker ran it (both run on this one machine)."""
    return os.environ.get("PANELFLOW_TEST_WORKER_NAME") or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """The public REST API (``/api/v2``) as the UI uses it, with the admin's token."""

    def __init__(self, port: int, password: str):
        self.base = f"http://127.0.0.1:{port}"
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password},
                               auth=False)["access_token"]

    def call(self, method: str, path: str, body=None, auth: bool = True):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
                return json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"]

    def task_instances(self, dag_id: str, run_id: str = "~") -> list[dict]:
        run = urllib.parse.quote(run_id, safe="~")
        out, offset = [], 0
        while True:
            page = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances?limit=100&offset={offset}")
            out += page["task_instances"]
            offset += 100
            if offset >= page["total_entries"]:
                return out

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        run = urllib.parse.quote(run_id, safe="")
        value = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/xcomEntries/{key}")["value"]
        return json.loads(value) if isinstance(value, str) else value  # stored as JSON text

    def wait_runs(self, dag_id: str, run_ids: list[str], timeout: float) -> dict[str, str]:
        """Wait until every run has ended; their states (``timed out`` for one that did not end)."""
        deadline = time.monotonic() + timeout
        wanted = set(run_ids)
        while True:
            runs = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=200")["dag_runs"]
            states = {r["dag_run_id"]: r["state"] for r in runs if r["dag_run_id"] in wanted}
            if len(states) == len(wanted) and set(states.values()) <= {"success", "failed"}:
                return states
            if time.monotonic() > deadline:
                return {r: states.get(r) if states.get(r) in ("success", "failed") else "timed out" for r in run_ids}
            time.sleep(1)

    def wait_for(self, predicate, timeout: float, what: str, every: float = 0.3):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(every)


class AirflowCluster:
    """Airflow's components on 127.0.0.1 with a catalog of the test's own (``PANELFLOW_CATALOG``)."""

    def __init__(self, home: Path, postgres, catalog_dir: Path, panel_url: str, *, name: str,
                 executor: str = "LocalExecutor", parallelism: int = 4, env: dict[str, str] | None = None):
        self.home = home
        self.postgres = postgres
        self.name = name
        self.api_port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = home / "logs"
        dags = home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "dags" / "threads.py", dags / "threads.py")  # the product's DAG file, as is
        airflow_home = home / "airflow"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PANELFLOW"))}
        self.env.update(
            AIRFLOW_HOME=str(airflow_home),
            PYTHONPATH=os.pathsep.join((str(ROOT / "plugins"), str(TESTS))),
            PANELFLOW_EXECUTOR=executor,
            PANELFLOW_PARALLELISM=str(parallelism),
            PANELFLOW_API_PORT=str(self.api_port),
            PANELFLOW_BASE_URL=f"http://127.0.0.1:{self.api_port}",
            PANELFLOW_WORKER_LOG_PORT=str(free_port()),
            PANELFLOW_TRIGGER_LOG_PORT=str(free_port()),
            PANELFLOW_SCHEDULER_HEALTH_PORT=str(free_port()),
            PANELFLOW_CATALOG=str(catalog_dir),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres.uri(name).replace("postgresql://", "postgresql+psycopg://"),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
            AIRFLOW_CONN_PANEL_DB=panel_url,
            # fault tests: a task whose supervisor died is failed after 30 s, not 120 s
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
            AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
            # 2 cores shared by every component and the test: the API server may answer slowly
            AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT="30",
        )
        self.env.update(env or {})
        from panelflow.config import render

        render(airflow_home, self.env)
        (airflow_home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": self.password}))
        self.logs.mkdir(exist_ok=True)
        self.api: Api | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def _metadata_db(self) -> None:
        """A copy of a metadata DB migrated once per suite (``airflow db migrate`` costs ~10 s)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.postgres.uri(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_TEMPLATE_DB,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_TEMPLATE_DB)))
                template_env = dict(self.env, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.postgres.uri(_TEMPLATE_DB)
                                    .replace("postgresql://", "postgresql+psycopg://"))
                out = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=template_env, cwd=ROOT,
                                     capture_output=True, text=True, timeout=300)
                if out.returncode:
                    conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(_TEMPLATE_DB)))
                    raise RuntimeError(f"airflow db migrate failed:\n{out.stderr[-3000:]}")
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(self.name),
                                                                           sql.Identifier(_TEMPLATE_DB)))

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        from panelflow.dev.postgres import die_with_parent

        out = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(args, env={**self.env, **(env or {})}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        self.procs[name] = proc
        return proc

    def start(self, components=COMPONENTS, dag_ids: tuple[str, ...] = (), timeout: float = 120) -> "AirflowCluster":
        """The components, with the catalog's pools synced (``python -m panelflow.pools``) and —
        without a dag-processor — the DAGs stored (``airflow dags reserialize``) meanwhile; returns
        once the scheduler (and triggerer) are healthy and ``dag_ids`` are known to the API."""
        self._metadata_db()
        setup = {"pools": [sys.executable, "-m", "panelflow.pools"]}
        if "dag-processor" not in components:
            setup["reserialize"] = [sys.executable, "-m", "airflow", "dags", "reserialize"]
        setup_procs = self._setup = {name: self.spawn(name, args) for name, args in setup.items()}
        for c in components:
            self.spawn(c, [sys.executable, "-m", "airflow", c])
        for name in setup:
            del self.procs[name]  # they end by themselves; check_alive must not count that as a crash
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
        healthy = False
        while True:
            self.check_alive()
            for name, p in setup_procs.items():
                if p.poll() not in (None, 0):
                    raise AssertionError(f"{name} failed:\n{self.log(name)[-3000:]}")
            if not healthy:
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        health = json.load(r)
                    healthy = all(health.get(k, {}).get("status") == "healthy"
                                  for k in ("scheduler", "triggerer") if k in components)
                except OSError:
                    pass
            if healthy and all(p.poll() == 0 for p in setup_procs.values()):
                self.api = self.api or Api(self.api_port, self.password)
                known = {d["dag_id"] for d in self.api.call("GET", "/api/v2/dags?limit=200")["dags"]}
                if set(dag_ids) <= known:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"Airflow did not come up in {timeout} s; logs in {self.logs}")
            time.sleep(0.5)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def unpause(self, *dag_ids: str) -> None:
        for dag_id in dag_ids:
            self.api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def stop(self) -> None:
        """SIGTERM every component's process group (twice: the scheduler's LocalExecutor workers
        want a second one), then SIGKILL what is left — only the groups this cluster started."""
        import psutil

        self.procs.update({f"setup-{k}": p for k, p in getattr(self, "_setup", {}).items()})
        family = []
        for p in self.procs.values():
            try:
                family += psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for sig, grace in ((signal.SIGTERM, 6), (signal.SIGTERM, 2), (signal.SIGKILL, 5)):
            live = [p for p in self.procs.values() if p.poll() is None]
            if not live:
                break
            for p in live:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in live):
                time.sleep(0.2)
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)  # anything its leader left in the group
            except ProcessLookupError:
                pass
        kill_leftovers(family, grace=5)
        self.procs.clear()


def write_catalog(directory: Path, *, nodes: dict[str, str], run_groups: dict[str, int], threads: str) -> Path:
    """A small catalog in ``directory``: the given nodes and run groups, one domain, ``threads`` (YAML)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "settings": {"timezone": "UTC", "start_date": "2026-01-01",
                     "defaults": {"retries": 0, "retry_delay_minutes": 0, "timeout_minutes": 5, "priority": 5},
                     "group_actions": {"threads_run_simultaneously": 4}},
        "nodes": nodes,
        "run_groups": {g: {"slots": s, "description": f"test group {g}"} for g, s in run_groups.items()},
        "domains": {"housekeeping": {"owners": ["platform-team"], "alert_to": []}},
    }
    (directory / "settings.yaml").write_text(json.dumps(settings, indent=1))  # JSON is YAML
    (directory / "threads.yaml").write_text("threads:\n" + textwrap.indent(textwrap.dedent(threads), "  "))
    from panelflow.catalog import load_catalog

    load_catalog(directory)  # a broken test catalog fails here, not as a DAG import error later
    return directory


# -- the shared LocalExecutor cluster ---------------------------------------------------------------

STEP = "panelflow.steps.sessions.expire_sessions"


def _ring_thread(name: str, groups: list[str]) -> str:
    return f"""
    - name: {name}
      description: Test thread of the run-group ring ({', '.join(groups)}).
      domain: housekeeping
      schedule: {{kind: manual}}
      run_groups: [{', '.join(groups)}]
      nodes: [master]
      steps:
        - id: expire_sessions
          number: "1"
          seed: Update session data (expiry).
          run: {STEP}
    """


# Four threads in a ring: each intersects its two neighbours (RingA–RingB share ring_b, …,
# RingD–RingA share ring_a) and is disjoint from the one opposite, which it may run beside.
RING = {"RingAWork": ["ring_a", "ring_b"], "RingBWork": ["ring_b", "ring_c"],
        "RingCWork": ["ring_c", "ring_d"], "RingDWork": ["ring_d", "ring_a"]}
DAEMONS = 5  # idle daemons on one queue: more than the 4 worker slots, so holding slots would show


def _daemon_thread(i: int) -> str:
    groups = "[o365_sync]" if i == 1 else "[]"
    return f"""
    - name: QueueDaemon{i}Work
      description: A group-action processor waiting on the O365 queue (one of {DAEMONS}).
      domain: housekeeping
      schedule: {{kind: daemon, queue: group_actions.o365}}
      run_groups: {groups}
      nodes: [master]
      steps:
        - id: process_o365_group_actions
          number: "1"
          seed: Process O365/CSP group actions.
          run: panelflow.steps.microsoft365.jobs.process_o365_group_actions
          pool: group_actions
    """


@contextlib.contextmanager
def local_cluster(postgres, panel_url: str):
    """Scheduler, dag-processor, triggerer and API server (LocalExecutor, parallelism 4) with the
    ring threads and the queue daemons unpaused (the daemons idle, deferred, throughout).

    Module-scoped by its users and stopped with them: its daemons would otherwise work the
    O365 queue rows of the suite's later tests."""
    home = Path(tempfile.mkdtemp(prefix="panelflow-cluster-"))
    catalog = write_catalog(
        home / "catalog", nodes={"master": "the control server"},
        run_groups={"ring_a": 1, "ring_b": 1, "ring_c": 1, "ring_d": 1, "o365_sync": 3},
        threads="".join(_ring_thread(n, g) for n, g in RING.items())
        + "".join(_daemon_thread(i) for i in range(1, DAEMONS + 1)))
    cluster = AirflowCluster(home, postgres, catalog, panel_url, name=f"airflow_local_{secrets.token_hex(4)}",
                             env={"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5"})
    try:
        started = time.monotonic()
        cluster.start(dag_ids=(*(dag_id(n) for n in RING), *(f"queue_daemon{i}_work" for i in range(1, DAEMONS + 1))))
        cluster.started_in = time.monotonic() - started
        cluster.unpause(*(dag_id(n) for n in RING), *(f"queue_daemon{i}_work" for i in range(1, DAEMONS + 1)))
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("PANELFLOW_KEEP_TEST_CLUSTER"):  # to read the components' and tasks' logs
            print(f"cluster kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def dag_id(name: str) -> str:
    from panelflow.catalog.model import dag_id_for

    return dag_id_for(name)
