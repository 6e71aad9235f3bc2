"""MailFlowReport: the Exchange message-tracking (mail flow) logs of a data interval, and hourly totals.

Unlike the other Exchange threads it reads a span: its data interval.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

from pydantic import BeforeValidator, Field

from panelflow.hooks.powershell import parse_records, ps_datetime
from panelflow.step import StepReport

from ._backend import ExchangeServer, Record, Texts, each_server, exchange_servers, utc_text

MAIL_FLOW_LIMIT = 5000               # rows one message-tracking call may return before its span is split
MAIL_FLOW_MIN_SLICE = timedelta(minutes=1)
MAIL_FLOW_MAX_CALLS = 256            # message-tracking calls per server and run, whatever the splitting


class TrackingEvent(Record):
    Timestamp: Annotated[datetime, BeforeValidator(ps_datetime)]
    EventId: str = Field(min_length=1)
    Source: str | None = None
    Sender: str | None = None
    Recipients: Texts = []
    RecipientCount: int | None = None
    MessageSubject: str | None = None
    TotalBytes: int | None = Field(default=None, ge=0)
    MessageId: str | None = None
    InternalMessageId: int
    ServerHostname: str | None = None

    @property
    def sender_domain(self) -> str:
        return (self.Sender or "").rpartition("@")[2].lower() if "@" in (self.Sender or "") else ""


TRACKING_COLUMNS = ("exchange_server_id", "logged_at", "event_id", "source", "internal_message_id", "recipient",
                    "message_id", "sender", "sender_domain", "message_subject", "total_bytes", "recipient_count",
                    "server_hostname")

_HOURLY = """
WITH per_message AS (
    SELECT date_trunc('hour', logged_at, 'UTC') AS hour, sender_domain, event_id, exchange_server_id,
           internal_message_id, count(*) AS events, count(*) FILTER (WHERE recipient <> '') AS recipients,
           max(coalesce(total_bytes, 0)) AS total_bytes
    FROM exchange_message_tracking
    WHERE logged_at >= %(first)s AND logged_at < %(last)s
    GROUP BY 1, 2, 3, 4, 5
)
INSERT INTO exchange_mail_flow_hourly (hour, sender_domain, event_id, events, messages, recipients, total_bytes)
SELECT hour, sender_domain, event_id, sum(events), count(*), sum(recipients), sum(total_bytes)
FROM per_message GROUP BY 1, 2, 3
"""


def _hour_of(at: datetime) -> datetime:
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _tracking_events(hook, server: ExchangeServer, start: datetime, end: datetime, limit: int,
                     min_slice: timedelta, report: StepReport) -> list[dict]:
    """The server's tracking rows in [start, end], asked for the whole span first and split in
    halves wherever an answer came back cut (more than ``limit`` rows), down to ``min_slice``."""
    pending = [(start, end)]
    rows: list[dict] = []
    calls = 0
    while pending:
        if calls >= MAIL_FLOW_MAX_CALLS:
            report.skip(f"{len(pending)} span(s) not read: {MAIL_FLOW_MAX_CALLS} message-tracking calls made",
                        f"server {server.name} {utc_text(pending[0][0])}")
            break
        lo, hi = pending.pop(0)
        calls += 1
        answer = hook.run_script("exchange/get_message_tracking_log",
                                 {"Server": server.name, "Start": utc_text(lo), "End": utc_text(hi), "Limit": limit})
        if len(answer) > limit:
            if hi - lo > min_slice:
                mid = lo + timedelta(seconds=int((hi - lo).total_seconds() // 2))
                pending[:0] = [(lo, mid), (mid, hi)]
                continue
            report.skip(f"more than {limit} events in {int((hi - lo).total_seconds())} s: the rest of the span is"
                        " not read", f"server {server.name} {utc_text(lo)}")
        rows.extend(answer)
    report.add("tracking_calls", calls)
    return rows


def update_mail_flow_logs(panel_db, interval, params, log) -> dict:
    """Update Exchange mail flow logs: the data interval's message-tracking events of every server.

    One row per event and recipient, unique on (server, InternalMessageId, EventId, recipient,
    timestamp): a rerun of the same hour, or spans asked twice, add nothing. Output is bounded:
    one call returns at most ``mail_flow_limit`` rows (+1 to tell it was cut); a cut span is asked
    again in halves. Then the hourly totals per sender domain and event of every whole hour the interval
    touches are recomputed from the table (so an hour read in two runs adds up once).
    """
    params = params or {}
    start, end = interval.start, interval.end
    limit = int(params.get("mail_flow_limit", MAIL_FLOW_LIMIT))
    min_slice = timedelta(seconds=int(params.get("mail_flow_min_slice_seconds", MAIL_FLOW_MIN_SLICE.total_seconds())))
    report = StepReport().zero("events", "rows_added", "tracking_calls", "hourly_rows")
    if end <= start:
        return report.as_dict()

    def work(conn, hook, server):
        rows = _tracking_events(hook, server, start, end, limit, min_slice, report)
        events = parse_records(TrackingEvent, rows, report, "tracking event")
        report.add("events", len(events))
        seen: dict[tuple, tuple] = {}
        for e in events:
            for recipient in (e.Recipients or [""]):
                row = (server.id, e.Timestamp, e.EventId.upper(), e.Source, e.InternalMessageId, recipient.lower(),
                       e.MessageId, e.Sender, e.sender_domain, e.MessageSubject, e.TotalBytes,
                       e.RecipientCount if e.RecipientCount is not None else len(e.Recipients), e.ServerHostname)
                seen[(e.InternalMessageId, row[2], row[5], e.Timestamp)] = row
        if not seen:
            return
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE incoming_tracking (LIKE exchange_message_tracking) ON COMMIT DROP")
            columns = ", ".join(TRACKING_COLUMNS)
            with conn.cursor() as cur, cur.copy(f"COPY incoming_tracking ({columns}) FROM STDIN") as copy:
                for row in seen.values():
                    copy.write_row(row)
            added = conn.execute(f"INSERT INTO exchange_message_tracking ({columns})"
                                 f" SELECT {columns} FROM incoming_tracking"
                                 " ON CONFLICT DO NOTHING").rowcount
        report.add("rows_added", added)

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        each_server(exchange_servers(conn), report, log, lambda server, hook: work(conn, hook, server))
        first = _hour_of(start)
        last = end if _hour_of(end) == end else _hour_of(end) + timedelta(hours=1)
        with conn.transaction():   # whole hours replaced: one statement's DELETE and INSERT would collide
            conn.execute("DELETE FROM exchange_mail_flow_hourly WHERE hour >= %s AND hour < %s", (first, last))
            report.add("hourly_rows", conn.execute(_HOURLY, {"first": first, "last": last}).rowcount)
    return report.as_dict()


