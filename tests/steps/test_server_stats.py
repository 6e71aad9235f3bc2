"""ServerStatsWork at the PSRP boundary: one sample per Windows server and run, for the monitors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 6, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _clean(panel_db, sql):
    sql("TRUNCATE servers RESTART IDENTITY CASCADE")


def _at(end=T0):
    return Interval(end - timedelta(minutes=10), end)


def on(server):
    return lambda sent: sent.conn_host == f"{server}.corp.example"


def _run(panel_db, at=T0):
    from panelflow.steps.server_stats import sync_server_stats

    return sync_server_stats(panel_db, _at(at))


def sample(cpu=41.5, available=6442450944, services=None, volumes=None):
    """What windows/get_server_stats.ps1 prints on a Windows Server 2022 IIS/Exchange box."""
    return {
        "ComputerName": "WEB01", "CpuPercent": cpu, "MemoryTotalBytes": 17179332608, "MemoryAvailableBytes": available,
        "Volumes": volumes if volumes is not None else [
            {"DriveLetter": "C", "FileSystemLabel": "", "FileSystem": "NTFS", "Size": 136812904448,
             "SizeRemaining": 58543722496, "HealthStatus": "Healthy"},
            {"DriveLetter": "E", "FileSystemLabel": "Sites", "FileSystem": "NTFS", "Size": 536868032512,
             "SizeRemaining": 401956282368, "HealthStatus": "Healthy"},
        ],
        "Services": services if services is not None else [
            {"Name": "W3SVC", "DisplayName": "World Wide Web Publishing Service", "Status": "Running",
             "StartType": "Automatic"},
            {"Name": "FTPSVC", "DisplayName": "Microsoft FTP Service", "Status": "Stopped", "StartType": "Manual"},
            {"Name": "MSSQL$SQLEXPRESS", "DisplayName": "SQL Server (SQLEXPRESS)", "Status": "Paused",
             "StartType": "Automatic"},
        ],
    }


@pytest.fixture
def servers(recorded_powershell, monkeypatch, sql):
    monkeypatch.setenv("AIRFLOW_CONN_WEB01_PSRP", recorded_powershell.connection("web01.corp.example"))
    monkeypatch.setenv("AIRFLOW_CONN_WEB02_PSRP", recorded_powershell.connection("web02.corp.example"))
    ids = {}
    for name, conn_id, enabled in (("WEB01", "web01_psrp", True), ("WEB02", "web02_psrp", True),
                                   ("LINUX01", None, True), ("OLD01", "web01_psrp", False)):
        ids[name] = sql("INSERT INTO servers (name, role, host, psrp_conn_id, enabled)"
                        " VALUES (%s, 'remote', %s, %s, %s) RETURNING id",
                        (name, f"{name.lower()}.corp.example", conn_id, enabled))[0][0]
    return ids


def test_one_sample_per_server_and_run_with_one_server_timing_out(recorded_powershell, servers, panel_db, sql):
    recorded_powershell.answer("windows/get_server_stats", [sample()], when=on("web01"))
    recorded_powershell.answer("windows/get_server_stats", timeout=True, when=on("web02"))

    out = _run(panel_db)
    assert (out["servers"], out["servers_sampled"], out["servers_failed"], out["failed_servers"]) == \
        (2, 1, 1, ["WEB02"]), out
    assert (out["samples_written"], out["volume_samples_written"], out["services_updated"]) == (1, 2, 3)
    assert "Read timed out" in out["skipped_examples"][0]
    # only the enabled servers with a psrp connection are asked, each with the script and no parameters
    assert [(c.script, c.conn_host, c.parameters) for c in recorded_powershell.sent] == [
        ("windows/get_server_stats", "web01.corp.example", {}), ("windows/get_server_stats", "web02.corp.example", {})]

    web01 = servers["WEB01"]
    assert sql("SELECT server_id, sampled_at, cpu_percent, memory_total_mb, memory_used_mb FROM server_stats") == [
        (web01, T0, Decimal("41.50"), 16383, 10239)]
    assert sql("SELECT server_id, volume, sampled_at, size_mb, free_mb FROM server_volume_stats ORDER BY volume") == [
        (web01, "C:", T0, 130474, 55831), (web01, "E:", T0, 511997, 383335)]
    assert sql("SELECT service_name, display_name, state, sampled_at FROM server_services"
               " ORDER BY lower(service_name)") == [
        ("FTPSVC", "Microsoft FTP Service", "stopped", T0),
        ("MSSQL$SQLEXPRESS", "SQL Server (SQLEXPRESS)", "paused", T0),
        ("W3SVC", "World Wide Web Publishing Service", "running", T0)]

    # a rerun of the same run adds nothing
    before = sql("SELECT (SELECT count(*) FROM server_stats), (SELECT count(*) FROM server_volume_stats)")
    out = _run(panel_db)
    assert (out["samples_written"], out["volume_samples_written"], out["services_updated"]) == (0, 0, 0), out
    assert sql("SELECT (SELECT count(*) FROM server_stats), (SELECT count(*) FROM server_volume_stats)") == before

    # next run: FTP uninstalled, W3SVC stopping, a volume record malformed (reported, the rest written)
    later = T0 + timedelta(minutes=10)
    recorded_powershell.answer("windows/get_server_stats", [sample(
        cpu=100.4, available=1073741824,
        services=[{"Name": "W3SVC", "DisplayName": "World Wide Web Publishing Service", "Status": "StopPending"},
                  {"Name": "MSSQL$SQLEXPRESS", "DisplayName": "SQL Server (SQLEXPRESS)", "Status": "Running"}],
        volumes=[{"DriveLetter": "C", "Size": 136812904448, "SizeRemaining": 1048576},
                 {"DriveLetter": "", "Size": "n/a", "SizeRemaining": 0}])],
        when=on("web01"))
    out = _run(panel_db, later)
    assert (out["samples_written"], out["volume_samples_written"], out["services_removed"]) == (1, 1, 1), out
    assert any("volume" in e and "DriveLetter" in e for e in out["skipped_examples"]), out["skipped_examples"]
    assert sql("SELECT cpu_percent, memory_used_mb FROM server_stats WHERE sampled_at = %s", (later,)) == [
        (Decimal("100.00"), 15359)]
    assert sql("SELECT service_name, state, sampled_at FROM server_services ORDER BY lower(service_name)") == [
        ("MSSQL$SQLEXPRESS", "running", later), ("W3SVC", "stopping", later)]

    # a late rerun of the first run never overwrites the newer service states nor removes anything
    recorded_powershell.answer("windows/get_server_stats", [sample()], when=on("web01"))
    _run(panel_db)
    assert sql("SELECT service_name, state, sampled_at FROM server_services ORDER BY lower(service_name)") == [
        ("FTPSVC", "stopped", T0), ("MSSQL$SQLEXPRESS", "running", later), ("W3SVC", "stopping", later)]


def test_the_step_fails_only_when_every_server_failed(recorded_powershell, servers, panel_db, sql, monkeypatch):
    from panelflow.steps.server_stats import ServerStatsFailed

    recorded_powershell.answer("windows/get_server_stats", hang_up=True)
    with pytest.raises(ServerStatsFailed, match="no server could be sampled"):
        _run(panel_db)
    assert sql("SELECT count(*) FROM server_stats") == [(0,)]

    # a script error on one server (the host's message), a missing connection on the other: both named
    recorded_powershell.answer("windows/get_server_stats", error="Get-Counter : The specified object was not found on "
                               "the computer.", when=on("web01"))
    monkeypatch.delenv("AIRFLOW_CONN_WEB02_PSRP")
    with pytest.raises(ServerStatsFailed) as failure:
        _run(panel_db)
    assert "Get-Counter : The specified object was not found" in str(failure.value)
    assert "web02_psrp" in str(failure.value)


def test_no_windows_server_configured_succeeds_with_zero_counts(panel_db, sql, recorded_powershell):
    sql("INSERT INTO servers (name, role, host) VALUES ('LINUX01', 'remote', 'linux01.corp.example')")
    out = _run(panel_db)
    assert (out["servers"], out["servers_sampled"], out["samples_written"]) == (0, 0, 0)
    assert recorded_powershell.sent == []
