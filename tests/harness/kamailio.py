"""A real SIP platform for the tests: Kamailio on 127.0.0.1 with its own database on the test
PostgreSQL, and SIPp placing real calls through it.

Use it as a context manager from a module-scoped fixture::

    with Kamailio(postgres, tmp_path_factory.mktemp("kamailio")) as kam:
        os.environ["AIRFLOW_CONN_SIP_PLATFORM_DEFAULT"] = kam.connection_uri()
        kam.register("acme.test", "alice", "pw")          # -> 200
        kam.call("acme.test", "alice", "pw", "bob")      # a real call, answered by a SIPp uas

The database (``kamailio_<hex>``) gets Debian's schema files and the hook's
:data:`SCHEMA_ADDITIONS`; the config is written from ``kamailio/kamailio.cfg.tmpl``. Kamailio runs
with ``TZ=UTC`` (its acc_cdrs timestamps are local time, the hook reads them as UTC).

The callee of a call is a SIPp uas whose contact the harness binds to the callee's address of
record with the ``ul.add`` RPC, for the call's length: the test knows the caller's password, not
necessarily the callee's, and a REGISTER would only put the same row in usrloc. A number callee is
resolved through ``dbaliases`` to the subscriber the uas stands for; Kamailio still routes the call
by the alias itself.

Processes are started in their own session and die with the test process (parent-death signal);
:meth:`Kamailio.stop` ends them by PID (SIGTERM, a bounded wait, SIGKILL) and drops the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from harness import require_binary
from panelflow.dev.postgres import die_with_parent
from panelflow.hooks.sip_platform import SCHEMA_ADDITIONS

FILES = Path(__file__).with_name("kamailio")
SCHEMA_DIR = Path("/usr/share/kamailio/postgres")
SCHEMA_FILES = ("standard", "auth_db", "usrloc", "acc", "domain", "group", "alias_db")
STOP_WAIT = 5.0
_CSV_UNSAFE = re.compile(r"[;\r\n\[\] ]")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, wait: float = STOP_WAIT) -> None:
    """SIGTERM, a bounded wait, then SIGKILL to its process group (it leads one: own session)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(wait)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def sipp_port_block(size: int = 8) -> int:
    """The first of ``size`` consecutive free UDP ports below the kernel's ephemeral range.

    SIPp binds its media port *and* media port + 2 (video): a free ``-mp`` alone once collided with a
    socket another test had just opened on port 0. Below the ephemeral range no port-0 socket can
    land between this check and SIPp's bind; blocks are random so parallel workers rarely meet."""
    low = _ephemeral_low()
    blocks = range(max(1024, low - 12_000), low - size, size)
    for base in random.sample(blocks, min(64, len(blocks))):
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + size):
                    held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {size} consecutive free UDP ports below {low} for SIPp")


