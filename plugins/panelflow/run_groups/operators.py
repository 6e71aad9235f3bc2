"""The guard, its teardown and the lease heartbeat of a guarded thread's DAG, and the wiring the
factory calls (``guard_run``). The design is in ``panelflow.run_groups``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from panelflow.run_groups.leases import (
    GUARD_TASK_ID, POLL_SECONDS, RELEASE_TASK_ID, dagrun_state, lease_minutes, panel_conn, release, renew, try_acquire,
)
log = logging.getLogger(__name__)


def _holder(context) -> tuple[str, str]:
    dag_run = context["dag_run"]
    return dag_run.dag_id, dag_run.run_id


# -- the operators --------------------------------------------------------------------------------

class RunGroupGuardOperator(BaseOperator):
    """Takes the run's groups, or waits in queue (deferred, no worker slot) until it can."""

    template_fields = ()
    ui_color = "#fdf3d8"

    def __init__(self, *, run_groups: list[str], lease_minutes: int, poll_seconds: float = POLL_SECONDS,
                 conn_id: str = "panel_db", **kwargs):
        super().__init__(**kwargs)
        self.run_groups = sorted(set(run_groups))
        self.lease_minutes = lease_minutes
        self.poll_seconds = poll_seconds
        self.conn_id = conn_id

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

        # the trigger takes the groups and ends this task itself (TaskSuccessEvent): no resume
        self.defer(
            trigger=RunGroupLeaseTrigger(dag_id=dag_id, run_id=run_id, run_groups=self.run_groups,
                                         lease_seconds=self.lease_minutes * 60, poll_seconds=self.poll_seconds,
                                         conn_id=self.conn_id),
            method_name="execute_complete",
        )

    def execute_complete(self, context, event: Any = None):
        """Reached only if a trigger resumes the task instead of ending it: take the groups here."""
        return self.execute(context)


class ReleaseRunGroupsOperator(BaseOperator):
    """The guard's teardown: gives the run's groups back however its steps ended."""

    template_fields = ()
    ui_color = "#fdf3d8"

    def __init__(self, *, conn_id: str = "panel_db", **kwargs):
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def execute(self, context) -> dict[str, int]:
        dag_id, run_id = _holder(context)
        with panel_conn(self.conn_id) as conn:
            released = release(conn, dag_id, run_id)
        self.log.info("released %s run group lease(s)", released)
        return {"released": released}


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


def guard_run(dag, run_groups: list[str], *, steps: Iterable, firsts: Iterable, timeout_minutes: int,
              poll_seconds: float = POLL_SECONDS) -> BaseOperator:
    """Put the guard before ``firsts`` (the step tasks nothing else precedes) and its teardown
    after every step; returns the guard (a daemon's wait task goes before it)."""
    guard = RunGroupGuardOperator(
        task_id=GUARD_TASK_ID,
        task_display_name=f"In queue while another thread holds {', '.join(sorted(run_groups))}",
        doc_md="Takes this thread's run groups for the whole run, or waits (deferred, holding no worker slot) "
               "until no thread sharing a run group is running. See `panelflow.run_groups`.",
        run_groups=run_groups, lease_minutes=lease_minutes(timeout_minutes), poll_seconds=poll_seconds,
        dag=dag,
    )
    release = ReleaseRunGroupsOperator(
        task_id=RELEASE_TASK_ID,
        task_display_name="Release run groups",
        doc_md="Gives the run groups back when the steps are done, whatever their outcome.",
        dag=dag,
    )
    steps = list(steps)
    for t in firsts:
        if not t.upstream_list:
            guard >> t
    for t in steps:
        if not t.downstream_list:
            t >> release
    release.as_teardown(setups=guard)
    return guard
