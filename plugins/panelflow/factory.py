"""Catalog → one Airflow DAG per live thread.

Kept cheap on purpose: the dag-processor re-runs this on every parse, so it builds operators
from plain data and imports no step or backend module (a task resolves its ``run`` path when it
executes). Steps without ``run`` are not built yet; they are left out of the DAG and listed in
its docs, never replaced by a task that pretends to succeed.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from panelflow.alerts import ThreadFailureNotifier
from panelflow.catalog import Catalog
from panelflow.catalog.cache import load_catalog_cached
from panelflow.catalog.model import Thread
from panelflow.deadlines import deadline_alert
from panelflow.operators import StepOperator, WaitForPendingWorkOperator
from panelflow.overrides import ThreadOverride, applied
from panelflow.overrides import load as load_overrides
from panelflow.run_groups.operators import RenewRunGroupLease, guard_run, release_callbacks
from panelflow.schedules import describe, timetable_for

WAIT_TASK_ID = "wait_for_pending_work"
LIST_SUFFIX = "__items"


def build_dags(catalog: Catalog | None = None, overrides: dict[str, ThreadOverride] | None = None) -> dict[str, DAG]:
    # cached by content; step signatures are checked by make catalog-check and the tests, not here
    catalog = catalog or load_catalog_cached()
    # the Threads Manager's overrides: one Variable read per parse, a bad entry skipped with a warning
    overrides = load_overrides(catalog) if overrides is None else overrides
    config = _config_defaults()
    return {t.dag_id: build_dag(catalog, t, overrides.get(t.dag_id), config) for t in catalog.live_threads}


def _config_defaults() -> dict:
    """The three settings every DAG reads from Airflow's config when it is built, read once per
    parse and passed to each DAG (61 DAGs read them 183 times otherwise: ~9 ms of every parse)."""
    from airflow.sdk.configuration import conf

    return {
        "max_active_tasks": conf.getint("core", "max_active_tasks_per_dag"),
        "max_consecutive_failed_dag_runs": conf.getint("core", "max_consecutive_failed_dag_runs_per_dag"),
        "disable_bundle_versioning": conf.getboolean("dag_processor", "disable_bundle_versioning"),
    }


def _doc_md(catalog: Catalog, thread: Thread, runnable: set[str], catalog_schedule=None) -> str:
    """The thread's page in the UI: what it is for, how it is scheduled, which steps are built."""
    tz = catalog.settings.timezone
    replaces = [t.name for t in catalog.threads if t.legacy and t.legacy.superseded_by == thread.name]
    lines = [
        f"# {thread.name}",
        thread.description,
        "",
        f"- **schedule**: {describe(thread.schedule, tz)}"
        + (f" (Threads Manager override; catalog: {describe(catalog_schedule, tz)})" if catalog_schedule else ""),
        f"- **run groups**: {', '.join(thread.run_groups) or '—'}",
        f"- **allowed nodes**: {', '.join(thread.nodes)}",
        f"- **priority**: {catalog.priority(thread)} (0 highest … 10 lowest)",
        f"- **steps built**: {len(runnable)} of {len(thread.steps)}",
    ]
    if replaces:
        lines.append(f"- **replaces legacy threads**: {', '.join(replaces)}")

    def section(title: str, steps) -> None:
        if steps:
            lines.extend(["", f"**{title}**", ""])
            lines.extend(f"- **{s.number}** {s.seed} (`{s.id}`)" for s in steps)

    section("Built: tasks of this DAG", [s for s in thread.steps if s.id in runnable])
    section("Blocked: built, but needs a step not built yet",
            [s for s in thread.steps if s.implemented and s.id not in runnable])
    section("Not built yet (not in this DAG)", [s for s in thread.steps if not s.implemented])
    return "\n".join(lines)


def _starts_paused(thread: Thread, built: bool) -> bool:
    """A thread with nothing built starts paused: its runs would do no work. So does one left out
    of ``PANELFLOW_THREADS`` (DAG ids or thread names, comma-separated), which lets ``make run`` on
    a small machine run only the threads one is looking at; the rest are one click away in the
    Threads Manager. Only the first parse of a DAG reads it: Airflow keeps the paused flag after."""
    chosen = {name.strip() for name in os.environ.get("PANELFLOW_THREADS", "").split(",") if name.strip()}
    return not built or bool(chosen) and not chosen & {thread.dag_id, thread.name}


