"""A whole Airflow stack started by a benchmark, and how to measure it: bench/steady_state.py.

``PanelflowStack`` is ``make run`` (``python -m panelflow.dev.local``) on free ports and a
PANELFLOW_HOME of its own; ``BareStack`` is plain Airflow 3.3 — the same components, the same
executor and ``airflow.cfg`` knobs, an embedded PostgreSQL of its own for the metadata DB — with a
DAG folder the benchmark writes and an empty plugins folder. ``TreeMeter`` reads the CPU time and
PSS of every process under a stack's root processes. Each stack stops what it started, by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that would point a stack at another set-up."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PANELFLOW", "PYTHONPATH"))}


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


# -- REST ------------------------------------------------------------------------------------------

class Api:
    """``/api/v2`` with the admin's token (renewed when it expires)."""

    def __init__(self, port: int, password: str):
        self.base = f"http://127.0.0.1:{port}"
        self.password = password
        self._login()

    def _login(self) -> None:
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": self.password},
                               auth=False)["access_token"]

    def call(self, method: str, path: str, body=None, auth: bool = True, retry: bool = True):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                data = r.read()
                return json.loads(data) if data else None
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and auth and retry:
                self._login()
                return self.call(method, path, body, auth, retry=False)
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None

    def pages(self, path: str, key: str, **params) -> list[dict]:
        out, offset = [], 0
        while True:
            query = urllib.parse.urlencode({**params, "limit": 100, "offset": offset}, doseq=True)
            page = self.call("GET", f"{path}?{query}")
            out += page[key]
            offset += 100
            if offset >= page["total_entries"] or not page[key]:
                return out

    def dags(self) -> list[dict]:
        return self.pages("/api/v2/dags", "dags")

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def runs(self, **params) -> list[dict]:
        return self.pages("/api/v2/dags/~/dagRuns", "dag_runs", **params)

    def task_instances(self, **params) -> list[dict]:
        return self.pages("/api/v2/dags/~/dagRuns/~/taskInstances", "task_instances", **params)

    def trigger(self, dag_id: str) -> str:
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {}})["dag_run_id"]


def wait_health(port: int, timeout: float, alive=lambda: None) -> None:
    url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                health = json.load(r)
            if all(health.get(k, {}).get("status") == "healthy" for k in ("scheduler", "triggerer", "dag_processor")):
                return
        except (OSError, ValueError):
            pass
        time.sleep(1)
    raise RuntimeError(f"the stack on port {port} did not become healthy in {timeout:.0f} s")


# -- measuring -------------------------------------------------------------------------------------

def _tree(roots: list[int]) -> dict[int, psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                procs[p.pid] = p
        except psutil.NoSuchProcess:
            pass
    return procs


class TreeMeter:
    """CPU seconds and PSS of every process under ``roots`` (pids).

    The tree's cumulative CPU is, over the processes alive now, user + system + the user + system of
    their children already reaped (``children_user``/``children_system``): a task process that
    ended inside the window is counted through its parent, once; a window's CPU is the difference
    of two readings. PSS is summed over the live tree every ``every`` seconds by a thread.
    """

    def __init__(self, roots: list[int], every: float = 3.0):
        self.roots = roots
        self.every = every
        self.pss: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cpu(self) -> float:
        total = 0.0
        for p in _tree(self.roots).values():
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return total

    def pss_now(self) -> float:
        total = 0
        for p in _tree(self.roots).values():
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass
        return total / 2**20

    def start_sampling(self) -> None:
        def loop():
            while not self._stop.wait(self.every):
                self.pss.append(self.pss_now())

        self.pss.append(self.pss_now())
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def _stop_tree(roots: list[subprocess.Popen], first=signal.SIGTERM, grace: float = 60) -> None:
    """Signal each root's process group, wait, then SIGKILL whatever is left of their trees."""
    family = list(_tree([p.pid for p in roots]).values())
    for p in roots:
        if p.poll() is None:
            try:
                os.killpg(p.pid, first) if first != signal.SIGINT else p.send_signal(first)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in roots):
        time.sleep(0.3)
    for p in roots:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # a second one: the scheduler's LocalExecutor workers
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p.poll() is None for p in roots):
        time.sleep(0.3)
    family += list(_tree([p.pid for p in roots]).values())
    if str(ROOT / "plugins") not in sys.path:
        sys.path.insert(0, str(ROOT / "plugins"))
    from panelflow.dev.supervise import kill_leftovers  # make run's own last sweep

    kill_leftovers(family)
    for p in roots:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


# -- the stacks ------------------------------------------------------------------------------------

