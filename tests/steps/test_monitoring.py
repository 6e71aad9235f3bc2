"""MonitoringWork and SyncHealthMetricsWork against real servers on 127.0.0.1 started here: SMTP
(aiosmtpd), FTP (pyftpdlib), HTTP (an IIS-like site, web pages, a health agent), DNS (dnsmasq)
and plain TCP.

Every network monitor goes up → down (one alert) → still down (none) → up (one recovery alert);
CPU, memory, disk and services follow stats rows; a page without its text, a refused FTP login,
a wrong DNS answer and a silent name server are down; probes run concurrently within their
timeouts; a rerun adds nothing; bad configuration is reported and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pendulum
import psycopg
import pytest

from panelflow.dev.postgres import free_port
from panelflow.step import Interval
from panelflow.steps.monitoring import process_monitors_and_metrics, sync_health_metrics

T0 = pendulum.datetime(2026, 11, 20, 9, 4, tz="UTC")
FIVE = timedelta(minutes=5)
LOG = logging.getLogger("test_monitoring")
NOC = "noc@customer.example"
FTP_PASSWORD = "ftp-S3cret-pw-71"
SMTP_PASSWORD = "smtp-S3cret-pw-72"
AGENT_TOKEN = "agent-S3cret-token-73"
MONITOR_TABLES = ("server_health_metrics", "monitor_metrics_hourly", "monitor_state_changes", "monitor_state",
                  "monitor_checks", "monitors", "server_services", "server_volume_stats", "server_stats", "servers")


# -- the panel DB ------------------------------------------------------------------------------

@pytest.fixture
def mon_db(panel_db, migrated_panel_db):
    """The panel DB with the monitoring tables emptied too (conftest's list does not know them)."""
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(MONITOR_TABLES) + " RESTART IDENTITY CASCADE")
    return panel_db


def run(db, at, start=None):
    return process_monitors_and_metrics(db, Interval(start or at - FIVE, at), LOG)


def add_server(sql, name="web01", role="remote", host="127.0.0.1", agent_url=None, conn_id=None) -> int:
    return sql("INSERT INTO servers (name, role, host, agent_url, conn_id) VALUES (%s, %s, %s, %s, %s) RETURNING id",
               (name, role, host, agent_url, conn_id))[0][0]


def add_monitor(sql, name, kind, params=None, thresholds=None, server_id=None, conn_id=None, alert_to=(NOC,),
                enabled=True) -> int:
    return sql("INSERT INTO monitors (name, kind, server_id, params, thresholds, conn_id, alert_to, enabled)"
               " VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s) RETURNING id",
               (name, kind, server_id, json.dumps(params or {}), json.dumps(thresholds or {}), conn_id,
                list(alert_to), enabled))[0][0]


def checks(sql, monitor_id):
    return sql("SELECT checked_at, status, response_ms, value, message FROM monitor_checks WHERE monitor_id = %s"
               " ORDER BY checked_at", (monitor_id,))


def changes(sql, monitor_id):
    return sql("SELECT from_state, to_state, changed_at, alerts FROM monitor_state_changes WHERE monitor_id = %s"
               " ORDER BY changed_at", (monitor_id,))


def login_connection(monkeypatch, conn_id, login, password, timeout=2):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(
        {"conn_type": "panelflow_monitor", "login": login, "password": password, "extra": {"timeout": timeout}}))


# -- servers on loopback -----------------------------------------------------------------------

class SmtpServer:
    """aiosmtpd with AUTH (plain text allowed: loopback only) for one user; restartable on its port."""

    def __init__(self, port: int):
        self.port, self.controller = port, None

    def start(self):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        class Sink:
            async def handle_DATA(self, server, session, envelope):
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == b"monitor" and auth_data.password == SMTP_PASSWORD.encode()
            return AuthResult(success=ok)

        self.controller = Controller(Sink(), hostname="127.0.0.1", port=self.port, server_hostname="mx.example.test",
                                     ident="panelflow-test ESMTP", auth_require_tls=False, authenticator=authenticator)
        self.controller.start()
        return self

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class FtpServer:
    """pyftpdlib in a thread (its own IO loop, stopped from that thread); failed logins answer at once."""

    def __init__(self, port: int, root):
        self.port, self.root, self.thread = port, str(root), None

    def start(self):
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import FTPServer

        authorizer = DummyAuthorizer()
        authorizer.add_user("probe", FTP_PASSWORD, self.root)
        handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "banner": "panelflow test FTP ready",
                                                  "auth_failed_timeout": 0})
        server = FTPServer(("127.0.0.1", self.port), handler, ioloop=IOLoop())
        self.stopping = threading.Event()

        def serve():
            while not self.stopping.is_set():
                server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
            server.close_all()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.thread is not None:
            self.stopping.set()
            self.thread.join(5)
            self.thread = None


