"""The two operators every thread DAG is made of: Airflow wiring around the step contract
(``panelflow.step``).

``StepOperator`` runs one catalog step: it imports the step function only when the task
executes (parsing a DAG never loads a backend library) and hands it what its signature asks
for — the run's data interval as its clock, the panel DB hook, the run's params. When the step
returns, its summary's counts are recorded in the panel DB (``panelflow.services.run_counts``).

``WaitForPendingWorkOperator`` starts a daemon thread's run: it defers to the triggerer until
the thread's panel-DB queue has pending rows, so an idle daemon holds no worker slot.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import time
from typing import Any
from zoneinfo import ZoneInfo

from airflow.sdk import BaseOperator

from panelflow.step import STEP_INPUTS, Interval


def run_interval(context, tz: str = "UTC") -> Interval:
    """The run's data interval; a manual run without one is anchored at its ``run_after``.

    ``run_after`` is fixed when the run is created, so a retried or cleared task still sees the
    same clock.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if end is None:
        end = context["dag_run"].run_after
        start = start or end
    return Interval(start, end, tz)


def resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


_PROVIDERS = {
    "interval": lambda op, ctx: run_interval(ctx, op.timezone),
    "panel_db": lambda op, ctx: _panel_db(),
    "params": lambda op, ctx: dict(ctx.get("params") or {}),
    "log": lambda op, ctx: op.step_log,
    "item": lambda op, ctx: op.item,
}
assert tuple(_PROVIDERS) == STEP_INPUTS  # the catalog check and the operator agree


def _panel_db():
    from panelflow.hooks.panel_db import PanelDatabaseHook

    return PanelDatabaseHook()


class StepOperator(BaseOperator):
    """Runs ``run`` (a ``panelflow.steps`` function) and returns its summary as the XCom value.

    ``verbose`` is MachPanel's "Enable Logging" (set from the Threads Manager): the step's logger
    is at DEBUG — its own ``log.debug`` lines show — and the task writes what the step was given
    and what it returned in full.
    """

    template_fields = ()
    ui_color = "#e8f1fb"

    def __init__(self, *, run: str, timezone: str = "UTC", item: Any = None, verbose: bool = False,
                 thread: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.run = run
        self.timezone = timezone
        self.thread = thread  # the catalog thread's name, under which its run counts are kept
        self.item = item  # a mapped instance's item (``expand(item=…)``)
        self.verbose = verbose
        self._debug_log = None  # this task's logger at DEBUG, when verbose

    def execute(self, context) -> dict[str, Any]:
        func = resolve(self.run)
        wanted = inspect.signature(func).parameters
        unknown = [p for p in wanted if p not in _PROVIDERS]
        if unknown:
            raise TypeError(f"{self.run} asks for {unknown}; a step may take {sorted(_PROVIDERS)}")
        if self.verbose:
            self._log_at_debug()
        inputs = {p: _PROVIDERS[p](self, context) for p in wanted}
        if self.verbose:
            shown = {p: v._asdict() if isinstance(v, Interval) else v for p, v in inputs.items()
                     if p not in ("log", "panel_db")}
            self.step_log.debug("verbose logging (Threads Manager): %s(%s) with %s", self.run, ", ".join(wanted),
                                _dump(shown))
            started = time.monotonic()
        summary = func(**inputs)
        if self.verbose:
            self.step_log.debug("verbose logging (Threads Manager): %s returned after %.3f s: %s", self.run,
                                time.monotonic() - started, _dump(summary))
        self.log.info("%s: %s", self.task_id, summary)
        self._record_counts(context, summary)
        return summary

    def _record_counts(self, context, summary) -> None:
        """Keep the summary's counts for the Threads Manager: one row per task instance.

        Written after the step returned, so the step's work is committed already. A failure to
        write the counts is logged and the task still succeeds: failing it would retry a step
        whose side effects (charges, e-mails, deletes) are done — a lost count is the smaller
        harm. Lists (a ``map_over`` lister's items) are not counts and are not recorded; neither
        is a call outside a task run (no task instance in the context).
        """
        ti = context.get("ti")
        if ti is None or not isinstance(summary, dict):
            return
        try:
            from panelflow.services import run_counts

            day = run_interval(context, self.timezone).end.astimezone(ZoneInfo(self.timezone)).date()
            with _panel_db().get_conn() as conn:
                run_counts.record(
                    conn, dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                    map_index=-1 if ti.map_index is None else ti.map_index,
                    thread=self.thread or self.dag_id, step_id=ti.task_id, run_day=day,
                    try_number=ti.try_number, summary=summary,
                )
        except Exception:  # noqa: BLE001 - see the docstring: never fail a step that did its work
            self.log.warning("%s: run counts not recorded (the step's work stands)", self.task_id, exc_info=True)

    def _log_at_debug(self) -> None:
        """This task's logger at DEBUG (Airflow's task logger filters at ``[logging] logging_level``).

        A logger of its own with Airflow's per-logger ``__level_override``: nothing else in the
        task process, and no other task, logs more.
        """
        import structlog

        name = f"{self._log_config_logger_name}.{type(self).__module__}.{type(self).__name__}"
        self._debug_log = structlog.get_logger(name, **{"__level_override": logging.DEBUG})
        self._debug_log.info("verbose logging on (Threads Manager \"Enable Logging\"): DEBUG lines follow")

    @property
    def step_log(self):
        """The logger a step is given: the task's, at DEBUG when Enable Logging is on."""
        return self._debug_log or self.log


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True, indent=1)


class WaitForPendingWorkOperator(BaseOperator):
    """Defers until the daemon thread's queue has work; resumes in a worker only then."""

    template_fields = ()
    ui_color = "#f4f0e6"

    def __init__(self, *, queue_name: str, poll_seconds: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.queue_name = queue_name
        self.poll_seconds = poll_seconds

    def execute(self, context):
        from panelflow.triggers import PanelQueueTrigger

        self.defer(
            trigger=PanelQueueTrigger(queue=self.queue_name, poll_seconds=self.poll_seconds),
            method_name="execute_complete",
        )

    def execute_complete(self, context, event: dict[str, Any] | None = None):
        self.log.info("queue %s has %s pending row(s)", self.queue_name, (event or {}).get("pending"))
        return event
