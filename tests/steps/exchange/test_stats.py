"""Exchange statistics threads (panelflow.steps.exchange: stats, mobile_devices, mail_flow, migrations)
at the PSRP boundary: the real
PowerShellHook/pypsrp send our scripts with their parameters to the recorded endpoint, which
answers with what those scripts print on an Exchange 2019 server
(include/sandbox/recordings/exchange_stats/), into the real panel DB."""

from __future__ import annotations

import copy
import json
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import pytest

from panelflow.step import Interval

from harness import ROOT
RECORDINGS = ROOT / "include" / "sandbox" / "recordings" / "exchange_stats"
T0 = datetime(2026, 3, 2, 10, 35, tzinfo=timezone.utc)
HOSTS = {"exch01.corp.example": "EXCH01", "exch02.corp.example": "EXCH02"}
OWN_TABLES = ("exchange_servers", "servers", "exchange_server_inventory", "exchange_service_health",
              "exchange_volumes", "exchange_databases", "exchange_database_stats", "exchange_mobile_devices",
              "exchange_mobile_device_reports", "exchange_message_tracking", "exchange_mail_flow_hourly",
              "exchange_migration_batches", "exchange_migration_failures")
MY_SCRIPTS = ("get_exchange_counters", "get_mailbox_database_stats", "get_exchange_services", "get_exchange_inventory",
              "get_exchange_volumes", "get_mobile_device_statistics", "get_message_tracking_log",
              "get_migration_batches")
TIMED_OUT = "Read timed out"


def recording(script: str) -> dict:
    return json.loads((RECORDINGS / f"{script}.json").read_text(encoding="utf-8"))


def at(end=T0, hours=0):
    return Interval(end - timedelta(hours=hours), end)


@pytest.fixture(autouse=True)
def _own_tables(panel_db, sql):
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def exchange(recorded_powershell, sql, monkeypatch):
    """Two Exchange 2019 servers of one organisation, each behind its own psrp connection.

    ``exchange.serve(script, recorded=None)`` answers each server with its recording (or the
    given ``{server: rows}``); ``exchange.time_out(script, "EXCH02")`` makes that server's calls
    time out."""
    for name in ("EXCH01", "EXCH02"):
        monkeypatch.setenv(f"AIRFLOW_CONN_EXCHANGE_{name}",
                           recorded_powershell.connection(f"{name.lower()}.corp.example", auth="ntlm"))
        sql("INSERT INTO exchange_servers (name, fqdn, conn_id, roles) VALUES (%s, %s, %s, '{}')",
            (name, f"{name}.corp.example", f"exchange_{name.lower()}"))

    def serve(script, recorded=None):
        data = recording(script) if recorded is None else recorded
        recorded_powershell.answer(f"exchange/{script}", lambda sent: data[HOSTS[sent.conn_host]])
        return data

    def time_out(script, server):
        recorded_powershell.answer(f"exchange/{script}", timeout=True,
                                   when=lambda sent: HOSTS[sent.conn_host] == server)

    recorded_powershell.serve, recorded_powershell.time_out = serve, time_out
    return recorded_powershell


def hosts(calls):
    return [HOSTS[c.conn_host] for c in calls]


def server_ids(sql):
    return dict(sql("SELECT name, id FROM exchange_servers"))


class CountPools:
    """Counts the runspace pools opened (PsrpHook.get_conn), restoring the recorded one after."""

    def __enter__(self):
        from airflow.providers.microsoft.psrp.hooks.psrp import PsrpHook

        self.opened, self.recorded = [], PsrpHook.get_conn
        PsrpHook.get_conn = lambda hook: self.opened.append(hook.conn_id) or self.recorded(hook)
        return self

    def __exit__(self, *exc):
        from airflow.providers.microsoft.psrp.hooks.psrp import PsrpHook

        PsrpHook.get_conn = self.recorded


# -- the scripts --------------------------------------------------------------------------------------

def test_scripts_take_parameters_stop_on_errors_and_print_one_json_array():
    from panelflow.hooks.powershell import script_text

    for name in MY_SCRIPTS:
        text = script_text(f"exchange/{name}")
        assert re.search(r"^param\(", text, re.M), name
        assert "$ErrorActionPreference = 'Stop'" in text, name
        assert text.rstrip().splitlines()[-1].startswith("ConvertTo-Json -InputObject @("), name
        assert text.rstrip().endswith("-Depth 4 -Compress"), name
        uses_exchange = re.search(r"\b(Get|Test)-(Mailbox|MailboxDatabase|ExchangeServer|ServiceHealth|MobileDevice"
                                  r"|MessageTrackingLog|MigrationBatch)\b", text)
        assert bool(uses_exchange) == ("Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn" in text), name
        assert "Get-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn" in text or not uses_exchange


# -- CPU and memory -----------------------------------------------------------------------------------

