"""ServerStatsWork: CPU, memory, disk and service samples of the Windows servers, for the monitors.

MonitoringWork's cpu/memory/disk/services monitors read the latest sample at or before their clock
from ``server_stats``, ``server_volume_stats`` and ``server_services`` (0007). This step writes
them: every enabled ``servers`` row with a ``psrp_conn_id`` (0018) is sampled over PowerShell
remoting with ``include/powershell/windows/get_server_stats.ps1`` (performance counters for CPU and
available memory, Win32_ComputerSystem for physical memory, Get-Volume, Get-Service).

One sample per server and run, keyed by the run's clock (``interval.end``); how a sample is read and
written (reruns add nothing, services pruned only by a newer sample) is
:mod:`panelflow.services.server_samples`, which the Hyper-V hosts' own samples
(HyperVHomeBackendThread) go through too.

A server that cannot be reached (timeout, refused credentials, a missing connection) is named in
the summary and the others are still sampled; the step fails only when every server failed, so
Airflow retries it and alerts (:func:`panelflow.step.for_each`).
"""

from __future__ import annotations

from typing import NamedTuple

from panelflow.hooks.powershell import powershell_session
from panelflow.services.server_samples import SCRIPT, parse_sample, write_server_sample
from panelflow.step import EndpointsFailed, StepReport, for_each


class ServerStatsFailed(EndpointsFailed):
    """Every server the step tried failed: the run fails, so Airflow retries it and alerts."""

    def __init__(self, detail: str):
        super().__init__(f"no server could be sampled: {detail}")


class Server(NamedTuple):
    id: int
    name: str
    conn_id: str


_SERVERS = "SELECT id, name, psrp_conn_id FROM servers WHERE enabled AND psrp_conn_id IS NOT NULL ORDER BY id"


def sync_server_stats(panel_db, interval, log=None) -> dict:
    """Sync server stats (CPU, Disk, Memory)."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellError

    report = StepReport().zero("servers_sampled", "samples_written", "volume_samples_written", "services_updated",
                               "services_removed")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def sample(server: Server) -> None:
            with powershell_session(server.conn_id, log) as hook:
                rows = hook.run_script(SCRIPT)
            parsed = parse_sample(rows[0] if rows else None, report, f"server {server.name}")
            if parsed is None:
                return
            for key, n in write_server_sample(conn, server.id, at, *parsed).items():
                report.add(key, n)
            report.add("servers_sampled")

        servers = [Server(*row) for row in conn.execute(_SERVERS)]
        outcome = for_each(servers, sample, report=report, kind="server", expected=(PowerShellError, AirflowException),
                           log=log, everything_failed=ServerStatsFailed)
    summary = report.as_dict()
    summary["failed_servers"] = outcome.failed
    if log is not None and summary["skipped"]:
        log.warning("server stats: %s", summary["skipped"])
    return summary
