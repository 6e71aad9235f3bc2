"""What a monitor of MonitoringWork is, and how one is checked and recorded (the step is
:func:`panelflow.steps.monitoring.process_monitors_and_metrics`).

**Monitors** (table ``monitors``; ``kind``, target ``params``, ``thresholds``, ``conn_id``,
``alert_to``). Each run checks every enabled monitor once, stamped with the run's clock
(``interval.end``):

- ``cpu`` / ``memory`` / ``disk`` / ``services`` read the latest sample the stats threads wrote
  at or before the clock (``server_stats``, ``server_volume_stats``, ``server_services``).
  Down when over a threshold — CPU ``max_percent``; memory and disk ``max_used_percent`` and/or
  ``min_free_mb`` (disk: every volume of the latest sample, or ``params.volumes``; a listed volume
  missing from it is down); services: every service of ``params.services`` must be ``running``.
  A sample older than ``params.max_sample_age_minutes`` (default 30) tells nothing about now:
  the check is ``unknown`` and the state stays as it was (no alert either way).
- ``mail``: SMTP banner (220, ``expect_banner``), EHLO (250), optional STARTTLS / SMTP AUTH
  with the login of the connection ``conn_id``. ``ftp``: banner, optional USER/PASS (230) with
  ``conn_id``'s login. ``iis``: GET the server's site (``url``, or ``host``/``port``/``path``
  with an optional ``host_header``): up on any status below 500 (IIS answered) unless
  ``expect_status`` is given, optional ``server_header`` ("Microsoft-IIS"). ``web``: GET
  ``url``: the status must be ``expect_status`` (default 200) and the page must contain
  ``contains`` / match ``regex``. ``dns``: ask the resolver of the connection ``conn_id``
  (default ``dns_resolver``, or ``params.nameserver``/``port``) for ``name``/``type``: up when
  it answers and every ``expect`` value is in the answer. ``tcp``: connect to ``host:port``.
  Network monitors also take ``thresholds.max_response_ms`` (slower = down) and
  ``params.timeout`` (default the connection's ``timeout`` extra, else 10 s). ``host``
  defaults to the monitor's server's host.

Probes run concurrently in a bounded thread pool (``PROBE_WORKERS``), each bounded by its own
timeout; response times are measured on the monotonic clock. Connections (logins, resolvers)
are read in the task's own thread before the pool starts; secrets stay in them.

**State**: a check is up, down or unknown; ``monitor_state`` keeps each monitor's state. A check
that differs from the state is a state change (``monitor_state_changes``, unique per monitor
and clock) and one alert e-mail per recipient through the outbox, keyed
``monitor:<id>:<from>-><to>:<clock>:<address>``. A monitor's first check records its state
(a first ``down`` alerts, a first ``up`` does not). Check, state, change and e-mails are
written in one transaction under the monitor's row lock, and only when the monitor has not been
checked at or after this clock: a retry or rerun of a run adds nothing and sends nothing, a
server flapping while a run is retried cannot storm, and an old interval run after a newer one
cannot rewind a state. Recipients: ``alert_to``, else MonitoringWork's ``alert_to`` from the
catalog. Disabled monitors, and the monitors of a disabled server, are not checked.

**Bad configuration** (an unknown key, a missing or wrong-typed value, a connection that does not
exist): the monitor is reported in the summary's ``skipped`` and not checked; the rest are.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Callable
from urllib.parse import urlsplit

from panelflow.services.outbox import enqueue

RESOURCE_KINDS = ("cpu", "memory", "disk", "services")
NETWORK_KINDS = ("mail", "iis", "ftp", "dns", "tcp", "web")
KIND_LABELS = {"cpu": "CPU", "memory": "Memory", "disk": "Disk", "services": "Services", "mail": "Mail (SMTP)",
               "iis": "IIS", "ftp": "FTP", "dns": "DNS", "tcp": "TCP", "web": "Web page"}
PROBE_WORKERS = 16
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
DEFAULT_SAMPLE_AGE_MINUTES = 30
DNS_TYPES = ("A", "AAAA", "CNAME", "MX", "NS", "TXT", "SOA", "PTR", "SRV", "CAA")
ALERT_TEMPLATE = "monitor_alert"

_NET = {"host", "port", "timeout"}
PARAMS = {
    "cpu": {"max_sample_age_minutes"},
    "memory": {"max_sample_age_minutes"},
    "disk": {"max_sample_age_minutes", "volumes"},
    "services": {"max_sample_age_minutes", "services"},
    "mail": _NET | {"expect_banner", "helo", "ssl", "starttls"},
    "ftp": _NET | {"expect_banner"},
    "iis": _NET | {"url", "path", "host_header", "expect_status", "server_header", "verify_tls"},
    "web": {"url", "timeout", "expect_status", "contains", "regex", "host_header", "follow_redirects", "verify_tls"},
    "dns": {"name", "type", "expect", "nameserver", "port", "timeout"},
    "tcp": _NET,
}
THRESHOLDS = {"cpu": {"max_percent"}, "memory": {"max_used_percent", "min_free_mb"},
              "disk": {"max_used_percent", "min_free_mb"}, "services": set(),
              **{kind: {"max_response_ms"} for kind in NETWORK_KINDS}}
DEFAULT_PORTS = {"mail": 25, "ftp": 21, "iis": 80}


class BadMonitor(ValueError):
    """The monitor's configuration cannot be checked: it is reported and skipped."""


