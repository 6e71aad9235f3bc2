"""Mail threads: SendEmailNotificationsWork (the outbox sender) and SendEmailCampaignWork."""

from __future__ import annotations

import logging
import os
import re
import socket
from datetime import timedelta

from psycopg.types.json import Jsonb

from panelflow.services.outbox import INSERT_MESSAGE, message_id, send_due

log = logging.getLogger(__name__)
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
EXPAND_CHUNK = 2000
MAX_EXPAND_PER_RUN = 200_000  # bounded: a bigger campaign continues in the next run
MAX_SEND_PER_RUN = 50_000  # a few minutes of SMTP at the measured rate; the rest next run


def _claimer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_due_emails(panel_db, interval) -> dict:
    """Process notifications and send due emails: every outbox message due at the run's clock.

    The daily digest rides along (panelflow.services.digest): first, each domain whose settings
    say ``daily_digest: true`` and whose ``digest_after`` has passed gets yesterday's digest
    queued — once a day, under its dedupe key — so it goes out in this same run. This step runs
    every minute and already owns the SMTP path, so the digest needs no thread of its own; its
    clock is the run's (data interval end, catalog time zone), never the wall clock. The summary
    gains ``digests_queued`` only in a run that queued one, so it is unchanged when the feature
    is off. A digest that cannot be composed (catalog or DB error) is logged and reported as
    ``digest_error``; it never holds back the mail that is due.
    """
    with panel_db.get_conn() as conn:
        digests = _queue_digests(conn, interval)
        summary = send_due(conn, as_of=interval.end, claimer=_claimer())
    return {**summary, **digests}


def _queue_digests(conn, interval) -> dict:
    """What the summary says of the digests: ``{}`` unless one was queued (or failed to be)."""
    from zoneinfo import ZoneInfo

    from panelflow.catalog.cache import load_catalog_cached
    from panelflow.services.digest import queue_daily_digests

    try:
        catalog = load_catalog_cached()
        today = interval.end.astimezone(ZoneInfo(catalog.settings.timezone)).date()
        done = queue_daily_digests(conn, catalog, today, interval.end)
    except Exception as exc:  # noqa: BLE001 - the due mail goes out whatever the digest's trouble
        log.warning("daily digest not queued; due mail is still sent", exc_info=True)
        conn.rollback()
        return {"digest_error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"digests_queued": done["digests_queued"]} if done["digests_queued"] else {}


def _sandbox():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    # Campaign texts are written by operators in the panel: rendered sandboxed.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False), \
        SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


_PENDING_RECIPIENTS = """
SELECT r.id, r.email, r.name, r.data, r.rank FROM (
    SELECT id, email, name, data, row_number() OVER (ORDER BY id) - 1 AS rank
    FROM email_campaign_recipients WHERE campaign_id = %(c)s) r
WHERE NOT EXISTS (SELECT 1 FROM email_outbox o WHERE o.dedupe_key = 'campaign:' || %(c)s || ':' || lower(r.email))
  AND NOT EXISTS (SELECT 1 FROM email_unsubscribes u WHERE u.email = lower(r.email))
  AND r.id > %(after)s
ORDER BY r.id LIMIT %(limit)s
"""


def _expand(conn, campaign: dict, budget: int, report: dict) -> int:
    """Queue one personalised message per recipient, spread by the campaign's rate limit.

    Idempotent: a recipient's message is keyed ``campaign:<id>:<address>``. A recipient whose
    address is invalid or whose text does not render is reported and skipped; the rest go.
    """
    text_env, html_env = _sandbox()
    subject_t = text_env.from_string(campaign["subject_template"])
    text_t = text_env.from_string(campaign["text_template"])
    html_t = html_env.from_string(campaign["html_template"]) if campaign["html_template"] else None
    rate = campaign["rate_per_minute"]
    queued, after = 0, 0
    while queued < budget:
        rows = conn.execute(_PENDING_RECIPIENTS, {"c": campaign["id"], "after": after,
                                                  "limit": min(EXPAND_CHUNK, budget - queued)}).fetchall()
        if not rows:
            with conn.transaction():
                conn.execute("UPDATE email_campaigns SET expanded_at = clock_timestamp() WHERE id = %s", (campaign["id"],))
            break
        batch = []
        for rid, email, name, data, rank in rows:
            after = rid
            if not EMAIL.match(email or ""):
                report["bad_recipients"].append(f"campaign {campaign['id']} recipient {rid}: invalid address {email!r}")
                continue
            ctx = {**campaign["context"], **(data or {}), "name": name, "email": email}
            try:
                subject = " ".join(subject_t.render(ctx).split())
                text = text_t.render(ctx)
                html = html_t.render(ctx) if html_t else None
            except Exception as exc:  # noqa: BLE001 - a bad record is reported and skipped
                report["bad_recipients"].append(f"campaign {campaign['id']} recipient {rid}: {type(exc).__name__}: {exc}")
                continue
            key = f"campaign:{campaign['id']}:{email.lower()}"
            not_before = campaign["send_at"] + (timedelta(minutes=rank // rate) if rate else timedelta(0))
            batch.append((key, "campaign", email, campaign["from_address"], subject, text, html, Jsonb({}), 7,
                          not_before, message_id(key), campaign["id"]))
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(INSERT_MESSAGE, batch)
        queued += len(batch)
    return queued


def process_email_campaigns(panel_db, interval) -> dict:
    """Process email campaign and send emails: queue due campaigns' messages, drop the ones of
    addresses that unsubscribed since, send what is due (rate limits are in the due times)."""
    report: dict = {"campaigns": 0, "queued": 0, "cancelled_unsubscribed": 0, "bad_recipients": []}
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # reads see the latest state; each block below commits on its own
        with conn.transaction():
            conn.execute("UPDATE email_campaigns SET status = 'sending' WHERE status = 'scheduled' AND send_at <= %s",
                         (interval.end,))
        cols = ("id", "subject_template", "text_template", "html_template", "context", "from_address", "send_at",
                "rate_per_minute")
        campaigns = [dict(zip(cols, r)) for r in conn.execute(
            "SELECT " + ", ".join(cols) + " FROM email_campaigns WHERE status = 'sending' AND expanded_at IS NULL"
            " ORDER BY send_at, id").fetchall()]
        budget = MAX_EXPAND_PER_RUN
        for campaign in campaigns:
            report["campaigns"] += 1
            n = _expand(conn, campaign, budget, report)
            report["queued"] += n
            budget -= n
            if budget <= 0:
                break
        with conn.transaction():
            report["cancelled_unsubscribed"] = conn.execute(
                "UPDATE email_outbox o SET status = 'cancelled', last_error = 'unsubscribed'"
                " FROM email_unsubscribes u WHERE o.campaign_id IS NOT NULL AND o.status = 'pending'"
                " AND lower(o.to_address) = u.email").rowcount
        sent = send_due(conn, as_of=interval.end, claimer=_claimer(), batch=500, max_messages=MAX_SEND_PER_RUN)
        with conn.transaction():
            report["finished"] = conn.execute(
                "UPDATE email_campaigns c SET status = 'done', finished_at = clock_timestamp()"
                " WHERE status = 'sending' AND expanded_at IS NOT NULL AND NOT EXISTS ("
                " SELECT 1 FROM email_outbox o WHERE o.campaign_id = c.id AND o.status IN ('pending', 'claimed', 'sending'))"
            ).rowcount
    report["bad_recipients"] = report["bad_recipients"][:50]
    return {**report, "send": sent}
