"""Monitoring threads: MonitoringWork (server monitors, alerts, Network Director metrics) and
SyncHealthMetricsWork (the control and remote servers' health metrics).

How a monitor is configured, checked and its state changes alerted is in
:mod:`panelflow.steps.monitors`; this module holds the two threads' steps and the metrics.

**Network Director metrics** (``monitor_metrics_hourly``): per monitor and UTC hour, the number
of checks by status, availability = up / (up + down) × 100 (unknown checks excluded), and the
response times of the up checks (avg, p50, p95 — continuous percentiles — and max). Each run
recomputes the hours its interval touches from ``monitor_checks`` in one statement, so a rerun
yields the same rows.

**Health metrics** (``sync_health_metrics``): per enabled server and run, rows of
``server_health_metrics`` (metric, value) — the health agent's answer if the server has an
``agent_url`` (``agent_up``, ``agent_response_ms``, ``agent_http_ok`` and every numeric field
of its JSON as ``agent.<field>``), the latest stats (``cpu_percent``, ``memory_used_percent``,
``disk_used_percent_max``, ``disk_free_mb_min``, ``stats_age_seconds``), ``services`` /
``services_not_running``, ``monitors`` / ``monitors_down``; and for the control server, the
panel database and queues it runs (``panel_db.size_bytes``, ``panel_db.connections``,
``outbox.pending_due``, ``outbox.oldest_due_seconds``, ``outbox.in_flight``,
``group_actions.pending``, ``group_actions.oldest_pending_seconds``). A server already measured
at or after the clock is skipped: a rerun adds nothing.
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

from panelflow.step import StepReport
from panelflow.steps.monitors import (
    RESOURCE_KINDS,
    BadMonitor,
    Connections,
    Monitor,
    network_check,
    prepare,
    record_check,
    resource_checks,
    run_probes,
)

THREAD = "MonitoringWork"
AGENT_TIMEOUT = 5.0
LIST_LIMIT = 20

_ROLLUP = """
INSERT INTO monitor_metrics_hourly AS h (monitor_id, hour, checks, up_checks, down_checks, unknown_checks,
    availability_percent, response_ms_avg, response_ms_p50, response_ms_p95, response_ms_max)
SELECT monitor_id, date_trunc('hour', checked_at, 'UTC'),
       count(*), count(*) FILTER (WHERE status = 'up'), count(*) FILTER (WHERE status = 'down'),
       count(*) FILTER (WHERE status = 'unknown'),
       round(100.0 * count(*) FILTER (WHERE status = 'up') / nullif(count(*) FILTER (WHERE status <> 'unknown'), 0), 3),
       round(avg(response_ms) FILTER (WHERE status = 'up'), 1),
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY response_ms) FILTER (WHERE status = 'up'))::numeric, 1),
       round((percentile_cont(0.95) WITHIN GROUP (ORDER BY response_ms) FILTER (WHERE status = 'up'))::numeric, 1),
       max(response_ms) FILTER (WHERE status = 'up')
FROM monitor_checks
WHERE checked_at >= date_trunc('hour', %(start)s::timestamptz, 'UTC')
  AND checked_at < date_trunc('hour', %(end)s::timestamptz, 'UTC') + interval '1 hour'
GROUP BY monitor_id, date_trunc('hour', checked_at, 'UTC')
ON CONFLICT (monitor_id, hour) DO UPDATE SET
    checks = EXCLUDED.checks, up_checks = EXCLUDED.up_checks, down_checks = EXCLUDED.down_checks,
    unknown_checks = EXCLUDED.unknown_checks, availability_percent = EXCLUDED.availability_percent,
    response_ms_avg = EXCLUDED.response_ms_avg, response_ms_p50 = EXCLUDED.response_ms_p50,
    response_ms_p95 = EXCLUDED.response_ms_p95, response_ms_max = EXCLUDED.response_ms_max
WHERE (h.checks, h.up_checks, h.down_checks, h.unknown_checks, h.availability_percent, h.response_ms_avg,
       h.response_ms_p50, h.response_ms_p95, h.response_ms_max)
      IS DISTINCT FROM
      (EXCLUDED.checks, EXCLUDED.up_checks, EXCLUDED.down_checks, EXCLUDED.unknown_checks,
       EXCLUDED.availability_percent, EXCLUDED.response_ms_avg, EXCLUDED.response_ms_p50,
       EXCLUDED.response_ms_p95, EXCLUDED.response_ms_max)
