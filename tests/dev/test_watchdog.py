"""make run's watchdog (panelflow.dev.supervise.WATCHDOG) on real processes: a component's group is
stopped, and so is a descendant that moved to a process group of its own — what the LocalExecutor's
task supervisor does with each task process (``setpgid``), which a ``killpg`` of the scheduler's group
misses and which outlived a SIGKILLed ``make run`` when a task had just started."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from panelflow.dev.supervise import Supervision

# a component: its own session (as make run starts them); its child leaves for a group of its own,
# ignores SIGTERM as a busy task may, then says its pid
COMPONENT = """
import os, signal, sys, time
if os.fork() == 0:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(os.getpid(), flush=True)   # once it is in its own group
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_watchdog_stops_a_components_group_and_a_descendant_in_a_group_of_its_own():
    component = subprocess.Popen([sys.executable, "-c", COMPONENT], stdout=subprocess.PIPE, text=True,
                                 start_new_session=True)
    stray = int(component.stdout.readline())
    try:
        assert psutil.Process(stray).ppid() == component.pid
        assert os.getpgid(stray) == stray != os.getpgid(component.pid)
        supervision = Supervision(log=lambda line: None)
        supervision.watch(component)
        started = time.monotonic()
        supervision.close_watchdog(reap=component.poll)     # what make run does when it stops (or is killed)
        assert component.poll() is not None and gone(stray)
        assert time.monotonic() - started < 60
    finally:
        for pid in (stray, component.pid):
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
