"""Network probes of monitored services (SMTP, FTP, HTTP, DNS, TCP), and the logins they use.

A monitor that logs in (FTP, SMTP AUTH, a password-protected web page) or sends a token (a
server's health agent) names an Airflow connection (``monitors.conn_id`` / ``servers.conn_id``,
type ``panelflow_monitor``): login, password, and the extra ``timeout`` (seconds, a default for
the monitors using it). :class:`MonitorLoginHook` reads it; the password never leaves the
:class:`Login` it is read into (not in its ``repr``, never in a probe's message or a table).

Every probe returns a :class:`ProbeResult` and never raises: whatever goes wrong — refused,
timed out, a wrong answer — is the service being down, with the reason in ``message``. Each
socket operation is bounded by the time left of the probe's ``timeout`` (a :class:`Deadline`),
so a probe takes at most about ``timeout`` seconds however many commands it sends (HTTP: the
connect and each read are bounded by it; the body read stops at the deadline). Response times
are measured on the monotonic clock, from before the connect to the last answer read.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from airflow.sdk import BaseHook

from panelflow.hooks._extras import optional_number

MESSAGE_CHARS = 300
MAX_BODY_BYTES = 1 << 20  # a page is matched on its first MiB


@dataclass(frozen=True)
class Login:
    login: str | None
    password: str | None = field(default=None, repr=False)
    timeout: float | None = None


class MonitorLoginHook(BaseHook):
    """The login (and default timeout) a monitor uses, from an Airflow connection."""

    conn_name_attr = "monitor_conn_id"
    default_conn_name = "monitor_default"
    conn_type = "panelflow_monitor"
    hook_name = "panelflow monitor login"

    def __init__(self, monitor_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.monitor_conn_id = monitor_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"hidden_fields": ["schema", "host", "port"],
                "relabeling": {"login": "Login (FTP, SMTP AUTH, HTTP basic)", "password": "Password / token"},
                "placeholders": {"extra": '{"timeout": 10}'}}

    def get_conn(self) -> Login:
        conn = self.get_connection(self.monitor_conn_id)
        return Login(login=conn.login or None, password=conn.password or None,
                     timeout=optional_number(self.monitor_conn_id, conn.extra_dejson, "timeout"))


@dataclass(frozen=True)
class ProbeResult:
    up: bool
    message: str
    response_ms: float | None = None
    payload: Any = None  # what the probe read, when a caller wants it (the agent's JSON)


class ProbeTimeout(TimeoutError):
    pass


class Deadline:
    """The time a probe has left; ``left()`` raises once it is spent."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()
        self.until = self.started + seconds

    def left(self) -> float:
        remaining = self.until - time.monotonic()
        if remaining <= 0:
            raise ProbeTimeout(f"no answer within {self.seconds:g}s")
        return remaining

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())[:MESSAGE_CHARS]


def _failure(exc: BaseException, deadline: Deadline) -> ProbeResult:
    if isinstance(exc, TimeoutError):  # socket.timeout and ProbeTimeout are TimeoutErrors
        reason = f"no answer within {deadline.seconds:g}s"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return ProbeResult(False, _text(reason), deadline.elapsed_ms())


def _guarded(probe: Callable[[Deadline], ProbeResult], timeout: float) -> ProbeResult:
    deadline = Deadline(timeout)
    try:
        return probe(deadline)
    except Exception as exc:  # a probe never raises: any failure is the service's answer
        return _failure(exc, deadline)


# -- TCP ---------------------------------------------------------------------------------------

def tcp_probe(host: str, port: int, timeout: float) -> ProbeResult:
    def probe(d: Deadline) -> ProbeResult:
        with socket.create_connection((host, port), timeout=d.left()):
            ms = d.elapsed_ms()
        return ProbeResult(True, f"connected to {host}:{port}", ms)

    return _guarded(probe, timeout)


# -- SMTP --------------------------------------------------------------------------------------

