"""Help desk threads: HelpDeskWork (tickets from the POP boxes, purge, unlock) and HelpDeskCommand.

A POP account (``helpdesk_pop_accounts``) is a mailbox named by an Airflow connection (see
:mod:`panelflow.hooks.pop3`); its ``purpose`` says who reads it: ``tickets`` boxes are read by
:func:`parse_pop_accounts`, ``commands`` boxes by :func:`process_pop_account_commands`. Both
threads share the run group ``helpdesk`` (one slot), so no two sessions read the boxes at once.

Reading a box is bounded (the account's ``max_messages_per_run``, oldest first; messages over
MAX_MESSAGE_BYTES are left in the box and reported) and at-least-once on the wire, exactly-once
in the database: each message is committed first, and only then marked with DELE, which the
server applies at QUIT. A worker killed in between leaves the message in the box; the next run
reads it again and finds its Message-ID already stored (ticket messages and the command log are
unique by Message-ID), so it is stored, acknowledged and carried out once.

A message that cannot be taken in (no sender address, unparseable) is kept byte for byte in
``helpdesk_rejected_messages`` with the reason, reported in the step's summary, and only then
deleted from the box; the rest of the box is processed.

Threading a ticket mail: the subject tag ``[#TCK-000123]`` first, then In-Reply-To, then
References (newest first) against the stored Message-IDs (ours included: the acknowledgements
are stored as the ticket's outgoing messages), else a new ticket, acknowledged once through the
outbox (not for automatic mail: bounces, auto-replies, lists, or mail from our own addresses).

Commands are the leading ``#`` lines of a command mail's body, for the ticket its subject tag or
In-Reply-To/References name, from active staff with ``can_command`` only::

    #close            #reopen           #delete
    #assign <staff e-mail or name | me>
    #priority <low | normal | high | urgent>
    #lock [until <ISO date-time>]     #unlock

Each command sets a state, so applying it again changes nothing ("unchanged"), and each command
mail is logged once. Unknown or invalid commands, and mail from anyone else, are reported and
answered through the outbox.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import psycopg
from dateutil.relativedelta import relativedelta
from psycopg.types.json import Jsonb

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue
from panelflow.services.retention import delete_older_than

TAG_PREFIX = "TCK"
TAG_RE = re.compile(r"\[#\s*TCK-(\d{1,18})\s*\]", re.IGNORECASE)
MAX_MESSAGE_BYTES = 25 * 1024 * 1024  # larger messages stay in the box, reported every run
MAX_COMMANDS = 20  # per mail

PURGE_AFTER = relativedelta(days=30)  # a deleted ticket stays restorable this long
PURGE_MAX_PER_RUN = 1000  # tickets; their messages go with them
PURGE_BATCH = 100
UNLOCK_MAX_PER_RUN = 10_000
UNLOCK_BATCH = 1000

PRIORITIES = ("low", "normal", "high", "urgent")
_ID_RE = re.compile(r"<[^<>\s]{1,250}>")
_COMMAND_RE = re.compile(r"^#([A-Za-z][\w-]*)(?:[ \t]+(.*?))?\s*$")
_AUTOMATIC_SENDERS = {"mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply", "donotreply"}


def ticket_tag(ticket_id: int) -> str:
    """``TCK-000123``: derived from the id, so every run and the panel agree on it."""
    return f"{TAG_PREFIX}-{ticket_id:06d}"


# -- parsing --------------------------------------------------------------------------------------


class Malformed(Exception):
    """The message cannot be taken in: ``kind`` (what the summary counts) and ``reason`` (kept)."""

    def __init__(self, kind: str, detail: str | None = None):
        self.kind = kind
        self.reason = f"{kind}: {detail}" if detail else kind
        super().__init__(self.reason)


@dataclass
class Mail:
    raw: bytes
    message_id: str
    from_address: str  # lower case
    from_name: str | None
    subject: str
    in_reply_to: str | None
    references: list[str]  # the References header's ids, oldest first
    body: str
    sent_at: datetime | None
    automatic: bool  # a bounce, auto-reply or list mail: never answered

    def thread_candidates(self) -> list[str]:
        """In-Reply-To, then References newest first: the stored Message-IDs to thread by."""
        ids = ([self.in_reply_to] if self.in_reply_to else []) + list(reversed(self.references))
        return list(dict.fromkeys(ids))[:50]


def _clean(value, limit: int | None = None) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates (undeclared 8-bit headers)."""
    text = "" if value is None else str(value)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    text = text.replace("\x00", "")
    return text[:limit] if limit else text