class HttpServer:
    """A threaded HTTP server; ``routes[path] = (status, body, headers, delay seconds)``."""

    def __init__(self, port: int):
        self.port, self.server = port, None
        self.routes: dict[str, tuple] = {}
        self.requests: list[dict] = []

    def start(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append({"path": self.path, "headers": dict(self.headers)})
                status, body, headers, delay = outer.routes.get(self.path, (404, "not found", {}, 0))
                if callable(body):
                    status, body = body(self)
                time.sleep(delay)
                data = body.encode()
                self.send_response(status)
                for k, v in {"Content-Type": "text/html; charset=utf-8", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class TcpServer:
    """Accepts connections and closes them."""

    def __init__(self, port: int):
        self.port, self.sock = port, None

    def start(self):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.sock = sock

        def accept():
            while True:
                try:
                    client, _ = sock.accept()
                except OSError:
                    return
                client.close()

        threading.Thread(target=accept, daemon=True).start()
        return self

    def stop(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None


class DnsServer:
    """dnsmasq answering for example.test (A and TXT records), restartable on its port."""

    def __init__(self, binary: str, port: int, hosts: dict[str, str], txt: dict[str, str]):
        self.binary, self.port, self.hosts, self.txt, self.proc = binary, port, hosts, txt, None

    def start(self):
        import dns.message
        import dns.query

        args = [self.binary, "--no-daemon", "--conf-file=/dev/null", f"--port={self.port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=",
                "--user=root", "--local=/example.test/", "--local-ttl=1"]
        args += [f"--host-record={name},{ip}" for name, ip in self.hosts.items()]
        args += [f"--txt-record={name},{value}" for name, value in self.txt.items()]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while True:
            try:
                dns.query.udp(dns.message.make_query("probe.example.test", "A"), "127.0.0.1", port=self.port,
                              timeout=0.2)
                return self
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode())
                if time.monotonic() > deadline:
                    raise

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None


def _dnsmasq() -> str:
    path = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dnsmasq is not installed (make test installs it)")
        pytest.skip("dnsmasq is not installed")
    return path


@pytest.fixture
def smtp():
    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def ftp(tmp_path):
    (tmp_path / "ftp").mkdir()
    server = FtpServer(free_port(), tmp_path / "ftp").start()
    yield server
    server.stop()


@pytest.fixture
def http():
    server = HttpServer(free_port())
    server.routes.update({
        "/": (200, "<h1>IIS Windows Server</h1>", {"Server": "Microsoft-IIS/10.0"}, 0),
        "/shop": (200, "<h1>Welcome to the shop</h1>", {}, 0),
        "/maintenance": (200, "<h1>Down for maintenance</h1>", {}, 0),
        "/slow": (200, "<h1>Welcome, slowly</h1>", {}, 0.3),
    })
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tcp():
    server = TcpServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def dns_server(monkeypatch):
    """dnsmasq wired as the connection ``monitor_dns`` (the DNS monitors' conn_id)."""
    server = DnsServer(_dnsmasq(), free_port(), hosts={"www.example.test": "192.0.2.10"},
                       txt={"example.test": "v=spf1 -all"}).start()
    monkeypatch.setenv("AIRFLOW_CONN_MONITOR_DNS", json.dumps(
        {"conn_type": "dns", "host": "127.0.0.1", "port": server.port, "extra": {"timeout": 1, "lifetime": 2}}))
    yield server
    server.stop()


@pytest.fixture
def silent_port():
    """A UDP and a TCP port that take what is sent and never answer."""
    for _ in range(50):  # a free UDP port whose number is free for TCP too (not always: try again)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp_sock = socket.socket()
        try:
            tcp_sock.bind(("127.0.0.1", udp.getsockname()[1]))
            break
        except OSError:
            udp.close()
            tcp_sock.close()
    else:
        raise RuntimeError("no port free for both UDP and TCP")
    tcp_sock.listen(64)  # the kernel completes connects; nobody ever reads
    yield udp.getsockname()[1]
    udp.close()
    tcp_sock.close()


# -- MonitoringWork: every network monitor, down and up ----------------------------------------

def test_every_network_monitor_goes_down_and_up_with_one_alert_per_change(mon_db, sql, smtp, ftp, http, tcp,
                                                                            dns_server, monkeypatch):
    login_connection(monkeypatch, "ftp_probe", "probe", FTP_PASSWORD)
    login_connection(monkeypatch, "smtp_probe", "monitor", SMTP_PASSWORD)
    web01 = add_server(sql, "web01")
    ids = {
        "mail": add_monitor(sql, "mx smtp", "mail", {"port": smtp.port, "expect_banner": "panelflow-test"},
                            server_id=web01, conn_id="smtp_probe"),
        "ftp": add_monitor(sql, "web01 ftp", "ftp", {"port": ftp.port, "expect_banner": "panelflow test FTP"},
                           server_id=web01, conn_id="ftp_probe"),
        "iis": add_monitor(sql, "web01 iis", "iis", {"port": http.port, "host_header": "www.example.test",
                                                     "server_header": "Microsoft-IIS"}, server_id=web01),
        "web": add_monitor(sql, "shop page", "web", {"url": f"http://127.0.0.1:{http.port}/shop",
                                                     "contains": "Welcome", "timeout": 2}),
        "dns": add_monitor(sql, "www record", "dns", {"name": "www.example.test", "expect": "192.0.2.10", "timeout": 1},
                           conn_id="monitor_dns"),
        "tcp": add_monitor(sql, "web01 rdp", "tcp", {"port": tcp.port, "timeout": 1}, server_id=web01),
    }
    servers = [smtp, ftp, http, tcp, dns_server]

    first = run(mon_db, T0)
    assert (first["checked"], first["up"], first["down"], first["state_changes"], first["alerts_queued"]) == (6, 6, 0, 6, 0)
    assert first["skipped"] == {} and first["down_now"] == []
    for kind, mid in ids.items():
        (at, status, ms, _, message), = checks(sql, mid)
        assert (at, status) == (T0, "up"), (kind, message)
        assert ms is not None and 0 <= ms < 2000, kind   # a loopback TCP connect can round to 0.0 ms
    assert "logged in as probe" in checks(sql, ids["ftp"])[0][4]
    assert "logged in as monitor" in checks(sql, ids["mail"])[0][4]
    assert [r["headers"]["Host"] for r in http.requests if r["path"] == "/"] == ["www.example.test"]
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 0  # a first "up" is not news

    for server in servers:
        server.stop()
    down = run(mon_db, T0 + FIVE)
    assert (down["checked"], down["down"], down["state_changes"], down["alerts_queued"]) == (6, 6, 6, 6)
    assert len(down["down_now"]) == 6
    for kind, mid in ids.items():
        assert checks(sql, mid)[-1][1] == "down", kind
    assert "ConnectionRefused" in checks(sql, ids["tcp"])[-1][4]
    assert "ConnectionRefused" in checks(sql, ids["mail"])[-1][4]
    mails = sql("SELECT to_address, subject, body_text FROM email_outbox ORDER BY id")
    assert len(mails) == 6 and {m[0] for m in mails} == {NOC}
    assert {m[1] for m in mails} == {"[DOWN] mx smtp (Mail (SMTP) on web01)", "[DOWN] web01 ftp (FTP on web01)",
                                     "[DOWN] web01 iis (IIS on web01)", "[DOWN] shop page (Web page)",
                                     "[DOWN] www record (DNS)", "[DOWN] web01 rdp (TCP on web01)"}
    assert all("is DOWN since 2026-11-20 09:09 UTC" in m[2] for m in mails)

    still = run(mon_db, T0 + 2 * FIVE)  # still down: no second alert
    assert (still["down"], still["state_changes"], still["alerts_queued"]) == (6, 0, 0)
    again = run(mon_db, T0 + 2 * FIVE)  # the same run again (a retry): adds nothing
    assert (again["checked"], again["already_checked"], again["state_changes"]) == (0, 6, 0)
    assert sql("SELECT count(*) FROM monitor_checks")[0][0] == 18
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 6

    for server in servers:
        server.start()
    up = run(mon_db, T0 + 3 * FIVE)
    assert (up["up"], up["state_changes"], up["alerts_queued"]) == (6, 6, 6)
    recovered = sql("SELECT subject, body_text FROM email_outbox WHERE subject LIKE '[UP]%%'")
    assert len(recovered) == 6
    assert all("it was down for 10 min, since 2026-11-20 09:09 UTC" in body for _, body in recovered)
    for kind, mid in ids.items():
        assert [c[:3] for c in changes(sql, mid)] == [(None, "up", T0), ("up", "down", T0 + FIVE),
                                                      ("down", "up", T0 + 3 * FIVE)], kind
        assert sql("SELECT state, since FROM monitor_state WHERE monitor_id = %s", (mid,)) == [("up", T0 + 3 * FIVE)]
    keys = [k for (k,) in sql("SELECT dedupe_key FROM email_outbox ORDER BY id")]
    assert len(set(keys)) == 12
    assert f"monitor:{ids['tcp']}:up->down:2026-11-20T09:09:00Z:{NOC}" in keys

    # Network Director metrics: the 09:00 hour of each monitor, 2 up + 2 down checks
    hourly = sql("SELECT monitor_id, hour, checks, up_checks, down_checks, availability_percent, response_ms_p50"
                 " FROM monitor_metrics_hourly ORDER BY monitor_id")
    assert [(h[0], h[1], h[2], h[3], h[4], float(h[5])) for h in hourly] == [
        (mid, pendulum.datetime(2026, 11, 20, 9, tz="UTC"), 4, 2, 2, 50.0) for mid in sorted(ids.values())]
    assert all(h[6] is not None and h[6] > 0 for h in hourly)

    # the logins' passwords are nowhere: not in a check, a state, an e-mail or a summary
    stored = json.dumps([sql("SELECT * FROM monitor_checks"), sql("SELECT * FROM monitor_state"),
                         sql("SELECT * FROM monitor_state_changes"), sql("SELECT * FROM email_outbox"),
                         sql("SELECT * FROM monitors"), first, down, still, up], default=str)
    assert FTP_PASSWORD not in stored and SMTP_PASSWORD not in stored


def test_a_retried_run_sends_nothing_while_the_server_flaps(mon_db, sql, tcp):
    mid = add_monitor(sql, "rdp", "tcp", {"host": "127.0.0.1", "port": tcp.port, "timeout": 1})
    run(mon_db, T0)
    tcp.stop()
    assert run(mon_db, T0 + FIVE)["alerts_queued"] == 1
    tcp.start()  # back while the run is retried: the retry changes nothing
    retry = run(mon_db, T0 + FIVE)
    assert (retry["checked"], retry["state_changes"], retry["alerts_queued"]) == (0, 0, 0)
    tcp.stop()
    assert run(mon_db, T0 + 2 * FIVE)["alerts_queued"] == 0  # still down for the next run: no second alert
    older = run(mon_db, T0 - FIVE)  # an older interval run late cannot rewind the state
    assert (older["checked"], older["already_checked"]) == (0, 1)
    assert [c[:2] for c in changes(sql, mid)] == [(None, "up"), ("up", "down")]
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 1


# -- thresholds from the stats tables ----------------------------------------------------------

def sample(sql, server_id, at, cpu=None, memory=None, volumes=None, services=None):
    if cpu is not None or memory is not None:
        total, used = memory or (None, None)
        sql("INSERT INTO server_stats (server_id, sampled_at, cpu_percent, memory_total_mb, memory_used_mb)"
            " VALUES (%s, %s, %s, %s, %s)", (server_id, at, cpu, total, used))
    for volume, (size, free) in (volumes or {}).items():
        sql("INSERT INTO server_volume_stats (server_id, sampled_at, volume, size_mb, free_mb) VALUES (%s, %s, %s, %s, %s)",
            (server_id, at, volume, size, free))
    for name, state in (services or {}).items():
        sql("INSERT INTO server_services (server_id, service_name, state, sampled_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (server_id, service_name) DO UPDATE SET state = EXCLUDED.state, sampled_at = EXCLUDED.sampled_at",
            (server_id, name, state, at))


def test_cpu_memory_disk_and_services_follow_the_latest_sample(mon_db, sql):
    sid = add_server(sql, "hv01")
    ids = {
        "cpu": add_monitor(sql, "hv01 cpu", "cpu", thresholds={"max_percent": 90}, server_id=sid),
        "memory": add_monitor(sql, "hv01 memory", "memory", thresholds={"max_used_percent": 85}, server_id=sid),
        "disk": add_monitor(sql, "hv01 disk", "disk", {"volumes": ["C:", "d:"]},
                            {"max_used_percent": 90, "min_free_mb": 1024}, server_id=sid),
        "services": add_monitor(sql, "hv01 services", "services", {"services": ["W3SVC", "MSFTPSVC"]}, server_id=sid),
    }
    healthy = dict(cpu=35, memory=(16384, 8000), volumes={"C:": (100000, 40000), "D:": (500000, 300000)},
                   services={"W3SVC": "running", "MSFTPSVC": "running", "Spooler": "stopped"})
    sample(sql, sid, T0 - timedelta(minutes=2), **healthy)

    first = run(mon_db, T0)
    assert (first["up"], first["alerts_queued"]) == (4, 0)
    values = {kind: checks(sql, mid)[-1] for kind, mid in ids.items()}
    assert [float(values[k][3]) for k in ("cpu", "memory", "disk", "services")] == [35.0, 48.83, 60.0, 0.0]
    assert values["disk"][4] == "C: 60% used, 40000 MB free; D: 40% used, 300000 MB free"
    assert values["cpu"][2] is None  # no response time for a stats monitor

    sample(sql, sid, T0 + timedelta(minutes=3), cpu=97.5, memory=(16384, 15000), volumes={"C:": (100000, 900),
           "D:": (500000, 300000)}, services={"MSFTPSVC": "stopped"})
    hot = run(mon_db, T0 + FIVE)
    assert (hot["down"], hot["state_changes"], hot["alerts_queued"]) == (4, 4, 4)
    messages = {kind: checks(sql, mid)[-1][4] for kind, mid in ids.items()}
    assert messages == {"cpu": "CPU 97.5% > 90%",
                        "memory": "memory 91.55% used > 85%",
                        "disk": "C: 99.1% used > 90%; C: 900 MB free < 1024 MB",
                        "services": "MSFTPSVC is stopped"}

    stale = run(mon_db, T0 + timedelta(minutes=45))  # no sample for 42 minutes: nothing is known
    assert (stale["unknown"], stale["state_changes"], stale["alerts_queued"]) == (4, 0, 0)
    assert "is older than 30 min" in checks(sql, ids["cpu"])[-1][4]
    assert {s for (s,) in sql("SELECT state FROM monitor_state")} == {"down"}

    sample(sql, sid, T0 + timedelta(minutes=48), **healthy)
    sample(sql, sid, T0 + timedelta(minutes=60), cpu=99, memory=(16384, 16000))  # after the next clock: not read
    cool = run(mon_db, T0 + timedelta(minutes=50))
    assert (cool["up"], cool["state_changes"], cool["alerts_queued"]) == (4, 4, 4)
    assert sql("SELECT count(*) FROM email_outbox WHERE subject LIKE '[UP]%%'")[0][0] == 4

    # a volume listed but missing from the latest sample is down
    sample(sql, sid, T0 + timedelta(minutes=53), cpu=10, memory=(16384, 1000), volumes={"C:": (100000, 50000)})
    run(mon_db, T0 + timedelta(minutes=55))
    assert checks(sql, ids["disk"])[-1][1:] == ("down", None, 50.0, "d: not in the latest sample")


# -- wrong answers, timeouts, concurrency ------------------------------------------------------

def test_wrong_answers_and_silence_are_down(mon_db, sql, http, ftp, dns_server, silent_port, monkeypatch):
    login_connection(monkeypatch, "ftp_wrong", "probe", "not-the-password")
    monkeypatch.setenv("AIRFLOW_CONN_DNS_SILENT", json.dumps(
        {"conn_type": "dns", "host": "127.0.0.1", "port": silent_port, "extra": {"timeout": 0.5, "lifetime": 1}}))
    base = f"http://127.0.0.1:{http.port}"
    ids = {
        "content": add_monitor(sql, "maintenance page", "web", {"url": f"{base}/maintenance", "contains": "Welcome"}),
        "regex": add_monitor(sql, "regex page", "web", {"url": f"{base}/shop", "regex": r"shop\s+v\d+"}),
        "status": add_monitor(sql, "missing page", "web", {"url": f"{base}/gone"}),
        "slow": add_monitor(sql, "slow page", "web", {"url": f"{base}/slow"}, {"max_response_ms": 100}),
        "iis_header": add_monitor(sql, "not iis", "iis", {"url": f"{base}/shop", "server_header": "Microsoft-IIS"}),
        "ftp_login": add_monitor(sql, "ftp bad login", "ftp", {"host": "127.0.0.1", "port": ftp.port},
                                 conn_id="ftp_wrong"),
        "dns_wrong": add_monitor(sql, "www wrong", "dns", {"name": "www.example.test", "expect": ["192.0.2.99"]},
                                 conn_id="monitor_dns"),
        "dns_nx": add_monitor(sql, "nx", "dns", {"name": "nothing.example.test"}, conn_id="monitor_dns"),
        "dns_timeout": add_monitor(sql, "silent dns", "dns", {"name": "www.example.test", "timeout": 0.5},
                                   conn_id="dns_silent"),
        "http_timeout": add_monitor(sql, "silent web", "web", {"url": f"http://127.0.0.1:{silent_port}/",
                                                               "timeout": 0.5}),
    }
    ok = {
        "txt": add_monitor(sql, "spf", "dns", {"name": "example.test", "type": "TXT", "expect": "v=spf1 -all"},
                           conn_id="monitor_dns"),
        "iis_404": add_monitor(sql, "iis answers", "iis", {"url": f"{base}/gone"}),  # IIS answered: up
    }
    started = time.monotonic()
    summary = run(mon_db, T0)
    elapsed = time.monotonic() - started
    assert (summary["checked"], summary["down"], summary["up"]) == (12, 10, 2)
    assert elapsed < 3, elapsed  # the two 0.5 s timeouts ran side by side with the rest
    got = {kind: checks(sql, mid)[-1] for kind, mid in ids.items()}
    assert all(c[1] == "down" for c in got.values())
    assert got["content"][4] == "HTTP 200 but the page does not contain 'Welcome'"
    assert got["regex"][4] == "HTTP 200 but the page does not match /shop\\s+v\\d+/"
    assert got["status"][4] == "HTTP 404 (expected 200)"
    assert got["slow"][4].startswith("slow: ") and got["slow"][2] >= 300
    assert got["iis_header"][4].startswith("HTTP 200 but Server is ")
    assert got["ftp_login"][4].startswith("login as probe refused: 530")
    assert got["dns_wrong"][4] == "www.example.test A answered ['192.0.2.10'], expected ['192.0.2.99']"
    assert got["dns_nx"][4] == "nothing.example.test: NXDOMAIN"
    assert got["dns_timeout"][4] == "www.example.test A: no answer within 0.5s"
    assert got["http_timeout"][4] == "no answer within 0.5s"
    assert 400 <= got["http_timeout"][2] < 1500
    assert {kind: checks(sql, mid)[-1][1] for kind, mid in ok.items()} == {"txt": "up", "iis_404": "up"}
    # a first check that is down alerts, once
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 10
    assert "not-the-password" not in json.dumps([sql("SELECT * FROM monitor_checks"), summary], default=str)


def test_probes_run_side_by_side_within_their_timeouts(mon_db, sql, silent_port):
    for n in range(8):
        add_monitor(sql, f"hanging {n}", "web", {"url": f"http://127.0.0.1:{silent_port}/{n}", "timeout": 1})
    started = time.monotonic()
    summary = run(mon_db, T0)
    assert summary["down"] == 8
    assert time.monotonic() - started < 3  # one after the other would take 8 s
    assert {m for (m,) in sql("SELECT message FROM monitor_checks")} == {"no answer within 1s"}


# -- configuration -----------------------------------------------------------------------------

def test_bad_monitors_are_reported_and_skipped(mon_db, sql, tcp):
    sid = add_server(sql, "web01")
    good = add_monitor(sql, "good", "tcp", {"port": tcp.port}, server_id=sid)
    add_monitor(sql, "no port", "tcp", {}, server_id=sid)
    add_monitor(sql, "typo", "tcp", {"prot": 22}, server_id=sid)
    add_monitor(sql, "no host", "tcp", {"port": 22})
    add_monitor(sql, "ftp url", "web", {"url": "ftp://127.0.0.1/"})
    add_monitor(sql, "login in url", "web", {"url": "http://admin:hunter2@127.0.0.1/"})
    add_monitor(sql, "bad regex", "web", {"url": "http://127.0.0.1/", "regex": "("})
    add_monitor(sql, "bad type", "dns", {"name": "example.test", "type": "BOGUS"})
    add_monitor(sql, "wordy cpu", "cpu", thresholds={"max_percent": "high"}, server_id=sid)
    add_monitor(sql, "no threshold", "memory", server_id=sid)
    add_monitor(sql, "lost login", "ftp", {"port": 21}, server_id=sid, conn_id="no_such_connection")
    add_monitor(sql, "port text", "mail", {"port": "25"}, server_id=sid)
    add_monitor(sql, "off", "tcp", {}, server_id=sid, enabled=False)

    summary = run(mon_db, T0)
    assert (summary["monitors"], summary["checked"], summary["up"]) == (12, 1, 1)
    assert sum(summary["skipped"].values()) == 11
    examples = "\n".join(summary["skipped_examples"])
    for expected in ("'no port' (tcp): params.port is required",
                     "'typo' (tcp): params: unknown key(s) prot",
                     "'no host' (tcp): params.host is required (the monitor has no server)",
                     "'ftp url' (web): params.url must be an http(s) URL, not 'ftp://127.0.0.1/'",
                     "'login in url' (web): params.url carries a password: put the login in the connection",
                     "'bad regex' (web): params.regex is not a regular expression",
                     "'bad type' (dns): params.type must be one of",
                     "'wordy cpu' (cpu): thresholds.max_percent must be a number, not 'high'",
                     "'no threshold' (memory): thresholds: max_used_percent or min_free_mb is required",
                     "'lost login' (ftp): connection 'no_such_connection' does not exist",
                     "'port text' (mail): params.port must be a port number (1-65535), not '25'"):
        assert expected in examples, expected
    assert sql("SELECT DISTINCT monitor_id FROM monitor_checks") == [(good,)]
    assert "hunter2" not in json.dumps(summary)
    # and the table refuses a secret where a connection belongs
    with pytest.raises(psycopg.errors.CheckViolation):
        add_monitor(sql, "leaky", "ftp", {"port": 21, "password": "hunter2"}, server_id=sid)


def test_alerts_go_to_the_catalogs_noc_address_when_a_monitor_names_nobody(mon_db, sql):
    add_monitor(sql, "closed port", "tcp", {"host": "127.0.0.1", "port": free_port(), "timeout": 1}, alert_to=())
    run(mon_db, T0)
    assert sql("SELECT to_address FROM email_outbox") == [("noc-alerts@panelflow.example",)]


# -- Network Director metrics ------------------------------------------------------------------

def test_hourly_metrics_are_recomputed_set_based_and_hand_checked(mon_db, sql):
    mid = add_monitor(sql, "history", "tcp", {"host": "127.0.0.1", "port": 1}, enabled=False)
    ten = pendulum.datetime(2026, 11, 20, 10, tz="UTC")
    rows = [(0, "up", 10), (5, "up", 20), (10, "up", 30), (15, "up", 40), (20, "down", 1000), (25, "unknown", None),
            (65, "up", 100)]
    for minute, status, ms in rows:
        sql("INSERT INTO monitor_checks (monitor_id, checked_at, status, response_ms) VALUES (%s, %s, %s, %s)",
            (mid, ten.add(minutes=minute), status, ms))
    summary = process_monitors_and_metrics(mon_db, Interval(ten, ten.add(minutes=70)), LOG)
    assert summary["metrics_hours_written"] == 2
    got = sql("SELECT hour, checks, up_checks, down_checks, unknown_checks, availability_percent, response_ms_avg,"
              " response_ms_p50, response_ms_p95, response_ms_max FROM monitor_metrics_hourly ORDER BY hour")
    as_float = [tuple(float(v) if isinstance(v, Decimal) else v for v in row) for row in got]
    assert as_float == [
        (ten, 6, 4, 1, 1, 80.0, 25.0, 25.0, 38.5, 40.0),  # the down check's 1000 ms is not a response time
        (ten.add(hours=1), 1, 1, 0, 0, 100.0, 100.0, 100.0, 100.0, 100.0),
    ]
    rerun = process_monitors_and_metrics(mon_db, Interval(ten, ten.add(minutes=70)), LOG)
    assert rerun["metrics_hours_written"] == 0  # same checks, same rows: nothing rewritten
    sql("INSERT INTO monitor_checks (monitor_id, checked_at, status, response_ms) VALUES (%s, %s, 'down', NULL)",
        (mid, ten.add(minutes=70)))
    later = process_monitors_and_metrics(mon_db, Interval(ten.add(minutes=65), ten.add(minutes=75)), LOG)
    assert later["metrics_hours_written"] == 1
    assert sql("SELECT checks, availability_percent FROM monitor_metrics_hourly WHERE hour = %s",
               (ten.add(hours=1),)) == [(2, pytest.approx(50))]


# -- SyncHealthMetricsWork ---------------------------------------------------------------------

def test_health_metrics_of_the_control_and_remote_servers(mon_db, sql, http, monkeypatch):
    from panelflow.services.outbox import enqueue

    def agent(handler):
        if handler.headers.get("Authorization") != f"Bearer {AGENT_TOKEN}":
            return 401, "{}"
        return 200, json.dumps({"version": "10.4.2", "uptime_seconds": 86400, "queue": {"pending": 3, "failed": 0},
                                "healthy": True, "Worker Threads": 12, "note": "text is not a metric"})

    http.routes["/health"] = (200, agent, {"Content-Type": "application/json"}, 0)
    monkeypatch.setenv("AIRFLOW_CONN_AGENT_TOKEN", json.dumps(
        {"conn_type": "panelflow_monitor", "password": AGENT_TOKEN, "extra": {"timeout": 1}}))
    cp = add_server(sql, "cp01", "control", agent_url=f"http://127.0.0.1:{http.port}/health", conn_id="agent_token")
    web = add_server(sql, "web01", agent_url=f"http://127.0.0.1:{free_port()}/health")  # agent not running
    mail = add_server(sql, "mail01")
    sample(sql, web, T0 - timedelta(minutes=4), cpu=55.5, memory=(8192, 2048),
           volumes={"C:": (100000, 25000), "E:": (200000, 150000)},
           services={"W3SVC": "running", "MSFTPSVC": "stopped"})
    mid = add_monitor(sql, "web01 rdp", "tcp", {"port": 1}, server_id=web)
    sql("INSERT INTO monitor_state (monitor_id, state, since, last_checked_at, last_status) VALUES (%s, 'down', %s, %s, 'down')",
        (mid, T0, T0))
    with psycopg.connect(os.environ["AIRFLOW_CONN_PANEL_DB"], autocommit=True) as conn:
        for n, due in ((1, T0 - timedelta(minutes=30)), (2, T0 + timedelta(hours=1))):
            enqueue(conn, dedupe_key=f"health-test:{n}", to=NOC, template="monitor_alert", not_before=due,
                    context={"monitor": "m", "kind": "TCP", "server": "", "target": "t", "from_state": "up",
                             "to_state": "down", "at": "now", "message": "x", "response_ms": None, "since": None,
                             "lasted": None})

    summary = sync_health_metrics(mon_db, Interval(T0 - timedelta(minutes=15), T0), LOG)
    assert (summary["servers"], summary["measured"], summary["agents_up"], summary["agents_down"]) == (3, 3, 1, 1)
    assert summary["agents_down_list"][0].startswith("web01: ConnectError")
    metrics = {}
    for sid, metric, value, at in sql("SELECT server_id, metric, value, measured_at FROM server_health_metrics"):
        assert at == T0
        metrics.setdefault(sid, {})[metric] = value
    assert summary["metrics_written"] == sum(len(m) for m in metrics.values())

    control = metrics[cp]
    assert control["agent_up"] == 1 and 0 < control["agent_response_ms"] < 1000
    assert {k: v for k, v in control.items() if k.startswith("agent.")} == {
        "agent.uptime_seconds": 86400, "agent.queue_pending": 3, "agent.queue_failed": 0, "agent.healthy": 1,
        "agent.worker_threads": 12}
    assert control["outbox.pending_due"] == 1 and control["outbox.oldest_due_seconds"] == 1800
    assert control["panel_db.size_bytes"] > 1_000_000 and control["panel_db.connections"] >= 1
    assert control["group_actions.pending"] == 0 and control["services"] == 0 and control["monitors"] == 0

    assert metrics[web] == {
        "agent_up": 0, "agent_response_ms": pytest.approx(metrics[web]["agent_response_ms"]),
        "cpu_percent": 55.5, "memory_used_percent": 25.0, "stats_age_seconds": 240,
        "disk_used_percent_max": 75.0, "disk_free_mb_min": 25000, "services": 2, "services_not_running": 1,
        "monitors": 1, "monitors_down": 1}
    assert metrics[mail] == {"services": 0, "services_not_running": 0, "monitors": 0, "monitors_down": 0}
    assert "outbox.pending_due" not in metrics[web]  # the panel's own queues are the control server's

    rerun = sync_health_metrics(mon_db, Interval(T0 - timedelta(minutes=15), T0), LOG)
    assert (rerun["measured"], rerun["already_measured"], rerun["metrics_written"]) == (0, 3, 0)
    stored = json.dumps([sql("SELECT * FROM server_health_metrics"), sql("SELECT * FROM servers"), summary],
                        default=str)
    assert AGENT_TOKEN not in stored
    assert sum(1 for r in http.requests if r["path"] == "/health") == 1