def test_cpu_memory_one_sample_per_server_and_clock_while_the_other_server_times_out(exchange, panel_db, sql):
    from panelflow.steps.exchange._backend import ExchangeServersFailed
    from panelflow.steps.exchange.stats import sync_cpu_memory_stats

    exchange.serve("get_exchange_counters")
    exchange.time_out("get_exchange_counters", "EXCH02")
    out = sync_cpu_memory_stats(panel_db, at(), None, None)

    calls = exchange.calls("exchange/get_exchange_counters")
    assert hosts(calls) == ["EXCH01", "EXCH02"]
    assert [c.parameters for c in calls] == [{"SampleInterval": 2, "MaxSamples": 3}] * 2
    assert (out["servers"], out["servers_failed"], out["samples_written"]) == (2, 1, 1)
    assert list(out["skipped"].values()) == [1] and TIMED_OUT in next(iter(out["skipped"]))
    assert out["skipped_examples"][0].startswith("server EXCH02: ")

    (monitored,) = sql("SELECT id, name, role, host FROM servers")
    assert monitored[1:] == ("EXCH01", "remote", "EXCH01.corp.example")
    assert sql("SELECT name, server_id FROM exchange_servers ORDER BY name") == [("EXCH01", monitored[0]),
                                                                                 ("EXCH02", None)]
    # CPU: mean of 18.74, 25.12, 21.40; memory: 131071 MB installed less the mean 41228 MB available
    rows = [(monitored[0], T0, Decimal("21.75"), 131071, 89843)]
    assert sql("SELECT server_id, sampled_at, cpu_percent, memory_total_mb, memory_used_mb FROM server_stats") == rows

    again = sync_cpu_memory_stats(panel_db, at(), None, None)   # a rerun of the same run
    assert again["samples_written"] == 0
    assert sql("SELECT server_id, sampled_at, cpu_percent, memory_total_mb, memory_used_mb FROM server_stats") == rows

    exchange.time_out("get_exchange_counters", "EXCH01")
    with pytest.raises(ExchangeServersFailed, match="every Exchange server failed .2.: EXCH01: .*EXCH02: "):
        sync_cpu_memory_stats(panel_db, at(T0 + timedelta(minutes=5)), None, None)
    assert len(sql("SELECT 1 FROM server_stats")) == 1


def test_no_exchange_server_configured_is_nothing_to_do(recorded_powershell, panel_db):
    from panelflow.steps.exchange.mail_flow import update_mail_flow_logs
    from panelflow.steps.exchange.stats import read_volume_stats

    assert read_volume_stats(panel_db, at(), None)["servers"] == 0
    assert update_mail_flow_logs(panel_db, at(hours=1), None, None)["events"] == 0
    assert recorded_powershell.sent == []


# -- mailbox databases --------------------------------------------------------------------------------

def test_mailbox_databases_upserted_and_sampled_once_per_run_a_bad_record_skipped(exchange, panel_db, sql):
    from panelflow.steps.exchange.stats import sync_mailbox_database_stats

    data = copy.deepcopy(recording("get_mailbox_database_stats"))
    data["EXCH01"].append({**data["EXCH01"][0], "Name": "DB04", "Guid": "5e0c9b7a-4d3f-4a21-8c6e-0f2b4d6a8c1e",
                           "DatabaseSize": "61.2 GB (unreadable)"})
    exchange.serve("get_mailbox_database_stats", data)
    out = sync_mailbox_database_stats(panel_db, at(), None)

    calls = exchange.calls("exchange/get_mailbox_database_stats")
    assert [c.parameters for c in calls] == [{"Server": "EXCH01"}, {"Server": "EXCH02"}]
    assert (out["databases"], out["stats_written"], out["servers_failed"]) == (3, 3, 0)
    (reason,) = out["skipped"]
    assert reason.startswith("mailbox database DB04: DatabaseSize: Value error")

    ids = server_ids(sql)
    assert sql("SELECT name, guid, exchange_server_id, edb_file_path, log_folder_path, circular_logging, mounted,"
               " last_full_backup_at, last_incremental_backup_at, first_seen_at, last_seen_at"
               " FROM exchange_databases ORDER BY name") == [
        ("DB01", UUID("3f6c2a9e-8d41-4c7b-9e25-1b0a7d94c3e8"), ids["EXCH01"], "D:\\ExchangeDatabases\\DB01\\DB01.edb",
         "L:\\ExchangeLogs\\DB01", False, True, datetime(2026, 3, 1, 22, 15, 42, tzinfo=timezone.utc),
         datetime(2026, 3, 2, 4, 0, 17, tzinfo=timezone.utc), T0, T0),
        ("DB02", UUID("b81e4f07-5c2d-4a96-8f13-6d2e9a0c7b45"), ids["EXCH02"], "D:\\ExchangeDatabases\\DB02\\DB02.edb",
         "L:\\ExchangeLogs\\DB02", False, True, datetime(2026, 3, 1, 23, 2, 11, tzinfo=timezone.utc), None, T0, T0),
        ("DB03", UUID("0d9a7c31-e6b8-4f25-a0c4-92b15e3f8d76"), ids["EXCH01"],
         "D:\\ExchangeVolumes\\Vol3\\DB03\\DB03.edb", "D:\\ExchangeVolumes\\Vol3\\DB03\\Logs", False, False,
         datetime(2026, 2, 28, 22, 41, 5, tzinfo=timezone.utc), None, T0, T0)]
    stats = ("SELECT d.name, s.sampled_at, s.exchange_server_id, s.mounted, s.size_bytes,"
             " s.available_new_mailbox_space_bytes, s.mailbox_count FROM exchange_database_stats s"
             " JOIN exchange_databases d ON d.id = s.database_id ORDER BY s.sampled_at, d.name")
    first = [("DB01", T0, ids["EXCH01"], True, 443017904128, 12884901888, 812),
             ("DB02", T0, ids["EXCH02"], True, 287762808832, 5368709120, 604),
             ("DB03", T0, ids["EXCH01"], False, None, None, 57)]       # dismounted: no size
    assert sql(stats) == first

    assert sync_mailbox_database_stats(panel_db, at(), None)["stats_written"] == 0   # rerun: nothing new
    assert sql(stats) == first and len(sql("SELECT 1 FROM exchange_databases")) == 3

    data["EXCH01"][0]["MailboxCount"] = 815
    later = T0 + timedelta(minutes=15)
    assert sync_mailbox_database_stats(panel_db, at(later), None)["stats_written"] == 3
    assert sql(stats)[3] == ("DB01", later, ids["EXCH01"], True, 443017904128, 12884901888, 815)
    assert sql("SELECT first_seen_at, last_seen_at FROM exchange_databases WHERE name = 'DB01'") == [(T0, later)]