def _ids(value) -> list[str]:
    return _ID_RE.findall(_clean(value)) if value is not None else []


class _TextOfHtml(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _html_to_text(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    return re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts)).strip()


def _body(msg) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except Exception:  # a broken MIME structure: the mail is still a mail, without a readable body
        return ""
    if part is None:
        return ""
    try:
        text = part.get_content()
    except Exception:  # unknown charset, bad transfer encoding
        payload = part.get_payload(decode=True) or b""
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
    if not isinstance(text, str):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else ""
    if part.get_content_subtype() == "html":
        text = _html_to_text(text)
    return _clean(text)


def _is_automatic(msg, from_address: str) -> bool:
    """RFC 3834: never answer automatic mail (no loops with auto-responders or bounces)."""
    auto = _clean(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and not auto.startswith("no"):
        return True
    if _clean(msg.get("Precedence", "")).strip().lower() in ("bulk", "junk", "list", "auto_reply"):
        return True
    if msg.get("List-Id") or msg.get("X-Autoreply") or msg.get("X-Autorespond"):
        return True
    if msg.get_content_type() == "multipart/report":
        return True
    return from_address.split("@", 1)[0] in _AUTOMATIC_SENDERS


def parse_mail(raw: bytes) -> Mail:
    """A mail read from a box, or :class:`Malformed` with the reason it cannot be taken in."""
    if not raw.strip():
        raise Malformed("empty message")
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        from_header = msg["From"]
        addresses = [a for a in getattr(from_header, "addresses", ()) if a.username and a.domain]
        if not addresses:
            shown = _clean(from_header, 200) if from_header is not None else "missing"
            raise Malformed("no sender address", f"From: {shown}")
        sender = addresses[0]
        from_address = _clean(f"{sender.username}@{sender.domain}", 320).lower()
        ids = _ids(msg["Message-ID"])
        message_id = ids[0] if ids else f"<{hashlib.sha256(raw).hexdigest()}@panelflow.no-message-id>"
        in_reply_to = next(iter(_ids(msg["In-Reply-To"])), None)
        references = _ids(msg["References"])[-50:]
        sent_at = None
        date = msg["Date"]
        if date is not None:
            try:
                sent_at = date.datetime
            except Exception:
                sent_at = None
            if sent_at is not None and sent_at.tzinfo is None:
                sent_at = sent_at.replace(tzinfo=timezone.utc)
        subject = " ".join(_clean(msg["Subject"] if msg["Subject"] is not None else "").split())
        return Mail(raw=raw, message_id=message_id, from_address=from_address,
                    from_name=_clean(sender.display_name, 200) or None, subject=subject[:500] or "(no subject)",
                    in_reply_to=in_reply_to, references=references, body=_body(msg),
                    sent_at=sent_at, automatic=_is_automatic(msg, from_address))
    except Malformed:
        raise
    except Exception as exc:  # the parser or a header class gave up on it
        raise Malformed("unparseable", f"{type(exc).__name__}: {_clean(exc, 200)}") from exc


def _header_of(raw: bytes, name: str) -> str | None:
    """A header as well as it can be read from a message that did not parse (for the operator)."""
    match = re.search(rb"^" + name.encode() + rb":[ \t]*(.*(?:\r?\n[ \t].*)*)", raw[:65536],
                      re.IGNORECASE | re.MULTILINE)
    return _clean(match.group(1).decode("utf-8", "replace"), 500).strip() if match else None


# -- boxes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    conn_id: str
    address: str | None
    max_messages: int
    department_id: int | None
    reply_from: str | None


def _accounts(conn, purpose: str) -> list[Account]:
    rows = conn.execute(
        "SELECT a.id, a.name, a.conn_id, a.address, a.max_messages_per_run, a.department_id, d.reply_from"
        " FROM helpdesk_pop_accounts a LEFT JOIN helpdesk_departments d ON d.id = a.department_id"
        " WHERE a.enabled AND a.purpose = %s ORDER BY a.id", (purpose,)).fetchall()
    return [Account(*r) for r in rows]


def _own_addresses(conn) -> set[str]:
    rows = conn.execute("SELECT lower(address) FROM helpdesk_pop_accounts WHERE address IS NOT NULL"
                        " UNION SELECT lower(reply_from) FROM helpdesk_departments WHERE reply_from IS NOT NULL")
    return {r[0] for r in rows}


def _keep_rejected(conn, account: Account, raw: bytes, reason: str, interval) -> bool:
    return conn.execute(
        "INSERT INTO helpdesk_rejected_messages (pop_account_id, raw_sha256, raw, reason, message_id, from_header,"
        " subject, read_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (pop_account_id, raw_sha256) DO NOTHING",
        (account.id, hashlib.sha256(raw).digest(), raw, reason[:1000], _header_of(raw, "Message-ID"),
         _header_of(raw, "From"), _header_of(raw, "Subject"), interval.end)).rowcount == 1


Take = Callable[[psycopg.Connection, Account, Mail], None]


def _read_box(conn, account: Account, interval, report: StepReport, take: Take) -> None:
    """Read ``account``'s box: each message kept (taken in, or rejected) and committed, then DELE."""
    from panelflow.hooks.pop3 import Pop3Hook

    with Pop3Hook(account.conn_id) as box:
        sizes = box.sizes()
        budget = account.max_messages
        numbers = sorted(sizes)
        for i, number in enumerate(numbers):
            if budget == 0:
                report.add("left_in_box", len(numbers) - i)
                break
            where = f"{account.name} #{number}"
            if sizes[number] > MAX_MESSAGE_BYTES:
                report.skip("too large: left in the box", f"{where} ({sizes[number]} octets)")
                continue
            budget -= 1
            raw = box.retrieve(number)
            report.add("read")
            try:
                mail = parse_mail(raw)
                with conn.transaction():
                    take(conn, account, mail)
            except (Malformed, psycopg.DataError, ValueError) as exc:
                # psycopg.DataError: a value the database refuses (kept raw instead of lost)
                if not isinstance(exc, Malformed):
                    exc = Malformed("not storable", f"{type(exc).__name__}: {_clean(exc, 300)}")
                with conn.transaction():
                    _keep_rejected(conn, account, raw, exc.reason, interval)
                report.add("rejected")
                report.skip(exc.kind, f"{where}: {exc.reason}")
            box.delete(number)  # only now: the message is committed (taken in or kept as rejected)
            report.add("deleted_from_box")


def _read_boxes(panel_db, interval, log, purpose: str, take_for) -> dict:
    """Every enabled box of ``purpose``; a box that cannot be read is reported and the others read.

    The step fails at the end if a box could not be read (server down, login refused): that is
    not a bad message but a configuration or availability problem, for a retry and an alert.
    """
    from panelflow.hooks.pop3 import Pop3Error

    report = StepReport()
    errors: list[str] = []
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # each message is its own transaction, committed before its DELE
        own = _own_addresses(conn)
        accounts = _accounts(conn, purpose)
        for account in accounts:
            report.add("accounts")
            try:
                _read_box(conn, account, interval, report, take_for(interval, report, own))
            except Pop3Error as exc:
                errors.append(str(exc))
                conn.execute("UPDATE helpdesk_pop_accounts SET last_error = %s WHERE id = %s",
                             (str(exc)[:1000], account.id))
            else:
                conn.execute("UPDATE helpdesk_pop_accounts SET last_polled_at = %s, last_error = NULL WHERE id = %s",
                             (interval.end, account.id))
    summary = {**report.as_dict(), "account_errors": errors[:20]}
    if errors:
        log.error("help-desk boxes not read: %s; summary: %s", errors, summary)
        raise Pop3Error(f"{len(errors)} of {len(accounts)} box(es) could not be read: " + "; ".join(errors[:5]))
    return summary


def _thread(conn, mail: Mail) -> tuple[tuple | None, str]:
    """(ticket row locked FOR UPDATE, how it was found), or (None, 'new')."""
    columns = "id, status, requester_email, assigned_to, priority, locked, unlock_at, deleted_at"
    match = TAG_RE.search(mail.subject)
    if match:
        row = conn.execute(f"SELECT {columns} FROM helpdesk_tickets WHERE id = %s AND deleted_at IS NULL"
                           " FOR UPDATE", (int(match.group(1)),)).fetchone()
        if row:
            return row, "tag"
    candidates = mail.thread_candidates()
    if candidates:
        found = dict(conn.execute(
            "SELECT m.message_id, m.ticket_id FROM helpdesk_ticket_messages m"
            " JOIN helpdesk_tickets t ON t.id = m.ticket_id AND t.deleted_at IS NULL"
            " WHERE m.message_id = ANY(%s)", (candidates,)).fetchall())
        for ref in candidates:
            if ref in found:
                row = conn.execute(f"SELECT {columns} FROM helpdesk_tickets WHERE id = %s AND deleted_at IS NULL"
                                   " FOR UPDATE", (found[ref],)).fetchone()
                if row:
                    return row, "in_reply_to" if ref == mail.in_reply_to else "references"
    return None, "new"


def _staff(conn, address: str, *, commanding: bool = False) -> tuple[int, str] | None:
    return conn.execute(
        "SELECT id, name FROM helpdesk_staff WHERE lower(email) = lower(%s) AND active"
        + (" AND can_command" if commanding else ""), (address,)).fetchone()


def _answerable(mail: Mail, own: set[str]) -> bool:
    return not mail.automatic and mail.from_address not in own


def _reply_headers(mail: Mail) -> dict[str, str]:
    """An answer threads under the mail it answers, and says it is automatic (RFC 3834)."""
    return {"In-Reply-To": mail.message_id, "References": " ".join([*mail.references[-9:], mail.message_id]),
            "Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"}


# -- HelpDeskWork ---------------------------------------------------------------------------------


def _ticket_taker(interval, report: StepReport, own: set[str]) -> Take:
    def take(conn, account: Account, mail: Mail) -> None:
        if conn.execute("SELECT 1 FROM helpdesk_ticket_messages WHERE message_id = %s",
                        (mail.message_id,)).fetchone():
            report.add("already_stored")  # read again after a run that stored it but never QUIT
            return
        ticket, threaded_by = _thread(conn, mail)
        staff = _staff(conn, mail.from_address)
        reopen = False
        if ticket is None:
            (ticket_id,) = conn.execute(
                "INSERT INTO helpdesk_tickets (department_id, pop_account_id, subject, requester_email,"
                " requester_name, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (account.department_id, account.id, mail.subject, mail.from_address, mail.from_name,
                 interval.end, interval.end)).fetchone()
        else:
            ticket_id, status, requester = ticket[0], ticket[1], ticket[2]
            reopen = status == "closed" and staff is None and mail.from_address == requester.lower()
            conn.execute(
                "UPDATE helpdesk_tickets SET updated_at = greatest(updated_at, %s),"
                " status = CASE WHEN %s THEN 'open' ELSE status END,"
                " closed_at = CASE WHEN %s THEN NULL ELSE closed_at END WHERE id = %s",
                (interval.end, reopen, reopen, ticket_id))
        stored = conn.execute(
            "INSERT INTO helpdesk_ticket_messages (ticket_id, message_id, direction, threaded_by, pop_account_id,"
            " from_address, from_name, staff_id, subject, in_reply_to, body_text, sent_at, received_at, raw)"
            " VALUES (%s, %s, 'in', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (message_id) DO NOTHING RETURNING id",
            (ticket_id, mail.message_id, threaded_by, account.id, mail.from_address, mail.from_name,
             staff[0] if staff else None, mail.subject, mail.in_reply_to, mail.body, mail.sent_at, interval.end,
             mail.raw)).fetchone()
        if stored is None:  # stored meanwhile by someone else: undo this transaction, count it once
            report.add("already_stored")
            raise psycopg.Rollback()
        if ticket is None:
            report.add("tickets_created")
            if _answerable(mail, own):
                _acknowledge(conn, account, mail, ticket_id, interval)
                report.add("acknowledgements")
        else:
            report.add(f"replies_by_{threaded_by}")
            if reopen:
                report.add("reopened")

    return take


