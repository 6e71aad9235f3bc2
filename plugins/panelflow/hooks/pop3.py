"""POP3 mailboxes (poplib), for the help desk's ticket and command boxes.

A box is an Airflow connection of type ``pop3``: host, port, login, password, and extras

- ``ssl``: POP3 over implicit TLS (POP3S, port 995 by default); default true when the port is 995;
- ``starttls``: upgrade a plain connection with STLS before logging in;
- ``timeout``: seconds a connect or a server answer may take (default 30);
- ``ca_file``: a PEM file of the CA (or self-signed certificate) to trust instead of the system's.

The server's certificate is always verified (host name included): ``poplib.POP3_SSL`` without a
context would not, so the hook always builds one. The password is sent only after TLS when
``ssl``/``starttls`` is set; plain POP3 is for loopback and test servers.

Use it as a context manager: leaving the block sends QUIT, which is when the server applies the
DELEs of the session; a session that ends without QUIT (a killed worker, a dropped connection)
deletes nothing, so a caller deletes a message only after it has kept it, and may read it again.
"""

from __future__ import annotations

import poplib
import socket
import ssl
from typing import Any

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number, flag

# poplib refuses lines over 2048 octets (module-wide ``_MAXLINE``), and an error in the middle of a
# RETR leaves the session unusable. Real mail has longer lines (RFC 5322 allows 998, senders send
# more); the hook's clients read lines up to this many octets instead.
MAX_LINE = 1 << 20


def _getline(self):
    """``poplib.POP3._getline`` with MAX_LINE instead of poplib's 2048."""
    line = self.file.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise poplib.error_proto("line too long")
    if not line:
        raise poplib.error_proto("-ERR EOF")
    octets = len(line)
    if line[-2:] == b"\r\n":
        return line[:-2], octets
    if line[:1] == b"\r":
        return line[1:-1], octets
    return line[:-1], octets


class _POP3(poplib.POP3):
    _getline = _getline


class _POP3_SSL(poplib.POP3_SSL):
    _getline = _getline


class Pop3Error(Exception):
    """The box could not be read: connection, TLS, login or protocol failure (nothing was deleted
    that the session had not QUIT on)."""


class Pop3Hook(BaseHook):
    """One POP3 session per ``with`` block: ``count()``, ``sizes()``, ``retrieve(n)``, ``delete(n)``."""

    conn_name_attr = "pop3_conn_id"
    default_conn_name = "pop3_default"
    conn_type = "pop3"
    hook_name = "POP3 mailbox"

    DEFAULT_TIMEOUT = 30.0

    def __init__(self, pop3_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.pop3_conn_id = pop3_conn_id
        self._client: poplib.POP3 | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"login": "User", "host": "POP3 server"},
            "placeholders": {"port": "110 (995 with ssl)",
                             "extra": '{"ssl": true, "timeout": 30, "ca_file": "/etc/ssl/certs/pop-ca.pem"}'},
        }

    # -- session --------------------------------------------------------------------------------

    def get_conn(self) -> poplib.POP3:
        """The logged-in poplib client (connects on first use)."""
        if self._client is None:
            conn = self.get_connection(self.pop3_conn_id)
            extra = conn.extra_dejson
            if not conn.host or not conn.login:
                raise ValueError(f"connection {self.pop3_conn_id!r} needs a host and a login")
            use_ssl = flag(extra.get("ssl", conn.port == poplib.POP3_SSL_PORT))
            starttls = flag(extra.get("starttls", False))
            timeout = extra_number(self.pop3_conn_id, extra, "timeout", self.DEFAULT_TIMEOUT)
            port = conn.port or (poplib.POP3_SSL_PORT if use_ssl else poplib.POP3_PORT)
            context = None
            if use_ssl or starttls:
                context = ssl.create_default_context(cafile=extra.get("ca_file") or None)
            try:
                if use_ssl:
                    client = _POP3_SSL(conn.host, port, timeout=timeout, context=context)
                else:
                    client = _POP3(conn.host, port, timeout=timeout)
            except (OSError, poplib.error_proto) as exc:  # ssl.SSLError is an OSError
                raise Pop3Error(f"{self.pop3_conn_id}: cannot connect to {conn.host}:{port}:"
                                f" {type(exc).__name__}: {exc}") from exc
            try:
                if starttls and not use_ssl:
                    client.stls(context)
                client.user(conn.login)
                client.pass_(conn.password or "")
            except (OSError, poplib.error_proto) as exc:
                _drop(client)
                raise Pop3Error(f"{self.pop3_conn_id}: login as {conn.login!r} failed:"
                                f" {type(exc).__name__}: {_text(exc)}") from exc
            self._client = client
        return self._client

    def quit(self) -> None:
        """End the session with QUIT: the server now deletes the messages marked with DELE."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (OSError, poplib.error_proto) as exc:
                _drop(client)
                raise Pop3Error(f"{self.pop3_conn_id}: QUIT failed, the session's deletions may not"
                                f" be applied: {type(exc).__name__}: {_text(exc)}") from exc

    def close(self) -> None:
        """Drop the connection without QUIT: the server deletes nothing of this session."""
        client, self._client = self._client, None
        if client is not None:
            _drop(client)

    def __enter__(self) -> "Pop3Hook":
        self.get_conn()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # QUIT even after an error: the caller marks a message for deletion only once it has
        # kept it, so what is marked may go. If QUIT itself fails the box is just read again
        # (after an error, that error is the one raised).
        try:
            self.quit()
        except Pop3Error:
            if exc_type is None:
                raise

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self:
                n = self.count()
        except (Pop3Error, ValueError) as exc:
            return False, str(exc)
        return True, f"logged in; {n} message(s) in the box"

    # -- messages -------------------------------------------------------------------------------

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (OSError, poplib.error_proto) as exc:
            raise Pop3Error(f"{self.pop3_conn_id}: {what}: {type(exc).__name__}: {_text(exc)}") from exc

    def count(self) -> int:
        """How many messages the box holds (STAT)."""
        return self._call("STAT", self.get_conn().stat)[0]

    def sizes(self) -> dict[int, int]:
        """Message number → size in octets (LIST)."""
        _, lines, _ = self._call("LIST", self.get_conn().list)
        out = {}
        for line in lines:
            num, size = line.split()[:2]
            out[int(num)] = int(size)
        return out

    def retrieve(self, number: int) -> bytes:
        """Message ``number`` as it is on the server (RETR), lines joined with CRLF."""
        _, lines, _ = self._call(f"RETR {number}", self.get_conn().retr, number)
        return b"\r\n".join(lines) + b"\r\n"

    def delete(self, number: int) -> None:
        """Mark message ``number`` for deletion (DELE); the server deletes it at QUIT."""
        self._call(f"DELE {number}", self.get_conn().dele, number)


def _text(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) == 1 and isinstance(args[0], bytes):
        return args[0].decode("utf-8", "replace")
    return str(exc)


def _drop(client: poplib.POP3) -> None:
    try:
        client.close()
    except OSError:
        pass
    sock = getattr(client, "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.close()
        except OSError:
            pass