def build_dag(catalog: Catalog, thread: Thread, override: ThreadOverride | None = None,
              config: dict | None = None) -> DAG:
    catalog_schedule = thread.schedule if override and override.schedule else None
    thread = applied(thread, override)
    verbose = bool(override and override.verbose_logging)  # "Enable Logging": the StepOperator logs in detail
    settings = catalog.settings
    priority = catalog.priority(thread)
    built = thread.runnable_steps()
    guarded = bool(thread.run_groups and built)
    start = settings.start_date
    dag = DAG(
        dag_id=thread.dag_id,
        dag_display_name=thread.name,
        description=thread.description[:200],
        doc_md=_doc_md(catalog, thread, {s.id for s in built}, catalog_schedule),
        schedule=timetable_for(thread.schedule, settings.timezone),
        start_date=pendulum.datetime(start.year, start.month, start.day, tz=settings.timezone),
        catchup=False,
        max_active_runs=1,
        **(config if config is not None else _config_defaults()),
        tags=[thread.domain, *thread.tags],
        is_paused_upon_creation=_starts_paused(thread, bool(built)),
        # a guarded run gives its run groups back when it ends, in the dag-processor (panelflow.run_groups)
        **(release_callbacks() if guarded else {}),
        # a run not finished N minutes after it was due: one e-mail, and the health badge turns red
        deadline=deadline_alert(thread=thread.name, minutes=thread.deadline.after_run_at_minutes,
                                to=catalog.alert_to(thread)) if thread.deadline else None,
        default_args={
            "owner": ",".join(catalog.owners(thread)),
            "retries": catalog.retries(thread),
            "retry_delay": timedelta(minutes=settings.defaults.retry_delay_minutes),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30),
            "execution_timeout": timedelta(minutes=catalog.timeout_minutes(thread)),
            "queue": catalog.queue(thread),
            "priority_weight": catalog.priority_weight(priority),
            "weight_rule": "absolute",
            "on_failure_callback": [ThreadFailureNotifier(thread=thread.name, to=catalog.alert_to(thread))],
            # a run holding run-group leases renews them as each of its tasks starts (panelflow.run_groups)
            **({"on_execute_callback": [RenewRunGroupLease()]} if thread.run_groups else {}),
        },
    )
    tasks, firsts = {}, {}
    tz = getattr(thread.schedule, "timezone", None) or settings.timezone
    for step in built:
        common = dict(task_display_name=step.seed, timezone=tz, pool=catalog.pool(thread, step), dag=dag, verbose=verbose,
                      thread=thread.name,
                      queue=catalog.queue(thread, step),
                      doc_md=f"**Step {step.number}** of {thread.name}: {step.seed}\n\nRuns `{step.run}`"
                             + (f" once per item of `{step.map_over}`." if step.map_over else "."))
        if step.map_over:
            # one mapped task instance per item, listed when the run starts; the pool bounds them
            lister = StepOperator(task_id=f"{step.id}{LIST_SUFFIX}", run=step.map_over,
                                  **{**common, "task_display_name": f"{step.seed} (list)",
                                     "doc_md": f"Lists the items of step {step.number}: `{step.map_over}`."})
            tasks[step.id] = StepOperator.partial(task_id=step.id, run=step.run, **common).expand(item=lister.output)
            firsts[step.id] = lister
        else:
            tasks[step.id] = firsts[step.id] = StepOperator(task_id=step.id, run=step.run, **common)
    for step in built:
        for upstream in step.after:
            tasks[upstream] >> firsts[step.id]
    # threads sharing a run group never run at the same time: the run waits in queue for its groups
    guard = guard_run(dag, thread.run_groups, firsts=firsts.values(),
                      timeout_minutes=catalog.timeout_minutes(thread)) if guarded else None
    if thread.schedule.kind == "daemon" and tasks:
        wait = WaitForPendingWorkOperator(
            task_id=WAIT_TASK_ID,
            task_display_name=f"Wait for pending {thread.schedule.queue} work",
            queue_name=thread.schedule.queue,
            retries=0,
            dag=dag,
        )
        for t in [guard] if guard else firsts.values():  # an idle daemon waits before it queues
            if not t.upstream_list:
                wait >> t
    return dag
