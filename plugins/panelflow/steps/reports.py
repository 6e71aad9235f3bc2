"""UsageReportScheduleWork: enterprise usage reports e-mailed on their automatic schedules.

A schedule (``report_schedules``, migration 0009) belongs to a customer (the report covers its
subscriptions) or to a reseller (its customers' subscriptions). It is due when its
``next_run_on`` is on or before the run's calendar day (the clock, ``interval.end``, in the
thread's time zone); the period it reports is the day, the 7 days or the calendar month before
``next_run_on``, each day ``[00:00, next 00:00)`` in that time zone.

Every due period is sent, oldest first: after a period, ``next_run_on`` moves one period on
*from that period*, never from the clock, so a run that was missed or late sends the periods it
missed (at most ``MAX_PERIODS_PER_SCHEDULE`` per schedule and run, the rest in the next runs)
and a schedule never drifts to the time runs happen to start.

Report kinds, one CSV row per:

- ``resource_usage``: subscription and resource with a quota or a usage sample in the period —
  the quota as it stands, the peak and the latest usage measured in the period, and whether
  the peak was over the quota;
- ``voice_usage``: subscription with calls in the period or a voice bundle — answered OCS and
  SIP calls and their minutes (per started minute, as billed), and the bundle's monthly minutes;
- ``exchange_usage``: hosted Exchange organisation and day of the period, as UsageReportWork 1
  stored it (``exchange_usage_reports``): mailboxes by kind, their size and items;
- ``addon_usage``: add-on line of the month's add-on usage report UsageReportWork 2 took
  (``addon_usage_report_lines``); these schedules are monthly (migration 0039).

The last two kinds are copies of reports another thread stores, so a period of theirs is sent
only once its source has it: Exchange usage once a report of the period's last day is stored,
add-on usage once the month's report is taken (the first UsageReportWork run of the next month,
03:20, after a monthly schedule falls due at 00:45). Until then the period is not sent, not
reported as skipped and keeps the schedule's ``next_run_on``: a later run sends it with its rows,
and the periods after it wait behind it, so they still go oldest first.

Exactly once: a period's ``sent_reports`` row and its messages (one per recipient, the CSV
attached, outbox key ``report-<schedule>-<period start>:<address>``) are written in one
transaction, and messages only for the rows that transaction inserted. A rerun, a retry or an
overlapping run finds the rows there and sends nothing.

Bad records are reported and skipped while the rest is sent: a schedule without recipients, or
without one valid address, or whose owner is suspended, keeps its ``next_run_on`` (fixed, the
next run sends its periods); an invalid address among valid ones is reported and left out.
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue

TEMPLATE = "usage_report"
BATCH = 50  # schedules per transaction
MAX_PERIODS_PER_SCHEDULE = 31  # catch-up per schedule and run
MAX_REPORTS_PER_RUN = 2_000  # bounded; the next hourly run sends the rest
PREVIEW_ROWS = 20  # rows shown in the message body; the CSV has them all

EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"

TITLES = {"resource_usage": "resource usage report", "voice_usage": "voice usage report",
          "exchange_usage": "Exchange usage report", "addon_usage": "add-on usage report"}
COLUMNS = {
    "resource_usage": ("customer_id", "customer", "subscription_id", "plan", "resource", "unit", "quota",
                       "peak_used", "last_used", "samples", "over_quota"),
    "voice_usage": ("customer_id", "customer", "subscription_id", "plan", "ocs_calls", "ocs_minutes", "sip_calls",
                    "sip_minutes", "total_minutes", "bundle_minutes_per_month"),
    "exchange_usage": ("customer_id", "customer", "organization_id", "organization", "report_date",
                       "subscription_id", "mailboxes", "user_mailboxes", "shared_mailboxes", "resource_mailboxes",
                       "total_item_size_bytes", "total_deleted_item_size_bytes", "item_count"),
    "addon_usage": ("customer_id", "customer", "month", "addon", "currency", "unit_price", "subscriptions",
                    "quantity", "amount"),
}

# The batch's due schedules, one row per period to send, with the reason a schedule cannot be
# sent (NULL: it can) and whether the period's source rows are there yet (``source_ready``: a
# stored report of another thread — see the module's docstring; the other kinds read raw data).
# Readiness only grows with the period's end, so the periods waiting are the schedule's last ones.
# Locked: an overlapping run skips them rather than waiting.
_DUE = f"""
CREATE TEMP TABLE due_reports ON COMMIT DROP AS
WITH batch AS (
    SELECT * FROM report_schedules
    WHERE status = 'active' AND next_run_on <= %(today)s AND id > %(after)s
    ORDER BY id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), owners AS (
    SELECT b.id, b.customer_id, b.reseller_id, b.report_kind, b.frequency, b.next_run_on, b.recipients,
           coalesce(c.name, r.name) AS owner_name, coalesce(c.status, r.status) AS owner_status,
           CASE WHEN b.customer_id IS NOT NULL THEN 'customer ' || b.customer_id
                ELSE 'reseller ' || b.reseller_id END AS owner,
           p.name AS provider_name,
           CASE b.frequency WHEN 'daily' THEN interval '1 day' WHEN 'weekly' THEN interval '7 days'
                ELSE interval '1 month' END AS span
    FROM batch b
    LEFT JOIN customers c ON c.id = b.customer_id
    LEFT JOIN resellers r ON r.id = b.reseller_id
    JOIN providers p ON p.id = coalesce(c.provider_id, r.provider_id)
), addresses AS (
    SELECT o.id,
           array_agg(DISTINCT a ORDER BY a) FILTER (WHERE a ~ '{EMAIL_RE}') AS valid,
           array_agg(DISTINCT a ORDER BY a) FILTER (WHERE a !~ '{EMAIL_RE}') AS invalid
    FROM owners o
    LEFT JOIN LATERAL (SELECT nullif(btrim(x), '') AS a FROM unnest(o.recipients) x) u ON u.a IS NOT NULL
    GROUP BY o.id
), sources AS (
    SELECT (SELECT max(report_date) FROM exchange_usage_reports) AS exchange_through,
           (SELECT max(period_end) FROM addon_usage_reports) AS addon_through
)
SELECT o.id AS schedule_id, o.customer_id, o.reseller_id, o.owner, o.owner_name, o.provider_name, o.report_kind,
       o.frequency, o.span, o.next_run_on, (g.period_end - o.span)::date AS period_start, g.period_end::date,
       ((g.period_end - o.span)::date::timestamp AT TIME ZONE %(tz)s) AS start_ts,
       (g.period_end::date::timestamp AT TIME ZONE %(tz)s) AS end_ts,
       a.valid AS recipients, a.invalid AS invalid_recipients,
       CASE WHEN o.owner_status = 'closed' THEN 'owner closed'
            WHEN o.owner_status <> 'active' THEN split_part(o.owner, ' ', 1) || ' ' || o.owner_status
            WHEN a.valid IS NULL AND a.invalid IS NULL THEN 'schedule has no recipients'
            WHEN a.valid IS NULL THEN 'no valid recipient address'
       END AS skip_reason,
       coalesce(CASE o.report_kind
                    WHEN 'exchange_usage' THEN g.period_end::date - 1 <= src.exchange_through
                    WHEN 'addon_usage' THEN g.period_end::date <= src.addon_through
                    ELSE true END, false) AS source_ready