@dataclass
class Monitor:
    id: int
    name: str
    kind: str
    server_id: int | None
    server: str | None
    host: str | None
    params: dict
    thresholds: dict
    conn_id: str | None
    alert_to: list[str]
    target: str = ""
    timeout: float = DEFAULT_TIMEOUT
    probe: Callable[[], Any] | None = None
    limits: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    status: str  # up | down | unknown
    message: str
    response_ms: float | None = None
    value: float | None = None


# -- configuration -----------------------------------------------------------------------------

class _Fields:
    """Typed reads of one monitor's ``params`` or ``thresholds``, naming the first bad value."""

    def __init__(self, where: str, values: dict, allowed: set[str]):
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise BadMonitor(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed)) or 'none'})")
        self.where, self.values = where, values

    def _bad(self, key: str, what: str) -> BadMonitor:
        return BadMonitor(f"{self.where}.{key} {what}, not {self.values.get(key)!r}")

    def number(self, key: str, *, default: float | None = None, lo: float | None = None, hi: float | None = None,
               required: bool = False) -> float | None:
        value = self.values.get(key)
        if value is None:
            if required:
                raise BadMonitor(f"{self.where}.{key} is required")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._bad(key, "must be a number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self._bad(key, f"must be between {lo:g} and {hi:g}" if hi is not None else f"must be at least {lo:g}")
        return float(value)

    def port(self, key: str = "port", default: int | None = None) -> int:
        value = self.values.get(key, default)
        if value is None:
            raise BadMonitor(f"{self.where}.{key} is required")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self._bad(key, "must be a port number (1-65535)")
        return value

    def text(self, key: str, *, default: str | None = None, required: bool = False) -> str | None:
        value = self.values.get(key)
        if value is None:
            if required and default is None:
                raise BadMonitor(f"{self.where}.{key} is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise self._bad(key, "must be a non-empty string")
        return value.strip()

    def flag(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "must be true or false")
        return value

    def texts(self, key: str, *, required: bool = False) -> list[str] | None:
        value = self.values.get(key)
        if value is None:
            if required:
                raise BadMonitor(f"{self.where}.{key} is required")
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self._bad(key, "must be a non-empty string or list of strings")
        return [v.strip() for v in value]

    def statuses(self, key: str) -> frozenset[int] | None:
        value = self.values.get(key)
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in values):
            raise self._bad(key, "must be an HTTP status or a list of them")
        return frozenset(values)


class Connections:
    """Airflow connections read once per run, in the task's thread (never from the probe pool)."""

    def __init__(self):
        self.logins: dict[str, Any] = {}
        self.resolvers: dict[str, Any] = {}

    def login(self, conn_id: str):
        if conn_id not in self.logins:
            from airflow.exceptions import AirflowNotFoundException

            from panelflow.hooks.monitor_probes import MonitorLoginHook

            try:
                self.logins[conn_id] = MonitorLoginHook(conn_id).get_conn()
            except AirflowNotFoundException:
                self.logins[conn_id] = None
            except (TypeError, ValueError) as exc:  # a malformed extra
                self.logins[conn_id] = exc
        login = self.logins[conn_id]
        if login is None:
            raise BadMonitor(f"connection {conn_id!r} does not exist")
        if isinstance(login, Exception):
            raise BadMonitor(f"connection {conn_id!r} is malformed: {type(login).__name__}")
        return login

    def resolver(self, conn_id: str | None):
        """(name servers, port, timeout) of the DNS connection (``dns_resolver`` by default)."""
        from panelflow.hooks.dns import DnsResolverHook

        key = conn_id or DnsResolverHook.default_conn_name
        if key not in self.resolvers:
            from airflow.exceptions import AirflowNotFoundException
            from airflow.sdk import BaseHook

            try:
                if conn_id:  # named by the monitor: it must exist (the hook would fall back to the system's)
                    BaseHook.get_connection(conn_id)
            except AirflowNotFoundException:
                self.resolvers[key] = None
            else:
                r = DnsResolverHook(dns_conn_id=key).get_conn()
                self.resolvers[key] = ([str(ns) for ns in r.nameservers], int(r.port), float(r.lifetime))
        if self.resolvers[key] is None:
            raise BadMonitor(f"connection {conn_id!r} does not exist")
        return self.resolvers[key]


def prepare(m: Monitor, connections: Connections) -> None:
    """Validate ``m``'s configuration and set its target, limits and (network kinds) probe."""
    from panelflow.hooks import monitor_probes as probes

    if not isinstance(m.params, dict) or not isinstance(m.thresholds, dict):
        raise BadMonitor("params and thresholds must be JSON objects")
    p = _Fields("params", m.params, PARAMS[m.kind])
    t = _Fields("thresholds", m.thresholds, THRESHOLDS[m.kind])
    if m.kind in RESOURCE_KINDS:
        if m.server_id is None:
            raise BadMonitor(f"a {m.kind} monitor needs a server")
        m.limits["max_age"] = timedelta(minutes=p.number("max_sample_age_minutes", default=DEFAULT_SAMPLE_AGE_MINUTES,
                                                         lo=1, hi=7 * 24 * 60))
        if m.kind == "cpu":
            m.limits["max_percent"] = t.number("max_percent", required=True, lo=0, hi=100)
        elif m.kind in ("memory", "disk"):
            m.limits["max_used_percent"] = t.number("max_used_percent", lo=0, hi=100)
            m.limits["min_free_mb"] = t.number("min_free_mb", lo=0)
            if m.limits["max_used_percent"] is None and m.limits["min_free_mb"] is None:
                raise BadMonitor("thresholds: max_used_percent or min_free_mb is required")
            if m.kind == "disk":
                m.limits["volumes"] = p.texts("volumes")
        else:
            m.limits["services"] = p.texts("services", required=True)
        m.target = f"{m.server} {KIND_LABELS[m.kind]}"
        return

    m.limits["max_response_ms"] = t.number("max_response_ms", lo=1)
    login = connections.login(m.conn_id) if m.conn_id and m.kind != "dns" else None

    def timeout(default: float) -> float:
        return p.number("timeout", default=default, lo=0.1, hi=MAX_TIMEOUT)

    def host() -> str:
        value = p.text("host") or m.host
        if not value:
            raise BadMonitor("params.host is required (the monitor has no server)")
        return value

    conn_timeout = login.timeout if login is not None and login.timeout else DEFAULT_TIMEOUT
    if m.kind == "dns":
        nameservers, port, resolver_timeout = connections.resolver(m.conn_id)
        name = p.text("name", required=True)
        rdtype = (p.text("type", default="A") or "A").upper()
        if rdtype not in DNS_TYPES:
            raise BadMonitor(f"params.type must be one of {', '.join(DNS_TYPES)}, not {m.params.get('type')!r}")
        try:
            import dns.name

            dns.name.from_text(name)
        except Exception as exc:
            raise BadMonitor(f"params.name is not a DNS name: {exc}") from None
        if p.text("nameserver"):
            nameservers = [p.text("nameserver")]
        port = p.port("port", default=port)
        if not nameservers:
            raise BadMonitor("no name server: set params.nameserver or the resolver connection")
        m.timeout = timeout(min(resolver_timeout, MAX_TIMEOUT))
        m.target = f"{name} {rdtype} @{','.join(nameservers)}:{port}"
        m.probe = partial(probes.dns_probe, nameservers, port, name, rdtype, m.timeout, p.texts("expect"))
    elif m.kind == "tcp":
        h, port = host(), p.port("port")
        m.timeout = timeout(conn_timeout)
        m.target = f"{h}:{port}"
        m.probe = partial(probes.tcp_probe, h, port, m.timeout)
    elif m.kind == "mail":
        h, port = host(), p.port("port", DEFAULT_PORTS["mail"])
        m.timeout = timeout(conn_timeout)
        m.target = f"smtp://{h}:{port}"
        m.probe = partial(probes.smtp_probe, h, port, m.timeout, expect_banner=p.text("expect_banner"),
                          helo=p.text("helo", default="panelflow-monitor"), use_ssl=p.flag("ssl", False),
                          starttls=p.flag("starttls", False), login=login)
    elif m.kind == "ftp":
        h, port = host(), p.port("port", DEFAULT_PORTS["ftp"])
        m.timeout = timeout(conn_timeout)
        m.target = f"ftp://{h}:{port}"
        m.probe = partial(probes.ftp_probe, h, port, m.timeout, expect_banner=p.text("expect_banner"), login=login)
    else:  # iis, web
        if m.kind == "web" or p.text("url"):
            url = p.text("url", required=True)
        else:
            path = p.text("path", default="/")
            if not path.startswith("/"):
                raise BadMonitor(f"params.path must start with '/', not {path!r}")
            url = f"http://{host()}:{p.port('port', DEFAULT_PORTS['iis'])}{path}"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise BadMonitor(f"params.url is not a URL: {exc}") from None
        if parts.password is not None:  # never echoed: it is a secret in the wrong place
            raise BadMonitor("params.url carries a password: put the login in the connection named by conn_id")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadMonitor(f"params.url must be an http(s) URL, not {url!r}")
        regex = p.text("regex") if m.kind == "web" else None
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise BadMonitor(f"params.regex is not a regular expression: {exc}") from None
        statuses = p.statuses("expect_status")
        expect = probes.HttpExpectation(
            statuses=statuses if statuses is not None else (frozenset({200}) if m.kind == "web" else None),
            contains=p.text("contains") if m.kind == "web" else None, regex=regex,
            server_header=p.text("server_header") if m.kind == "iis" else None)
        m.timeout = timeout(conn_timeout)
        m.target = url
        m.probe = partial(probes.http_probe, url, m.timeout, expect, host_header=p.text("host_header"),
                          verify_tls=p.flag("verify_tls", True),
                          follow_redirects=p.flag("follow_redirects", True) if m.kind == "web" else False,
                          login=login)


# -- checks ------------------------------------------------------------------------------------

def run_probes(items: list[tuple[Any, Callable[[], Any], float]]) -> dict[Any, Any]:
    """Run ``(key, probe, timeout)`` probes concurrently (at most ``PROBE_WORKERS`` at once).

    Every probe bounds itself by its timeout; the overall wait is a backstop for one that would
    not: what has not finished by then is reported as no answer.
    """
    from panelflow.hooks.monitor_probes import ProbeResult

    if not items:
        return {}
    workers = min(PROBE_WORKERS, len(items))
    backstop = math.ceil(len(items) / workers) * (2 * max(t for _, _, t in items) + 1) + 5
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="panelflow-probe")
    try:
        futures = {pool.submit(probe): (key, t) for key, probe, t in items}
        done, late = wait(futures, timeout=backstop)
        results = {futures[f][0]: f.result() for f in done}
        for f in late:
            results[futures[f][0]] = ProbeResult(False, f"the probe did not finish within {futures[f][1]:g}s")
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def network_check(m: Monitor, result) -> Check:
    limit = m.limits.get("max_response_ms")
    if result.up and limit is not None and result.response_ms is not None and result.response_ms > limit:
        return Check("down", f"slow: {result.response_ms:g} ms > {limit:g} ms ({result.message})", result.response_ms)
    return Check("up" if result.up else "down", result.message, result.response_ms)