# -- services and inventory ---------------------------------------------------------------------------

def test_service_states_and_role_health_per_server(exchange, panel_db, sql):
    from panelflow.steps.exchange.stats import read_service_stats

    data = copy.deepcopy(recording("get_exchange_services"))
    data["EXCH02"][0]["Services"].append({"Name": "MSExchangeUM", "DisplayName": "Microsoft Exchange Unified Messaging",
                                          "Status": None, "StartType": "Disabled"})
    exchange.serve("get_exchange_services", data)
    out = read_service_stats(panel_db, at(), None)

    assert [c.parameters for c in exchange.calls("exchange/get_exchange_services")] == [{"Server": "EXCH01"},
                                                                                       {"Server": "EXCH02"}]
    assert (out["services"], out["not_running"], out["roles_unhealthy"]) == (58, 1, 1)
    assert list(out["skipped"]) == ["service MSExchangeUM: Status: Input should be a valid string"]
    monitored = dict(sql("SELECT name, id FROM servers"))
    rows = sorted(sql("SELECT sv.name, s.service_name, s.display_name, s.state, s.sampled_at FROM server_services s"
                      " JOIN servers sv ON sv.id = s.server_id WHERE s.state <> 'running'"))
    assert rows == [
        ("EXCH01", "MSExchangeIMAP4BE", "Microsoft Exchange IMAP4 Backend", "stopped", T0),
        ("EXCH01", "MSExchangeImap4", "Microsoft Exchange IMAP4", "stopped", T0),
        ("EXCH01", "MSExchangePOP3BE", "Microsoft Exchange POP3 Backend", "stopped", T0),
        ("EXCH01", "MSExchangePop3", "Microsoft Exchange POP3", "stopped", T0),
        ("EXCH01", "MSExchangeTransport", "Microsoft Exchange Transport", "stopped", T0),
        ("EXCH02", "MSExchangeIMAP4BE", "Microsoft Exchange IMAP4 Backend", "stopped", T0),
        ("EXCH02", "MSExchangeImap4", "Microsoft Exchange IMAP4", "stopped", T0),
        ("EXCH02", "MSExchangePOP3BE", "Microsoft Exchange POP3 Backend", "stopped", T0),
        ("EXCH02", "MSExchangePop3", "Microsoft Exchange POP3", "stopped", T0)]
    assert sql("SELECT count(*) FROM server_services WHERE server_id = %s AND state = 'running'",
               (monitored["EXCH01"],)) == [(24,)]
    assert sql("SELECT service_name, display_name, state FROM server_services WHERE server_id = %s"
               " AND service_name IN ('W3SVC', 'WinRM', 'IISADMIN') ORDER BY 1", (monitored["EXCH02"],)) == [
        ("IISADMIN", "IIS Admin Service", "running"), ("W3SVC", "World Wide Web Publishing Service", "running"),
        ("WinRM", "Windows Remote Management (WS-Management)", "running")]
    ids = server_ids(sql)
    assert sql("SELECT role, required_services_running, services_not_running, cardinality(services_running)"
               " FROM exchange_service_health WHERE exchange_server_id = %s ORDER BY role", (ids["EXCH01"],)) == [
        ("Client Access Server Role", True, [], 7), ("Hub Transport Server Role", False, ["MSExchangeTransport"], 7),
        ("Mailbox Server Role", True, [], 16)]

    data["EXCH01"][0]["Services"] = [dict(s, Status="Running") if s["Name"] == "MSExchangeTransport" else s
                                     for s in data["EXCH01"][0]["Services"]]
    data["EXCH01"][0]["Health"] = [h for h in data["EXCH01"][0]["Health"] if h["Role"] != "Hub Transport Server Role"]
    later = T0 + timedelta(minutes=10)
    read_service_stats(panel_db, at(later), None)
    assert sql("SELECT state, sampled_at FROM server_services WHERE server_id = %s AND service_name ="
               " 'MSExchangeTransport'", (monitored["EXCH01"],)) == [("running", later)]
    assert sql("SELECT role FROM exchange_service_health WHERE exchange_server_id = %s ORDER BY role",
               (ids["EXCH01"],)) == [("Client Access Server Role",), ("Mailbox Server Role",)]
    assert sql("SELECT count(*) FROM server_services") == [(58,)]


