"""``make run``'s restart policy: a component that exits is started again, a crash loop stops all.

Home-made on purpose rather than supervisord: supervisord restarts a program that had reached
RUNNING at once and forever (its backoff and ``startretries`` only cover the first seconds of a
start), so "5 exits in 2 minutes stops the stack" would need an event-listener process of its
own; it does not stop a program's process group unless told, keeps its children alive when it is
killed itself, and would add a daemon, a generated config and a dependency to the lock. The
watchdog below covers what matters most here — nothing outlives ``make run``, even when it is
SIGKILLed, the task processes the scheduler's workers put in groups of their own included —
in 70 lines.

Policy: after an exit the component's process group is sent SIGTERM (what it left, e.g. the
scheduler's LocalExecutor workers and log server, would hold its ports), then started again
after 1 s, 2 s, 4 s … (at most 30 s; back to 1 s once it has stayed up a minute). The 5th exit
of one component within 2 minutes is a crash loop: ``CrashLoop`` is raised and ``make run``
stops everything, saying which component and why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

CRASH_LOOP_EXITS = 5
CRASH_LOOP_WINDOW = 120.0
FIRST_DELAY, MAX_DELAY, STABLE_AFTER = 1.0, 30.0, 60.0


class CrashLoop(RuntimeError):
    pass


def kill_leftovers(processes, grace: float = 10.0) -> None:
    """Wait up to ``grace`` seconds for ``processes`` (psutil) to end, then SIGKILL whichever has
    not: nothing a stop leaves behind may outlive it (make run, the test clusters, the benches)."""
    import psutil

    _, alive = psutil.wait_procs(list(processes), timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Child:
    name: str
    starter: Callable[[], subprocess.Popen]
    own_group: bool  # started with start_new_session: its group is the watchdog's to stop
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    exits: deque = field(default_factory=deque)
    consecutive: int = 0
    restarts: int = 0
    restart_at: float | None = None
    old_group: int | None = None


class Supervision:
    """The children and the watchdog; ``poll()`` (called about twice a second) does the rest."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.children: dict[str, Child] = {}
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG], stdin=subprocess.PIPE, text=True,
                                         start_new_session=True)

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.children.values())

    def _tell(self, line: str) -> None:
        try:
            self.watchdog.stdin.write(line + "\n")
            self.watchdog.stdin.flush()
        except (OSError, ValueError):  # the watchdog is stopping already
            pass

    def watch(self, proc: subprocess.Popen) -> None:
        """Hand a process group to the watchdog (a component, or a one-shot like the DB preparation)."""
        self._tell(str(proc.pid))

    def add(self, name: str, starter: Callable[[], subprocess.Popen], own_group: bool = True) -> Child:
        child = self.children[name] = Child(name, starter, own_group)
        self._start(child)
        return child

    def _start(self, child: Child) -> None:
        child.proc = child.starter()
        child.started_at = time.monotonic()
        if child.own_group:
            self.watch(child.proc)

    def poll(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is None and child.proc is not None and child.proc.poll() is not None:
                self._exited(child, now)
            elif child.restart_at is not None and now >= child.restart_at:
                self._restart(child)

    def _exited(self, child: Child, now: float) -> None:
        code = child.proc.returncode
        child.exits.append(now)
        while child.exits and now - child.exits[0] > CRASH_LOOP_WINDOW:
            child.exits.popleft()
        if len(child.exits) >= CRASH_LOOP_EXITS:
            raise CrashLoop(f"{child.name} crash loop: {len(child.exits)} exits within {CRASH_LOOP_WINDOW:.0f} s "
                            f"(last: {describe_exit(code)}); stopping everything")
        child.consecutive = 1 if now - child.started_at >= STABLE_AFTER else child.consecutive + 1
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (child.consecutive - 1))
        self.log(f"panelflow: {child.name} (pid {child.proc.pid}) exited with {describe_exit(code)}; "
                 f"restarting in {delay:.0f} s ({len(child.exits)} exits in the last {CRASH_LOOP_WINDOW:.0f} s)")
        child.restart_at = now + delay
        if child.own_group and child.proc.pid > 0:  # what the leader left behind would hold its ports and DB sessions
            child.old_group = child.proc.pid
            _signal_group(child.old_group, signal.SIGTERM)

    def _restart(self, child: Child) -> None:
        child.restart_at = None
        if child.old_group is not None:
            _signal_group(child.old_group, signal.SIGKILL)
            self._tell(f"-{child.old_group}")  # a stopped group's id may be reused by someone else's
            child.old_group = None
        child.started_at = time.monotonic()  # a start that fails is not "up for a minute"
        try:
            self._start(child)
        except Exception as exc:  # e.g. PostgreSQL refusing while its old backends still exit
            self.log(f"panelflow: {child.name} failed to start again: {exc}")
            child.proc = _Failed()
            return
        child.restarts += 1
        self.log(f"panelflow: {child.name} restarted (pid {child.proc.pid}; restarts: {child.name} "
                 f"{child.restarts}, all components {self.restarts})")

    def close_watchdog(self, reap: Callable[[], None]) -> None:
        """Close the watchdog's pipe — its signal to stop every group — and wait for it, reaping
        the children meanwhile so a stopped group leader does not linger as a zombie."""
        try:
            self.watchdog.stdin.close()
        except OSError:
            pass
        while self.watchdog.poll() is None:
            reap()
            for child in self.children.values():
                if child.proc is not None:
                    child.proc.poll()
            time.sleep(0.2)


