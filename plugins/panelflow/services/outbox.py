"""The one e-mail path: render → outbox (panel DB) → SMTP, for every message panelflow sends.

Producers call :func:`enqueue` with a ``dedupe_key`` naming the event ("invoice:2026-11:4711"):
the outbox's unique key makes a rerun, retry or backfill that enqueues the same notice again a
no-op. Content is rendered from ``include/templates/mail/<template>/`` when enqueued, so what is
sent is exactly what was stored.

:func:`send_due` delivers due messages over the Airflow connection ``smtp_default`` (the SMTP
provider's hook: host, port, TLS and credentials stay in the connection), one SMTP connection
per run. A message is claimed with ``FOR UPDATE SKIP LOCKED`` and marked ``sending`` in its own
commit just before its DATA, ``sent`` right after the server's 250. So:

- a transient failure (4xx, dropped connection) means the server did not accept it: the message
  is retried (reconnect within the run, then a later run with backoff) with the same Message-ID;
- a permanent failure (5xx) marks it failed, with the server's answer;
- a worker killed between ``sending`` and ``sent`` leaves the message ``uncertain``: it is
  reported and never resent automatically, because the server may already have accepted it.
  Never two e-mails; what is not known to be sent is visible, not lost silently.
"""

from __future__ import annotations

import hashlib
import smtplib
import time
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

TEMPLATES = Path(__file__).resolve().parents[3] / "include" / "templates" / "mail"
LEASE = timedelta(minutes=15)  # a claim older than this belongs to a dead attempt


@lru_cache(maxsize=1)
def _jinja():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
    )


def render(template: str, context: dict[str, Any]) -> tuple[str, str, str | None]:
    """(subject, text body, html body or None) of ``template`` for ``context``."""
    env = _jinja()
    subject = env.get_template(f"{template}/subject.txt").render(context).strip()
    text = env.get_template(f"{template}/body.txt").render(context)
    html = None
    if (TEMPLATES / template / "body.html").exists():
        html = env.get_template(f"{template}/body.html").render(context)
    return " ".join(subject.split()), text, html


def message_id(dedupe_key: str) -> str:
    """The same Message-ID for every delivery attempt of one event, so receivers can dedupe."""
    return f"<{hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]}@panelflow>"


def enqueue(conn, *, dedupe_key: str, to: str, template: str, context: dict[str, Any], not_before: datetime,
            priority: int = 5, from_address: str | None = None, headers: dict[str, str] | None = None,
            attachments: list[tuple[str, str, bytes]] | None = None) -> bool:
    """Queue one message for one event; False when that event's message is already queued.

    ``attachments`` are ``(filename, content type, bytes)``, stored with the message (call
    inside a transaction so the message is never visible without them).
    """
    subject, text, html = render(template, context)
    row = conn.execute(
        INSERT_MESSAGE + " RETURNING id",
        (dedupe_key, template, to, from_address, subject, text, html, Jsonb(headers or {}), priority, not_before,
         message_id(dedupe_key), None),
    ).fetchone()
    if row is not None and attachments:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO email_outbox_attachments (outbox_id, filename, content_type, content)"
                            " VALUES (%s, %s, %s, %s)", [(row[0], *a) for a in attachments])
    return row is not None


# One outbox row; parameters in column order. Bulk producers (campaigns) use it with executemany.
INSERT_MESSAGE = (
    "INSERT INTO email_outbox (dedupe_key, template, to_address, from_address, subject, body_text, body_html,"
    " headers, priority, not_before, message_id, campaign_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (dedupe_key) DO NOTHING"
)


def _build(row: dict, default_from: str, attachments=()) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = row["from_address"] or default_from
    msg["To"] = row["to_address"]
    msg["Subject"] = row["subject"]
    msg["Message-ID"] = row["message_id"]
    msg["Date"] = formatdate(localtime=False)
    for k, v in (row["headers"] or {}).items():
        msg[k] = v
    msg.set_content(row["body_text"])
    if row["body_html"]:
        msg.add_alternative(row["body_html"], subtype="html")
    for filename, content_type, content in attachments:
        maintype, _, subtype = content_type.partition("/")
        msg.add_attachment(bytes(content), maintype=maintype, subtype=subtype, filename=filename)
    return msg