"""


def _catalog_recipients() -> list[str]:
    from panelflow.catalog.loader import load_catalog

    catalog = load_catalog()
    return list(catalog.alert_to(catalog.thread(THREAD)))


# -- MonitoringWork ----------------------------------------------------------------------------

def process_monitors_and_metrics(panel_db, interval, log) -> dict:
    """Process Network director metrics, server monitors (disk, memory, CPU, Mail, IIS, FTP, DNS,
    Services, TCP, Web Page): see the module's docstring."""
    clock = interval.end
    report = StepReport()
    report.zero("monitors", "checked", "up", "down", "unknown", "already_checked", "state_changes", "alerts_queued")
    down_now: list[str] = []
    fallback: list[list[str]] = []

    def recipients(m: Monitor) -> list[str]:
        if m.alert_to:
            return m.alert_to
        if not fallback:
            try:
                fallback.append(_catalog_recipients())
            except Exception as exc:  # the state change is recorded all the same
                log.warning("no alert recipients from the catalog: %s", exc)
                fallback.append([])
        if not fallback[0]:
            report.add("alerts_without_recipients")
        return fallback[0]

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        rows = conn.execute(
            "SELECT m.id, m.name, m.kind, m.server_id, s.name, s.host, m.params, m.thresholds, m.conn_id, m.alert_to,"
            " st.last_checked_at FROM monitors m LEFT JOIN servers s ON s.id = m.server_id"
            " LEFT JOIN monitor_state st ON st.monitor_id = m.id"
            " WHERE m.enabled AND (s.id IS NULL OR s.enabled) ORDER BY m.id").fetchall()
        connections = Connections()
        resource, network = [], []
        for *fields, last_checked in rows:
            m = Monitor(*fields[:9], alert_to=list(fields[9] or []))
            report.add("monitors")
            if last_checked is not None and last_checked >= clock:
                report.add("already_checked")
                continue
            try:
                prepare(m, connections)
            except BadMonitor as exc:
                report.skip(str(exc), f"monitor {m.id} {m.name!r} ({m.kind})")
                log.warning("monitor %s %r skipped: %s", m.id, m.name, exc)
                continue
            (resource if m.kind in RESOURCE_KINDS else network).append(m)

        checks = resource_checks(conn, resource, clock)
        results = run_probes([(m.id, m.probe, m.timeout) for m in network])
        checks.update({m.id: network_check(m, results[m.id]) for m in network})

        for m in resource + network:
            check = checks[m.id]
            outcome = record_check(conn, m, check, clock, recipients)
            if outcome is None:
                report.add("already_checked")
                continue
            report.add("checked")
            report.add(check.status)
            if check.status == "down" and len(down_now) < LIST_LIMIT:
                down_now.append(f"{m.name}: {check.message}")
            if outcome:
                from_state, to_state, alerts = outcome
                report.add("state_changes")
                report.add("alerts_queued", alerts)
                log.info("monitor %s %r: %s -> %s (%s)", m.id, m.name, from_state or "new", to_state, check.message)

        rolled = conn.execute(_ROLLUP, {"start": interval.start, "end": clock}).rowcount
    return {**report.as_dict(), "metrics_hours_written": rolled, "down_now": down_now}


# -- SyncHealthMetricsWork ---------------------------------------------------------------------

_METRIC_KEY = re.compile(r"[^a-z0-9_]+")
MAX_AGENT_METRICS = 100

_STATS_METRICS = """
INSERT INTO server_health_metrics (server_id, measured_at, metric, value)
SELECT s.id, %(clock)s, v.metric, v.value
FROM servers s
LEFT JOIN LATERAL (
    SELECT sampled_at, cpu_percent, memory_total_mb, memory_used_mb FROM server_stats
    WHERE server_id = s.id AND sampled_at <= %(clock)s ORDER BY sampled_at DESC LIMIT 1) st ON true
LEFT JOIN LATERAL (
    SELECT max(100.0 * (v.size_mb - v.free_mb) / v.size_mb) AS used_max, min(v.free_mb) AS free_min
    FROM server_volume_stats v
    WHERE v.server_id = s.id AND v.sampled_at = (SELECT max(sampled_at) FROM server_volume_stats
                                                 WHERE server_id = s.id AND sampled_at <= %(clock)s)) vol ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS total, count(*) FILTER (WHERE state <> 'running') AS not_running
    FROM server_services WHERE server_id = s.id) svc ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS total, count(*) FILTER (WHERE ms.state = 'down') AS down
    FROM monitors mo LEFT JOIN monitor_state ms ON ms.monitor_id = mo.id
    WHERE mo.server_id = s.id AND mo.enabled) mon ON true
CROSS JOIN LATERAL (VALUES
    ('cpu_percent', st.cpu_percent::float8),
    ('memory_used_percent', round(100.0 * st.memory_used_mb / st.memory_total_mb, 2)::float8),
    ('stats_age_seconds', extract(epoch FROM %(clock)s - st.sampled_at)::float8),
    ('disk_used_percent_max', round(vol.used_max, 2)::float8),
    ('disk_free_mb_min', vol.free_min::float8),
    ('services', svc.total::float8),
    ('services_not_running', svc.not_running::float8),
    ('monitors', mon.total::float8),
    ('monitors_down', mon.down::float8)) v(metric, value)
WHERE s.id = ANY(%(servers)s) AND v.value IS NOT NULL
ON CONFLICT DO NOTHING
"""

