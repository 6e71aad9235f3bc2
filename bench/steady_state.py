"""The steady-state cost of the one-machine stack (``make run``) against a bare Airflow 3.3 stack
doing the same scheduling with no-op tasks.

ours:      ``python -m panelflow.dev.local`` exactly as ``make run`` starts it (embedded PostgreSQL
           with the metadata and panel DBs, demo data, scheduler, dag-processor, triggerer, API
           server with LocalExecutor and parallelism 4, the SMTP sink and the sandboxes), on free
           ports with a PANELFLOW_HOME of its own, every built thread unpaused (the catalog's own
           pause state: threads whose steps are all unbuilt stay paused).
baseline:  the same four Airflow components and executor, rendered from the same
           ``airflow.cfg.template`` but with a DAG folder and an empty plugins folder of their own
           (no panelflow on the path) and an EmbeddedPostgres for the metadata DB: one DAG per
           panelflow DAG (read from panelflow's DagBag) with the same timetable, the same tasks and
           dependencies (a mapped task expanded over 2 items, the demo's tenants), each task a no-op
           ``@task``, the same DAGs unpaused.

Each stack in turn (same process): start, wait for the first burst to pass (BENCH_WARMUP, 120 s,
then until at most 2 runs are queued or running, BENCH_SETTLE ≤ 240 s more), then a window of BENCH_WINDOW
seconds (600; BENCH_SMALL=1: 180) measuring: CPU seconds of the whole process tree (user + system,
reaped children included, psutil), the machine's CPU busy share, PSS of the tree every 3 s (average,
peak), the task instances that ended in the window (REST API), schedule lag of the scheduled runs
due in the window (``start_date`` − ``run_after``) and the end-to-end time of a one-step thread
with run groups (BENCH_GUARDED_DAG, default ``send_email_notifications_work``, scheduled every
minute: ``end_date`` − ``run_after``). Both stacks are stopped; nothing is left running.

Ends with ``steady_state: cpu_per_ti=…s bare_cpu_per_ti=…s lag_p95=…s guarded_run_p50=…s
pss_avg=…MB pss_peak=…MB cpu_busy=…% ratio=R target=1.3`` where R = CPU seconds per task instance
of ours / of the baseline. Also reported, not asserted: lag p95 ≤ 2 s, a one-step guarded run
≤ 4 s end to end, PSS ≤ 1.2 GB. Other load on the machine raises lag and run times (the ratio less).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import ROOT, PY, BareStack, PanelflowStack, TreeMeter, iso, parse_time, remove, temp_home  # noqa: E402

SMALL = os.environ.get("BENCH_SMALL") == "1"
WINDOW = float(os.environ.get("BENCH_WINDOW", 180 if SMALL else 600))
WARMUP = float(os.environ.get("BENCH_WARMUP", 120))
SETTLE = float(os.environ.get("BENCH_SETTLE", 240))  # then at most this long for the queue to drain
GUARDED = os.environ.get("BENCH_GUARDED_DAG", "send_email_notifications_work")
ONLY = os.environ.get("BENCH_ONLY")  # panelflow | bare: one stack, for developing this file
TARGET = 1.3
MAP_ITEMS = 2  # make run's Microsoft sandbox serves 2 Graph tenants: Office365SyncWork maps over them
RAN = {"success", "failed", "up_for_retry", "up_for_reschedule"}

_SPEC = """
import json
from airflow.sdk.definitions.mappedoperator import MappedOperator
from panelflow.factory import build_dags
out = {}
for dag_id, dag in build_dags().items():
    schedule = dag.timetable if not isinstance(getattr(dag, "schedule", None), (str, type(None))) else dag.schedule
    source = repr(schedule)
    if type(schedule).__name__ == "MultipleCronTriggerTimetable":  # its repr is not its constructor
        source = "MultipleCronTriggerTimetable(%%s, timezone=%%r)" %% (
            ", ".join(repr(t.expression) for t in schedule.timetables), str(schedule.timetables[0].timezone))
    out[dag_id] = {
        "timetable": source, "paused": bool(dag.is_paused_upon_creation),
        "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "items": %d if isinstance(t, MappedOperator) else 0}
                  for t in dag.tasks},
    }
print("SPEC" + json.dumps(out))
""" % MAP_ITEMS


def panelflow_dags() -> dict[str, dict]:
    """panelflow's DAGs as its DagBag builds them: timetable (as Python source), pause state, tasks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PANELFLOW"))}
    env.update(PYTHONPATH=str(ROOT / "plugins"), AIRFLOW_HOME=tempfile.mkdtemp(prefix="panelflow-bench-spec-"))
    out = subprocess.run([PY, "-c", _SPEC], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    remove(Path(env["AIRFLOW_HOME"]))
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("SPEC"))[4:])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def settle(stack, warmup: float) -> None:
    """The first burst: every DAG's latest due run is created at start; wait it out."""
    deadline = time.monotonic() + warmup
    while time.monotonic() < deadline:
        stack.alive()
        time.sleep(2)
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        busy = len(stack.api.runs(state=["queued", "running"]))
        if busy <= 2:
            return
        time.sleep(3)
    log(f"{stack.name}: still {busy} runs queued or running after the warm-up; measuring anyway")