def is_transient(exc: BaseException) -> bool:
    """4xx answers and lost connections are worth another try; 5xx answers are not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError,
                            TimeoutError, OSError))


def backoff(attempts: int) -> timedelta:
    """Next try after a transient failure: 1, 2, 4 … minutes, at most an hour."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 60))


class SmtpSession:
    """One SMTP connection for a run, reopened (bounded, with backoff) when it drops."""

    def __init__(self, conn_id: str = "smtp_default", reconnects: int = 3, pause: float = 0.2):
        self.conn_id = conn_id
        self.reconnects = reconnects
        self.pause = pause
        self.hook = None
        self.default_from = "panelflow@localhost"

    def _open(self):
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        self.close()
        self.hook = SmtpHook(smtp_conn_id=self.conn_id).get_conn()
        self.default_from = self.hook.from_email or self.default_from
        return self._client()

    def _client(self):
        # The hook connects, upgrades to TLS and logs in from the connection; it has no public
        # accessor for the open client it keeps (provider pinned in requirements.txt).
        return self.hook._smtp_client

    def close(self) -> None:
        if self.hook is not None:
            try:
                self._client().quit()
            except Exception:  # already gone
                pass
            self.hook = None

    def sender(self) -> str:
        """The connection's From address (opens the connection if needed)."""
        if self.hook is None:
            self._open()
        return self.default_from

    def send(self, msg: EmailMessage) -> None:
        """Send ``msg``; a lost connection is reopened (bounded, with backoff) and the send retried."""
        for attempt in range(self.reconnects + 1):
            client = self._client() if self.hook is not None else self._open()
            try:
                client.send_message(msg)
                return
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as exc:
                self.hook = None  # the server never answered 250: nothing was accepted
                if attempt == self.reconnects:
                    raise exc
                time.sleep(self.pause * 2 ** attempt)


_CLAIM = """
UPDATE email_outbox SET status = 'claimed', claimed_by = %(claimer)s, claimed_at = clock_timestamp()
WHERE id IN (
    SELECT id FROM email_outbox
    WHERE status = 'pending' AND not_before <= %(as_of)s
    ORDER BY priority, not_before, id
    LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
RETURNING id, to_address, from_address, subject, body_text, body_html, headers, message_id, attempts
"""


_SENT = """done AS (
    UPDATE email_outbox SET status = 'sent', sent_at = clock_timestamp(), last_error = NULL
    WHERE id = ANY(%s) RETURNING id, to_address, subject, message_id, sent_at)"""
_LOG_SENT = """INSERT INTO email_logs (recipient, subject, status, sent_at, outbox_id, message_id)
    SELECT to_address, subject, 'sent', sent_at, id, message_id FROM done"""
_RECORD_SENT = f"WITH {_SENT} {_LOG_SENT}"
# The same, and the next message marked 'sending', in one statement (one commit per message).
_MARK_SENDING = f"""WITH {_SENT}, logged AS ({_LOG_SENT})
UPDATE email_outbox SET status = 'sending', attempts = attempts + 1, claimed_at = clock_timestamp()
WHERE id = %s"""


def release_stale_claims(conn, lease: timedelta = LEASE) -> dict[str, int]:
    """Claims of dead attempts: never-started messages go back to pending; messages that were
    being sent become ``uncertain`` (the server may have accepted them: not resent).

    Measured on the database's own clock: a lease is about whether a process is alive, not
    about the run's business date.
    """
    with conn.transaction():
        requeued = conn.execute(
            "UPDATE email_outbox SET status = 'pending', claimed_by = NULL, claimed_at = NULL"
            " WHERE status = 'claimed' AND claimed_at < clock_timestamp() - %s", (lease,)).rowcount
        uncertain = conn.execute(
            "UPDATE email_outbox SET status = 'uncertain', last_error = 'worker stopped during SMTP DATA;"
            " not resent automatically' WHERE status = 'sending' AND claimed_at < clock_timestamp() - %s",
            (lease,)).rowcount
    return {"requeued": requeued, "uncertain": uncertain}