def _acknowledge(conn, account: Account, mail: Mail, ticket_id: int, interval) -> None:
    """The new ticket's acknowledgement, through the outbox, stored as the ticket's outgoing mail."""
    key = f"helpdesk-ack:{ticket_id}"
    sender = account.reply_from or account.address
    enqueue(conn, dedupe_key=key, to=mail.from_address, template="helpdesk_ticket_received",
            context={"tag": ticket_tag(ticket_id), "subject": mail.subject, "name": mail.from_name},
            not_before=interval.end, from_address=sender, headers=_reply_headers(mail))
    conn.execute(
        "INSERT INTO helpdesk_ticket_messages (ticket_id, message_id, direction, threaded_by, pop_account_id,"
        " from_address, subject, in_reply_to, body_text, received_at)"
        " SELECT %s, message_id, 'out', 'sent', %s, coalesce(from_address, ''), subject, %s, body_text, %s"
        " FROM email_outbox WHERE dedupe_key = %s ON CONFLICT (message_id) DO NOTHING",
        (ticket_id, account.id, mail.message_id, interval.end, key))


def parse_pop_accounts(panel_db, interval, log) -> dict:
    """Process Pop Account parser: the ticket boxes' mail into tickets and replies.

    Per box, oldest first and at most the account's ``max_messages_per_run``: a new mail opens a
    ticket (acknowledged once through the outbox), a reply joins its ticket by subject tag,
    In-Reply-To or References; each is committed, then deleted from the box.
    """
    return _read_boxes(panel_db, interval, log, "tickets", _ticket_taker)


