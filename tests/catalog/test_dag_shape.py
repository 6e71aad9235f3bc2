"""The 61 DAGs are what they were before the step layer moved (tests/snapshots/dags.json).

Retaken since, on purpose: the run-group release stopped being a task (a DAG callback now), so the
36 `run_group_release` tasks left the snapshot and the guard lost its execution timeout; then the
voice, hosting, order-to-invoice and collaboration steps were built (131 → 210 tasks: every
seed step).

Task ids, display names, dependencies, pools, queues, priority weights, timetables, retries,
owners and the step function each task runs are compared field by field; a difference names the
DAG, the task and the field. A deliberate change to the DAGs retakes the snapshot:
``python tests/harness/dag_shape.py > tests/snapshots/dags.json``, reviewed in the diff.
"""

from __future__ import annotations

import json

from harness import ROOT
from harness.dag_shape import dag_shapes

SNAPSHOT = ROOT / "tests" / "snapshots" / "dags.json"


def _differences(before, now, path=""):
    if isinstance(before, dict) and isinstance(now, dict):
        for key in sorted(set(before) | set(now)):
            where = f"{path}.{key}" if path else key
            if key not in now:
                yield f"{where}: gone"
            elif key not in before:
                yield f"{where}: new"
            else:
                yield from _differences(before[key], now[key], where)
    elif before != now:
        yield f"{path}: {before!r} → {now!r}"


def test_dags_unchanged_by_the_move():
    from panelflow.factory import build_dags

    now = json.loads(json.dumps(dag_shapes(build_dags(overrides={})), sort_keys=True))
    before = json.loads(SNAPSHOT.read_text())
    assert len(before) == 61 and sum(len(d["tasks"]) for d in before.values()) == 210
    assert list(_differences(before, now)) == []