def test_inventory_details_and_roles(exchange, panel_db, sql):
    from panelflow.steps.exchange.stats import read_inventory_details

    exchange.serve("get_exchange_inventory")
    exchange.time_out("get_exchange_inventory", "EXCH01")
    out = read_inventory_details(panel_db, at(), None)
    assert (out["servers_read"], out["servers_failed"]) == (1, 1)
    exchange.serve("get_exchange_inventory")      # EXCH01 answers again
    assert read_inventory_details(panel_db, at(), None)["servers_read"] == 2

    assert [c.parameters for c in exchange.calls("exchange/get_exchange_inventory")] == [
        {"Server": "EXCH01"}, {"Server": "EXCH02"}, {"Server": "EXCH01"}, {"Server": "EXCH02"}]
    assert sql("SELECT s.name, i.fqdn, i.edition, i.admin_display_version, i.build, i.server_roles, i.site,"
               " i.os_caption, i.os_version, i.os_last_boot_at, i.manufacturer, i.model, i.processor_name,"
               " i.processor_sockets, i.processor_cores, i.logical_processors, i.memory_bytes, i.read_at"
               " FROM exchange_server_inventory i JOIN exchange_servers s ON s.id = i.exchange_server_id"
               " ORDER BY s.name") == [
        ("EXCH01", "EXCH01.corp.example", "Enterprise", "Version 15.2 (Build 1544.4)", "15.2.1544.4", ["Mailbox"],
         "corp.example/Configuration/Sites/London", "Microsoft Windows Server 2019 Datacenter", "10.0.17763",
         datetime(2026, 2, 14, 3, 12, 9, 500000, tzinfo=timezone.utc), "VMware, Inc.", "VMware7,1",
         "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz", 2, 16, 16, 137438347264, T0),
        ("EXCH02", "EXCH02.corp.example", "Enterprise", "Version 15.2 (Build 1544.4)", "15.2.1544.4", ["Mailbox"],
         "corp.example/Configuration/Sites/Manchester", "Microsoft Windows Server 2022 Standard", "10.0.20348",
         datetime(2026, 2, 21, 2, 47, 33, 250000, tzinfo=timezone.utc), "Dell Inc.", "PowerEdge R650",
         "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", 1, 32, 64, 274877362176, T0)]
    assert sql("SELECT name, roles FROM exchange_servers ORDER BY name") == [("EXCH01", ["Mailbox"]),
                                                                             ("EXCH02", ["Mailbox"])]


# -- volumes ------------------------------------------------------------------------------------------

def test_volumes_sampled_for_the_disk_monitor_with_the_databases_they_hold(exchange, panel_db, sql):
    from panelflow.steps.exchange.stats import read_volume_stats

    (mail_a,) = sql("INSERT INTO servers (name, role, host) VALUES ('mail-a', 'remote', 'exch01.corp.example')"
                    " RETURNING id")[0]    # EXCH01, already monitored under another name
    data = copy.deepcopy(recording("get_exchange_volumes"))
    exchange.serve("get_exchange_volumes", data)
    out = read_volume_stats(panel_db, at(), None)

    assert [c.parameters for c in exchange.calls("exchange/get_exchange_volumes")] == [{"Server": "EXCH01"},
                                                                                     {"Server": "EXCH02"}]
    assert (out["volumes"], out["samples_written"]) == (7, 7)
    monitored = dict(sql("SELECT name, id FROM servers"))
    assert monitored["mail-a"] == mail_a and set(monitored) == {"mail-a", "EXCH02"}
    assert sql("SELECT name, server_id FROM exchange_servers ORDER BY name") == [("EXCH01", mail_a),
                                                                                 ("EXCH02", monitored["EXCH02"])]
    samples = ("SELECT volume, size_mb, free_mb, sampled_at FROM server_volume_stats WHERE server_id = %s"
               " ORDER BY sampled_at, volume")
    assert sql(samples, (mail_a,)) == [("C:", 204273, 91874, T0), ("D:", 2097152, 1114112, T0),
                                       ("D:\\ExchangeVolumes\\Vol3", 2097152, 1920000, T0),
                                       ("L:", 512000, 475136, T0)]
    ids = server_ids(sql)
    placed = ("SELECT volume, label, file_system, size_bytes, free_bytes, database_files, database_logs, sampled_at"
              " FROM exchange_volumes WHERE exchange_server_id = %s ORDER BY volume")
    assert sql(placed, (ids["EXCH01"],)) == [
        ("C:", "System", "NTFS", 214196580352, 96336871424, [], [], T0),
        ("D:", "ExchDB", "ReFS", 2199023255552, 1168231104512, ["DB01", "DB02"], [], T0),
        ("D:\\ExchangeVolumes\\Vol3", "ExchVol3", "ReFS", 2199023255552, 2013265920000, ["DB03"], ["DB03"], T0),
        ("L:", "ExchLogs", "ReFS", 536870912000, 498216206336, [], ["DB01", "DB02"], T0)]

    assert read_volume_stats(panel_db, at(), None)["samples_written"] == 0         # rerun
    data["EXCH01"][0]["Volumes"] = [v for v in data["EXCH01"][0]["Volumes"] if v["Label"] != "ExchVol3"]
    data["EXCH01"][0]["Volumes"][0]["FreeSpace"] = 0
    data["EXCH01"][0]["Volumes"].append({"Name": "S:\\", "DriveLetter": "S:", "Label": "Scratch", "FileSystem": "NTFS",
                                         "Capacity": -1, "FreeSpace": 0})     # malformed
    later = T0 + timedelta(minutes=15)
    out = read_volume_stats(panel_db, at(later), None)
    assert out["samples_written"] == 6 and list(out["skipped"]) == [
        "volume S:\\: Capacity: Input should be greater than 0"]
    assert [r[0] for r in sql(placed, (ids["EXCH01"],))] == ["C:", "D:", "L:"]   # Vol3 gone from the latest
    assert sql(samples, (mail_a,))[:1] == [("C:", 204273, 91874, T0)]
    assert ("C:", 204273, 0, later) in sql(samples, (mail_a,))