class PanelflowStack:
    """``make run`` as a user starts it, with its state in a temporary PANELFLOW_HOME."""

    name = "panelflow"

    def __init__(self, home: Path):
        self.home = home
        self.ports = {k: free_port() for k in ("API", "PG", "SMTP", "GATEWAY", "REGISTRAR", "MICROSOFT",
                                                "WORKER_LOG", "TRIGGER_LOG")}
        self.proc: subprocess.Popen | None = None
        self.api: Api | None = None

    def roots(self) -> list[int]:
        return [self.proc.pid]

    def start(self, timeout: float = 600) -> "PanelflowStack":
        env = _clean_env()
        env.update({f"PANELFLOW_{k}_PORT": str(v) for k, v in self.ports.items()},
                   PANELFLOW_HOME=str(self.home), PYTHONPATH=str(ROOT / "plugins"))
        self.log = self.home / "make-run.log"
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([PY, "-m", "panelflow.dev.local"], cwd=ROOT, env=env,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text(errors="replace")
            match = re.search(r"panelflow is up: \S+\s+\(login: admin / (\S+)\)", text)
            if match:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"make run exited with {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"make run did not come up in {timeout:.0f} s:\n{text[-3000:]}")
            time.sleep(1)
        self.api = Api(self.ports["API"], match.group(1))
        return self

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"make run exited with {self.proc.returncode}; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_tree([self.proc], first=signal.SIGINT, grace=120)  # make run's own staged stop
            self.proc = None


BARE_DAG_FILE = '''"""Bare Airflow 3.3 DAGs for bench/steady_state.py: one per panelflow DAG, same timetable, the
same tasks and dependencies, every task a no-op @task. Generated; no panelflow import."""

import datetime

from airflow.sdk import (DAG, CronDataIntervalTimetable, CronTriggerTimetable, DeltaDataIntervalTimetable,
                         DeltaTriggerTimetable, MultipleCronTriggerTimetable, task)

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


@task
def noop(i=None):
    return None


def build(dag_id, schedule, graph):
    with DAG(dag_id, schedule=schedule, start_date=START, catchup=False, max_active_runs=1) as dag:
        made = {}
        for task_id, (upstream, items) in graph.items():
            op = noop.override(task_id=task_id)
            made[task_id] = op.expand(i=list(range(items))) if items else op()
        for task_id, (upstream, items) in graph.items():
            for u in upstream:
                made[u] >> made[task_id]
    return dag


'''


class BareStack:
    """Scheduler, dag-processor, triggerer and API server of plain Airflow 3.3 (LocalExecutor,
    ``airflow.cfg.template`` rendered with its dags and plugins folders pointing at this stack's own
    folders), an EmbeddedPostgres for the metadata DB."""

    name = "bare"
    COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")

    def __init__(self, home: Path, dags: dict[str, dict]):
        self.home = home
        self.dags = dags
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.pg = None
        self.api: Api | None = None

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs.values()] + ([self.pg.proc.pid] if self.pg and self.pg.proc else [])

    def _dag_file(self) -> str:
        lines = [BARE_DAG_FILE]
        for dag_id, spec in self.dags.items():
            graph = {t: (sorted(s["upstream"]), s["items"]) for t, s in spec["tasks"].items()} or {"noop": ([], 0)}
            lines.append(f"{dag_id} = build({dag_id!r}, {spec['timetable']}, {graph!r})\n")
        return "".join(lines)

    def start(self, timeout: float = 300) -> "BareStack":
        sys.path.insert(0, str(ROOT / "plugins"))
        from panelflow.config import render  # the bench renders the same template; the stack never imports panelflow
        from panelflow.dev.postgres import EmbeddedPostgres

        import secrets
        import psycopg

        (self.home / "dags").mkdir(parents=True, exist_ok=True)
        (self.home / "plugins").mkdir(exist_ok=True)
        (self.home / "dags" / "bare_threads.py").write_text(self._dag_file())
        self.pg = EmbeddedPostgres(self.home / "pgdata").start()
        with psycopg.connect(self.pg.uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE airflow")
        airflow_home = self.home / "airflow"
        password = secrets.token_urlsafe(12)
        env = _clean_env()
        env.update(
            AIRFLOW_HOME=str(airflow_home),
            PANELFLOW_ROOT=str(self.home),  # dags_folder = <home>/dags, plugins_folder = <home>/plugins
            PANELFLOW_API_PORT=str(self.port),
            PANELFLOW_WORKER_LOG_PORT=str(free_port()),
            PANELFLOW_TRIGGER_LOG_PORT=str(free_port()),
            PANELFLOW_SCHEDULER_HEALTH_PORT=str(free_port()),
        )
        render(airflow_home, env)
        for k in ("PANELFLOW_ROOT", "PANELFLOW_API_PORT", "PANELFLOW_WORKER_LOG_PORT", "PANELFLOW_TRIGGER_LOG_PORT",
                  "PANELFLOW_SCHEDULER_HEALTH_PORT"):
            env.pop(k)
        env.update(
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.pg.uri("airflow").replace("postgresql://", "postgresql+psycopg://"),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        )
        (airflow_home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": password}))
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        subprocess.run([PY, "-m", "airflow", "db", "migrate"], env=env, cwd=self.home, check=True,
                       stdout=open(logs / "migrate.log", "ab"), stderr=subprocess.STDOUT)
        subprocess.run([PY, "-m", "airflow", "dags", "reserialize"], env=env, cwd=self.home, check=True,
                       stdout=open(logs / "reserialize.log", "ab"), stderr=subprocess.STDOUT)
        for c in self.COMPONENTS:
            self.procs[c] = subprocess.Popen([PY, "-m", "airflow", c], env=env, cwd=self.home,
                                             stdout=open(logs / f"{c}.log", "ab"), stderr=subprocess.STDOUT,
                                             start_new_session=True)
        wait_health(self.port, timeout, self.alive)
        self.api = Api(self.port, password)
        return self

    def alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"bare {name} exited with {p.returncode}; see {self.home / 'logs'}")

    def stop(self) -> None:
        _stop_tree(list(self.procs.values()), first=signal.SIGTERM, grace=30)
        self.procs.clear()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None


def temp_home(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