def purge_deleted_tickets(panel_db, interval) -> dict:
    """Remove deleted tickets permanently: those deleted more than PURGE_AFTER before the run's
    clock, with their messages; at most PURGE_MAX_PER_RUN a run, a rerun deletes nothing more."""
    with panel_db.get_conn() as conn:
        return delete_older_than(conn, task="purge_deleted_tickets", table="helpdesk_tickets", column="deleted_at",
                                 cutoff=interval.end - PURGE_AFTER, interval_end=interval.end,
                                 max_rows=PURGE_MAX_PER_RUN, batch_size=PURGE_BATCH)


def unlock_scheduled_tickets(panel_db, interval) -> dict:
    """Manage locked tickets and unlock when schedule meets: every lock whose ``unlock_at`` is at
    or before the run's clock is released (bounded, in batches; a rerun finds nothing more)."""
    unlocked = batches = 0
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        while unlocked < UNLOCK_MAX_PER_RUN:
            want = min(UNLOCK_BATCH, UNLOCK_MAX_PER_RUN - unlocked)
            n = conn.execute(
                "UPDATE helpdesk_tickets SET locked = false, locked_by = NULL, unlock_at = NULL, unlocked_at = %s"
                " WHERE id IN (SELECT id FROM helpdesk_tickets WHERE locked AND unlock_at <= %s"
                " ORDER BY unlock_at, id LIMIT %s FOR UPDATE SKIP LOCKED)",
                (interval.end, interval.end, want)).rowcount
            unlocked += n
            batches += 1
            if n < want:
                break
        (due_left,) = conn.execute("SELECT count(*) FROM helpdesk_tickets WHERE locked AND unlock_at <= %s",
                                   (interval.end,)).fetchone()
    return {"unlocked": unlocked, "batches": batches, "due_left": due_left}