def send_due(conn, *, as_of: datetime, claimer: str, smtp_conn_id: str = "smtp_default", batch: int = 100,
             max_messages: int = 5000, max_attempts: int = 5, lease: timedelta = LEASE,
             session: SmtpSession | None = None) -> dict[str, Any]:
    """Send the messages due at ``as_of`` (at most ``max_messages``); returns a summary.

    One commit per message: it records the previous messages as sent and marks this one
    ``sending`` before its DATA. Recording "sent" late is safe — if the worker dies first,
    those messages end ``uncertain``, never resent.
    """
    autocommit = conn.autocommit
    conn.commit()
    conn.autocommit = True  # each state change below is one statement: atomic and durable on its own
    stale = release_stale_claims(conn, lease)
    counts = {"sent": 0, "deferred": 0, "failed": 0}
    errors: list[str] = []
    unrecorded: list[dict] = []  # accepted by the server, "sent" not yet committed
    session = session or SmtpSession(smtp_conn_id)

    def record_sent() -> None:
        if unrecorded:
            conn.execute(_RECORD_SENT, ([r["id"] for r in unrecorded],))
            unrecorded.clear()

    try:
        while sum(counts.values()) < max_messages:
            with conn.transaction():
                record_sent()
                rows = conn.execute(_CLAIM, {"claimer": claimer, "as_of": as_of,
                                             "batch": min(batch, max_messages - sum(counts.values()))}).fetchall()
            if not rows:
                break
            files: dict[int, list] = {}
            for outbox_id, *attachment in conn.execute(
                    "SELECT outbox_id, filename, content_type, content FROM email_outbox_attachments"
                    " WHERE outbox_id = ANY(%s) ORDER BY outbox_id, filename", ([r[0] for r in rows],)):
                files.setdefault(outbox_id, []).append(attachment)
            for values in rows:
                row = dict(zip(("id", "to_address", "from_address", "subject", "body_text", "body_html", "headers",
                                "message_id", "attempts"), values))
                msg = _build(row, session.sender(), files.get(row["id"], ()))  # before 'sending': a bad row fails while still 'claimed'
                # one statement, one commit: the previous message(s) sent, this one sending
                conn.execute(_MARK_SENDING, ([r["id"] for r in unrecorded], row["id"]))
                unrecorded.clear()
                try:
                    session.send(msg)
                except (smtplib.SMTPException, OSError) as exc:  # the server's answer: recorded per message
                    attempts = row["attempts"] + 1
                    give_up = not is_transient(exc) or attempts >= max_attempts
                    reason = f"{type(exc).__name__}: {exc}"[:500]
                    errors.append(f"{row['to_address']}: {reason}")
                    with conn.transaction():
                        conn.execute(
                            "UPDATE email_outbox SET status = %s, last_error = %s, not_before = %s,"
                            " claimed_by = NULL WHERE id = %s",
                            ("failed" if give_up else "pending", reason, as_of + backoff(attempts), row["id"]))
                        if give_up:
                            conn.execute("INSERT INTO email_logs (recipient, subject, status, sent_at, outbox_id,"
                                         " message_id, error) VALUES (%s, %s, 'failed', clock_timestamp(), %s, %s, %s)",
                                         (row["to_address"], row["subject"], row["id"], row["message_id"], reason))
                    counts["failed" if give_up else "deferred"] += 1
                    continue
                unrecorded.append(row)
                counts["sent"] += 1
    finally:
        # Whatever happened: what the server accepted is recorded, and claims not reached go
        # back to pending. A message interrupted mid-DATA stays 'sending' → uncertain later.
        session.close()
        with conn.transaction():
            record_sent()
            conn.execute("UPDATE email_outbox SET status = 'pending', claimed_by = NULL, claimed_at = NULL"
                         " WHERE status = 'claimed' AND claimed_by = %s", (claimer,))
        conn.autocommit = autocommit
    (backlog,) = conn.execute("SELECT count(*) FROM email_outbox WHERE status = 'pending' AND not_before <= %s",
                              (as_of,)).fetchone()
    return {**counts, **stale, "due_left": backlog, "errors": errors[:20]}
