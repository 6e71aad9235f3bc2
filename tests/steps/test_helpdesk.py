"""HelpDeskWork and HelpDeskCommand against a real Dovecot POP3 server (POP3 and POP3S on 127.0.0.1).

Dovecot runs from a self-contained dovecot.conf in a temporary directory: passwd-file users with
Maildirs, a plain POP3 listener and a POP3S listener with a self-signed certificate that the
POP3S connections trust through their ``ca_file`` extra. Mail is delivered by writing files into
the Maildir, as a delivery agent would.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pendulum
import pytest

from panelflow.hooks.pop3 import Pop3Error, Pop3Hook
from panelflow.step import Interval
from panelflow.steps import helpdesk
from panelflow.steps.helpdesk import (parse_pop_accounts, process_pop_account_commands, purge_deleted_tickets,
                                      unlock_scheduled_tickets)

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")
AT = Interval(NOW, NOW)
PASSWORD = "S3cret!"
USERS = ("helpdesk", "commands", "sales")
HELPDESK_TABLES = ("helpdesk_command_log", "helpdesk_rejected_messages", "helpdesk_ticket_messages",
                   "helpdesk_tickets", "helpdesk_staff", "helpdesk_pop_accounts", "helpdesk_departments")


class _Log:
    def __init__(self):
        self.errors = []

    def error(self, *args):
        self.errors.append(args)

    info = warning = error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "pop3.crt", directory / "pop3.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


class Dovecot:
    def __init__(self, root: Path, pop3_port: int, pop3s_port: int, ca_file: Path):
        self.root, self.pop3_port, self.pop3s_port, self.ca_file = root, pop3_port, pop3s_port, ca_file
        self._n = 0

    def maildir(self, user: str) -> Path:
        return self.root / "home" / user / "Maildir"

    def deliver(self, user: str, raw: bytes) -> None:
        """Into Maildir/new, as a delivery agent would (tmp, then rename), owned by the mail user."""
        self._n += 1
        name = f"{1763600000 + self._n}.M{self._n}P{os.getpid()}.panelflow-test"
        tmp = self.maildir(user) / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, 65534, 65534)
        tmp.rename(self.maildir(user) / "new" / name)

    def box(self, user: str) -> list[bytes]:
        """The messages still in the box (new and cur)."""
        files = [p for sub in ("new", "cur") for p in sorted((self.maildir(user) / sub).iterdir())]
        return [p.read_bytes() for p in files]

    def connection(self, user: str, *, ssl: bool = False, password: str = PASSWORD, **extra) -> str:
        conn = {"conn_type": "pop3", "host": "127.0.0.1", "port": self.pop3s_port if ssl else self.pop3_port,
                "login": f"{user}@example.test", "password": password,
                "extra": {"ssl": ssl, "timeout": 5, **({"ca_file": str(self.ca_file)} if ssl else {}), **extra}}
        return json.dumps(conn)


@pytest.fixture
def dovecot():
    binary = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dovecot is not installed (make test installs dovecot-pop3d)")
        pytest.skip("dovecot is not installed")
    # Not pytest's tmp_path: Dovecot's mail processes run as uid 65534 and must reach the homes.
    root = Path(tempfile.mkdtemp(prefix="panelflow-dovecot-"))
    root.chmod(0o755)
    cert, key = _self_signed(root)
    lines = []
    for user in USERS:
        for sub in ("new", "cur", "tmp"):
            (root / "home" / user / "Maildir" / sub).mkdir(parents=True)
        lines.append(f"{user}@example.test:{{PLAIN}}{PASSWORD}:65534:65534::{root}/home/{user}")
    (root / "passwd").write_text("\n".join(lines) + "\n")
    subprocess.run(["chown", "-R", "65534:65534", str(root / "home")], check=True)
    pop3, pop3s = _free_port(), _free_port()
    (root / "dovecot.conf").write_text(f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
first_valid_uid = 1
auth_failure_delay = 0
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
""")
    proc = subprocess.Popen([binary, "-F", "-c", str(root / "dovecot.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        for port in (pop3, pop3s):
            while True:
                if proc.poll() is not None:
                    log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                    raise RuntimeError(f"dovecot exited: {proc.stderr.read().decode()} {log}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"dovecot does not listen on {port}")
                    time.sleep(0.05)
        yield Dovecot(root, pop3, pop3s, cert)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hd(panel_db, sql):
    """The help-desk tables emptied (conftest's panel_db does not know them)."""
    sql("TRUNCATE " + ", ".join(HELPDESK_TABLES) + " RESTART IDENTITY CASCADE")
    return panel_db


def add_account(sql, monkeypatch, dovecot, user, *, purpose="tickets", ssl=False, max_messages=200, **conn):
    conn_id = f"helpdesk_{user}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", dovecot.connection(user, ssl=ssl, **conn))
    return sql("INSERT INTO helpdesk_pop_accounts (name, conn_id, purpose, address, max_messages_per_run)"
               " VALUES (%s, %s, %s, %s, %s) RETURNING id",
               (user, conn_id, purpose, f"{user}@example.test", max_messages))[0][0]


def mail(subject: str, *, sender: str = "Alice Customer <alice@customer.test>", body: str = "Hello, please help.",
         message_id: str | None = None, in_reply_to: str | None = None, references: str | None = None,
         to: str = "helpdesk@example.test", headers: str = "") -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", "Date: Fri, 20 Nov 2026 08:30:00 +0000"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append(f"References: {references}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    return ("\n".join(lines) + "\n" + headers + "\n" + body + "\n").encode()


def parsed(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def outbox(sql):
    return sql("SELECT to_address, subject, headers, template, from_address FROM email_outbox ORDER BY id")


# -- HelpDeskWork: parse_pop_accounts --------------------------------------------------------------


def test_new_ticket_is_stored_acknowledged_once_and_deleted_from_the_box(hd, sql, dovecot, monkeypatch):
    add_account(sql, monkeypatch, dovecot, "helpdesk")
    dovecot.deliver("helpdesk", mail("My website is down", message_id="<m1@customer.test>",
                                     body="Hello,\n\nmy site shows a 500 error.\n"))
    summary = parse_pop_accounts(hd, AT, _Log())
    assert summary["read"] == 1 and summary["tickets_created"] == 1 and summary["acknowledgements"] == 1
    assert summary["deleted_from_box"] == 1 and summary["skipped"] == {} and summary["account_errors"] == []
    assert dovecot.box("helpdesk") == []  # DELE, then QUIT: gone from the server

    [(tid, subject, requester, name, status, created)] = sql(
        "SELECT id, subject, requester_email, requester_name, status, created_at FROM helpdesk_tickets")
    assert (subject, requester, name, status, created) == ("My website is down", "alice@customer.test",
                                                           "Alice Customer", "open", NOW)
    [(mid, direction, threaded_by, body, raw)] = sql(
        "SELECT message_id, direction, threaded_by, body_text, raw FROM helpdesk_ticket_messages"
        " WHERE direction = 'in'")
    assert (mid, direction, threaded_by) == ("<m1@customer.test>", "in", "new")
    assert "500 error" in body and parsed(bytes(raw))["Message-ID"] == "<m1@customer.test>"

    [(to, subject, headers, template, sender)] = outbox(sql)
    assert (to, template, sender) == ("alice@customer.test", "helpdesk_ticket_received", "helpdesk@example.test")
    assert subject == "[#TCK-000001] My website is down"
    assert headers["In-Reply-To"] == "<m1@customer.test>" and headers["Auto-Submitted"] == "auto-replied"
    # the acknowledgement is the ticket's outgoing message: a reply to it threads by In-Reply-To
    assert sql("SELECT direction, threaded_by FROM helpdesk_ticket_messages WHERE message_id <> %s",
               (mid,)) == [("out", "sent")]
    assert sql("SELECT last_polled_at, last_error FROM helpdesk_pop_accounts") == [(NOW, None)]

    again = parse_pop_accounts(hd, Interval(NOW.add(minutes=5), NOW.add(minutes=5)), _Log())
    assert again.get("read", 0) == 0 and sql("SELECT count(*) FROM email_outbox")[0][0] == 1


def test_replies_thread_by_tag_then_in_reply_to_then_references(hd, sql, dovecot, monkeypatch):
    add_account(sql, monkeypatch, dovecot, "helpdesk")
    dovecot.deliver("helpdesk", mail("Mailbox full", message_id="<first@customer.test>"))
    parse_pop_accounts(hd, AT, _Log())
    [(ack_id,)] = sql("SELECT message_id FROM helpdesk_ticket_messages WHERE direction = 'out'")
    sql("UPDATE helpdesk_tickets SET status = 'closed', closed_at = %s", (NOW,))

    later = Interval(NOW.add(minutes=5), NOW.add(minutes=5))
    dovecot.deliver("helpdesk", mail("Re: [#TCK-000001] Mailbox full", message_id="<by-tag@customer.test>",
                                     sender="Bob Other <bob@elsewhere.test>"))
    dovecot.deliver("helpdesk", mail("Re: Mailbox full", message_id="<by-irt@customer.test>",
                                     in_reply_to="<first@customer.test>"))
    dovecot.deliver("helpdesk", mail("Still full", message_id="<by-refs@customer.test>",
                                     references=f"<first@customer.test> {ack_id} <unknown@x.test>"))
    dovecot.deliver("helpdesk", mail("Re: [#TCK-000099] no such ticket", message_id="<new@customer.test>",
                                     in_reply_to="<unknown@x.test>"))
    summary = parse_pop_accounts(hd, later, _Log())
    assert summary["read"] == 4 and summary["tickets_created"] == 1
    assert (summary["replies_by_tag"], summary["replies_by_in_reply_to"], summary["replies_by_references"]) == (1, 1, 1)
    assert summary["reopened"] == 1  # the requester answered a closed ticket (bob, a stranger, did not reopen it)
    threads = dict(sql("SELECT message_id, ticket_id || ':' || threaded_by FROM helpdesk_ticket_messages"
                       " WHERE direction = 'in'"))
    assert threads == {"<first@customer.test>": "1:new", "<by-tag@customer.test>": "1:tag",
                       "<by-irt@customer.test>": "1:in_reply_to", "<by-refs@customer.test>": "1:references",
                       "<new@customer.test>": "2:new"}
    assert sql("SELECT id, status, updated_at FROM helpdesk_tickets ORDER BY id") == [(1, "open", later.end),
                                                                                     (2, "open", later.end)]
    # one acknowledgement per new ticket, none for replies
    assert [r[1] for r in outbox(sql)] == ["[#TCK-000001] Mailbox full", "[#TCK-000002] Re: [#TCK-000099] no such ticket"]
    assert dovecot.box("helpdesk") == []


def test_a_malformed_mail_is_kept_and_reported_and_the_others_are_processed(hd, sql, dovecot, monkeypatch):
    add_account(sql, monkeypatch, dovecot, "helpdesk")
    broken = (b"Subject: broken \xff\xfe\nthis line is not a header and there is no sender\n\n"
              b"garbage \x01\x02 bytes\n")
    long_line = "x" * 5000  # over poplib's 2048-octet line limit: still read
    dovecot.deliver("helpdesk", mail("First", message_id="<ok1@customer.test>"))
    dovecot.deliver("helpdesk", broken)
    dovecot.deliver("helpdesk", mail("Second", message_id="<ok2@customer.test>", body=f"{long_line}\n"))
    dovecot.deliver("helpdesk", mail("Auto", sender="MAILER-DAEMON@mx.customer.test", message_id="<bounce@mx>",
                                     headers="Auto-Submitted: auto-replied\n"))
    summary = parse_pop_accounts(hd, AT, _Log())
    assert summary["read"] == 4 and summary["rejected"] == 1 and summary["tickets_created"] == 3
    assert summary["skipped"] == {"no sender address": 1}
    assert "helpdesk #2: no sender address" in summary["skipped_examples"][0]
    assert summary["deleted_from_box"] == 4 and dovecot.box("helpdesk") == []  # deleted only once kept
    [(raw, reason, subject, read_at)] = sql("SELECT raw, reason, subject, read_at FROM helpdesk_rejected_messages")
    assert bytes(raw).replace(b"\r\n", b"\n") == broken  # byte for byte (the server sends CRLF)
    assert reason.startswith("no sender address") and subject.startswith("broken") and read_at == NOW
    assert sql("SELECT body_text FROM helpdesk_ticket_messages WHERE message_id = '<ok2@customer.test>'")[0][0].strip() \
        == long_line
    # the bounce became a ticket, but is never answered (no mail loops)
    assert sorted(r[0] for r in outbox(sql)) == ["alice@customer.test", "alice@customer.test"]
    # read again (it was kept, so a rerun that sees it again stores it once)
    dovecot.deliver("helpdesk", broken)
    assert parse_pop_accounts(hd, AT, _Log())["rejected"] == 1
    assert sql("SELECT count(*) FROM helpdesk_rejected_messages")[0][0] == 1


class Killed(BaseException):
    """The worker dies: no exception handler of the step runs to completion."""


def test_a_mail_read_again_after_a_kill_between_commit_and_dele_is_stored_once(hd, sql, dovecot, monkeypatch):
    add_account(sql, monkeypatch, dovecot, "helpdesk")
    for i in (1, 2, 3):
        dovecot.deliver("helpdesk", mail(f"Request {i}", message_id=f"<r{i}@customer.test>"))
    deletes = []
    real_delete = Pop3Hook.delete

    def delete_then_die(self, number):
        deletes.append(number)
        if len(deletes) == 2:  # message 2 is committed; the worker dies before its DELE
            raise Killed()
        real_delete(self, number)

    with monkeypatch.context() as m:
        m.setattr(Pop3Hook, "delete", delete_then_die)
        m.setattr(Pop3Hook, "quit", Pop3Hook.close)  # a dead worker sends no QUIT: the server deletes nothing
        with pytest.raises(Killed):
            parse_pop_accounts(hd, AT, _Log())
    assert sql("SELECT count(*) FROM helpdesk_ticket_messages WHERE direction = 'in'")[0][0] == 2
    assert len(dovecot.box("helpdesk")) == 3

    summary = parse_pop_accounts(hd, Interval(NOW.add(minutes=5), NOW.add(minutes=5)), _Log())
    assert (summary["read"], summary["already_stored"], summary["tickets_created"]) == (3, 2, 1)
    assert sql("SELECT message_id, count(*) FROM helpdesk_ticket_messages WHERE direction = 'in'"
               " GROUP BY message_id ORDER BY 1") == [("<r1@customer.test>", 1), ("<r2@customer.test>", 1),
                                                       ("<r3@customer.test>", 1)]
    assert sql("SELECT count(*) FROM helpdesk_tickets")[0][0] == 3
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 3  # one acknowledgement each
    assert dovecot.box("helpdesk") == []


def test_bounded_per_run_and_a_box_that_cannot_be_read_fails_the_step_after_the_others(hd, sql, dovecot,
                                                                                        monkeypatch):
    bad_password = add_account(sql, monkeypatch, dovecot, "sales", password="wrong")
    add_account(sql, monkeypatch, dovecot, "helpdesk", ssl=True, max_messages=2)
    for i in range(3):
        dovecot.deliver("helpdesk", mail(f"Request {i}", message_id=f"<b{i}@customer.test>"))
    log = _Log()
    with pytest.raises(Pop3Error, match="1 of 2 box"):
        parse_pop_accounts(hd, AT, log)
    assert "login" in sql("SELECT last_error FROM helpdesk_pop_accounts WHERE id = %s", (bad_password,))[0][0]
    assert log.errors and "'left_in_box': 1" in str(log.errors[0])
    assert sql("SELECT count(*) FROM helpdesk_tickets")[0][0] == 2  # read over POP3S, two a run
    assert len(dovecot.box("helpdesk")) == 1


def test_pop3s_certificate_is_verified(dovecot, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_UNTRUSTED", dovecot.connection("helpdesk", ssl=True, ca_file=""))
    with pytest.raises(Pop3Error, match="CERTIFICATE_VERIFY_FAILED"):
        with Pop3Hook("untrusted"):
            pass
    monkeypatch.setenv("AIRFLOW_CONN_TRUSTED", dovecot.connection("helpdesk", ssl=True))
    assert Pop3Hook("trusted").test_connection() == (True, "logged in; 0 message(s) in the box")
    # STLS on the plain port, verified the same way
    monkeypatch.setenv("AIRFLOW_CONN_STARTTLS", dovecot.connection("helpdesk", starttls=True,
                                                                   ca_file=str(dovecot.ca_file)))
    assert Pop3Hook("starttls").test_connection()[0] is True
    monkeypatch.setenv("AIRFLOW_CONN_STARTTLS_UNTRUSTED", dovecot.connection("helpdesk", starttls=True))
    ok, message = Pop3Hook("starttls_untrusted").test_connection()
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in message


# -- HelpDeskCommand ------------------------------------------------------------------------------


def _ticket_with_message(sql, message_id="<t1@customer.test>"):
    (tid,) = sql("INSERT INTO helpdesk_tickets (subject, requester_email, created_at, updated_at)"
                 " VALUES ('Printer on fire', 'alice@customer.test', %s, %s) RETURNING id", (NOW, NOW))[0]
    sql("INSERT INTO helpdesk_ticket_messages (ticket_id, message_id, direction, threaded_by, from_address,"
        " subject, body_text, received_at) VALUES (%s, %s, 'in', 'new', 'alice@customer.test',"
        " 'Printer on fire', 'help', %s)", (tid, message_id, NOW))
    return tid


def test_commands_from_staff_are_applied_once_and_strangers_are_refused(hd, sql, dovecot, monkeypatch):
    add_account(sql, monkeypatch, dovecot, "commands", purpose="commands", ssl=True)
    sql("INSERT INTO helpdesk_staff (name, email) VALUES ('Bob Support', 'Bob@Provider.test'),"
        " ('Carol Admin', 'carol@provider.test')")
    sql("INSERT INTO helpdesk_staff (name, email, can_command) VALUES ('Dave Intern', 'dave@provider.test', false)")
    tid = _ticket_with_message(sql)
    box = "commands"
    dovecot.deliver(box, mail("Re: [#TCK-000001] Printer on fire", sender="Bob <bob@provider.test>",
                              message_id="<c1@provider.test>",
                              body="#priority urgent\n#assign carol@provider.test\n\n#lock until 2026-11-21 09:00\n"
                                   "Taking this one.\n#close\n> #delete\n"))
    dovecot.deliver(box, mail("[#TCK-000001] Printer on fire", sender="mallory@evil.test",
                              message_id="<c2@evil.test>", body="#delete\n"))
    dovecot.deliver(box, mail("[#TCK-000001] please", sender="dave@provider.test",
                              message_id="<c3@provider.test>", body="#close\n"))
    dovecot.deliver(box, mail("Re: Printer on fire", sender="bob@provider.test", message_id="<c4@provider.test>",
                              in_reply_to="<t1@customer.test>", body="#close\n#frobnicate now\n#priority sky-high\n"))
    dovecot.deliver(box, mail("no tag here", sender="bob@provider.test", message_id="<c5@provider.test>",
                              body="#close\n"))
    summary = process_pop_account_commands(hd, AT, _Log())
    assert summary["read"] == 5 and summary["deleted_from_box"] == 5 and dovecot.box(box) == []
    assert summary["commands_applied"] == 4 and summary["commands_unknown"] == 1 and summary["commands_invalid"] == 1
    assert summary["skipped"] == {"unauthorised sender": 2, "unknown command": 1, "invalid command": 1,
                                  "no ticket": 1}
    assert (summary["messages_applied"], summary["messages_partial"], summary["messages_refused"],
            summary["messages_failed"]) == (1, 1, 2, 1)

    [ticket] = sql("SELECT status, priority, s.email, locked, unlock_at, locked_by, deleted_at, closed_at"
                   " FROM helpdesk_tickets t LEFT JOIN helpdesk_staff s ON s.id = t.assigned_to")
    assert ticket == ("closed", "urgent", "carol@provider.test", True, pendulum.datetime(2026, 11, 21, 9, tz="UTC"),
                      1, None, NOW)
    log = {r[0]: r[1:] for r in sql("SELECT message_id, status, ticket_tag, staff_id, commands FROM helpdesk_command_log")}
    assert log["<c1@provider.test>"] == ("applied", "TCK-000001", 1,
                                         "#priority urgent\n#assign carol@provider.test\n#lock until 2026-11-21 09:00")
    assert log["<c2@evil.test>"][:3] == ("refused", None, None)
    assert log["<c3@provider.test>"][:3] == ("refused", None, None)  # staff, but not allowed to command
    assert log["<c4@provider.test>"][:2] == ("partial", "TCK-000001")
    assert log["<c5@provider.test>"][:2] == ("failed", None)
    [results] = sql("SELECT results FROM helpdesk_command_log WHERE message_id = '<c4@provider.test>'")[0]
    assert [(r["command"], r["outcome"]) for r in results] == [
        ("#close", "applied"), ("#frobnicate now", "unknown"), ("#priority sky-high", "invalid")]

    answers = {(r[0], r[3]): r for r in outbox(sql)}
    assert set(answers) == {("mallory@evil.test", "helpdesk_command_refused"),
                            ("dave@provider.test", "helpdesk_command_refused"),
                            ("bob@provider.test", "helpdesk_command_report")}  # c4; c5 is a second report
    assert len(outbox(sql)) == 4
    refused = answers[("mallory@evil.test", "helpdesk_command_refused")]
    assert refused[2]["In-Reply-To"] == "<c2@evil.test>" and refused[4] == "commands@example.test"
    bodies = [r[0] for r in sql("SELECT body_text FROM email_outbox WHERE template = 'helpdesk_command_report'"
                                " ORDER BY id")]
    assert "#frobnicate now  ->  unknown" in bodies[0] and "no ticket" in bodies[1]

    # the same mails read again (a run killed before QUIT): nothing is applied twice, no second answer
    sql("UPDATE helpdesk_tickets SET status = 'open', closed_at = NULL, priority = 'low' WHERE id = %s", (tid,))
    for message_id in ("<c1@provider.test>", "<c2@evil.test>", "<c4@provider.test>"):
        dovecot.deliver(box, mail("[#TCK-000001] again", sender="bob@provider.test", message_id=message_id,
                                  body="#close\n#priority high\n"))
    again = process_pop_account_commands(hd, Interval(NOW.add(minutes=5), NOW.add(minutes=5)), _Log())
    assert again["already_processed"] == 3 and again["deleted_from_box"] == 3
    assert sql("SELECT status, priority FROM helpdesk_tickets") == [("open", "low")]
    assert sql("SELECT count(*) FROM helpdesk_command_log")[0][0] == 5 and len(outbox(sql)) == 4


def test_commands_are_idempotent_and_a_parser_box_is_not_a_command_box(hd, sql, dovecot, monkeypatch):
    add_account(sql, monkeypatch, dovecot, "commands", purpose="commands")
    add_account(sql, monkeypatch, dovecot, "helpdesk")
    sql("INSERT INTO helpdesk_staff (name, email) VALUES ('Bob Support', 'bob@provider.test')")
    _ticket_with_message(sql)
    dovecot.deliver("commands", mail("[#TCK-000001] x", sender="bob@provider.test", message_id="<k1@provider.test>",
                                     body="#close\n#assign me\n#lock\n"))
    dovecot.deliver("commands", mail("[#TCK-000001] x", sender="bob@provider.test", message_id="<k2@provider.test>",
                                     body="#close\n#assign Bob Support\n#lock\n#unlock\n#delete\n#reopen\n"))
    dovecot.deliver("helpdesk", mail("[#TCK-000001] x", sender="bob@provider.test", message_id="<k3@provider.test>",
                                     body="#reopen\n"))
    summary = process_pop_account_commands(hd, AT, _Log())
    assert summary["commands_applied"] == 3 + 2 and summary["commands_unchanged"] == 3
    assert summary["commands_invalid"] == 1  # #reopen after #delete: the ticket is deleted
    assert sql("SELECT status, locked, deleted_at FROM helpdesk_tickets") == [("closed", False, NOW)]
    assert len(dovecot.box("helpdesk")) == 1  # the ticket box is the parser's
    # the parser then stores bob's mail as a message, not as a command; the ticket is deleted: a new ticket
    parse_pop_accounts(hd, AT, _Log())
    assert sql("SELECT status FROM helpdesk_tickets ORDER BY id") == [("closed",), ("open",)]


# -- HelpDeskWork: purge_deleted_tickets, unlock_scheduled_tickets ---------------------------------


def test_purge_respects_the_retention_and_is_bounded(hd, sql, monkeypatch):
    ages = [31, 45, 60, 90, 120, 30, 29, 1, None]  # days since deleted; 30 is exactly the cutoff: kept
    for age in ages:
        (tid,) = sql("INSERT INTO helpdesk_tickets (subject, requester_email, created_at, updated_at, deleted_at)"
                     " VALUES (%s, 'a@b.test', %s, %s, %s) RETURNING id",
                     (f"age {age}", NOW, NOW, None if age is None else NOW.subtract(days=age)))[0]
        sql("INSERT INTO helpdesk_ticket_messages (ticket_id, message_id, direction, threaded_by, from_address,"
            " subject, body_text, received_at) VALUES (%s, %s, 'in', 'new', 'a@b.test', 's', 'b', %s)",
            (tid, f"<p{tid}@b.test>", NOW))
    sql("INSERT INTO helpdesk_pop_accounts (name, conn_id, purpose) VALUES ('c', 'c', 'commands')")
    sql("INSERT INTO helpdesk_command_log (message_id, pop_account_id, from_address, ticket_id, ticket_tag, subject,"
        " commands, status, received_at) VALUES ('<x@y>', 1, 'bob@p.test', 5, 'TCK-000005', 's', '#delete',"
        " 'applied', %s)", (NOW,))
    monkeypatch.setattr(helpdesk, "PURGE_MAX_PER_RUN", 3)
    monkeypatch.setattr(helpdesk, "PURGE_BATCH", 2)
    first = purge_deleted_tickets(hd, AT)
    assert (first["deleted"], first["batches"]) == (3, 2)
    assert sorted(r[0] for r in sql("SELECT subject FROM helpdesk_tickets")) == sorted(
        ["age 31", "age 45", "age 30", "age 29", "age 1", "age None"])  # oldest first
    assert purge_deleted_tickets(hd, AT)["deleted"] == 0  # a rerun of the interval: the budget is spent
    later = purge_deleted_tickets(hd, Interval(NOW.add(minutes=5), NOW.add(minutes=5)))
    assert later["deleted"] == 3  # the two left over, and "age 30", past the retention 5 minutes later
    assert sorted(r[0] for r in sql("SELECT subject FROM helpdesk_tickets")) == ["age 1", "age 29", "age None"]
    assert sql("SELECT count(*) FROM helpdesk_ticket_messages")[0][0] == 3  # messages went with their tickets
    assert sql("SELECT ticket_id, ticket_tag FROM helpdesk_command_log") == [(None, "TCK-000005")]


def test_locked_tickets_are_unlocked_when_their_schedule_meets(hd, sql, monkeypatch):
    sql("INSERT INTO helpdesk_staff (name, email) VALUES ('Bob', 'bob@provider.test')")
    schedule = {"past": NOW.subtract(hours=2), "now": NOW, "older": NOW.subtract(days=3),
                "future": NOW.add(minutes=1), "by hand": None}
    for name, unlock_at in schedule.items():
        sql("INSERT INTO helpdesk_tickets (subject, requester_email, created_at, updated_at, locked, locked_by,"
            " locked_at, unlock_at) VALUES (%s, 'a@b.test', %s, %s, true, 1, %s, %s)",
            (name, NOW, NOW, NOW.subtract(days=5), unlock_at))
    monkeypatch.setattr(helpdesk, "UNLOCK_MAX_PER_RUN", 2)
    monkeypatch.setattr(helpdesk, "UNLOCK_BATCH", 1)
    assert unlock_scheduled_tickets(hd, AT) == {"unlocked": 2, "batches": 2, "due_left": 1}
    assert {r[0] for r in sql("SELECT subject FROM helpdesk_tickets WHERE NOT locked")} == {"older", "past"}
    assert unlock_scheduled_tickets(hd, AT) == {"unlocked": 1, "batches": 2, "due_left": 0}
    rows = {r[0]: r[1:] for r in sql("SELECT subject, locked, locked_by, unlock_at, unlocked_at FROM helpdesk_tickets")}
    assert rows["now"] == (False, None, None, NOW)
    assert rows["future"][0] is True and rows["by hand"][:3] == (True, 1, None)
    assert unlock_scheduled_tickets(hd, AT)["unlocked"] == 0
    assert unlock_scheduled_tickets(hd, Interval(NOW.add(minutes=1), NOW.add(minutes=1)))["unlocked"] == 1
    assert sql("SELECT subject FROM helpdesk_tickets WHERE locked") == [("by hand",)]