def measure(stack, unpaused: list[str], window: float) -> dict:
    for dag_id in unpaused:  # the catalog's built threads start unpaused; make sure of it
        stack.api.unpause(dag_id)
    known = {d["dag_id"]: d for d in stack.api.dags()}
    missing = set(unpaused) - known.keys()
    if missing:
        raise RuntimeError(f"{stack.name}: DAGs not known to the API: {sorted(missing)}")
    live = sorted(d for d, v in known.items() if not v["is_paused"])
    log(f"{stack.name}: up, {len(live)} of {len(known)} DAGs unpaused; warming up {WARMUP:.0f} s")
    settle(stack, WARMUP)

    import psutil

    meter = TreeMeter(stack.roots())
    t0 = datetime.now(timezone.utc)
    cpu0, machine0 = meter.cpu(), psutil.cpu_times()
    meter.start_sampling()
    log(f"{stack.name}: measuring for {window:.0f} s")
    end = time.monotonic() + window
    while time.monotonic() < end:
        stack.alive()
        time.sleep(min(5, max(0.0, end - time.monotonic())))
    cpu1, machine1 = meter.cpu(), psutil.cpu_times()
    t1 = datetime.now(timezone.utc)
    meter.stop_sampling()

    # runs due in the window: wait (≤ 120 s) until each has started and the guarded thread's have ended
    deadline = time.monotonic() + 120
    while True:
        runs = [r for r in stack.api.runs(run_after_gte=iso(t0), run_after_lte=iso(t1)) if r["run_type"] == "scheduled"]
        pending = [r for r in runs if not r["start_date"] or (r["dag_id"] == GUARDED and not r["end_date"])]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    now = datetime.now(timezone.utc)
    lags, guarded = [], []
    for r in runs:
        due = parse_time(r["run_after"])
        started = parse_time(r["start_date"]) or now  # not started yet: at least this late
        lags.append((started - due).total_seconds())
        if r["dag_id"] == GUARDED and r["end_date"]:
            guarded.append((parse_time(r["end_date"]) - due).total_seconds())
    tis = [t for t in stack.api.task_instances(end_date_gte=iso(t0), end_date_lte=iso(t1))
           if t["start_date"] and t["state"] in RAN]

    def busy(t):
        idle = t.idle + getattr(t, "iowait", 0)
        return sum(t) - idle

    total = sum(machine1) - sum(machine0)
    return {
        "cpu": cpu1 - cpu0, "window": (t1 - t0).total_seconds(), "tis": len(tis),
        "states": Counter(t["state"] for t in tis), "per_dag": Counter(t["dag_id"] for t in tis),
        "runs": len(runs), "lags": lags, "guarded": guarded,
        "pss_avg": statistics.fmean(meter.pss), "pss_peak": max(meter.pss),
        "cpu_busy": 100 * (busy(machine1) - busy(machine0)) / total if total else float("nan"),
    }


def run(stack, unpaused, window) -> dict:
    started = time.monotonic()
    try:
        stack.start()
        log(f"{stack.name}: started in {time.monotonic() - started:.0f} s")
        return measure(stack, unpaused, window)
    finally:
        stack.stop()
        log(f"{stack.name}: stopped")


def report(name: str, m: dict) -> None:
    per_ti = m["cpu"] / m["tis"] if m["tis"] else float("nan")
    print(f"{name}: window {m['window']:.0f} s, {m['tis']} task instances ended ({dict(m['states'])}) over "
          f"{len(m['per_dag'])} DAGs, {m['runs']} scheduled runs due")
    print(f"  CPU {m['cpu']:.1f} s of the process tree = {per_ti:.3f} s per task instance; machine busy "
          f"{m['cpu_busy']:.0f}%")
    print(f"  PSS average {m['pss_avg']:.0f} MB, peak {m['pss_peak']:.0f} MB")
    print(f"  schedule lag p50 {pct(m['lags'], .5):.2f} s, p95 {pct(m['lags'], .95):.2f} s (n={len(m['lags'])})")
    print(f"  {GUARDED} run_after→end p50 {pct(m['guarded'], .5):.2f} s, p95 {pct(m['guarded'], .95):.2f} s "
          f"(n={len(m['guarded'])})")


def main() -> None:
    dags = panelflow_dags()
    unpaused = sorted(d for d, s in dags.items() if not s["paused"])
    if GUARDED not in unpaused:
        raise SystemExit(f"BENCH_GUARDED_DAG={GUARDED} is not an unpaused panelflow DAG")
    print(f"{len(dags)} panelflow DAGs, {len(unpaused)} unpaused (built); window {WINDOW:.0f} s, warm-up {WARMUP:.0f} s")
    results = {}
    for name, make in (("panelflow", lambda h: PanelflowStack(h)), ("bare", lambda h: BareStack(h, dags))):
        if ONLY and ONLY != name:
            continue
        home = temp_home(f"panelflow-bench-{name}-")
        try:
            results[name] = run(make(home), unpaused, WINDOW)
        finally:
            if os.environ.get("BENCH_KEEP"):
                print(f"{name} state kept in {home}")
            else:
                remove(home)
    for name, m in results.items():
        report(name, m)
    ours, bare = results.get("panelflow"), results.get("bare")
    per_ti = ours["cpu"] / ours["tis"] if ours and ours["tis"] else float("nan")
    bare_per_ti = bare["cpu"] / bare["tis"] if bare and bare["tis"] else float("nan")
    main_m = ours or bare
    print(f"steady_state: cpu_per_ti={per_ti:.3f}s bare_cpu_per_ti={bare_per_ti:.3f}s "
          f"lag_p95={pct(main_m['lags'], .95):.2f}s guarded_run_p50={pct(main_m['guarded'], .5):.2f}s "
          f"pss_avg={main_m['pss_avg']:.0f}MB pss_peak={main_m['pss_peak']:.0f}MB cpu_busy={main_m['cpu_busy']:.0f}% "
          f"ratio={per_ti / bare_per_ti:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