def smtp_probe(host: str, port: int, timeout: float, *, expect_banner: str | None = None,
               helo: str = "panelflow-monitor", use_ssl: bool = False, starttls: bool = False,
               login: Login | None = None) -> ProbeResult:
    """Banner (220), EHLO (250), optionally STARTTLS and AUTH with ``login``, QUIT."""
    import smtplib
    import ssl

    def probe(d: Deadline) -> ProbeResult:
        cls = smtplib.SMTP_SSL if use_ssl else smtplib.SMTP
        client = cls(timeout=d.left())
        try:
            code, banner = client.connect(host, port)
            banner = _text(banner)
            if code != 220:
                return ProbeResult(False, f"banner {code} {banner}", d.elapsed_ms())
            if expect_banner and expect_banner.lower() not in banner.lower():
                return ProbeResult(False, f"banner {banner!r} lacks {expect_banner!r}", d.elapsed_ms())
            client.sock.settimeout(d.left())
            code, answer = client.ehlo(helo)
            if code != 250:
                return ProbeResult(False, f"EHLO answered {code} {_text(answer)}", d.elapsed_ms())
            if starttls:
                client.sock.settimeout(d.left())
                client.starttls(context=ssl.create_default_context())
                client.sock.settimeout(d.left())
                client.ehlo(helo)
            if login is not None and login.login:
                client.sock.settimeout(d.left())
                client.login(login.login, login.password or "")
            ms = d.elapsed_ms()
            client.sock.settimeout(d.left())
            client.quit()
            auth = f", logged in as {login.login}" if login is not None and login.login else ""
            return ProbeResult(True, f"220 {banner}{auth}", ms)
        finally:
            client.close()

    return _guarded(probe, timeout)


# -- FTP ---------------------------------------------------------------------------------------

def ftp_probe(host: str, port: int, timeout: float, *, expect_banner: str | None = None,
              login: Login | None = None) -> ProbeResult:
    """Banner (220), optionally USER/PASS with ``login`` (230 expected), QUIT."""
    import ftplib

    def probe(d: Deadline) -> ProbeResult:
        ftp = ftplib.FTP(timeout=d.left())
        try:
            banner = _text(ftp.connect(host, port, timeout=d.left()))
            if expect_banner and expect_banner.lower() not in banner.lower():
                return ProbeResult(False, f"banner {banner!r} lacks {expect_banner!r}", d.elapsed_ms())
            logged_in = ""
            if login is not None and login.login:
                ftp.sock.settimeout(d.left())
                try:
                    ftp.login(login.login, login.password or "")
                except ftplib.error_perm as exc:
                    return ProbeResult(False, f"login as {login.login} refused: {_text(exc)}", d.elapsed_ms())
                logged_in = f", logged in as {login.login}"
            ms = d.elapsed_ms()
            try:
                ftp.sock.settimeout(d.left())
                ftp.quit()
            except (ftplib.Error, OSError):
                pass  # the answers that matter are in
            return ProbeResult(True, f"{banner}{logged_in}", ms)
        finally:
            ftp.close()

    return _guarded(probe, timeout)


# -- HTTP --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpExpectation:
    statuses: frozenset[int] | None = frozenset({200})  # None: any status below 500
    contains: str | None = None
    regex: str | None = None
    server_header: str | None = None