FROM owners o
JOIN addresses a ON a.id = o.id
CROSS JOIN sources src
CROSS JOIN LATERAL generate_series(o.next_run_on::timestamp, %(today)s::timestamp, o.span)
    WITH ORDINALITY AS g(period_end, n)
WHERE g.n <= %(max_periods)s
"""

# Periods whose source is not there yet leave the batch: kept due, neither sent nor skipped.
_WAITING = "DELETE FROM due_reports WHERE skip_reason IS NULL AND NOT source_ready"

# A closed owner's schedule is not an error to report: it just sends nothing any more.
_SKIPPED = """
SELECT skip_reason, schedule_id, owner, count(*) FROM due_reports
WHERE skip_reason IS NOT NULL
GROUP BY skip_reason, schedule_id, owner ORDER BY schedule_id
"""

_INVALID_RECIPIENTS = """
SELECT DISTINCT schedule_id, owner, invalid_recipients FROM due_reports
WHERE invalid_recipients IS NOT NULL AND skip_reason IS NULL ORDER BY schedule_id
"""

_TO_SEND = """
SELECT schedule_id, period_start, period_end, report_kind, frequency, owner, owner_name, provider_name, recipients
FROM due_reports WHERE skip_reason IS NULL ORDER BY schedule_id, period_start
"""

# The customers each period reports on: the schedule's customer, or its reseller's customers.
_CUSTOMERS = """
owned AS (
    SELECT d.schedule_id, d.period_start, d.period_end, d.start_ts, d.end_ts, c.id AS customer_id,
           c.name AS customer_name
    FROM due_reports d JOIN customers c ON c.id = d.customer_id
    WHERE d.skip_reason IS NULL AND d.report_kind = %(kind)s
    UNION ALL
    SELECT d.schedule_id, d.period_start, d.period_end, d.start_ts, d.end_ts, c.id, c.name
    FROM due_reports d JOIN customers c ON c.reseller_id = d.reseller_id
    WHERE d.skip_reason IS NULL AND d.report_kind = %(kind)s
)"""

# The subscriptions each period reports on: those of its customers.
_TARGETS = f"""{_CUSTOMERS},
targets AS (
    SELECT o.*, s.id AS subscription_id, s.plan FROM owned o JOIN subscriptions s ON s.customer_id = o.customer_id
)"""

_ROWS = {
    "resource_usage": f"""