# -- HelpDeskCommand ------------------------------------------------------------------------------


def command_lines(body: str) -> list[tuple[str, str, str]]:
    """The body's leading ``#command args`` lines as (command, args, line); blank lines between
    them are allowed, the first other line ends them (quoted text and signatures are not read)."""
    out = []
    for line in body.splitlines():
        text = line.strip()
        if not text:
            continue
        match = _COMMAND_RE.match(text)
        if not match:
            break
        out.append((match.group(1).lower(), (match.group(2) or "").strip(), text[:300]))
        if len(out) == MAX_COMMANDS:
            break
    return out


def _parse_when(text: str, tz: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(tz))


def _apply(conn, ticket: dict, staff: tuple[int, str], command: str, args: str, interval) -> tuple[str, str]:
    """Carry out one command on the locked ``ticket`` (kept up to date): (outcome, detail)."""
    tid, now = ticket["id"], interval.end

    def update(sets: str, params: tuple) -> None:
        conn.execute(f"UPDATE helpdesk_tickets SET {sets}, updated_at = greatest(updated_at, %s) WHERE id = %s",
                     (*params, now, tid))

    if command == "close":
        if ticket["status"] == "closed":
            return "unchanged", "already closed"
        update("status = 'closed', closed_at = %s", (now,))
        ticket["status"] = "closed"
        return "applied", "closed"
    if command == "reopen":
        if ticket["status"] == "open":
            return "unchanged", "already open"
        update("status = 'open', closed_at = NULL", ())
        ticket["status"] = "open"
        return "applied", "reopened"
    if command == "delete":
        update("deleted_at = %s", (now,))
        ticket["deleted_at"] = now
        return "applied", f"deleted; purged permanently after {PURGE_AFTER.days} days"
    if command == "assign":
        if not args:
            return "invalid", "#assign needs a staff member's e-mail address or name (or 'me')"
        if args.lower() == "me":
            who = staff
        else:
            who = conn.execute("SELECT id, name FROM helpdesk_staff WHERE active AND"
                               " (lower(email) = lower(%s) OR lower(name) = lower(%s)) ORDER BY id LIMIT 1",
                               (args, args)).fetchone()
        if who is None:
            return "invalid", f"no active staff member {args!r}"
        if ticket["assigned_to"] == who[0]:
            return "unchanged", f"already assigned to {who[1]}"
        update("assigned_to = %s", (who[0],))
        ticket["assigned_to"] = who[0]
        return "applied", f"assigned to {who[1]}"
    if command == "priority":
        level = args.lower()
        if level not in PRIORITIES:
            return "invalid", f"priority must be one of {', '.join(PRIORITIES)}"
        if ticket["priority"] == level:
            return "unchanged", f"priority already {level}"
        update("priority = %s", (level,))
        ticket["priority"] = level
        return "applied", f"priority {level}"
    if command == "lock":
        until = None
        if args:
            words = args.split(None, 1)
            if words[0].lower() != "until" or len(words) < 2:
                return "invalid", "use #lock or #lock until <date-time>"
            try:
                until = _parse_when(words[1], interval.tz)
            except ValueError:
                return "invalid", f"not a date-time: {words[1]!r} (use 2026-11-21 09:00 or ISO 8601)"
            if until <= now:
                return "invalid", f"{until.isoformat()} is not in the future"
        if ticket["locked"] and ticket["unlock_at"] == until:
            return "unchanged", "already locked" + (f" until {until.isoformat()}" if until else "")
        update("locked = true, locked_by = %s, locked_at = %s, unlock_at = %s, unlocked_at = NULL",
               (staff[0], now, until))
        ticket["locked"], ticket["unlock_at"] = True, until
        return "applied", "locked" + (f" until {until.isoformat()}" if until else " until unlocked")
    if command == "unlock":
        if not ticket["locked"]:
            return "unchanged", "not locked"
        update("locked = false, locked_by = NULL, unlock_at = NULL, unlocked_at = %s", (now,))
        ticket["locked"], ticket["unlock_at"] = False, None
        return "applied", "unlocked"
    return "unknown", f"unknown command #{command}"


