"""The guard, the release and the lease heartbeat of a guarded thread's DAG, and the wiring the
factory calls (``guard_run``). The design is in ``panelflow.run_groups``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import StartTriggerArgs

from panelflow.run_groups.leases import (
    GUARD_TASK_ID, POLL_SECONDS, dagrun_state, lease_minutes, panel_conn, release, renew, try_acquire,
)
log = logging.getLogger(__name__)

TRIGGER = "panelflow.run_groups.trigger.RunGroupLeaseTrigger"


def _holder(context) -> tuple[str, str]:
    dag_run = context["dag_run"]
    return dag_run.dag_id, dag_run.run_id


# -- the operators --------------------------------------------------------------------------------

class RunGroupGuardOperator(BaseOperator):
    """Takes the run's groups in the triggerer, or waits there in queue until it can.

    ``start_from_trigger``: the scheduler hands the guard straight to the triggerer, which takes
    the groups and ends the task (``TaskSuccessEvent``) — no worker process whether the run waits
    or not. The run's ids reach the trigger as template fields, rendered with the run's context
    in the triggerer. ``execute`` is only for runs without a triggerer in front (``dag.test()``).
    """

    template_fields = ("lease_dag_id", "lease_run_id")
    start_from_trigger = True
    ui_color = "#fdf3d8"

    def __init__(self, *, run_groups: list[str], lease_minutes: int, poll_seconds: float = POLL_SECONDS,
                 conn_id: str = "panel_db", **kwargs):
        super().__init__(**kwargs)
        self.run_groups = sorted(set(run_groups))
        self.lease_minutes = lease_minutes
        self.poll_seconds = poll_seconds
        self.conn_id = conn_id
        self.lease_dag_id = "{{ dag_run.dag_id }}"
        self.lease_run_id = "{{ dag_run.run_id }}"
        self.start_trigger_args = StartTriggerArgs(
            trigger_cls=TRIGGER, next_method="execute_complete", next_kwargs=None, timeout=None,
            trigger_kwargs=self._trigger_kwargs(self.lease_dag_id, self.lease_run_id))

    def _trigger_kwargs(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return {"lease_dag_id": dag_id, "lease_run_id": run_id, "run_groups": self.run_groups,
                "lease_seconds": self.lease_minutes * 60, "poll_seconds": self.poll_seconds, "conn_id": self.conn_id}

    def execute(self, context):
        dag_id, run_id = _holder(context)
        with panel_conn(self.conn_id) as conn:
            attempt = try_acquire(conn, dag_id, run_id, self.run_groups,
                                  lease=timedelta(minutes=self.lease_minutes), run_state=dagrun_state)
        if attempt.cleared:
            self.log.warning("cleared stale leases of ended runs: %s", ", ".join(attempt.cleared))
        if attempt.acquired:
            self.log.info("holding run groups %s", ", ".join(self.run_groups))
            return {"run_groups": self.run_groups, "waited": False, "cleared": list(attempt.cleared),
                    "waited_since": None}
        self.log.info("in queue: run groups %s are held by %s", ", ".join(self.run_groups), ", ".join(attempt.blockers))
        from panelflow.run_groups.trigger import RunGroupLeaseTrigger  # the triggerer's module, not the parse's

        self.defer(trigger=RunGroupLeaseTrigger(**self._trigger_kwargs(dag_id, run_id)), method_name="execute_complete")

    def execute_complete(self, context, event: Any = None):
        """Reached only if a trigger resumes the task instead of ending it: take the groups here."""
        return self.execute(context)


class ReleaseRunGroups:
    """``on_success_callback``/``on_failure_callback`` of a guarded thread's DAG: gives the run's
    groups back once Airflow has ended the run, in the dag-processor (no task process).

    A release that never comes (callback lost, panel DB down) costs the partner at most one poll:
    the waiting trigger finds the holder's run ended and clears its leases itself.
    """

    def __init__(self, conn_id: str = "panel_db"):
        self.conn_id = conn_id
        self.__name__ = type(self).__name__  # Airflow logs callbacks by name

    def __call__(self, context) -> None:
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        # a cleared run may be running again (and hold its groups again) by the time this runs late
        ended = getattr(context.get("dag_run"), "end_date", None)
        try:
            with panel_conn(self.conn_id) as conn:
                released = release(conn, dag_id, run_id, taken_by=ended)
        except Exception as exc:  # noqa: BLE001 - the stale-holder sweep frees them instead
            log.warning("run groups of %s/%s not released (%s); a waiting partner clears them", dag_id, run_id, exc)
            return
        log.info("released %s run group lease(s) of %s/%s (ended %s)", released, dag_id, run_id, ended)


class RenewRunGroupLease:
    """``on_execute_callback`` of a guarded thread's tasks: the holding run's heartbeat.

    Never fails the task: a missed renewal only shortens the lease, which the next task renews.
    """

    def __init__(self, conn_id: str = "panel_db"):
        self.conn_id = conn_id

    def __call__(self, context) -> None:
        if context["ti"].task_id == GUARD_TASK_ID:
            return  # the guard takes (and renews) the lease itself
        try:
            with panel_conn(self.conn_id) as conn:
                renew(conn, *_holder(context))
        except Exception as exc:  # noqa: BLE001
            log.warning("run group lease not renewed: %s", exc)


def release_callbacks() -> dict[str, list]:
    """The DAG's end callbacks of a guarded thread: the run's groups go back when Airflow ends it."""
    return {"on_success_callback": [ReleaseRunGroups()], "on_failure_callback": [ReleaseRunGroups()]}


def guard_run(dag, run_groups: list[str], *, firsts: Iterable, timeout_minutes: int,
              poll_seconds: float = POLL_SECONDS) -> BaseOperator:
    """Put the guard before ``firsts`` (the step tasks nothing else precedes); returns it (a
    daemon's wait task goes before it). The DAG must carry ``release_callbacks()``.

    The guard is a setup task with no teardown, so clearing any step clears the guard with it and
    the rerun queues for its groups again. It has no execution timeout: waiting in queue behind a
    long holder is not the guard running long.
    """
    guard = RunGroupGuardOperator(
        task_id=GUARD_TASK_ID,
        task_display_name=f"In queue while another thread holds {', '.join(sorted(run_groups))}",
        doc_md="Takes this thread's run groups for the whole run, or waits in the triggerer (no worker process) "
               "until no thread sharing a run group is running; they go back when the run ends. "
               "See `panelflow.run_groups`.",
        run_groups=run_groups, lease_minutes=lease_minutes(timeout_minutes), poll_seconds=poll_seconds,
        execution_timeout=None, dag=dag,
    )
    for t in firsts:
        if not t.upstream_list:
            guard >> t
    guard.as_setup()
    return guard