class _Failed:
    """Stands for a start that raised: counts as an exit at the next poll."""

    pid = 0
    returncode = 1

    def poll(self) -> int:
        return 1

    def wait(self, timeout=None) -> int:
        return 1


def _signal_group(group: int, sig: int) -> None:
    if group <= 1:  # 0 would be our own group
        return
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


# Outlives the supervisor in a session of its own. The supervisor writes each component's
# process group to its stdin ("-<group>" forgets one that was stopped and restarted); when that
# pipe closes — a stop, or the supervisor killed outright — it stops those groups in stages:
# SIGTERM, SIGTERM again (the scheduler's "signal again if you don't want to wait" for its
# LocalExecutor workers), then SIGKILL what is left.
WATCHDOG = """
import os, signal, sys, time
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line.startswith("-"):
        groups.discard(int(line[1:]))
    elif line:
        groups.add(int(line))
def strays():
    # descendants that left the groups: a task process the LocalExecutor's supervisor put in a
    # group of its own (setpgid) is no group's member and is orphaned when its supervisor goes
    parent, group = {}, {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return set()
    for d in names:
        if d.isdigit():
            try:
                with open("/proc/" + d + "/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent[int(d)], group[int(d)] = int(fields[1]), int(fields[2])
            except (OSError, IndexError, ValueError):
                pass
    found = {p for p, g in group.items() if g in groups}
    grew = True
    while grew:
        grew = False
        for p, pp in parent.items():
            if pp in found and p not in found:
                found.add(p)
                grew = True
    return {p for p in found if group.get(p) not in groups}
def alive(g, send=os.killpg):
    try:
        send(g, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
def kill(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass
left = set()
for sig, grace in ((signal.SIGTERM, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
    left = {p for p in left | strays() if alive(p, os.kill)}
    kill(left, sig)
    live = [g for g in groups if alive(g)]
    if not live:
        break
    for g in live:
        try:
            os.killpg(g, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(g) for g in live):
        left |= strays()
        if not any(alive(g, os.kill) for g in live):  # the leaders are gone: sweep what they left
            for g in live:
                try:
                    os.killpg(g, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        time.sleep(0.2)
time.sleep(0.5)
kill(left, signal.SIGKILL)
"""
