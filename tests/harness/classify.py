"""What each test needs, as marks (added by tests/conftest.py at collection; no test file names them).

- ``live``: the test starts Airflow itself — a whole stack (``make run``, an :class:`AirflowCluster`,
  the FAB API server …) or a DAG run in-process (``dag.test()``) — or a system server the Makefile's
  ``system-deps`` installs (Samba, Dovecot, dnsmasq, redis, chromium, and the Kamailio, MariaDB,
  sshd, smbd and SIPp of the voice and hosting work). ``make test-fast`` runs ``-m "not live"``:
  PostgreSQL (one per test process), aiosmtpd and the in-process sandboxes only.
- ``airflow_stack``: a whole Airflow stack (CPU-heavy: ~4–8 processes at a time on 2 cores).
- ``samba``: the Samba AD DC. It binds the fixed LDAPS port 636, so one per machine: every
  such test gets ``xdist_group("samba")`` and runs on one pytest-xdist worker, which starts the DC
  once (``harness.samba_dc``).

Rules, checked per test:
1. its module holds (imports) a stack starter of the harness — ``AirflowCluster`` or
   ``local_cluster`` (harness.airflow_cluster), ``start``/``launch`` (harness.make_run), the page tests'
   ``page_stack`` (manager.test_threads_manager) → live, airflow_stack;
2. it uses the ``samba_dc``/``samba_ou`` fixtures → live, samba;
3. the source of the test or of a fixture it uses (its own module's, conftest's, a harness's) names
   a server binary of :data:`SERVER_BINARIES` → live; or calls ``dag.test(`` → live.

A test these rules miss still cannot start a server under ``make test-fast``: the guard
(:func:`forbid_servers`) fails it with a message pointing here.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess

import pytest

STACK_STARTERS = {("harness.airflow_cluster", "AirflowCluster"), ("harness.airflow_cluster", "local_cluster"),
                  ("harness.make_run", "start"), ("harness.make_run", "launch"),
                  ("manager.test_threads_manager", "page_stack")}
SAMBA_FIXTURES = {"samba_dc", "samba_ou"}
# system servers the tests start (Makefile SYSTEM_PACKAGES and the voice/hosting servers of TESTING.md)
SERVER_BINARIES = ("samba", "samba-tool", "dnsmasq", "dovecot", "redis-server", "chromium", "kamailio", "mariadbd",
                   "mysqld", "mariadb-install-db", "sshd", "smbd", "sipp")
_SERVER_WORDS = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(b) for b in SERVER_BINARIES) + r")(?![\w-])")
_IN_PROCESS_RUN = re.compile(r"\bdag\.test\(|\.test\(\s*logical_date")


_source_cache: dict[object, str] = {}


def _source(func) -> str:
    func = inspect.unwrap(func)
    if func not in _source_cache:
        try:
            _source_cache[func] = inspect.getsource(func)
        except (OSError, TypeError):
            _source_cache[func] = ""
    return _source_cache[func]


def _module_starts_stack(module) -> bool:
    cached = getattr(module, "__panelflow_stack__", None)
    if cached is None:
        cached = any((getattr(obj, "__module__", None), getattr(obj, "__name__", None)) in STACK_STARTERS
                     for obj in vars(module).values() if callable(obj))
        try:
            module.__panelflow_stack__ = cached
        except (AttributeError, TypeError):
            pass
    return cached


def classify(item) -> set[str]:
    """The marks of one collected test (a ``pytest.Function``)."""
    marks: set[str] = set()
    module = getattr(item, "module", None)
    if module is not None and _module_starts_stack(module):
        marks |= {"live", "airflow_stack"}
    names = set(getattr(item, "fixturenames", ()))
    if names & SAMBA_FIXTURES:
        marks |= {"live", "samba"}
    sources = [_source(item.obj)] if getattr(item, "obj", None) is not None else []
    info = getattr(item, "_fixtureinfo", None)
    for name in names:
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            func = getattr(fixturedef, "func", None)
            path = getattr(func, "__module__", "") or ""
            if func is not None and not path.startswith(("_pytest", "pytest")):
                sources.append(_source(func))
    text = "\n".join(sources)
    if _SERVER_WORDS.search(text) or _IN_PROCESS_RUN.search(text):
        marks.add("live")
    return marks


# how many whole Airflow stacks make test runs at once (measured on 2 cores: see the Makefile)
STACK_LANES = 2
# seconds each stack module took in make test (2 cores, 7 December 2026), to balance the lanes; a module
# not listed counts as 100 s. Refresh from make test's --durations when a lane runs long.
STACK_SECONDS = {"test_make_run": 720, "test_supervision": 255, "test_run_group_exclusion": 195,
                 "test_run_group_cost": 175, "test_deadline_alerts_stack": 155, "test_automation_status": 130,
                 "test_celery_routing": 105, "test_threads_manager": 60, "test_fab_roles": 35}
_KEY = pytest.StashKey[set]()


def apply(config, items) -> None:
    """Mark every item; under xdist, group the Samba tests, the stacks in lanes, long units first."""
    marked = [(item, classify(item)) for item in items]
    lanes = _stack_lanes([item for item, marks in marked if "airflow_stack" in marks])
    for item, marks in marked:
        for mark in sorted(marks):
            item.add_marker(getattr(pytest.mark, mark))
        group = None
        if "samba" in marks:
            group = "samba"
        elif "airflow_stack" in marks and lanes:
            group = lanes[item.module.__name__]
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            if getattr(config.option, "loadgroup", False):   # a worker of --dist loadgroup
                _group_node_id(item, group)
        item.stash[_KEY] = marks
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # every worker collects and sorts alike (a stable sort on the marks only); with
        # --no-loadscope-reorder the scheduler hands out units in this order: the stack lanes first
        # (the longest units), then the Samba group, then every other test
        order = {lane: n for n, lane in enumerate(sorted(set(lanes.values())))}

        def rank(it):
            if "airflow_stack" in it.stash[_KEY]:
                return 0, order.get(lanes.get(it.module.__name__), 0)
            return (1 if "samba" in it.stash[_KEY] else 2), 0

        items.sort(key=rank)


def _stack_lanes(stack_items) -> dict[str, str]:
    """Module → xdist group of the Airflow-stack tests: ``PANELFLOW_STACK_LANES`` groups (default
    :data:`STACK_LANES`), so at most that many stacks run at once however many workers there are.
    A module's tests stay in one lane; the modules are balanced by :data:`STACK_SECONDS` (longest
    first, each to the lane with the least so far). 0: no grouping (every stack test is a unit of
    its own: as many stacks at once as workers)."""
    count = int(os.environ.get("PANELFLOW_STACK_LANES", STACK_LANES))
    if count <= 0:
        return {}
    modules = sorted({item.module.__name__ for item in stack_items})
    weight = {name: STACK_SECONDS.get(name.rsplit(".", 1)[-1], 100) for name in modules}
    load = [0] * count
    lanes = {}
    for name in sorted(modules, key=lambda m: (-weight[m], m)):     # longest first, to the emptiest lane
        lane = load.index(min(load))
        lanes[name] = f"airflow_stack_{lane + 1}"
        load[lane] += weight[name]
    return lanes


def _group_node_id(item, group: str) -> None:
    """What xdist's ``--dist loadgroup`` does with an ``xdist_group`` mark — the group appended to the
    node id, which the scheduler reads — done here because pytest-xdist 3.8.0 writes ``item._nodeid``
    and pytest 9.2 no longer reads it (its node id is ``item._id``): the mark alone groups nothing.
    (Should xdist append it again, the scheduler still takes the group after the last ``@``.)"""
    ident = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(ident)
    else:
        item._nodeid = ident


# -- make test-fast's guard: no server starts when live tests are deselected ------------------------------

def _launched(args) -> str | None:
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args or ())
    if not argv:
        return None
    words = [os.fsdecode(a) for a in argv]
    if isinstance(args, (str, bytes)):
        words = words[0].split()
    base = os.path.basename(words[0])
    if base in SERVER_BINARIES:
        return base
    if base == "airflow" or "panelflow.dev.local" in words or (len(words) > 2 and words[1:3] == ["-m", "airflow"]):
        return "airflow " + " ".join(words[1:3])
    return None


@pytest.fixture
def forbid_servers(monkeypatch):
    """Fails a test that starts a system server or an Airflow component (used under make test-fast)."""
    original = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        what = _launched(args)
        if what is not None:
            pytest.fail(f"this test starts {what!r} under make test-fast (-m 'not live'): it is live — teach"
                        " tests/harness/classify.py to mark it", pytrace=False)
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