# -- mobile devices -----------------------------------------------------------------------------------

CONTOSO_CSV = (
    "Organization,Mailbox,DisplayName,DeviceType,DeviceModel,DeviceOS,DeviceUserAgent,DeviceId,FirstSyncTime,"
    "LastSuccessSync,Status,AccessState\r\n"
    "contoso.example,anna.kowalski@contoso.example,Anna Kowalski,SAMSUNGSMS918B,SM-S918B,Android 14.0.0,"
    "SAMSUNG-SM-S918B/101.140104,SEC1A2B3C4D5E6F7,2025-12-02T09:03:51Z,2026-01-12T16:22:40Z,DeviceOk,Allowed\r\n"
    "contoso.example,john.smith@contoso.example,John Smith,iPhone,iPhone15C2,iOS 17.3.1 21D61,"
    "Apple-iPhone15C2/2103.61,ApplF17ZK3J2N72J,2025-10-06T08:14:22Z,2026-03-02T10:31:07Z,DeviceOk,Allowed\r\n"
    "contoso.example,john.smith@contoso.example,John Smith,Outlook,Outlook for iOS and Android,"
    "Outlook for iOS and Android 1.0,Outlook-iOS-Android/1.0,6A2B9E1D0F3C4B5A8D7E6F1029384756,2025-11-19T17:40:03Z,"
    "2026-03-02T10:29:44Z,DeviceOk,Allowed\r\n")


def test_mobile_devices_per_mailbox_daily_report_and_removal_only_when_every_server_answered(exchange, panel_db, sql):
    from panelflow.steps.exchange.mobile_devices import fetch_mobile_devices_report

    data = copy.deepcopy(recording("get_mobile_device_statistics"))
    data["EXCH02"].append({**data["EXCH02"][0], "DeviceId": "ApplX0000000000", "MailboxGuid": None})   # malformed
    exchange.serve("get_mobile_device_statistics", data)
    day1 = datetime(2026, 3, 3, 2, 40, tzinfo=timezone.utc)
    out = fetch_mobile_devices_report(panel_db, at(day1), None, None)

    assert [c.parameters for c in exchange.calls("exchange/get_mobile_device_statistics")] == [
        {"Server": "EXCH01"}, {"Server": "EXCH02"}]
    assert (out["devices"], out["devices_written"], out["devices_removed"], out["reports"]) == (5, 5, 0, 2)
    assert list(out["skipped"]) == ["mobile device #1: MailboxGuid: UUID input should be a string, bytes or UUID object"]
    ids = server_ids(sql)
    assert sql("SELECT mailbox, device_id, device_type, organization, exchange_server_id, access_state, status,"
               " last_success_sync_at, first_seen_at, removed_at FROM exchange_mobile_devices"
               " ORDER BY mailbox, device_id") == [
        ("anna.kowalski@contoso.example", "SEC1A2B3C4D5E6F7", "SAMSUNGSMS918B", "contoso.example", ids["EXCH01"],
         "Allowed", "DeviceOk", datetime(2026, 1, 12, 16, 22, 40, tzinfo=timezone.utc), day1, None),
        ("john.smith@contoso.example", "6A2B9E1D0F3C4B5A8D7E6F1029384756", "Outlook", "contoso.example",
         ids["EXCH01"], "Allowed", "DeviceOk", datetime(2026, 3, 2, 10, 29, 44, tzinfo=timezone.utc), day1, None),
        ("john.smith@contoso.example", "ApplF17ZK3J2N72J", "iPhone", "contoso.example", ids["EXCH01"], "Allowed",
         "DeviceOk", datetime(2026, 3, 2, 10, 31, 7, tzinfo=timezone.utc), day1, None),
        ("li.wei@fabrikam.example", "ApplDMPF39K1Q1GC", "iPad", "fabrikam.example", ids["EXCH01"], "Quarantined",
         "DeviceDiscovered", None, day1, None),
        ("marta.garcia@fabrikam.example", "ApplG6TZX8H4PLJM", "iPhone", "fabrikam.example", ids["EXCH02"], "Allowed",
         "DeviceOk", datetime(2026, 3, 2, 10, 33, 59, tzinfo=timezone.utc), day1, None)]
    reports = ("SELECT report_date, organization, mailboxes, devices, active_devices, blocked_devices,"
               " quarantined_devices, device_types, created_at FROM exchange_mobile_device_reports"
               " ORDER BY report_date, organization")
    assert sql(reports) == [
        (date(2026, 3, 3), "contoso.example", 2, 3, 2, 0, 0, {"Outlook": 1, "SAMSUNGSMS918B": 1, "iPhone": 1}, day1),
        (date(2026, 3, 3), "fabrikam.example", 2, 2, 1, 0, 1, {"iPad": 1, "iPhone": 1}, day1)]
    assert sql("SELECT csv FROM exchange_mobile_device_reports WHERE organization = 'contoso.example'") == [(CONTOSO_CSV,)]

    again = fetch_mobile_devices_report(panel_db, at(day1), None, None)          # rerun of the day
    assert (again["devices_removed"], again["reports"]) == (0, 2)
    assert len(sql("SELECT 1 FROM exchange_mobile_devices")) == 5 and len(sql(reports)) == 2

    # day 2: Anna's phone is gone from EXCH01, and EXCH02 times out: nothing may be called removed
    data["EXCH01"] = [d for d in data["EXCH01"] if d["DeviceId"] != "SEC1A2B3C4D5E6F7"]
    exchange.time_out("get_mobile_device_statistics", "EXCH02")
    day2 = day1 + timedelta(days=1)
    out = fetch_mobile_devices_report(panel_db, at(day2), None, None)
    assert (out["servers_failed"], out["devices_removed"], out["reports"]) == (1, 0, 2)
    assert sql("SELECT count(*) FROM exchange_mobile_devices WHERE removed_at IS NULL") == [(5,)]

    # day 3: both answer; the phone is marked removed, the others stay
    exchange.serve("get_mobile_device_statistics", data)
    day3 = day2 + timedelta(days=1)
    out = fetch_mobile_devices_report(panel_db, at(day3), None, None)
    assert (out["devices_removed"], out["reports"]) == (1, 2)
    assert sql("SELECT device_id, removed_at FROM exchange_mobile_devices WHERE removed_at IS NOT NULL") == [
        ("SEC1A2B3C4D5E6F7", day3)]
    assert sql(reports)[-2][:7] == (date(2026, 3, 5), "contoso.example", 1, 2, 2, 0, 0)
    assert len(sql(reports)) == 6
    assert fetch_mobile_devices_report(panel_db, at(day3), None, None)["devices_removed"] == 0