# What the control server runs, read from the panel database it owns; each an index probe.
_CONTROL_METRICS = """
INSERT INTO server_health_metrics (server_id, measured_at, metric, value)
SELECT s.id, %(clock)s, v.metric, v.value
FROM servers s
CROSS JOIN LATERAL (
    SELECT count(*) AS n, min(not_before) AS oldest FROM email_outbox
    WHERE status = 'pending' AND not_before <= %(clock)s) due
CROSS JOIN LATERAL (
    SELECT count(*) AS n, min(created_at) AS oldest FROM group_action_jobs WHERE status = 'pending') ga
CROSS JOIN LATERAL (VALUES
    ('panel_db.size_bytes', pg_database_size(current_database())::float8),
    ('panel_db.connections', (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())::float8),
    ('outbox.pending_due', due.n::float8),
    ('outbox.oldest_due_seconds', coalesce(extract(epoch FROM %(clock)s - due.oldest), 0)::float8),
    ('outbox.in_flight', (SELECT count(*) FROM email_outbox WHERE status IN ('claimed', 'sending'))::float8),
    ('group_actions.pending', ga.n::float8),
    ('group_actions.oldest_pending_seconds', greatest(coalesce(extract(epoch FROM %(clock)s - ga.oldest), 0), 0)::float8)
) v(metric, value)
WHERE s.id = ANY(%(servers)s) AND s.role = 'control'
ON CONFLICT DO NOTHING
"""


def agent_metrics(payload: Any) -> dict[str, float]:
    """The numeric fields of an agent's JSON object (one level of nesting), as ``agent.<field>``."""
    metrics: dict[str, float] = {}

    def add(key: str, value: Any) -> None:
        name = "agent." + _METRIC_KEY.sub("_", key.lower()).strip("_")
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value) and len(metrics) < MAX_AGENT_METRICS:
            metrics.setdefault(name, float(value))

    if isinstance(payload, dict):
        for key, value in payload.items():
            if isinstance(value, dict):
                for sub, inner in value.items():
                    add(f"{key}_{sub}", inner)
            else:
                add(str(key), value)
    return metrics


def sync_health_metrics(panel_db, interval, log) -> dict:
    """Sync software's control and remote server health metrics: see the module's docstring."""
    from panelflow.hooks.monitor_probes import HttpExpectation, http_probe

    clock = interval.end
    report = StepReport()
    report.zero("servers", "measured", "already_measured", "agents_up", "agents_down", "metrics_written")
    agents_down: list[str] = []
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        servers = conn.execute(
            "SELECT s.id, s.name, s.agent_url, s.conn_id,"
            " (SELECT max(measured_at) FROM server_health_metrics h WHERE h.server_id = s.id)"
            " FROM servers s WHERE s.enabled ORDER BY s.id").fetchall()
        connections = Connections()
        due, probes = [], []
        for sid, name, agent_url, conn_id, last in servers:
            report.add("servers")
            if last is not None and last >= clock:
                report.add("already_measured")
                continue
            due.append(sid)
            if not agent_url:
                continue
            try:
                login = connections.login(conn_id) if conn_id else None
            except BadMonitor as exc:
                report.skip(f"agent not asked: {exc}", f"server {sid} {name!r}")
                continue
            timeout = login.timeout if login is not None and login.timeout else AGENT_TIMEOUT
            probes.append(((sid, name), partial(http_probe, agent_url, timeout, HttpExpectation(), login=login,
                                                want_json=True, bearer=True, follow_redirects=False), timeout))
        results = run_probes(probes)

        rows = []
        for (sid, name), result in sorted(results.items()):
            rows.append((sid, "agent_up", 1.0 if result.up else 0.0))
            if result.response_ms is not None:
                rows.append((sid, "agent_response_ms", result.response_ms))
            if result.up:
                report.add("agents_up")
                rows += [(sid, metric, value) for metric, value in agent_metrics(result.payload).items()]
            else:
                report.add("agents_down")
                if len(agents_down) < LIST_LIMIT:
                    agents_down.append(f"{name}: {result.message}")
        with conn.transaction():  # a server's readings of a run are all there or none is
            written = 0
            if rows:
                written += conn.execute(
                    "INSERT INTO server_health_metrics (server_id, measured_at, metric, value)"
                    " SELECT r.server_id, %s, r.metric, r.value"
                    " FROM unnest(%s::bigint[], %s::text[], %s::float8[]) r(server_id, metric, value)"
                    " ON CONFLICT DO NOTHING",
                    (clock, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])).rowcount
            if due:
                written += conn.execute(_STATS_METRICS, {"clock": clock, "servers": due}).rowcount
                written += conn.execute(_CONTROL_METRICS, {"clock": clock, "servers": due}).rowcount
        report.add("measured", len(due))
        report.add("metrics_written", written)
    return {**report.as_dict(), "agents_down_list": agents_down}