class SippFailed(AssertionError):
    """A SIPp scenario did not complete; ``status`` is the last SIP final answer it received."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


class Kamailio:
    """A started Kamailio with its own database; leave the ``with`` block (or :meth:`stop`) to end it."""

    def __init__(self, postgres, workdir: Path):
        self.kamailio_bin = require_binary("kamailio")
        self.sipp_bin = require_binary("sipp")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._postgres = postgres
        self.db_name = f"kamailio_{uuid.uuid4().hex[:12]}"
        self.db_uri = postgres.uri(self.db_name)
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.rpc_port = free_port()
        self.rpc_url = f"http://127.0.0.1:{self.rpc_port}/RPC"
        self.proc: subprocess.Popen | None = None
        self._runs = 0
        postgres.create_database(self.db_name)
        try:
            self._load_schema()
            self._start()
        except BaseException:
            self.stop()
            raise

    # -- life ------------------------------------------------------------------------------------

    def _load_schema(self) -> None:
        with psycopg.connect(self.db_uri, autocommit=True) as conn:
            for name in SCHEMA_FILES:
                conn.execute((SCHEMA_DIR / f"{name}-create.sql").read_text())
            for statement in SCHEMA_ADDITIONS:
                conn.execute(statement)

    def _start(self) -> None:
        cfg = self.workdir / "kamailio.cfg"
        text = (FILES / "kamailio.cfg.tmpl").read_text()
        for key, value in {"SIP_PORT": self.sip_port, "RPC_PORT": self.rpc_port, "DIR": self.workdir,
                           "DB_URL": self.db_uri.replace("postgresql://", "postgres://")}.items():
            text = text.replace(f"@{key}@", str(value))
        cfg.write_text(text)
        check = subprocess.run([self.kamailio_bin, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"kamailio -c refused {cfg}:\n{check.stderr[-3000:]}")
        self.log_path = self.workdir / "kamailio.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.kamailio_bin, "-DD", "-E", "-m", "64", "-M", "8", "-f", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "TZ": "UTC"}, preexec_fn=die_with_parent(signal.SIGTERM))
        deadline = time.monotonic() + 15
        while True:
            try:
                self.rpc("core.version")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kamailio did not answer RPC on {self.rpc_url}:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except (OSError, AttributeError):
            return ""

    def stop(self) -> None:
        """Stop Kamailio (by PID) and drop its database; safe to call twice."""
        proc, self.proc = self.proc, None
        stop_process(proc)
        if self.db_name:
            with psycopg.connect(self._postgres.uri("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name)))
            self.db_name = ""

    def __enter__(self) -> "Kamailio":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def connection_uri(self) -> str:
        """``AIRFLOW_CONN_<ID>`` (JSON) pointing SipPlatformHook at this platform."""
        return json.dumps({
            "conn_type": "panelflow_sip_platform", "host": "127.0.0.1", "port": self._postgres.port,
            "schema": self.db_name, "login": "postgres",
            "extra": {"rpc_url": self.rpc_url, "timeout": 5},
        })

    def rpc(self, method: str, *params):
        """One JSON-RPC call (the harness's own client, so a test can check the platform without the hook)."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
        request = urllib.request.Request(self.rpc_url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.loads(response.read())
        if "error" in answer:
            raise RuntimeError(f"RPC {method}: {answer['error']}")
        return answer.get("result")

    # -- SIPp --------------------------------------------------------------------------------------

    def _sipp(self, scenario: str, rows: list[list[str]], *args: str,
              ports: int | None = None) -> tuple[subprocess.Popen, Path]:
        """Start SIPp on a block of free loopback ports (:func:`sipp_port_block`: SIP at its first,
        control at +1, media at +4 to +7); ``rows`` become its injection CSV."""
        self._runs += 1
        run = self.workdir / f"sipp-{self._runs}-{scenario}"
        run.mkdir()
        base = sipp_port_block() if ports is None else ports
        argv = [self.sipp_bin, f"127.0.0.1:{self.sip_port}", "-sf", str(FILES / f"{scenario}.xml"),
                "-i", "127.0.0.1", "-mi", "127.0.0.1", "-ci", "127.0.0.1",
                "-p", str(base), "-cp", str(base + 1), "-mp", str(base + 4), "-nostdin", "-timeout", "60s", "-timeout_error",
                "-recv_timeout", "30000", "-trace_msg", "-message_file", str(run / "messages.log"),
                "-trace_err", "-error_file", str(run / "errors.log"), *args]
        if rows:
            (run / "fields.csv").write_text("SEQUENTIAL\n" + "".join(";".join(r) + "\n" for r in rows))
            argv += ["-inf", str(run / "fields.csv")]
        with open(run / "stderr.log", "wb") as stderr:
            proc = subprocess.Popen(argv, cwd=run, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                    start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        return proc, run

    @staticmethod
    def _statuses(run: Path) -> list[int]:
        """The status codes of the SIP responses SIPp received, in order."""
        try:
            text = (run / "messages.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for m in re.finditer(r"message received[^\n]*\n\s*\n?SIP/2\.0 (\d{3})", text)]

    def _finish(self, proc: subprocess.Popen, run: Path, timeout: float, what: str) -> None:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            code = None
        if code != 0:
            finals = [s for s in self._statuses(run) if s >= 200]
            status = finals[-1] if finals else None
            errors = (run / "errors.log").read_text(errors="replace")[-1500:] if (run / "errors.log").exists() else ""
            raise SippFailed(f"{what}: SIPp exit {code}, last final answer {status}\n{errors}", status)

    @staticmethod
    def _fields(*values: str) -> list[str]:
        """One row of an injection file: values that cannot break its ``;`` fields or SIPp's keywords."""
        for value in values:
            if _CSV_UNSAFE.search(value):
                raise ValueError(f"{value!r} cannot go into a SIPp injection file")
        return list(values)

    @classmethod
    def _auth(cls, username: str, password: str) -> str:
        cls._fields(username, password)
        return f"[authentication username={username} password={password}]"

    def register(self, domain: str, username: str, password: str, expires: int = 60) -> int:
        """One REGISTER (answering the digest challenge); the final status code: 200, 401, 403 …"""
        ports = sipp_port_block()
        contact_port = ports + 2   # in the block, unused by SIPp itself: REGISTER only names it
        proc, run = self._sipp("reg", [self._fields(username, domain) + [self._auth(username, password),
                                                                        str(contact_port), str(int(expires))]], "-m", "1", ports=ports)
        try:
            self._finish(proc, run, 30, f"REGISTER {username}@{domain}")
        except SippFailed as failed:
            if failed.status is None:
                raise
            return failed.status
        return 200

    def _callee_aor(self, caller_domain: str, callee: str) -> str | None:
        """The subscriber a call to ``callee`` should reach (a number through its alias), or None
        when the platform has no such subscriber: then nothing answers and Kamailio says why."""
        with psycopg.connect(self.db_uri, autocommit=True) as conn:
            row = conn.execute("""
                SELECT username, domain FROM dbaliases WHERE alias_username = %(callee)s
                UNION ALL
                SELECT username, domain FROM subscriber WHERE username = %(callee)s AND domain = %(domain)s
                LIMIT 1""", {"callee": callee, "domain": caller_domain}).fetchone()
        return f"{row[0]}@{row[1]}" if row else None

    @contextlib.contextmanager
    def _answering(self, aor: str | None, calls: int) -> Iterator[tuple[subprocess.Popen, Path] | None]:
        """A SIPp uas answering ``calls`` calls, bound to ``aor`` in Kamailio's location table while inside
        (no ``aor``: nothing answers)."""
        if aor is None:
            yield None
            return
        port = sipp_port_block()
        proc, run = self._sipp("uas", [], "-m", str(calls), ports=port)
        contact = f"sip:{aor.split('@')[0]}@127.0.0.1:{port}"
        try:
            # table, AOR, contact, expires, q, path, flags, cflags, methods
            self.rpc("ul.add", "location", aor, contact, 3600, 1.0, "", 0, 0, 4294967295)
            yield proc, run
        finally:
            with contextlib.suppress(Exception):
                self.rpc("ul.rm_contact", "location", aor, contact)
            stop_process(proc)

    def call(self, caller_domain: str, caller: str, password: str, callee: str, duration_ms: int = 1000) -> None:
        """A real call from ``caller`` to ``callee`` (a username of the caller's domain or a number),
        answered by a SIPp uas and hung up by the caller after ``duration_ms``; returns after the BYE
        was answered. Raises :class:`SippFailed` (with the final status) when the call did not complete."""
        with self._answering(self._callee_aor(caller_domain, callee), 1) as answering:
            proc, run = self._sipp("uac", [self._fields(caller, caller_domain) + [self._auth(caller, password)]
                                   + self._fields(callee)],
                                   "-m", "1", "-d", str(duration_ms))
            self._finish(proc, run, duration_ms / 1000 + 30, f"call {caller}@{caller_domain} -> {callee}")
            if answering is not None:
                self._finish(*answering, 10, f"answering {callee}")

    @contextlib.contextmanager
    def hold_calls(self, caller_domain: str, caller: str, password: str, callee: str, count: int,
                   duration_ms: int) -> Iterator[None]:
        """``count`` calls up at once while inside (each lasts ``duration_ms``: make it longer than the
        block); leaving waits until they have all been hung up."""
        aor = self._callee_aor(caller_domain, callee)
        if aor is None:
            raise ValueError(f"{callee!r} is no subscriber or number on the platform: nothing would answer")
        with self._answering(aor, count) as (uas, uas_run):
            proc, run = self._sipp("uac", [self._fields(caller, caller_domain) + [self._auth(caller, password)]
                                   + self._fields(callee)],
                                   "-m", str(count), "-l", str(count), "-r", str(count), "-rp", "1000",
                                   "-d", str(duration_ms))
            what = f"{count} calls {caller}@{caller_domain} -> {callee}"
            try:
                deadline = time.monotonic() + 40   # upper bounds: a loaded CI machine answers late, not never
                while self._confirmed(caller_domain) < count:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        self._finish(proc, run, 0.1, what)
                        raise SippFailed(f"{what}: only {self._confirmed(caller_domain)} came up", None)
                    time.sleep(0.05)
                yield
            except BaseException:
                # let the calls end with their BYEs (a killed uac would leave its dialogs up in Kamailio
                # for the other tests to count); the uas is stopped on the way out of _answering
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(duration_ms / 1000 + 30)
                stop_process(proc)
                raise
            self._finish(proc, run, duration_ms / 1000 + 30, what)
            self._finish(uas, uas_run, 10, f"answering {callee}")

    def _confirmed(self, domain: str) -> int:
        """Calls of ``domain``'s callers that are answered (dialog state 4: confirmed)."""
        result = self.rpc("dlg.list") or []
        dialogs = result if isinstance(result, list) else [result]
        return sum(1 for d in dialogs if isinstance(d, dict) and d.get("state") == 4
                   and str(d.get("from_uri", "")).endswith(f"@{domain}"))