WITH {_TARGETS}
SELECT t.schedule_id, t.period_start, t.customer_id, t.customer_name, t.subscription_id, t.plan, res.code, res.unit,
       q.subscription_id IS NOT NULL AS has_quota, q.quota_limit, u.peak, u.last_used, u.samples
FROM targets t
CROSS JOIN quota_resources res
LEFT JOIN subscription_quotas q ON q.subscription_id = t.subscription_id AND q.resource = res.code
CROSS JOIN LATERAL (
    SELECT max(s.used) AS peak, (array_agg(s.used ORDER BY s.sampled_at DESC))[1] AS last_used, count(*) AS samples
    FROM resource_usage_samples s
    WHERE s.subscription_id = t.subscription_id AND s.resource = res.code
      AND s.sampled_at >= t.start_ts AND s.sampled_at < t.end_ts) u
WHERE q.subscription_id IS NOT NULL OR u.samples > 0
ORDER BY t.schedule_id, t.period_start, t.customer_name, t.customer_id, t.subscription_id, res.code
""",
    "voice_usage": f"""
WITH {_TARGETS}
SELECT t.schedule_id, t.period_start, t.customer_id, t.customer_name, t.subscription_id, t.plan,
       ocs.calls, ocs.minutes, sip.calls, sip.minutes, b.minutes_per_month
FROM targets t
CROSS JOIN LATERAL (
    SELECT count(*) AS calls, coalesce(sum(ceil(r.duration_seconds / 60.0)), 0)::bigint AS minutes
    FROM ocs_call_records r
    WHERE r.subscription_id = t.subscription_id AND r.started_at >= t.start_ts AND r.started_at < t.end_ts
      AND r.duration_seconds > 0) ocs
CROSS JOIN LATERAL (
    SELECT count(*) AS calls, coalesce(sum(ceil(r.duration_seconds / 60.0)), 0)::bigint AS minutes
    FROM sip_usage r
    WHERE r.subscription_id = t.subscription_id AND r.started_at >= t.start_ts AND r.started_at < t.end_ts
      AND r.duration_seconds > 0) sip
LEFT JOIN voice_bundles b ON b.subscription_id = t.subscription_id AND b.status = 'active'
WHERE ocs.calls > 0 OR sip.calls > 0 OR b.id IS NOT NULL
ORDER BY t.schedule_id, t.period_start, t.customer_name, t.customer_id, t.subscription_id
""",
    # report_date is the day in the thread's time zone, as the period's days are
    "exchange_usage": f"""
WITH {_CUSTOMERS}
SELECT t.schedule_id, t.period_start, t.customer_id, t.customer_name, o.id, o.name, r.report_date,
       r.subscription_id, r.mailboxes, r.user_mailboxes, r.shared_mailboxes, r.resource_mailboxes,
       r.total_item_size_bytes, r.total_deleted_item_size_bytes, r.item_count
FROM owned t
JOIN exchange_organizations o ON o.customer_id = t.customer_id
JOIN exchange_usage_reports r ON r.organization_id = o.id
    AND r.report_date >= t.period_start AND r.report_date < t.period_end
ORDER BY t.schedule_id, t.period_start, t.customer_name, t.customer_id, o.name, r.report_date
""",
    "addon_usage": f"""
WITH {_CUSTOMERS}
SELECT t.schedule_id, t.period_start, t.customer_id, t.customer_name, l.period_start, l.addon_name, l.currency,
       l.unit_price, l.subscriptions, l.quantity, l.amount
FROM owned t
JOIN addon_usage_report_lines l ON l.customer_id = t.customer_id
    AND l.period_start >= t.period_start AND l.period_start < t.period_end
ORDER BY t.schedule_id, t.period_start, t.customer_name, t.customer_id, l.period_start, l.addon_name, l.currency,
         l.unit_price
""",
}

_RECORD = """
INSERT INTO sent_reports (schedule_id, period_start, period_end, report_kind, recipients, row_count, outbox_key,
                          sent_at)
