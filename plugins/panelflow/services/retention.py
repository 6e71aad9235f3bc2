"""Bounded, idempotent deletes of old rows — the shared engine of every retention step.

A run deletes rows older than a cutoff measured back from its data interval's end, in
batches of ``batch_size``, and at most ``max_rows`` in all ("delete top 10000 …"). The count is
kept per (step, interval end) in ``retention_runs`` in the same transaction as each batch, so a
retry, a rerun or a worker killed mid-step never deletes past the run's budget, and a rerun of
a finished interval deletes nothing more.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql

# Bookkeeping rows are only needed while a run can still be retried or rerun.
BOOKKEEPING_DAYS = 35


def delete_older_than(
    conn,
    *,
    task: str,
    table: str,
    column: str,
    cutoff: datetime,
    interval_end: datetime,
    max_rows: int,
    batch_size: int,
    key: tuple[str, ...] = ("id",),
) -> dict[str, Any]:
    """``key``: the table's primary key columns (``id`` for most; ``step_run_counts`` has a natural
    key of four columns). ``cutoff`` may be a date for a date column."""
    if batch_size < 1 or max_rows < 1:
        raise ValueError("batch_size and max_rows must be positive")
    keys = sql.SQL(", ").join(map(sql.Identifier, key))
    delete = sql.SQL(
        "DELETE FROM {t} WHERE ({k}) IN ("
        " SELECT {k} FROM {t} WHERE {c} < %s ORDER BY {c}, {k} LIMIT %s FOR UPDATE SKIP LOCKED)"
    ).format(t=sql.Identifier(table), c=sql.Identifier(column), k=keys)
    deleted = batches = 0
    budget_left = max_rows
    # At most ceil(max_rows / batch_size) batches delete anything; one more may find the budget spent.
    for _ in range(-(-max_rows // batch_size) + 1):
        with conn.transaction():
            (done,) = conn.execute(
                "INSERT INTO retention_runs (task, interval_end) VALUES (%s, %s)"
                " ON CONFLICT (task, interval_end) DO UPDATE SET task = EXCLUDED.task RETURNING deleted",
                (task, interval_end),
            ).fetchone()  # the upsert also locks the row: concurrent reruns take turns
            budget_left = max_rows - done
            if budget_left <= 0:
                break
            want = min(batch_size, budget_left)
            n = conn.execute(delete, (cutoff, want)).rowcount
            conn.execute(
                "UPDATE retention_runs SET deleted = deleted + %s WHERE task = %s AND interval_end = %s",
                (n, task, interval_end),
            )
        deleted += n
        batches += 1
        budget_left -= n
        if n < want:
            break
    with conn.transaction():
        conn.execute(
            "DELETE FROM retention_runs WHERE ctid IN (SELECT ctid FROM retention_runs"
            " WHERE task = %s AND interval_end < %s::timestamptz - make_interval(days => %s) LIMIT 1000)",
            (task, interval_end, BOOKKEEPING_DAYS),
        )
    return {
        "table": table,
        "cutoff": cutoff.isoformat(),
        "deleted": deleted,
        "batches": batches,
        "budget_left": max(budget_left, 0),
    }