# -- mail flow ----------------------------------------------------------------------------------------

TRACKING = ("SELECT s.name, t.logged_at, t.event_id, t.source, t.internal_message_id, t.recipient, t.sender_domain,"
            " t.total_bytes, t.recipient_count FROM exchange_message_tracking t"
            " JOIN exchange_servers s ON s.id = t.exchange_server_id ORDER BY 1, 2, 3, 6")
HOURLY = ("SELECT hour, sender_domain, event_id, events, messages, recipients, total_bytes"
          " FROM exchange_mail_flow_hourly ORDER BY 1, 2, 3")


def ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_mail_flow_reads_the_data_interval_once_per_event_and_recipient(exchange, panel_db, sql):
    from panelflow.steps.exchange.mail_flow import update_mail_flow_logs

    data = copy.deepcopy(recording("get_message_tracking_log"))
    data["EXCH02"].append({**data["EXCH02"][0], "Timestamp": "yesterday", "InternalMessageId": 15032385700})
    exchange.serve("get_message_tracking_log", data)
    with CountPools() as pools:
        out = update_mail_flow_logs(panel_db, at(hours=1), None, None)

    calls = exchange.calls("exchange/get_message_tracking_log")
    assert [(HOSTS[c.conn_host], c.parameters) for c in calls] == [
        ("EXCH01", {"Server": "EXCH01", "Start": "2026-03-02T09:35:00Z", "End": "2026-03-02T10:35:00Z", "Limit": 5000}),
        ("EXCH02", {"Server": "EXCH02", "Start": "2026-03-02T09:35:00Z", "End": "2026-03-02T10:35:00Z", "Limit": 5000})]
    assert '<S N="V">2026-03-02T09:35:00Z</S>' in calls[0].clixml     # a parameter value, never in the script
    assert pools.opened == ["exchange_exch01", "exchange_exch02"]
    assert (out["events"], out["rows_added"], out["tracking_calls"]) == (8, 9, 2)
    assert list(out["skipped"]) == ["tracking event #2: Timestamp: Value error, Invalid isoformat string: 'yesterday'"]

    rows = [
        ("EXCH01", ts("2026-03-02T09:41:12.883Z"), "RECEIVE", "SMTP", 27917287461, "john.smith@contoso.example",
         "northwind.example", 48213, 1),
        ("EXCH01", ts("2026-03-02T09:41:13.201Z"), "DELIVER", "STOREDRIVER", 27917287461,
         "john.smith@contoso.example", "northwind.example", 48213, 1),
        ("EXCH01", ts("2026-03-02T10:02:55.412Z"), "RECEIVE", "STOREDRIVER", 27917287530, "li.wei@fabrikam.example",
         "contoso.example", 1284517, 2),
        ("EXCH01", ts("2026-03-02T10:02:55.412Z"), "RECEIVE", "STOREDRIVER", 27917287530,
         "partners@northwind.example", "contoso.example", 1284517, 2),
        ("EXCH01", ts("2026-03-02T10:02:56.017Z"), "SEND", "SMTP", 27917287530, "partners@northwind.example",
         "contoso.example", 1284517, 1),
        ("EXCH01", ts("2026-03-02T10:02:56.339Z"), "DELIVER", "STOREDRIVER", 27917287530, "li.wei@fabrikam.example",
         "contoso.example", 1284517, 1),
        ("EXCH01", ts("2026-03-02T10:17:40.556Z"), "FAIL", "SMTP", 27917287602, "jon.smyth@contoso.example",
         "contoso.example", 52870, 1),
        ("EXCH02", ts("2026-03-02T10:20:03.118Z"), "RECEIVE", "SMTP", 15032385611, "marta.garcia@fabrikam.example",
         "tailspin.example", 96342, 1),
        ("EXCH02", ts("2026-03-02T10:20:03.47Z"), "DELIVER", "STOREDRIVER", 15032385611,
         "marta.garcia@fabrikam.example", "tailspin.example", 96342, 1)]
    assert sql(TRACKING) == rows
    h9, h10 = ts("2026-03-02T09:00:00Z"), ts("2026-03-02T10:00:00Z")
    hourly = [(h9, "northwind.example", "DELIVER", 1, 1, 1, 48213), (h9, "northwind.example", "RECEIVE", 1, 1, 1, 48213),
              (h10, "contoso.example", "DELIVER", 1, 1, 1, 1284517), (h10, "contoso.example", "FAIL", 1, 1, 1, 52870),
              (h10, "contoso.example", "RECEIVE", 2, 1, 2, 1284517), (h10, "contoso.example", "SEND", 1, 1, 1, 1284517),
              (h10, "tailspin.example", "DELIVER", 1, 1, 1, 96342), (h10, "tailspin.example", "RECEIVE", 1, 1, 1, 96342)]
    assert sql(HOURLY) == hourly

    again = update_mail_flow_logs(panel_db, at(hours=1), None, None)            # the same hour again
    assert (again["events"], again["rows_added"]) == (8, 0)
    assert sql(TRACKING) == rows and sql(HOURLY) == hourly

    # the next hour: an event at 10:50 counts in the 10:00 hour, with the earlier ones
    data["EXCH01"] = [{**data["EXCH01"][1], "Timestamp": "2026-03-02T10:50:01.0000000Z", "InternalMessageId": 27917287700}]
    data["EXCH02"] = []
    out = update_mail_flow_logs(panel_db, at(T0 + timedelta(hours=1), hours=1), None, None)
    assert out["rows_added"] == 1
    assert exchange.calls("exchange/get_message_tracking_log")[-1].parameters == {
        "Server": "EXCH02", "Start": "2026-03-02T10:35:00Z", "End": "2026-03-02T11:35:00Z", "Limit": 5000}
    assert (h10, "northwind.example", "DELIVER", 1, 1, 1, 48213) in sql(HOURLY)
    assert len(sql(HOURLY)) == len(hourly) + 1