def _stamp(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _g(x) -> str:
    return f"{float(x):.2f}".rstrip("0").rstrip(".")


def resource_checks(conn, monitors: list[Monitor], clock: datetime) -> dict[int, Check]:
    """CPU, memory, disk and services checks from the latest samples at or before ``clock``."""
    servers = sorted({m.server_id for m in monitors})
    if not servers:
        return {}
    stats = {row[0]: row[1:] for row in conn.execute(
        "SELECT s.id, st.sampled_at, st.cpu_percent, st.memory_total_mb, st.memory_used_mb"
        " FROM unnest(%s::bigint[]) s(id) CROSS JOIN LATERAL ("
        "  SELECT * FROM server_stats WHERE server_id = s.id AND sampled_at <= %s"
        "  ORDER BY sampled_at DESC LIMIT 1) st", (servers, clock))}
    volumes: dict[int, dict[str, tuple]] = {}
    for sid, volume, at, size, free in conn.execute(
            "SELECT v.server_id, v.volume, v.sampled_at, v.size_mb, v.free_mb"
            " FROM unnest(%s::bigint[]) s(id)"
            " CROSS JOIN LATERAL (SELECT max(sampled_at) AS at FROM server_volume_stats"
            "  WHERE server_id = s.id AND sampled_at <= %s) latest"
            " JOIN server_volume_stats v ON v.server_id = s.id AND v.sampled_at = latest.at", (servers, clock)):
        volumes.setdefault(sid, {})[volume] = (at, size, free)
    services: dict[int, dict[str, tuple]] = {}
    for sid, name, state, at in conn.execute(
            "SELECT server_id, service_name, state, sampled_at FROM server_services WHERE server_id = ANY(%s)",
            (servers,)):
        services.setdefault(sid, {})[name.casefold()] = (name, state, at)

    checks = {}
    for m in monitors:
        oldest = clock - m.limits["max_age"]
        age = f"older than {int(m.limits['max_age'].total_seconds() // 60)} min"
        if m.kind in ("cpu", "memory"):
            sample = stats.get(m.server_id)
            what = "CPU" if m.kind == "cpu" else "memory"
            if sample is None or (m.kind == "cpu" and sample[1] is None) or (m.kind == "memory" and None in sample[2:]):
                checks[m.id] = Check("unknown", f"no {what} sample at or before {_stamp(clock)}")
            elif sample[0] < oldest:
                checks[m.id] = Check("unknown", f"the latest {what} sample ({_stamp(sample[0])}) is {age}")
            elif m.kind == "cpu":
                cpu, limit = float(sample[1]), m.limits["max_percent"]
                down = cpu > limit
                checks[m.id] = Check("down" if down else "up",
                                     f"CPU {_g(cpu)}% {'>' if down else '<='} {_g(limit)}%", value=cpu)
            else:
                total, used = sample[2], sample[3]
                pct, free = round(100.0 * used / total, 2), total - used
                problems = _space_problems(pct, free, m.limits)
                checks[m.id] = Check("down" if problems else "up",
                                     f"memory {'; '.join(problems)}" if problems
                                     else f"memory {_g(pct)}% used, {free} MB free", value=pct)
        elif m.kind == "disk":
            reported = volumes.get(m.server_id, {})
            if not reported:
                checks[m.id] = Check("unknown", f"no disk sample at or before {_stamp(clock)}")
                continue
            at = next(iter(reported.values()))[0]
            if at < oldest:
                checks[m.id] = Check("unknown", f"the latest disk sample ({_stamp(at)}) is {age}")
                continue
            by_name = {v.casefold(): (v, size, free) for v, (_, size, free) in reported.items()}
            wanted = m.limits["volumes"] or sorted(reported)
            problems, parts, worst = [], [], None
            for volume in wanted:
                found = by_name.get(volume.casefold())
                if found is None:
                    problems.append(f"{volume} not in the latest sample")
                    continue
                name, size, free = found
                pct = round(100.0 * (size - free) / size, 2)
                worst = pct if worst is None else max(worst, pct)
                parts.append(f"{name} {_g(pct)}% used, {free} MB free")
                problems += [f"{name} {p}" for p in _space_problems(pct, free, m.limits)]
            checks[m.id] = Check("down" if problems else "up",
                                 "; ".join(problems) if problems else "; ".join(parts), value=worst)
        else:  # services
            reported = services.get(m.server_id, {})
            if not reported:
                checks[m.id] = Check("unknown", "no service states reported for the server")
                continue
            newest = max(at for _, _, at in reported.values())
            if newest < oldest:
                checks[m.id] = Check("unknown", f"the latest service states ({_stamp(newest)}) are {age}")
                continue
            problems = []
            for service in m.limits["services"]:
                found = reported.get(service.casefold())
                if found is None:
                    problems.append(f"{service} not reported")
                elif found[2] < oldest:
                    problems.append(f"{found[0]} not reported since {_stamp(found[2])}")
                elif found[1] != "running":
                    problems.append(f"{found[0]} is {found[1]}")
            checks[m.id] = Check("down" if problems else "up",
                                 "; ".join(problems) if problems else f"{len(m.limits['services'])} service(s) running",
                                 value=len(problems))
    return checks


def _space_problems(used_pct: float, free_mb: int, limits: dict) -> list[str]:
    problems = []
    if limits["max_used_percent"] is not None and used_pct > limits["max_used_percent"]:
        problems.append(f"{_g(used_pct)}% used > {_g(limits['max_used_percent'])}%")
    if limits["min_free_mb"] is not None and free_mb < limits["min_free_mb"]:
        problems.append(f"{free_mb} MB free < {_g(limits['min_free_mb'])} MB")
    return problems


# -- recording ---------------------------------------------------------------------------------

def record_check(conn, m: Monitor, check: Check, clock: datetime, recipients: Callable[[Monitor], list[str]]):
    """Write one check, and the state change and alerts it causes, atomically.

    Returns None when the monitor was already checked at or after ``clock`` (nothing written),
    else ``(from_state, to_state, alerts)`` for a state change or ``()`` for none.
    """
    with conn.transaction():
        if conn.execute("SELECT 1 FROM monitors WHERE id = %s FOR NO KEY UPDATE", (m.id,)).fetchone() is None:
            return None  # deleted meanwhile
        state = conn.execute("SELECT state, since, last_checked_at FROM monitor_state WHERE monitor_id = %s",
                             (m.id,)).fetchone()
        if state is not None and state[2] >= clock:
            return None
        inserted = conn.execute(
            "INSERT INTO monitor_checks (monitor_id, checked_at, status, response_ms, value, message)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (m.id, clock, check.status, check.response_ms, check.value, check.message[:1000])).fetchone()
        if inserted is None:
            return None
        last = (clock, check.status, check.message[:1000], check.response_ms, m.id)
        if check.status == "unknown" or (state is not None and state[0] == check.status):
            conn.execute("UPDATE monitor_state SET last_checked_at = %s, last_status = %s, last_message = %s,"
                         " last_response_ms = %s WHERE monitor_id = %s", last)
            return ()
        from_state, since = (state[0], state[1]) if state is not None else (None, None)
        conn.execute(
            "INSERT INTO monitor_state (monitor_id, state, since, last_checked_at, last_status, last_message,"
            " last_response_ms) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (monitor_id) DO UPDATE SET"
            " state = EXCLUDED.state, since = EXCLUDED.since, last_checked_at = EXCLUDED.last_checked_at,"
            " last_status = EXCLUDED.last_status, last_message = EXCLUDED.last_message,"
            " last_response_ms = EXCLUDED.last_response_ms",
            (m.id, check.status, clock, clock, check.status, check.message[:1000], check.response_ms))
        (change_id,) = conn.execute(
            "INSERT INTO monitor_state_changes (monitor_id, changed_at, from_state, to_state, message)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (m.id, clock, from_state, check.status, check.message[:1000])).fetchone()
        alerts = 0
        if from_state is not None or check.status == "down":  # a first "up" is not news
            context = {"monitor": m.name, "kind": KIND_LABELS[m.kind], "server": m.server or "", "target": m.target,
                       "from_state": from_state or "new", "to_state": check.status, "at": _stamp(clock),
                       "message": check.message, "response_ms": check.response_ms,
                       "since": _stamp(since) if since else None,
                       "lasted": _duration(clock - since) if since else None}
            key = f"monitor:{m.id}:{from_state or 'new'}->{check.status}:{clock.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
            for address in recipients(m):
                alerts += enqueue(conn, dedupe_key=f"{key}:{address}", to=address, template=ALERT_TEMPLATE,
                                  context=context, not_before=clock, priority=2)
            conn.execute("UPDATE monitor_state_changes SET alerts = %s WHERE id = %s", (alerts, change_id))
        return (from_state, check.status, alerts)


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    return " ".join(f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n) or "under a minute"
