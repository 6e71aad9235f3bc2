"""The guard of a guarded run, in the triggerer: take the run groups, or wait in queue for them
(no worker process either way)."""

from __future__ import annotations

from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent


class RunGroupLeaseTrigger(BaseTrigger):
    """Takes all the run's run groups as soon as it can (``panelflow.run_groups``).

    Started by the scheduler itself (the guard is ``start_from_trigger``): ``lease_dag_id`` and
    ``lease_run_id`` arrive as templates and are rendered with the run's context before ``run``.
    Tries at once, then on every release (``LISTEN`` on the leases' channel) and at least every
    ``poll_seconds``; each try also refreshes the run's place in the queue and clears the leases
    of runs Airflow has ended. Once the groups are held it ends the guard task itself
    (``TaskSuccessEvent``, the summary as its XCom): nothing runs in a worker. Nothing but names
    and numbers is kept in its kwargs.
    """

    def __init__(self, lease_dag_id: str | None = None, lease_run_id: str | None = None,
                 run_groups: list[str] = (), lease_seconds: float = 0, poll_seconds: float = 2.0,
                 conn_id: str = "panel_db", dag_id: str | None = None, run_id: str | None = None):
        super().__init__()
        # dag_id/run_id: the kwargs of a guard deferred by a release before start_from_trigger
        self.lease_dag_id = lease_dag_id or dag_id
        self.lease_run_id = lease_run_id or run_id
        self.run_groups = list(run_groups)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "panelflow.run_groups.trigger.RunGroupLeaseTrigger",
            {"lease_dag_id": self.lease_dag_id, "lease_run_id": self.lease_run_id, "run_groups": self.run_groups,
             "lease_seconds": self.lease_seconds, "poll_seconds": self.poll_seconds, "conn_id": self.conn_id},
        )

    def _run_ids(self) -> tuple[str, str]:
        """The run's ids; from the task instance should a template not have been rendered."""
        dag_id, run_id = self.lease_dag_id, self.lease_run_id
        ti = self.task_instance
        if ti is not None and (not dag_id or "{{" in dag_id or not run_id or "{{" in run_id):
            dag_id, run_id = ti.dag_id, ti.run_id
        if not dag_id or "{{" in dag_id or not run_id or "{{" in run_id:
            raise ValueError(f"run group trigger without its run: {dag_id!r}/{run_id!r}")
        return dag_id, run_id

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from datetime import timedelta

        import psycopg
        from asgiref.sync import sync_to_async
        from psycopg import sql

        from panelflow.hooks.panel_db import conninfo_for
        from panelflow.run_groups import leases as run_groups

        dag_id, run_id = self._run_ids()
        conninfo = await sync_to_async(conninfo_for)(self.conn_id)
        # the tries run in a worker thread (they also ask the API server for run states)
        attempt_conn = await sync_to_async(psycopg.connect, thread_sensitive=False)(conninfo, autocommit=True)

        def attempt():
            return run_groups.try_acquire(attempt_conn, dag_id, run_id, self.run_groups,
                                          lease=timedelta(seconds=self.lease_seconds),
                                          run_state=run_groups.dagrun_state)

        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
                await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(run_groups.CHANNEL)))
                cleared: list[str] = []
                tries = 0
                while True:
                    result = await sync_to_async(attempt, thread_sensitive=False)()
                    tries += 1
                    cleared.extend(result.cleared)
                    if result.acquired:
                        self.log.info("%s/%s holds %s", dag_id, run_id, self.run_groups)
                        # ends the guard here: no task process for it at all
                        yield TaskSuccessEvent(xcoms={"return_value": {
                            "run_groups": self.run_groups, "waited": tries > 1, "cleared": cleared,
                            "waited_since": result.waited_since.isoformat() if tries > 1 and result.waited_since
                            else None,
                        }})
                        return
                    (self.log.info if tries == 1 else self.log.debug)("in queue behind %s", ", ".join(result.blockers))
                    async for _ in listener.notifies(timeout=self.poll_seconds, stop_after=1):
                        pass
        finally:
            await sync_to_async(attempt_conn.close, thread_sensitive=False)()
