"""SessionsMgtWork's steps on the real panel database."""

from __future__ import annotations

import pendulum

from panelflow.step import Interval
from panelflow.steps import sessions

END = pendulum.datetime(2026, 11, 20, 12, 0, tz="UTC")
AT = Interval(END.subtract(minutes=15), END)


def add_session(sql, key, *, expires_in_minutes, status="active", ended_minutes_ago=None, kind="customer"):
    sql(
        "INSERT INTO sessions (session_key, user_kind, user_id, started_at, last_seen_at, expires_at, ended_at, status) "
        "VALUES (%s, %s, 1, %s::timestamptz - interval '2 hours', %s::timestamptz - interval '5 minutes', "
        "%s::timestamptz + make_interval(mins => %s), "
        "CASE WHEN %s::int IS NULL THEN NULL ELSE %s::timestamptz - make_interval(mins => %s::int) END, %s)",
        (key, kind, END, END, END, expires_in_minutes, ended_minutes_ago, END, ended_minutes_ago, status),
    )


def test_expire_sessions_moves_ended_ones_to_history(panel_db, sql):
    add_session(sql, "expired-1", expires_in_minutes=-30)
    add_session(sql, "expired-at-end", expires_in_minutes=0)
    add_session(sql, "alive", expires_in_minutes=20)
    add_session(sql, "logged-out", expires_in_minutes=40, status="logged_out", ended_minutes_ago=3, kind="employee")
    summary = sessions.expire_sessions(panel_db, AT)
    assert summary["moved_to_history"] == 3 and summary["still_active"] == 1
    assert [r[0] for r in sql("SELECT session_key FROM sessions")] == ["alive"]
    history = dict(sql("SELECT session_key, end_reason FROM session_history"))
    assert history == {"expired-1": "expired", "expired-at-end": "expired", "logged-out": "logged_out"}
    ended = dict(sql("SELECT session_key, ended_at FROM session_history"))
    assert ended["expired-1"] == END.subtract(minutes=30)
    # rerun of the same interval: nothing more to move, nothing duplicated
    assert sessions.expire_sessions(panel_db, AT)["moved_to_history"] == 0
    assert sql("SELECT count(*) FROM session_history")[0][0] == 3


def test_expire_sessions_in_bounded_batches(panel_db, sql, monkeypatch):
    monkeypatch.setattr(sessions, "BATCH", 400)
    monkeypatch.setattr(sessions, "MAX_BATCHES", 3)
    sql("INSERT INTO sessions (session_key, user_kind, user_id, started_at, last_seen_at, expires_at) "
        "SELECT 'k' || g, 'customer', g, %s::timestamptz - interval '1 day', %s::timestamptz - interval '1 day', "
        "%s::timestamptz - interval '1 hour' FROM generate_series(1, 1500) g", (END, END, END))
    first = sessions.expire_sessions(panel_db, AT)
    assert first["moved_to_history"] == 1200 and first["batches"] == 3  # bounded: the rest waits for the next run
    assert sessions.expire_sessions(panel_db, AT)["moved_to_history"] == 300
    assert sql("SELECT count(*) FROM session_history")[0][0] == 1500


def test_delete_old_session_history(panel_db, sql):
    sql("INSERT INTO session_history (session_key, user_kind, user_id, started_at, ended_at, end_reason) "
        "SELECT 'h' || d, 'customer', 1, %s::timestamptz - make_interval(days => d + 1), "
        "%s::timestamptz - make_interval(days => d), 'expired' FROM unnest(ARRAY[1, 89, 90, 91, 365]) d", (END, END))
    summary = sessions.delete_old_session_history(panel_db, AT)
    assert summary["deleted"] == 2
    assert sorted(r[0] for r in sql("SELECT session_key FROM session_history")) == ["h1", "h89", "h90"]
    assert sessions.delete_old_session_history(panel_db, AT)["deleted"] == 0
