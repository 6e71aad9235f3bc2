"""``make run`` started by a test as a user starts it, and its REST API: shared by the make-run and
Threads Manager tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from panelflow.dev.postgres import free_port

from harness import ROOT


def launch(home: Path, ports: dict[str, int], **extra: str) -> subprocess.Popen:
    """``make run`` started, not waited for (its output is the caller's to read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PANELFLOW"))}
    env.update(extra)
    env.update(PANELFLOW_HOME=str(home), PANELFLOW_API_PORT=str(ports["api"]), PANELFLOW_PG_PORT=str(ports["pg"]),
               PANELFLOW_SMTP_PORT=str(ports["smtp"]), PANELFLOW_GATEWAY_PORT=str(ports.setdefault("gateway", free_port())),
               PANELFLOW_REGISTRAR_PORT=str(ports.setdefault("registrar", free_port())),
               PANELFLOW_MICROSOFT_PORT=str(ports.setdefault("microsoft", free_port())),
               PANELFLOW_DATAVERSE_PORT=str(ports.setdefault("dataverse", free_port())),
               PANELFLOW_BLACKBERRY_PORT=str(ports.setdefault("blackberry", free_port())),
               PANELFLOW_INGRAM_PORT=str(ports.setdefault("ingram", free_port())),
               PYTHONPATH=str(ROOT / "plugins"),
               # free ports, so the suite can run beside a developer's make run
               PANELFLOW_WORKER_LOG_PORT=str(free_port()), PANELFLOW_TRIGGER_LOG_PORT=str(free_port()),
               PANELFLOW_SCHEDULER_HEALTH_PORT=str(free_port()))
    return subprocess.Popen([sys.executable, "-m", "panelflow.dev.local"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def start(home: Path, ports: dict[str, int], **extra: str) -> tuple[subprocess.Popen, list[str]]:
    """``make run`` up (its "panelflow is up" line seen); prints how long the start took."""
    proc = launch(home, ports, **extra)
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("make run exited early:\n" + "".join(lines[-40:]))
        lines.append(line)
        if line.startswith("panelflow: API healthy"):
            print(line.strip())  # the start-up figures (printed, not asserted: the CPU is shared)
        if line.startswith("panelflow is up"):
            return proc, lines
    proc.kill()
    raise AssertionError("make run did not come up in 300 s:\n" + "".join(lines[-40:]))


def stop(proc: subprocess.Popen) -> list[psutil.Process]:
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 5  # scheduler, dag-processor, triggerer, api-server, smtp sink (+ postgres, workers)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=90)
    assert proc.returncode == 0
    print(f"make run stopped in {time.monotonic() - started:.1f} s")
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], [p.info if hasattr(p, "info") else p for p in alive]
    return family


class Api:
    def __init__(self, port: int, password: str):
        self.base = f"http://127.0.0.1:{port}"
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password}, auth=False)["access_token"]

    def call(self, method: str, path: str, body=None, auth=True):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def run_now(self, dag_id: str) -> dict:
        """A manual run of a thread, enabled first: the stacks start with only the threads a test
        names unpaused (PANELFLOW_THREADS), and a paused thread's run would wait in the queue."""
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
