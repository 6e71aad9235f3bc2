"""``make run`` survives a crash: each component SIGKILLed in turn comes back by itself, the API
is healthy again, a periodic thread's next scheduled run still succeeds, Ctrl-C then leaves no
process; and a component that cannot stay up (a crash loop) stops the whole stack with the reason.

One started stack serves every kill (a start is the expensive part); the crash loop needs no
Airflow at all: it stops the stack before the API is up.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from datetime import datetime, timezone

import psutil

from panelflow.dev.postgres import free_port

from harness.make_run import Api, launch, start, stop

# "restarted and the API healthy again": 7-13 s on a quiet 2-core machine (printed below; the
# issue asks for 30 s); the bound leaves room for a CPU shared with other test processes, such as
# the second Airflow stack make test runs beside this one (an API server start is CPU-bound)
RECOVERY = 90
KILLED = ["scheduler", "dag-processor", "triggerer", "api-server", "smtp-sink", "payment-gateway", "registrar",
          "microsoft", "dataverse", "blackberry-uem", "ingram", "postgres"]


def component(proc, lines: list[str], name: str) -> psutil.Process:
    """The running process of one component, by the pid make run last printed for it (the API
    server renames its process, so its command line does not say what it is)."""
    if name == "postgres":
        return next(c for c in psutil.Process(proc.pid).children() if c.name() == "postgres")
    pid = None
    for line in lines:
        if line.startswith("panelflow: started "):
            pid = dict(re.findall(r"([\w-]+) \((\d+)\)", line)).get(name, pid)
        elif line.startswith(f"panelflow: {name} restarted (pid "):
            pid = re.search(r"\(pid (\d+)", line)[1]
    child = psutil.Process(int(pid))
    assert child.ppid() == proc.pid
    return child


def healthy(port: int, since: datetime) -> bool:
    """The API answers and a scheduler heartbeat came after ``since`` (a heartbeat from before
    the kill would still count as healthy for up to 30 s)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as r:
            scheduler = json.load(r)["scheduler"]
        beat = scheduler["latest_scheduler_heartbeat"]
        return scheduler["status"] == "healthy" and beat is not None and datetime.fromisoformat(beat) > since
    except (OSError, ValueError, KeyError):
        return False


def follow(proc, lines: list[str]) -> threading.Thread:
    def read():
        try:
            for line in proc.stdout:
                lines.append(line)
        except ValueError:   # stop()'s communicate() read the rest and closed the stream under us
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_every_component_killed_comes_back_and_ctrl_c_leaves_nothing(tmp_path):
    home = tmp_path / "panelflow"
    ports = {"api": free_port(), "pg": free_port(), "smtp": free_port()}
    proc, lines = start(home, ports, PANELFLOW_THREADS="send_email_notifications_work")
    try:
        follow(proc, lines)
        password = json.loads((home / "secrets.json").read_text())["admin_password"]
        for name in KILLED:
            victim = component(proc, lines, name)
            restarted = sum(f"{name} restarted" in line for line in lines)
            victim.kill()
            killed, killed_at = time.monotonic(), datetime.now(timezone.utc)
            while time.monotonic() - killed < RECOVERY:
                if sum(f"{name} restarted" in line for line in lines) > restarted and healthy(ports["api"], killed_at):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"{name} not back within {RECOVERY} s:\n" + "".join(lines[-30:]))
            print(f"{name}: SIGKILL → restarted and API healthy in {time.monotonic() - killed:.1f} s")
            assert component(proc, lines, name).pid != victim.pid
            exit_line = next(line for line in reversed(lines) if line.startswith(f"panelflow: {name} (pid {victim.pid})"))
            assert "exited with signal SIGKILL" in exit_line
        assert proc.poll() is None
        after_kills = datetime.now(timezone.utc)

        # the metadata DB, every component and the panel DB were each killed once: a periodic
        # thread (every minute) still has its next scheduled run created and succeeding
        api = Api(ports["api"], password)
        deadline = time.monotonic() + 180
        scheduled = []
        while time.monotonic() < deadline and not scheduled:
            runs = api.call("GET", "/api/v2/dags/send_email_notifications_work/dagRuns"
                                   "?run_type=scheduled&order_by=-run_after&limit=5")["dag_runs"]
            scheduled = [r for r in runs if datetime.fromisoformat(r["run_after"]) > after_kills
                         and r["state"] == "success"]
            time.sleep(3)
        assert scheduled, runs
        # every kill counted; PostgreSQL's may have taken Airflow components down with it (they
        # exit on a lost metadata DB and come back through the same restart)
        restarts = [line for line in lines if "restarted (pid" in line]
        assert {n for n in KILLED if any(f"panelflow: {n} restarted" in line for line in restarts)} == set(KILLED)
        assert f"all components {len(restarts)})" in restarts[-1]
    finally:
        stop(proc)  # SIGINT: exits 0 and nothing of the stack is left (psutil)


def test_a_crash_loop_stops_the_stack_with_the_reason(tmp_path):
    """The SMTP sink's port is taken, so the sink exits at every start: its 5th exit within
    2 minutes stops everything, and the reason is printed."""
    home = tmp_path / "panelflow"
    ports = {"api": free_port(), "pg": free_port(), "smtp": free_port()}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["smtp"]))
        taken.listen()
        proc = launch(home, ports)
        lines: list[str] = []
        reader = follow(proc, lines)
        family: set[psutil.Process] = set()
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                family.update(psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)
        assert proc.wait(60) == 1, "".join(lines[-30:])
    reader.join(10)
    out = "".join(lines)
    assert "panelflow: smtp-sink crash loop: 5 exits within 120 s (last: exit code 1); stopping everything" in out
    # the rest of the stack may well have come up meanwhile (1 + 2 + 4 + 8 s of back-off): the
    # crash loop stops it all the same
    assert out.count("panelflow: smtp-sink restarted") == 4
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert alive == []
