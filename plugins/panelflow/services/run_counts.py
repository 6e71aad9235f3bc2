"""Run counts that last: each step's summary, kept in the panel DB for the Threads Manager.

Airflow keeps a step's summary as its XCom only as long as its metadata DB keeps the run, and the
page wants a year of daily totals in one query, so the StepOperator records each summary here once
per task instance: one row keyed by (dag_id, run_id, task_id, map_index). A retry or a cleared and
rerun task that succeeds overwrites that row (its counts describe the work as finally done); it
never adds a second one, so a day's totals count each run once.

What is kept is bounded whatever a step returns: the numeric entries of the summary (``counts``),
the ``skipped`` reasons (at most :data:`MAX_REASONS`, the rest folded into ``(other reasons)``) and
at most :data:`MAX_EXAMPLES` item names. Non-numeric entries (cutoffs, table names, lists) are
description, not counts, and are left in the XCom.

The day a row counts for is ``run_day``: the day the run's data interval ends on in the thread's
time zone — the run's clock, never the wall clock, so a backfilled run lands on its own day.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from psycopg.types.json import Jsonb

MAX_EXAMPLES = 20
MAX_REASONS = 50
MAX_KEYS = 200  # a summary with more numeric entries than this is a bug; keep it bounded anyway
MAX_TEXT = 300
OTHER_REASONS = "(other reasons)"
# Summary entries that name items rather than count them (StepReport's and for_each's words).
EXAMPLE_KEYS = ("skipped_examples", "errors", "failed", "failed_items", "examples")

UPSERT = """
INSERT INTO step_run_counts (dag_id, run_id, task_id, map_index, thread, step_id, run_day, try_number,
                             counts, skipped, examples)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (dag_id, run_id, task_id, map_index) DO UPDATE SET
    thread = EXCLUDED.thread, step_id = EXCLUDED.step_id, run_day = EXCLUDED.run_day,
    try_number = EXCLUDED.try_number, recorded_at = now(),
    counts = EXCLUDED.counts, skipped = EXCLUDED.skipped, examples = EXCLUDED.examples
"""


def _number(value: Any) -> int | float | None:
    """A count of the summary, or None for anything that is not one (bools, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def counts_of(summary: Mapping[str, Any]) -> dict[str, int | float]:
    """The summary's numeric top-level entries, at most :data:`MAX_KEYS` of them, in key order."""
    out: dict[str, int | float] = {}
    for key in sorted(summary, key=str):
        n = _number(summary[key])
        if n is not None and len(out) < MAX_KEYS:
            out[str(key)[:MAX_TEXT]] = n
    return out


def skipped_of(summary: Mapping[str, Any]) -> dict[str, int]:
    """``{"reason": count}`` from the summary's ``skipped``, the largest :data:`MAX_REASONS` kept."""
    raw = summary.get("skipped")
    if not isinstance(raw, Mapping):
        return {}
    reasons = {str(k)[:MAX_TEXT]: int(n) for k, v in raw.items() if (n := _number(v)) is not None}
    if len(reasons) <= MAX_REASONS:
        return reasons
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[: MAX_REASONS - 1])
    kept[OTHER_REASONS] = sum(n for _, n in ranked[MAX_REASONS - 1:])
    return kept


def examples_of(summary: Mapping[str, Any]) -> list[str]:
    """The first :data:`MAX_EXAMPLES` skipped/failed item names the summary gives."""
    out: list[str] = []
    for key in EXAMPLE_KEYS:
        items = summary.get(key)
        if isinstance(items, str) or not isinstance(items, Iterable) or isinstance(items, Mapping):
            continue
        for item in items:
            if len(out) >= MAX_EXAMPLES:
                return out
            out.append(str(item)[:MAX_TEXT])
    return out


def record(conn, *, dag_id: str, run_id: str, task_id: str, map_index: int, thread: str, step_id: str,
           run_day: date, try_number: int, summary: dict) -> None:
    """Store one task instance's summary: one row per (dag_id, run_id, task_id, map_index).

    Runs in its own transaction on ``conn`` and commits it; a summary that is not a mapping (a
    lister's list of items) is stored with no counts.
    """
    summary = summary if isinstance(summary, Mapping) else {}
    with conn.transaction():
        conn.execute(UPSERT, (dag_id, run_id, task_id, map_index, thread, step_id, run_day, try_number,
                              Jsonb(counts_of(summary)), Jsonb(skipped_of(summary)), Jsonb(examples_of(summary))))


def _totals(rows) -> dict[str, int]:
    """``{"step_id.key": total}`` from (step_id, key, total) rows; whole numbers stay ints."""
    out: dict[str, int] = {}
    for step_id, key, total in rows:
        out[f"{step_id}.{key}"] = int(total) if float(total).is_integer() else float(total)
    return out


# Numeric entries only: a jsonb value that is not a number is never summed.
_SUM = """
SELECT {group}, c.step_id, e.key, sum((e.value)::numeric) AS total
FROM step_run_counts c CROSS JOIN LATERAL jsonb_each(c.counts) e
WHERE {where} AND jsonb_typeof(e.value) = 'number'
GROUP BY {group}, c.step_id, e.key
ORDER BY {group}, c.step_id, e.key
"""


def day_totals(conn, day: date) -> dict[str, dict[str, int]]:
    """thread → ``{"step_id.key": total}`` over the runs of ``day`` (each task instance once)."""
    rows = conn.execute(_SUM.format(group="c.thread", where="c.run_day = %s"), (day,)).fetchall()
    out: dict[str, list] = {}
    for thread, step_id, key, total in rows:
        out.setdefault(thread, []).append((step_id, key, total))
    return {thread: _totals(r) for thread, r in out.items()}


def daily_series(conn, thread: str, last_day: date, days: int = 30) -> list[tuple[date, dict[str, int]]]:
    """``days`` days ending on ``last_day``, oldest first, every day present (``{}`` when nothing ran)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    first = last_day - timedelta(days=days - 1)
    rows = conn.execute(_SUM.format(group="c.run_day", where="c.thread = %s AND c.run_day BETWEEN %s AND %s"),
                        (thread, first, last_day)).fetchall()
    by_day: dict[date, list] = {}
    for day, step_id, key, total in rows:
        by_day.setdefault(day, []).append((step_id, key, total))
    return [(d, _totals(by_day.get(d, []))) for d in (first + timedelta(days=i) for i in range(days))]


def worded(catalog, thread, totals: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The thread's counts (``day_totals``' ``"step.key"`` entries) in the catalog's words, in step
    order; a count the day lacks is left out. One wording for the Threads Manager and the digest."""
    out = []
    for step_id, key, words in catalog.labels(thread):
        n = totals.get(f"{step_id}.{key}")
        if n is not None:
            out.append({"key": f"{step_id}.{key}", "n": n, "text": words.format(n=n)})
    return out
