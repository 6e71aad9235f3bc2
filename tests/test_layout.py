"""The house rules of plugins/panelflow, read from the source (``ast``), lazy imports included.

- no import circle;
- imports run one way: the step contract imports nothing of ours; the catalog imports no step,
  service or hook; hooks import no step and no service; services import no step; the Airflow
  wiring (factory, operators, schedules, run groups, …) imports no step module; nothing in the
  product imports ``panelflow.dev`` (make run's tooling) except ``dev`` itself;
- a backend package under ``steps/`` imports only its own modules (plus the step contract,
  services and hooks) — never another step package or a small-domain step module;
- no module over 800 lines (migrations aside).
"""

from __future__ import annotations

import pytest

from harness import ROOT
from harness.source import MODULES, PLUGINS, imports

MAX_LINES = 800


EDGES = {m: imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in EDGES[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in sorted(MODULES):
        if m not in index:
            visit(m)
    return found


def test_no_import_circle():
    assert _cycles() == []


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


WIRING = ("panelflow.factory", "panelflow.operators", "panelflow.schedules", "panelflow.alerts",
          "panelflow.overrides", "panelflow.triggers", "panelflow.queues", "panelflow.pools",
          "panelflow.run_groups", "panelflow.catalog", "panelflow.manager", "panelflow_manager_plugin")

# (who, what it may not import, why)
FORBIDDEN = [
    ("panelflow.step", ("panelflow",), "the step contract stands on its own"),
    ("panelflow.catalog", ("panelflow.steps", "panelflow.services", "panelflow.hooks"), "the catalog is plain data"),
    ("panelflow.hooks", ("panelflow.steps", "panelflow.services"), "a hook reaches a backend; it knows no step"),
    ("panelflow.services", ("panelflow.steps",), "services are shared by steps, not built on them"),
    *[(w, ("panelflow.steps",), "Airflow wiring resolves a step's run: path when the task runs") for w in WIRING],
]


def _allowed_self(who: str, target: str) -> bool:
    return who == "panelflow.step" and target == "panelflow.step"


@pytest.mark.parametrize("who,forbidden,why", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_imports_run_one_way(who, forbidden, why):
    wrong = sorted(f"{m} → {t}" for m, targets in EDGES.items() if _under(m, who)
                   for t in targets if _under(t, *forbidden) and not _allowed_self(m, t))
    assert wrong == [], why


def test_nothing_in_the_product_imports_make_runs_tooling():
    wrong = sorted(f"{m} → {t}" for m, targets in EDGES.items() if not _under(m, "panelflow.dev")
                   for t in targets if _under(t, "panelflow.dev"))
    assert wrong == []


def _backend_packages() -> list[str]:
    return sorted(f"panelflow.steps.{p.name}" for p in (PLUGINS / "panelflow" / "steps").iterdir()
                  if (p / "__init__.py").exists())


def test_a_backend_package_imports_no_other_step_module():
    packages = _backend_packages()
    assert {"panelflow.steps.exchange", "panelflow.steps.active_directory", "panelflow.steps.hyperv",
            "panelflow.steps.microsoft365"} <= set(packages)
    wrong = []
    for package in packages:
        for m, targets in EDGES.items():
            if _under(m, package):
                wrong += [f"{m} → {t}" for t in targets
                          if _under(t, "panelflow.steps") and not _under(t, package)]
    assert sorted(wrong) == []


def test_no_module_over_800_lines():
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values()
           if "migrations" not in p.parts and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_the_walk_sees_lazy_imports():
    """The operators resolve steps lazily and the guard imports its trigger lazily: both are edges."""
    assert "panelflow.run_groups.trigger" in EDGES["panelflow.run_groups.operators"]
    assert "panelflow.step" in EDGES["panelflow.operators"]