SELECT d.schedule_id, d.period_start, d.period_end, d.report_kind, d.recipients, n.row_count,
       'report-' || d.schedule_id || '-' || to_char(d.period_start, 'YYYY-MM-DD'), %(clock)s
FROM due_reports d
JOIN unnest(%(ids)s::bigint[], %(starts)s::date[], %(counts)s::int[]) AS n(schedule_id, period_start, row_count)
    USING (schedule_id, period_start)
WHERE d.skip_reason IS NULL
ORDER BY d.schedule_id, d.period_start
ON CONFLICT (schedule_id, period_start) DO NOTHING
RETURNING schedule_id, period_start, outbox_key
"""

# One period on from the last period handled (sent now or found sent before), not from the clock.
# The guard on next_run_on: a schedule edited since it was read is left as edited.
_ADVANCE = """
UPDATE report_schedules s SET next_run_on = (d.last_end + d.span)::date
FROM (SELECT schedule_id, next_run_on, span, max(period_end) AS last_end FROM due_reports
      WHERE skip_reason IS NULL GROUP BY schedule_id, next_run_on, span) d
WHERE s.id = d.schedule_id AND s.next_run_on = d.next_run_on
"""


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def _text(value: str) -> str:
    """A name typed into the panel, safe in a spreadsheet: never read as a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_row(kind: str, row: tuple) -> tuple:
    head, rest = row[:4], row[4:]
    if kind == "resource_usage":
        code, unit, has_quota, limit, peak, last_used, samples = rest
        quota = (limit if limit is not None else "unlimited") if has_quota else None
        over = None if peak is None or limit is None else ("yes" if peak > limit else "no")
        return tuple(_cell(v) for v in (*head, code, unit, quota, peak, last_used, samples, over))
    if kind == "voice_usage":
        ocs_calls, ocs_minutes, sip_calls, sip_minutes, bundle = rest
        return tuple(_cell(v) for v in (*head, ocs_calls, ocs_minutes, sip_calls, sip_minutes,
                                        ocs_minutes + sip_minutes, bundle))
    if kind == "addon_usage":  # its decimals are money: to the cent, as stored
        return tuple(str(v) if isinstance(v, Decimal) else _cell(v) for v in row)
    return tuple(_cell(v) for v in row)  # exchange_usage: the stored report's columns as they are


def _csv(kind: str, rows: list[tuple]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)  # RFC 4180: comma, CRLF, quotes where needed
    writer.writerow(COLUMNS[kind])
    # columns 1 and 3 of every kind (the customer's name; the plan, organisation or add-on) are typed into the panel
    writer.writerows((r[0], _text(r[1]), r[2], _text(r[3]), *r[4:]) for r in rows)
    return out.getvalue().encode("utf-8")


def _summary(kind: str, rows: list[tuple]) -> list[tuple[str, str]]:
    """A few totals for the message body, from the CSV rows (their cells are strings)."""
    if kind == "resource_usage":
        over = sum(1 for r in rows if r[-1] == "yes")
        return [("Subscriptions", str(len({r[2] for r in rows}))), ("Resources reported", str(len(rows))),
                ("Over quota in the period", str(over))]
    if kind == "voice_usage":
        return [("Subscriptions", str(len({r[2] for r in rows}))),
                ("Answered calls", str(sum(int(r[4]) + int(r[6]) for r in rows))),
                ("Minutes", str(sum(int(r[8]) for r in rows)))]
    if kind == "exchange_usage":
        latest = {r[2]: r for r in rows}  # rows go by day within an organisation: its last day's wins
        return [("Organisations", str(len(latest))), ("Daily reports", str(len(rows))),
                ("Mailboxes on each organisation's last day", str(sum(int(r[6]) for r in latest.values())))]
    amounts: dict[str, Decimal] = {}
    for r in rows:
        amounts[r[4]] = amounts.get(r[4], Decimal(0)) + Decimal(r[8])
    return [("Customers", str(len({r[0] for r in rows}))), ("Add-on lines", str(len(rows))),
            *((f"Amount ({currency})", str(total)) for currency, total in sorted(amounts.items()))]


def period_label(frequency: str, start: date, end: date) -> str:
    """'30 Nov 2026', '23 Nov to 29 Nov 2026' or 'November 2026' (``end`` exclusive).

    ASCII only: it goes into subjects, and a non-ASCII character there comes out of the stdlib's
    header folding with a space added before it."""
    last = end - timedelta(days=1)
    if frequency == "monthly":
        return f"{start:%B %Y}"
    if frequency == "daily":
        return f"{start.day} {start:%b %Y}"
    first = f"{start.day} {start:%b}" if start.year == last.year else f"{start.day} {start:%b %Y}"
    return f"{first} to {last.day} {last:%b %Y}"


