"""A thread's missed deadline: one row the Threads Manager's health badge reads, one e-mail.

Both are written in one transaction, each under its own unique key — ``deadline_misses`` by
(dag_id, run_id), the outbox by ``deadline:<dag_id>:<run_id>`` — so a callback that fires twice
for the same run (a cleared run is queued again and gets a new Airflow deadline) adds neither a
row nor an e-mail. The e-mail is delivered by SendEmailNotificationsWork like every other.
"""

from __future__ import annotations

from datetime import datetime

from panelflow.services.outbox import enqueue

TEMPLATE = "deadline_missed"


def dedupe_key(dag_id: str, run_id: str) -> str:
    return f"deadline:{dag_id}:{run_id}"


def record_miss(conn, *, dag_id: str, run_id: str, thread: str, deadline_at: datetime, to: list[str],
                minutes: int, due_at: datetime | None = None, state: str | None = None) -> bool:
    """Record that ``run_id`` of ``dag_id`` missed its deadline and queue its one alert.

    True when this call recorded the miss, False when it was recorded already. With no
    addresses (``to`` empty) the miss is still recorded: the badge turns red, nothing is mailed.
    ``deadline_at`` is the e-mail's ``not_before``: it is past, so the next send run delivers it.
    """
    with conn.transaction():
        new = conn.execute(
            "INSERT INTO deadline_misses (dag_id, run_id, thread, deadline_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (dag_id, run_id) DO NOTHING RETURNING 1",
            (dag_id, run_id, thread, deadline_at),
        ).fetchone() is not None
        if to:
            enqueue(conn, dedupe_key=dedupe_key(dag_id, run_id), to=", ".join(to), template=TEMPLATE,
                    context={"thread": thread, "dag_id": dag_id, "run_id": run_id, "minutes": minutes,
                             "due_at": due_at.isoformat() if due_at else "(unknown)",
                             "deadline_at": deadline_at.isoformat(), "state": state or "(unknown)"},
                    not_before=deadline_at, priority=1)
    return new