_OK = ("applied", "unchanged")


def _command_taker(interval, report: StepReport, own: set[str]) -> Take:
    def take(conn, account: Account, mail: Mail) -> None:
        if conn.execute("SELECT 1 FROM helpdesk_command_log WHERE message_id = %s", (mail.message_id,)).fetchone():
            report.add("already_processed")  # read again after a run that carried it out but never QUIT
            return
        where = f"{account.name} {mail.message_id} from {mail.from_address}"
        staff = _staff(conn, mail.from_address, commanding=True)
        lines = command_lines(mail.body)
        ticket_row, _ = _thread(conn, mail) if staff else (None, "new")
        ticket = None
        if ticket_row:
            ticket = dict(zip(("id", "status", "requester_email", "assigned_to", "priority", "locked", "unlock_at",
                               "deleted_at"), ticket_row))
        results: list[dict] = []
        if staff is None:
            status, problem = "refused", "the sender may not send help-desk commands"
            report.skip("unauthorised sender", where)
        elif not lines:
            status, problem = "failed", "no #command lines at the top of the message"
            report.skip("no commands", where)
        elif ticket is None:
            status, problem = "failed", "no ticket: put its tag ([#TCK-000123]) in the subject, or reply to its mail"
            report.skip("no ticket", where)
        else:
            problem = None
            for command, args, line in lines:
                if ticket["deleted_at"] is not None:
                    outcome, detail = "invalid", "the ticket is deleted"
                else:
                    outcome, detail = _apply(conn, ticket, staff, command, args, interval)
                results.append({"command": line, "outcome": outcome, "detail": detail})
                report.add(f"commands_{outcome}")
                if outcome not in _OK:
                    report.skip(f"{outcome} command", f"{where}: {line}: {detail}")
            ok = sum(r["outcome"] in _OK for r in results)
            status = "applied" if ok == len(results) else "partial" if ok else "failed"
        tag = ticket_tag(ticket["id"]) if ticket else None
        logged = conn.execute(
            "INSERT INTO helpdesk_command_log (message_id, pop_account_id, from_address, staff_id, ticket_id,"
            " ticket_tag, subject, commands, results, status, received_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (message_id) DO NOTHING RETURNING id",
            (mail.message_id, account.id, mail.from_address, staff[0] if staff else None,
             ticket["id"] if ticket else None, tag, mail.subject, "\n".join(line for *_, line in lines),
             Jsonb(results), status, interval.end)).fetchone()
        if logged is None:  # logged meanwhile: undo what this transaction applied
            report.add("already_processed")
            raise psycopg.Rollback()
        report.add(f"messages_{status}")
        if status != "applied" and _answerable(mail, own):
            key = f"helpdesk-command:{mail.message_id}"
            if status == "refused":  # a stranger learns nothing about tickets
                enqueue(conn, dedupe_key=key, to=mail.from_address, template="helpdesk_command_refused",
                        context={"subject": mail.subject}, not_before=interval.end, from_address=account.address,
                        headers=_reply_headers(mail))
            else:
                enqueue(conn, dedupe_key=key, to=mail.from_address, template="helpdesk_command_report",
                        context={"subject": mail.subject, "tag": tag, "problem": problem, "results": results},
                        not_before=interval.end, from_address=account.address, headers=_reply_headers(mail))
            report.add("answers")

    return take


def process_pop_account_commands(panel_db, interval, log) -> dict:
    """Process Pop Account commands: the command boxes' mail carried out on their tickets.

    Only active staff with ``can_command`` may command; every command mail is logged once with
    each command's outcome, and mail that was refused or not fully carried out is answered.
    """
    return _read_boxes(panel_db, interval, log, "commands", _command_taker)
