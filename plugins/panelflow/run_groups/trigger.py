"""The wait of a run in queue for its run groups, in the triggerer (no worker slot held)."""

from __future__ import annotations

from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent


class RunGroupLeaseTrigger(BaseTrigger):
    """Waits until the run can take all its run groups, and takes them (``panelflow.run_groups``).

    Tries on every release (``LISTEN`` on the leases' channel) and at least every
    ``poll_seconds``; each try also refreshes the run's place in the queue and clears the leases
    of runs Airflow has ended. Once the groups are held it ends the guard task itself
    (``TaskSuccessEvent``, the summary as its XCom): the guard is not resumed in a worker. Nothing
    but names and numbers is kept in its kwargs.
    """

    def __init__(self, dag_id: str, run_id: str, run_groups: list[str], lease_seconds: float,
                 poll_seconds: float = 2.0, conn_id: str = "panel_db"):
        super().__init__()
        self.dag_id = dag_id
        self.run_id = run_id
        self.run_groups = list(run_groups)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "panelflow.run_groups.trigger.RunGroupLeaseTrigger",
            {"dag_id": self.dag_id, "run_id": self.run_id, "run_groups": self.run_groups,
             "lease_seconds": self.lease_seconds, "poll_seconds": self.poll_seconds, "conn_id": self.conn_id},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from datetime import timedelta

        import psycopg
        from asgiref.sync import sync_to_async
        from psycopg import sql

        from panelflow.run_groups import leases as run_groups
        from panelflow.hooks.panel_db import conninfo_for

        conninfo = await sync_to_async(conninfo_for)(self.conn_id)
        # the tries run in a worker thread (they also ask the API server for run states)
        attempt_conn = await sync_to_async(psycopg.connect, thread_sensitive=False)(conninfo, autocommit=True)

        def attempt():
            return run_groups.try_acquire(attempt_conn, self.dag_id, self.run_id, self.run_groups,
                                          lease=timedelta(seconds=self.lease_seconds),
                                          run_state=run_groups.dagrun_state)

        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
                await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(run_groups.CHANNEL)))
                cleared: list[str] = []
                while True:
                    result = await sync_to_async(attempt, thread_sensitive=False)()
                    cleared.extend(result.cleared)
                    if result.acquired:
                        self.log.info("%s/%s holds %s", self.dag_id, self.run_id, self.run_groups)
                        # ends the guard here: no resume in a worker (faster, and no race between the
                        # deferral's executor event and a resume under the same try number)
                        yield TaskSuccessEvent(xcoms={"return_value": {
                            "run_groups": self.run_groups, "waited": True, "cleared": cleared,
                            "waited_since": result.waited_since.isoformat() if result.waited_since else None,
                        }})
                        return
                    self.log.debug("in queue behind %s", ", ".join(result.blockers))
                    async for _ in listener.notifies(timeout=self.poll_seconds, stop_after=1):
                        pass
        finally:
            await sync_to_async(attempt_conn.close, thread_sensitive=False)()