def test_mail_flow_splits_a_cut_answer_into_shorter_spans(exchange, panel_db, sql):
    from panelflow.steps.exchange.mail_flow import update_mail_flow_logs

    events = recording("get_message_tracking_log")["EXCH01"]

    def tracking_log(sent):   # what Get-MessageTrackingLog -ResultSize (Limit + 1) returns for the span
        p = sent.parameters
        inside = [e for e in events if ts(p["Start"]) <= ts(e["Timestamp"]) <= ts(p["End"])]
        return inside[:p["Limit"] + 1]

    exchange.answer("exchange/get_message_tracking_log", tracking_log)
    exchange.time_out("get_message_tracking_log", "EXCH02")
    with CountPools() as pools:
        out = update_mail_flow_logs(panel_db, at(hours=1), {"mail_flow_limit": 3}, None)

    spans = [(c.parameters["Start"][11:16], c.parameters["End"][11:16])
             for c in exchange.calls("exchange/get_message_tracking_log")]
    assert spans == [("09:35", "10:35"), ("09:35", "10:05"), ("09:35", "09:50"), ("09:50", "10:05"),
                     ("10:05", "10:35"), ("09:35", "10:35")]                     # the last: EXCH02, timing out
    assert pools.opened == ["exchange_exch01", "exchange_exch02"]               # one pool per server
    assert (out["tracking_calls"], out["events"], out["rows_added"], out["servers_failed"]) == (5, 6, 7, 1)
    assert len(sql(TRACKING)) == 7 and len(sql(HOURLY)) == 6


# -- migration batches --------------------------------------------------------------------------------

