"""The shape of every DAG the factory builds, as plain data: what the step-layer move must not change.

``python tests/harness/dag_shape.py > tests/snapshots/dags.json`` takes the snapshot; ``test_dag_shape.py``
compares the DAG folder against it. A step's ``run`` is kept by function name only: the move
changed the modules steps live in, not what they are.
"""

from __future__ import annotations

import json
import os
import sys

from harness import ROOT


def _timetable(dag) -> dict:
    from airflow.serialization.serialized_objects import encode_timetable

    return json.loads(json.dumps(encode_timetable(dag.timetable), default=str, sort_keys=True))


def _task(task) -> dict:
    mapped = task.__class__.__name__ == "MappedOperator"
    run = (task.partial_kwargs.get("run") if mapped else getattr(task, "run", None))
    return {
        "display_name": task.task_display_name,
        "operator": task.operator_name if hasattr(task, "operator_name") else type(task).__name__,
        "mapped": mapped,
        "upstream": sorted(task.upstream_task_ids),
        "pool": task.pool,
        "queue": task.queue,
        "priority_weight": task.priority_weight,
        "weight_rule": str(task.weight_rule),
        "trigger_rule": str(task.trigger_rule),
        "retries": task.retries,
        "execution_timeout": str(task.execution_timeout),
        "owner": task.owner,
        "is_setup": task.is_setup,
        "is_teardown": task.is_teardown,
        "run_function": run.rpartition(".")[2] if run else None,
    }


def dag_shapes(dags) -> dict:
    return {
        dag_id: {
            "display_name": dag.dag_display_name,
            "description": dag.description,
            "tags": sorted(dag.tags),
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "is_paused_upon_creation": dag.is_paused_upon_creation,
            "start_date": str(dag.start_date),
            "timetable": _timetable(dag),
            "tasks": {t.task_id: _task(t) for t in sorted(dag.tasks, key=lambda t: t.task_id)},
        }
        for dag_id, dag in sorted(dags.items())
    }


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "plugins"))
    os.environ.setdefault("PANELFLOW_CATALOG", str(ROOT / "include" / "catalog"))
    from panelflow.factory import build_dags

    print(json.dumps(dag_shapes(build_dags(overrides={})), indent=1, sort_keys=True))