def http_probe(url: str, timeout: float, expect: HttpExpectation, *, host_header: str | None = None,
               verify_tls: bool = True, follow_redirects: bool = True, login: Login | None = None,
               want_json: bool = False, bearer: bool = False) -> ProbeResult:
    """GET ``url``; up when the status, the ``Server`` header and the page's content are as expected.

    ``login``: HTTP basic auth (or, with ``bearer``, its password as a bearer token).
    ``want_json``: the body parsed as JSON is returned as the result's ``payload``.
    """
    import httpx

    def probe(d: Deadline) -> ProbeResult:
        headers = {"User-Agent": "panelflow-monitor"}
        if host_header:
            headers["Host"] = host_header
        auth = None
        if login is not None and bearer and login.password:
            headers["Authorization"] = f"Bearer {login.password}"
        elif login is not None and login.login:
            auth = httpx.BasicAuth(login.login, login.password or "")
        try:
            with httpx.Client(timeout=httpx.Timeout(d.left()), verify=verify_tls, follow_redirects=follow_redirects,
                              trust_env=False) as client:
                with client.stream("GET", url, headers=headers, auth=auth) as response:
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) >= MAX_BODY_BYTES:
                            break
                        d.left()  # a page trickling in past the deadline is a timeout
                    ms = d.elapsed_ms()
                    status = response.status_code
                    server = response.headers.get("server", "")
                    text = bytes(body[:MAX_BODY_BYTES]).decode(response.encoding or "utf-8", "replace")
        except httpx.TimeoutException as exc:
            raise ProbeTimeout() from exc
        if expect.statuses is None:
            if status >= 500:
                return ProbeResult(False, f"HTTP {status}", ms)
        elif status not in expect.statuses:
            wanted = "/".join(str(s) for s in sorted(expect.statuses))
            return ProbeResult(False, f"HTTP {status} (expected {wanted})", ms)
        if expect.server_header and expect.server_header.lower() not in server.lower():
            return ProbeResult(False, f"HTTP {status} but Server is {server!r}, not {expect.server_header!r}", ms)
        if expect.contains is not None and expect.contains not in text:
            return ProbeResult(False, f"HTTP {status} but the page does not contain {expect.contains!r}", ms)
        if expect.regex is not None and re.search(expect.regex, text) is None:
            return ProbeResult(False, f"HTTP {status} but the page does not match /{expect.regex}/", ms)
        payload = None
        if want_json:
            import json

            try:
                payload = json.loads(text)
            except ValueError:
                return ProbeResult(False, f"HTTP {status} but the body is not JSON", ms)
        return ProbeResult(True, _text(f"HTTP {status}, {len(body)} bytes" + (f", Server {server}" if server else "")),
                           ms, payload)

    return _guarded(probe, timeout)


# -- DNS ---------------------------------------------------------------------------------------

def dns_values(answer, rdtype: str) -> list[str]:
    """An answer's records as comparable strings: TXT strings joined, addresses, names without the dot."""
    values = []
    for record in answer:
        if rdtype == "TXT":
            values.append(b"".join(record.strings).decode("utf-8", "replace"))
        elif rdtype in ("A", "AAAA"):
            values.append(record.address)
        else:
            values.append(record.to_text().rstrip(".").lower())
    return values


def dns_probe(nameservers: list[str], port: int, name: str, rdtype: str, timeout: float,
              expect: list[str] | None = None) -> ProbeResult:
    """Ask ``nameservers`` for ``name``/``rdtype``; up when they answer and (if given) every
    value of ``expect`` is among the answer's records."""
    import dns.resolver

    def probe(d: Deadline) -> ProbeResult:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
        resolver.port = port
        resolver.timeout = resolver.lifetime = d.left()
        try:
            answer = resolver.resolve(name, rdtype, search=False, lifetime=d.left())
        except dns.resolver.NXDOMAIN:
            return ProbeResult(False, f"{name}: NXDOMAIN", d.elapsed_ms())
        except dns.resolver.NoAnswer:
            return ProbeResult(False, f"{name}: no {rdtype} record", d.elapsed_ms())
        except dns.resolver.LifetimeTimeout:
            return ProbeResult(False, f"{name} {rdtype}: no answer within {d.seconds:g}s", d.elapsed_ms())
        except dns.resolver.NoNameservers as exc:
            return ProbeResult(False, _text(f"{name} {rdtype}: no name server answered: {exc}"), d.elapsed_ms())
        ms = d.elapsed_ms()
        values = dns_values(answer, rdtype)
        if expect:
            fold = (lambda v: v) if rdtype == "TXT" else (lambda v: v.rstrip(".").lower())
            missing = [e for e in expect if fold(e) not in {fold(v) for v in values}]
            if missing:
                return ProbeResult(False, _text(f"{name} {rdtype} answered {values}, expected {missing}"), ms)
        return ProbeResult(True, _text(f"{name} {rdtype} {values}"), ms)

    return _guarded(probe, timeout)