def test_migration_batches_updated_and_a_finished_batch_told_once(exchange, panel_db, sql):
    from panelflow.steps.exchange.migrations import update_migration_batch_status

    data = copy.deepcopy(recording("get_migration_batches"))
    legacy = {**data["EXCH01"][0], "Identity": "Legacy-2025", "BatchGuid": "1b3d5f70-2a4c-4e6a-8c0e-9f1b3d5f7a9c",
              "Status": "Completed", "FinalizedCount": 25, "SyncedCount": 0,
              "FinalizedDateTime": "2025-11-04T18:12:00.0000000Z"}
    data["EXCH01"].append(legacy)
    data["EXCH01"].append({**legacy, "Identity": "Broken", "BatchGuid": "nope"})
    data["EXCH02"] = data["EXCH01"]                     # one organisation: both servers list its batches
    exchange.serve("get_migration_batches", data)
    exchange.time_out("get_migration_batches", "EXCH02")
    out = update_migration_batch_status(panel_db, at(), None, None)

    calls = exchange.calls("exchange/get_migration_batches")
    assert [c.parameters for c in calls] == [{"FailedUsersPerBatch": 50}] * 2
    assert (out["batches"], out["failed_users"], out["notices_queued"], out["servers_failed"]) == (3, 2, 0, 1)
    assert "migration batch Broken: BatchGuid: Input should be a valid UUID" in " ".join(out["skipped"])
    batches = ("SELECT identity, status, total_count, synced_count, finalized_count, failed_count, notification_emails,"
               " status_changed_at FROM exchange_migration_batches ORDER BY identity")
    assert sql(batches) == [
        ("Contoso-Wave1", "Syncing", 25, 17, 0, 0, ["it-admin@contoso.example"], T0),
        ("Fabrikam-Archive", "SyncedWithErrors", 12, 10, 0, 2, ["admin@fabrikam.example"], T0),
        ("Legacy-2025", "Completed", 25, 0, 25, 0, ["it-admin@contoso.example"], T0)]   # finished long ago: no notice
    assert sql("SELECT b.identity, f.mailbox, f.error_summary FROM exchange_migration_failures f"
               " JOIN exchange_migration_batches b ON b.id = f.batch_id ORDER BY 2") == [
        ("Fabrikam-Archive", "li.wei@fabrikam.example",
         "TooManyBadItemsPermanentException: The job encountered too many bad items (11)."),
        ("Fabrikam-Archive", "marta.garcia@fabrikam.example",
         "MapiExceptionMaxSubmissionExceeded: Unable to save changes. (hr=0x80004005, ec=1242)")]
    assert sql("SELECT count(*) FROM email_outbox") == [(0,)]

    # the panel made Fabrikam's batch for its customer
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
    (provider,) = sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Hosting', 'billing@host.example',"
                      " 'GBP') RETURNING id")[0]
    (customer,) = sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES (%s, 'Fabrikam Ltd',"
                      " 'it@fabrikam.example', 'GB', 'GBP') RETURNING id", (provider,))[0]
    sql("UPDATE exchange_migration_batches SET customer_id = %s WHERE identity = 'Fabrikam-Archive'", (customer,))

    # ten minutes on, both batches have finished; both servers answer
    wave, archive = data["EXCH01"][0], data["EXCH01"][1]
    wave.update(Status="Completed", SyncedCount=0, FinalizedCount=25, FinalizedDateTime="2026-03-02T10:41:55.0000000Z")
    archive.update(Status="CompletedWithErrors", SyncedCount=0, FinalizedCount=11, FailedCount=1,
                   FinalizedDateTime="2026-03-02T10:39:02.0000000Z", FailedUsers=archive["FailedUsers"][:1])
    exchange.serve("get_migration_batches", data)
    t1 = T0 + timedelta(minutes=10)
    out = update_migration_batch_status(panel_db, at(t1), None, None)
    assert (out["status_changes"], out["notices_queued"], out["servers_failed"]) == (2, 2, 0)

    outbox = sql("SELECT dedupe_key, to_address, subject, body_text, not_before FROM email_outbox ORDER BY to_address")
    assert [(r[1], r[2], r[4]) for r in outbox] == [
        ("it-admin@contoso.example", "Mailbox migration Contoso-Wave1 completed", t1),
        ("it@fabrikam.example", "Mailbox migration Fabrikam-Archive completed with errors", t1)]
    assert outbox[0][0] == "exchange_migration:a3f1c5e7-9b2d-4f60-8e4a-c6d8b0f2a1e3:Completed:2026-03-02T10:45:00Z:" \
                           "it-admin@contoso.example"
    assert "Mailboxes in the batch: 25" in outbox[0][3] and "Failed:                 0" in outbox[0][3]
    assert "- li.wei@fabrikam.example: TooManyBadItemsPermanentException" in outbox[1][3]
    assert "marta.garcia" not in outbox[1][3]
    assert sql(batches)[:2] == [
        ("Contoso-Wave1", "Completed", 25, 0, 25, 0, ["it-admin@contoso.example"], t1),
        ("Fabrikam-Archive", "CompletedWithErrors", 12, 0, 11, 1, ["admin@fabrikam.example"], t1)]
    assert sql("SELECT mailbox FROM exchange_migration_failures") == [("li.wei@fabrikam.example",)]

    assert update_migration_batch_status(panel_db, at(t1), None, None)["notices_queued"] == 0          # rerun
    assert update_migration_batch_status(panel_db, at(t1 + timedelta(minutes=10)), None, None)["notices_queued"] == 0
    assert sql("SELECT count(*) FROM email_outbox") == [(2,)]
    assert sql(batches)[0][-1] == t1        # the status has not changed since
