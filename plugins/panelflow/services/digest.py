"""The daily digest e-mail (Automation Status): one message a day per domain that asks for it.

A domain with ``daily_digest: true`` in ``include/catalog/settings.yaml`` gets, once a day, one
e-mail to its ``alert_to`` addresses — the domain's ``owners`` are team names, not addresses, so
the alert addresses are where its team reads mail — with the day before's:

- failures of the domain's threads: the steps that failed after their last try, from
  ``step_failures`` (recorded by :func:`record_failure`, called by the failure callback
  ``panelflow.alerts.ThreadFailureNotifier``), at most :data:`MAX_FAILURES` listed with the total;
- open failed actions: the Automation Status failed-actions queue
  (``panelflow.services.failed_actions.list_failed``: failed group-action jobs, declined charges,
  failed or uncertain e-mails) — the SAME list in every domain's digest: a job's backend
  (``exchange``, ``active_directory`` …) names no catalog domain and the queue is shared, so
  every owner sees what the automation gave up on until someone handles it;
- counts of the domain's live threads, worded with the catalog's step ``labels`` exactly as the
  Threads Manager words them (``panelflow.services.run_counts.worded``).

"The day before" and "after" are in the catalog's time zone and read from the caller's clock
(the sending run's data interval end), never the wall clock, so a rerun of a morning's run
composes the same digest. The message goes through the outbox under the dedupe key
``daily-digest:<domain>:<day>``: a rerun, a retry or two sends a minute apart queue it once.

The composition (:func:`digest_day`, :func:`is_due`, :func:`compose`) is pure and needs neither
Airflow nor a database; :func:`queue_daily_digests` reads the panel DB and queues.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from panelflow.services.outbox import enqueue

TEMPLATE = "daily_digest"
MAX_FAILURES = 50  # listed per digest; the total is always given
MAX_ACTIONS = 50  # listed per kind of failed action; more is said as "more than"
MAX_ERROR = 2000  # characters of an error kept in step_failures (the column's CHECK)
ERROR_LINE = 300  # characters of an error's last line shown in the digest

_RECORD = """
INSERT INTO step_failures (dag_id, run_id, task_id, map_index, try_number, thread, step_id, failed_at, run_day, error)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (dag_id, run_id, task_id, map_index, try_number) DO NOTHING
"""


def dedupe_key(domain: str, day: date) -> str:
    return f"daily-digest:{domain}:{day.isoformat()}"


def bounded_error(text: str | None, limit: int = MAX_ERROR) -> str:
    """The error's end (where the exception's message is), at most ``limit`` characters."""
    text = (text or "").rstrip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def record_failure(conn, *, dag_id: str, run_id: str, task_id: str, map_index: int | None, try_number: int,
                   thread: str, step_id: str, failed_at: datetime, run_day: date, error: str | None) -> bool:
    """Keep one failed try of a step; True when this call stored it, False when it was stored already.

    Its own transaction, committed: the callback that calls it may fire twice for the same try
    (``ON CONFLICT DO NOTHING`` on the try's key), and a retry of the callback adds nothing.
    """
    with conn.transaction():
        return conn.execute(
            _RECORD + " RETURNING 1",
            (dag_id, run_id, task_id, -1 if map_index is None else map_index, try_number, thread, step_id,
             failed_at, run_day, bounded_error(error)),
        ).fetchone() is not None


def digest_day(today: date) -> date:
    """The day a digest sent on ``today`` reports: the day before."""
    return today - timedelta(days=1)


def is_due(now: datetime, today: date, after: str, tz: str) -> bool:
    """True once ``now`` is at or past ``after`` (HH:MM) on ``today`` in ``tz``."""
    hh, mm = (int(x) for x in after.split(":"))
    return now >= datetime.combine(today, time(hh, mm), ZoneInfo(tz))


def _last_line(error: str) -> str:
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    line = lines[-1] if lines else "(no error recorded)"
    return line if len(line) <= ERROR_LINE else line[:ERROR_LINE - 1] + "…"


def _local(when: Any, zone: ZoneInfo) -> str:
    """An ISO timestamp as local ``YYYY-MM-DD HH:MM``; anything else as it is."""
    try:
        return datetime.fromisoformat(str(when)).astimezone(zone).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(when or "")


def compose(*, domain: str, day: date, tz: str, failures: list[dict[str, Any]], failures_total: int,
            actions: dict[str, list[dict[str, Any]]], threads: list[dict[str, Any]]) -> dict[str, Any]:
    """The template's context for one domain's digest (plain data; the template escapes it).

    ``failures``: step_failures rows as dicts (thread, step_id, task_id, run_id, map_index,
    try_number, failed_at, error); ``actions``: ``list_failed``'s three lists, each fetched with
    one more than :data:`MAX_ACTIONS` so "more than" can be said; ``threads``: ``{"name",
    "counts": [words …]}`` per thread of the domain.
    """
    zone = ZoneInfo(tz)
    shown = []
    for f in failures[:MAX_FAILURES]:
        at = f["failed_at"]
        shown.append({"thread": f["thread"], "step": f["step_id"], "run_id": f["run_id"],
                      "item": None if f.get("map_index", -1) in (-1, None) else f["map_index"],
                      "try_number": f["try_number"],
                      "at": _local(at.isoformat() if isinstance(at, datetime) else at, zone),
                      "error": _last_line(f.get("error") or "")})
    kinds = []
    for kind, title in (("jobs", "Group-action jobs"), ("charges", "Charges"), ("messages", "E-mails")):
        rows = actions.get(kind, [])
        kinds.append({"title": title, "more": len(rows) > MAX_ACTIONS, "count": min(len(rows), MAX_ACTIONS),
                      "rows": [{"backend": str(r.get("backend") or ""), "target": str(r.get("target") or ""),
                                "action": str(r.get("action") or ""), "message": _last_line(str(r.get("message") or "")),
                                "when": _local(r.get("when"), zone)} for r in rows[:MAX_ACTIONS]]})
    return {
        "domain": domain, "day": day.isoformat(), "timezone": tz,
        "failures": shown, "failures_total": failures_total, "failures_more": max(failures_total - len(shown), 0),
        "actions": kinds, "actions_total": sum(k["count"] for k in kinds),
        "actions_more": any(k["more"] for k in kinds),
        "threads": threads, "quiet": [t["name"] for t in threads if not t["counts"]],
    }


_FAILURES = """
SELECT thread, step_id, task_id, run_id, map_index, try_number, failed_at, error
FROM step_failures WHERE run_day = %s AND thread = ANY(%s)
ORDER BY failed_at, dag_id, run_id, task_id, map_index, try_number
LIMIT %s
"""


def failures_of(conn, threads: list[str], day: date) -> tuple[list[dict[str, Any]], int]:
    """The first :data:`MAX_FAILURES` failures of ``threads`` on ``day`` (oldest first) and their total."""
    cols = ("thread", "step_id", "task_id", "run_id", "map_index", "try_number", "failed_at", "error")
    rows = [dict(zip(cols, r)) for r in conn.execute(_FAILURES, (day, threads, MAX_FAILURES)).fetchall()]
    (total,) = conn.execute("SELECT count(*) FROM step_failures WHERE run_day = %s AND thread = ANY(%s)",
                            (day, threads)).fetchone()
    return rows, total


def queue_daily_digests(conn, catalog, today: date, now: datetime) -> dict[str, Any]:
    """Queue the digest of ``today − 1`` for every domain with ``daily_digest: true`` and addresses.

    ``today`` is the caller's day in the catalog's time zone and ``now`` its clock (a run's data
    interval end): before the domain's ``digest_after`` nothing is queued for it. Each digest is
    one outbox message due at ``now``, all queued in one transaction committed here (a savepoint
    inside a caller's transaction); a digest queued earlier is left as it is. Returns ``{"digests_queued": n, "digests_already": n, "digests_not_due": n}``.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    tz = catalog.settings.timezone
    day = digest_day(today)
    out = {"digests_queued": 0, "digests_already": 0, "digests_not_due": 0}
    wanted = {name: d for name, d in sorted(catalog.domains.items()) if d.daily_digest and d.alert_to}
    if not wanted:
        return out
    due = {name: d for name, d in wanted.items() if is_due(now, today, d.digest_after, tz)}
    out["digests_not_due"] = len(wanted) - len(due)
    if not due:
        return out
    with conn.transaction():  # one commit for all: read, queue, done (a savepoint inside a caller's)
        _queue(conn, catalog, due, day, tz, now, out)
    return out


def _queue(conn, catalog, due: dict, day: date, tz: str, now: datetime, out: dict) -> None:
    """Compose and queue the digests of ``due`` domains not queued yet (inside the caller's transaction)."""
    from panelflow.services import run_counts
    from panelflow.services.failed_actions import list_failed

    # The sender runs every minute: a digest already queued today is skipped before anything is read.
    queued = {k for (k,) in conn.execute("SELECT dedupe_key FROM email_outbox WHERE dedupe_key = ANY(%s)",
                                         ([dedupe_key(name, day) for name in due],)).fetchall()}
    out["digests_already"] = len(queued)
    due = {name: d for name, d in due.items() if dedupe_key(name, day) not in queued}
    if not due:
        return
    totals = run_counts.day_totals(conn, day)  # read once for all domains, and only when one is due
    actions = list_failed(conn, limit=MAX_ACTIONS + 1)
    for name, domain in due.items():
        threads = [t for t in catalog.live_threads if t.domain == name]
        failures, total = failures_of(conn, [t.name for t in threads], day)
        counts = [{"name": t.name, "counts": [c["text"] for c in run_counts.worded(catalog, t, totals.get(t.name, {}))]}
                  for t in threads]
        context = compose(domain=name, day=day, tz=tz, failures=failures, failures_total=total, actions=actions,
                          threads=counts)
        new = enqueue(conn, dedupe_key=dedupe_key(name, day), to=", ".join(domain.alert_to), template=TEMPLATE,
                      context=context, not_before=now)
        out["digests_queued" if new else "digests_already"] += 1
