"""Triggers that run in the triggerer, so a waiting thread holds no worker slot."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent


class PanelQueueTrigger(BaseTrigger):
    """Fires once the named panel-DB queue has a pending row.

    Polls with one parameterised ``EXISTS`` query on the queue's table; the connection comes
    from the Airflow connection ``conn_id`` (never from the trigger's kwargs, which are stored
    in the metadata DB).
    """

    def __init__(self, queue: str, conn_id: str = "panel_db", poll_seconds: float = 2.0):
        super().__init__()
        self.queue = queue
        self.conn_id = conn_id
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "panelflow.triggers.PanelQueueTrigger",
            {"queue": self.queue, "conn_id": self.conn_id, "poll_seconds": self.poll_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import psycopg
        from psycopg import sql

        from panelflow.hooks.panel_db import conninfo_for
        from panelflow.queues import QUEUES

        q = QUEUES[self.queue]
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} = ANY(%s) AND {} = %s").format(
            sql.Identifier(q.table), sql.Identifier(q.key_column), sql.Identifier(q.status_column)
        )
        from asgiref.sync import sync_to_async

        conninfo = await sync_to_async(conninfo_for)(self.conn_id)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            while True:
                cur = await conn.execute(query, (list(q.keys), q.pending))
                (pending,) = await cur.fetchone()
                if pending:
                    yield TriggerEvent({"queue": self.queue, "pending": pending})
                    return
                await asyncio.sleep(self.poll_seconds)
