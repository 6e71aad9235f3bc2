"""What the catalog adds to a DAG parse, measured against Airflow's own cost in one process.

baseline: import Airflow's SDK and build one trivial DAG (what any DAG file pays).
ours:     then, cold, import panelflow, load + validate the catalog and build all live DAGs
          (what dags/threads.py adds on every dag-processor parse).

Prints both, the difference, per DAG, a warm rebuild for reference, and finally
``parse: … ratio=R target=T`` with R = (baseline + ours) / baseline and T the same ratio at the
issue's budget of +0.25 s. BENCH_SMALL=1 does the same measurement with fewer warm repeats.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW_HOME", "/tmp/panelflow-bench-airflow")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
BUDGET_S = 0.25
REPEATS = 3 if os.environ.get("BENCH_SMALL") == "1" else 15


def main() -> None:
    t0 = time.perf_counter()
    import pendulum
    from airflow.sdk import DAG
    from airflow.providers.standard.operators.empty import EmptyOperator

    with DAG("trivial", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
        EmptyOperator(task_id="noop")
    baseline = time.perf_counter() - t0

    t1 = time.perf_counter()
    from panelflow.catalog import load_catalog
    from panelflow.factory import build_dags

    dags = build_dags(load_catalog())
    ours = time.perf_counter() - t1
    n = len(dags)
    tasks = sum(len(d.tasks) for d in dags.values())

    warm = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        build_dags(load_catalog())
        warm.append(time.perf_counter() - t)

    # Projection for when every seed step is built: the same catalog with all 157 steps as tasks.
    cat = load_catalog()
    run = "panelflow.steps.sessions.expire_sessions"
    cat.threads = [t.model_copy(update={"steps": [s.model_copy(update={"run": run}) for s in t.steps]})
                   for t in cat.threads]
    t = time.perf_counter()
    full = build_dags(cat)
    full_s = time.perf_counter() - t
    full_tasks = sum(len(d.tasks) for d in full.values())

    print(f"baseline (import Airflow + 1 trivial DAG): {baseline:.3f} s")
    print(f"catalog + {n} DAGs ({tasks} tasks), cold:    {ours:.3f} s  ({1000 * ours / n:.2f} ms per DAG)")
    print(f"catalog + {n} DAGs, warm median of {REPEATS}:   {statistics.median(warm):.3f} s")
    print(f"all steps built ({full_tasks} tasks), warm:     {full_s:.3f} s  (projection)")
    print(f"difference (what the DAG file adds):        +{ours:.3f} s (budget +{BUDGET_S:.2f} s)")
    ratio = (baseline + ours) / baseline
    target = (baseline + BUDGET_S) / baseline
    print(f"parse: baseline={baseline:.3f}s ours=+{ours:.3f}s dags={n} per_dag={1000 * ours / n:.2f}ms "
          f"ratio={ratio:.3f} target={target:.3f}")


if __name__ == "__main__":
    main()
