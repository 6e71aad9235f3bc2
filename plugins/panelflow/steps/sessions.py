"""SessionsMgtWork: ended panel sessions move to history; old history is removed.

Both steps are set-based and bounded per run; the clock is the run's data interval end, so a
rerun of the same interval finds nothing more to do.
"""

from __future__ import annotations

from dateutil.relativedelta import relativedelta

from panelflow.services.retention import delete_older_than

BATCH = 5000
MAX_BATCHES = 40
HISTORY_KEEP_DAYS = 90

_MOVE_ENDED = """
WITH due AS (
    SELECT id FROM sessions
    WHERE (status = 'active' AND expires_at <= %(at)s)
       OR (status = 'logged_out' AND ended_at <= %(at)s)
    ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM sessions s USING due WHERE s.id = due.id
    RETURNING s.session_key, s.user_kind, s.user_id, s.started_at, s.status,
              COALESCE(s.ended_at, s.expires_at) AS ended_at
)
INSERT INTO session_history (session_key, user_kind, user_id, started_at, ended_at, end_reason)
SELECT session_key, user_kind, user_id, started_at, ended_at,
       CASE status WHEN 'active' THEN 'expired' ELSE status END
FROM moved
ON CONFLICT (session_key) DO NOTHING
"""


def expire_sessions(panel_db, interval) -> dict:
    """Update session data (expiry): sessions past their expiry, or logged out, go to history."""
    moved = batches = 0
    with panel_db.get_conn() as conn:
        for _ in range(MAX_BATCHES):
            with conn.transaction():
                n = conn.execute(_MOVE_ENDED, {"at": interval.end, "batch": BATCH}).rowcount
            moved += n
            batches += 1
            if n < BATCH:
                break
        (active,) = conn.execute(
            "SELECT count(*) FROM sessions WHERE status = 'active' AND expires_at > %s", (interval.end,)
        ).fetchone()
    return {"moved_to_history": moved, "batches": batches, "still_active": active, "as_of": interval.end.isoformat()}


def delete_old_session_history(panel_db, interval) -> dict:
    """Delete session history after certain period (HISTORY_KEEP_DAYS after the session ended)."""
    with panel_db.get_conn() as conn:
        return delete_older_than(
            conn, task="delete_old_session_history", table="session_history", column="ended_at",
            cutoff=interval.end - relativedelta(days=HISTORY_KEEP_DAYS), interval_end=interval.end,
            max_rows=BATCH * MAX_BATCHES, batch_size=BATCH,
        )