def _report_skips(conn, report: StepReport) -> None:
    for reason, schedule_id, owner, periods in conn.execute(_SKIPPED).fetchall():
        if reason == "owner closed":
            report.add("schedules_of_closed_owners")
            continue
        report.skip(reason, f"schedule {schedule_id} ({owner}), {periods} period(s) due")
    for schedule_id, owner, invalid in conn.execute(_INVALID_RECIPIENTS).fetchall():
        for address in invalid:
            report.skip("recipient address not valid", f"schedule {schedule_id} ({owner}): {address!r}")


def _send_batch(conn, *, today: date, tz: str, clock, after: int, report: StepReport) -> int | None:
    """One batch of schedules, in the caller's transaction; the batch's last schedule id, or None."""
    conn.execute(_DUE, {"today": today, "tz": tz, "after": after, "batch": BATCH,
                        "max_periods": MAX_PERIODS_PER_SCHEDULE})
    (last,) = conn.execute("SELECT max(schedule_id) FROM due_reports").fetchone()
    if last is None:
        return None
    report.add("periods_waiting_for_source", conn.execute(_WAITING).rowcount)
    _report_skips(conn, report)
    periods = conn.execute(_TO_SEND).fetchall()
    rows: dict[tuple[int, date], list[tuple]] = {(p[0], p[1]): [] for p in periods}
    for kind in sorted({p[3] for p in periods}):
        for schedule_id, period_start, *row in conn.execute(_ROWS[kind], {"kind": kind}):
            rows[(schedule_id, period_start)].append(_csv_row(kind, tuple(row)))
    keys = list(rows)
    recorded = conn.execute(_RECORD, {"clock": clock, "ids": [k[0] for k in keys], "starts": [k[1] for k in keys],
                                      "counts": [len(rows[k]) for k in keys]}).fetchall()
    new = {(schedule_id, period_start): outbox_key for schedule_id, period_start, outbox_key in recorded}
    queued = 0
    for schedule_id, period_start, period_end, kind, frequency, owner, owner_name, provider, recipients in periods:
        outbox_key = new.get((schedule_id, period_start))
        if outbox_key is None:
            continue
        data = rows[(schedule_id, period_start)]
        last_day = period_end - timedelta(days=1)
        filename = f"{kind.replace('_', '-')}-{period_start:%Y%m%d}-{last_day:%Y%m%d}.csv"
        context = {
            "provider": provider, "owner_name": owner_name, "title": TITLES[kind], "frequency": frequency,
            "period": period_label(frequency, period_start, period_end), "period_start": period_start.isoformat(),
            "period_last_day": last_day.isoformat(), "columns": COLUMNS[kind], "rows": data[:PREVIEW_ROWS],
            "row_count": len(data), "more": max(len(data) - PREVIEW_ROWS, 0), "summary": _summary(kind, data),
            "filename": filename,
        }
        attachment = [(filename, "text/csv", _csv(kind, data))]
        for address in recipients:
            queued += enqueue(conn, dedupe_key=f"{outbox_key}:{address}", to=address, template=TEMPLATE,
                              context=context, not_before=clock, priority=6, attachments=attachment)
    advanced = conn.execute(_ADVANCE).rowcount
    report.add("reports_sent", len(new))
    report.add("report_rows", sum(len(rows[k]) for k in new))
    report.add("already_sent", len(periods) - len(new))
    report.add("emails_queued", queued)
    report.add("schedules_advanced", advanced)
    return last


def send_scheduled_enterprise_reports(panel_db, interval) -> dict:
    """Send enterprise reports due in automatic schedules: each due schedule's periods, up to the
    run's day, as a usage report e-mailed with its CSV to the schedule's recipients, once per
    schedule and period; the schedule's next run moved on from the period sent."""
    today = interval.end.astimezone(ZoneInfo(interval.tz)).date()
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # each batch commits on its own (explicit transactions)
        after = 0
        while True:
            if report.counts["reports_sent"] >= MAX_REPORTS_PER_RUN:
                report.add("max_reports_reached")  # the next run continues where this one stopped
                break
            with conn.transaction():
                last = _send_batch(conn, today=today, tz=interval.tz, clock=interval.end, after=after, report=report)
            if last is None:
                break
            after = last
    return {"day": today.isoformat(), **report.as_dict()}
