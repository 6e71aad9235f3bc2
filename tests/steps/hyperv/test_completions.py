"""ProvisioningWork 6 (panelflow.steps.hyperv.vm_paths) at the PSRP boundary, and the VPS usage samples
(panelflow.steps.hyperv.usage_samples) from what HyperVHomeBackendThread 3 sampled.

The recorded endpoint answers with what ``hyperv/get_vm_paths`` prints (ConvertTo-Json of Get-VM and
Get-VMHardDiskDrive after its Select-Object; written from the cmdlets' documented output — the
script has not run on a real Hyper-V host)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 12, 3, 10, 10, tzinfo=timezone.utc)
WEB01 = "5b0c7f4e-2a71-4c8e-9d3b-7e1f0a6c2d11"
SQL01 = "c3a9e2d0-8f14-4b6a-a7e5-2d9b1c0f4e82"
APP02 = "7f2e4c1b-3d5a-4e9f-8b6c-1a0d2e3f4b57"
OLD = r"D:\Hyper-V"
NEW = r"F:\Hyper-V"
GiB = 1024 ** 3
TABLES = ("hyperv_hosts", "hyperv_host_syncs", "hyperv_vms", "hyperv_vm_disks", "hyperv_vm_stats",
          "hyperv_vm_path_changes", "resource_usage_samples")


def run_at(end=T0):
    return Interval(end - timedelta(minutes=10), end)


@pytest.fixture
def world(panel_db, sql, recorded_powershell, monkeypatch):
    """HV01 with web01 (two disks) and sql01 (one), HV02 with app02; web01 and app02 belong to one
    VPS subscription, sql01 to another."""
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    (customer,) = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                      " VALUES (1, 'Contoso Ltd', 'it@contoso.example', 'GB', 'GBP') RETURNING id")[0]
    subs = [sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                " started_on) VALUES (%s, 'VPS', 10, 'GBP', 'monthly', '2026-12-01', '2026-01-01') RETURNING id",
                (customer,))[0][0] for _ in range(2)]
    hosts = {}
    for name in ("HV01", "HV02"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", recorded_powershell.connection(f"{name.lower()}.corp.example",
                                                                                auth="ntlm"))
        hosts[name] = sql("INSERT INTO hyperv_hosts (name, fqdn, conn_id, vhd_archive_path) VALUES (%s, %s, %s, %s)"
                          " RETURNING id", (name, f"{name.lower()}.corp.example", name.lower(),
                                            r"D:\Hyper-V\Archive"))[0][0]
    vms = {}
    for name, guid, host, sub, cpus in (("web01", WEB01, "HV01", subs[0], 4), ("sql01", SQL01, "HV01", subs[1], 8),
                                        ("app02", APP02, "HV02", subs[0], 2)):
        vms[name] = sql("INSERT INTO hyperv_vms (vm_guid, host_id, name, state, processor_count, config_path,"
                        " customer_id, subscription_id, first_seen_at, synced_at, changed_at)"
                        " VALUES (%s, %s, %s, 'Running', %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (guid, hosts[host], name, cpus, rf"{OLD}\{name}", customer, sub, T0 - timedelta(days=9),
                         T0 - timedelta(days=1), T0 - timedelta(days=9)))[0][0]
    for vm, path, location, size in (("web01", rf"{OLD}\web01\web01.vhdx", 0, 30 * GiB),
                                     ("web01", r"E:\Data\web01-data.vhdx", 1, 100 * GiB),
                                     ("sql01", rf"{OLD}\sql01\sql01.vhdx", 0, 60 * GiB),
                                     ("app02", rf"{OLD}\app02\app02.vhdx", 0, 20 * GiB)):
        sql("INSERT INTO hyperv_vm_disks (vm_id, path, controller_type, controller_number, controller_location,"
            " file_size_bytes, storage_type, storage_checked_at, first_seen_at, synced_at)"
            " VALUES (%s, %s, 'SCSI', 0, %s, %s, 'HDD', %s, %s, %s)",
            (vms[vm], path, location, size, T0 - timedelta(days=1), T0 - timedelta(days=9), T0 - timedelta(days=1)))
    return {"hosts": hosts, "vms": vms, "subs": subs, "ps": recorded_powershell}


def _disk(path, location=0):
    return {"ControllerType": "SCSI", "ControllerNumber": 0, "ControllerLocation": location, "Path": path}


# web01's system disk and folder moved to F: by Move-VMStorage; its data disk did not move
PATHS = {
    "hv01.corp.example": [
        {"Id": WEB01, "Name": "web01", "Path": rf"{NEW}\web01",
         "Disks": [_disk(rf"{NEW}\web01\web01.vhdx"), _disk(r"E:\Data\web01-data.vhdx", 1)]},
        {"Id": SQL01, "Name": "sql01", "Path": rf"{OLD.lower()}\sql01",             # same path, other case
         "Disks": [_disk(rf"{OLD}\SQL01\sql01.vhdx")]},
        {"Id": "0e6d2b1a-94c7-4f3e-b5a8-6c1d7e9f2a30", "Name": "not-in-the-panel", "Path": r"F:\x",
         "Disks": [_disk(r"F:\x\x.vhdx")]},
    ],
    "hv02.corp.example": [{"Id": APP02, "Name": "app02", "Path": rf"{OLD}\app02", "Disks": [_disk(rf"{OLD}\app02\app02.vhdx")]}],
}


def test_the_script_reads_every_vm_and_prints_one_json_array():
    from panelflow.hooks.powershell import script_text

    text = script_text("hyperv/get_vm_paths")
    assert "\nparam()\n" in text and "$ErrorActionPreference = 'Stop'" in text
    assert "Get-VM" in text and "Get-VMHardDiskDrive -VM $vm" in text
    assert text.rstrip().splitlines()[-1] == "ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress"


def disks(sql):
    return sql("SELECT v.name, d.controller_location, d.path, d.storage_type FROM hyperv_vm_disks d"
               " JOIN hyperv_vms v ON v.id = d.vm_id ORDER BY v.name, d.controller_location")


def test_moved_disks_and_folders_followed_in_place_once(world, panel_db, sql):
    from panelflow.steps.hyperv.vm_paths import update_vm_paths

    ps, vms = world["ps"], world["vms"]
    ps.answer("hyperv/get_vm_paths", lambda sent: PATHS[sent.conn_host])
    before = dict(sql("SELECT path, id FROM hyperv_vm_disks"))
    summary = update_vm_paths(panel_db, run_at(), None)

    assert disks(sql) == [("app02", 0, rf"{OLD}\app02\app02.vhdx", "HDD"),
                          ("sql01", 0, rf"{OLD}\sql01\sql01.vhdx", "HDD"),
                          ("web01", 0, rf"{NEW}\web01\web01.vhdx", None),      # moved: its media checked again
                          ("web01", 1, r"E:\Data\web01-data.vhdx", "HDD")]
    assert dict(sql("SELECT path, id FROM hyperv_vm_disks"))[rf"{NEW}\web01\web01.vhdx"] == \
        before[rf"{OLD}\web01\web01.vhdx"]                                         # the same row
    assert sql("SELECT name, config_path, changed_at FROM hyperv_vms ORDER BY name") == [
        ("app02", rf"{OLD}\app02", T0 - timedelta(days=9)), ("sql01", rf"{OLD}\sql01", T0 - timedelta(days=9)),
        ("web01", rf"{NEW}\web01", T0)]
    assert sql("SELECT vm_id, kind, slot, old_path, new_path, changed_at FROM hyperv_vm_path_changes"
               " ORDER BY kind") == [
        (vms["web01"], "configuration", "", rf"{OLD}\web01", rf"{NEW}\web01", T0),
        (vms["web01"], "disk", "SCSI 0:0", rf"{OLD}\web01\web01.vhdx", rf"{NEW}\web01\web01.vhdx", T0)]
    assert summary["disks_moved"] == 1 and summary["folders_moved"] == 1 and summary["hosts_synced"] == 2
    assert all(c.parameters == {} and c.is_script for c in ps.calls("hyperv/get_vm_paths"))

    again = update_vm_paths(panel_db, run_at(T0 + timedelta(minutes=10)), None)
    assert again["disks_moved"] == 0 and again["folders_moved"] == 0
    assert len(sql("SELECT 1 FROM hyperv_vm_path_changes")) == 2


def test_a_new_path_the_inventory_already_has_is_left_to_it_and_a_failed_host_is_recorded(world, panel_db, sql):
    from panelflow.steps.hyperv.vm_paths import update_vm_paths

    ps, vms = world["ps"], world["vms"]
    sql("INSERT INTO hyperv_vm_disks (vm_id, path, controller_type, controller_number, controller_location,"
        " first_seen_at, synced_at) VALUES (%s, %s, 'SCSI', 0, 5, %s, %s)",
        (vms["web01"], rf"{NEW}\web01\web01.vhdx", T0, T0))
    ps.answer("hyperv/get_vm_paths", lambda sent: PATHS[sent.conn_host])
    ps.answer("hyperv/get_vm_paths", timeout=True, when=lambda sent: sent.conn_host == "hv02.corp.example")
    summary = update_vm_paths(panel_db, run_at(), None)
    assert summary["disks_moved"] == 0 and summary["failed_hosts"] == ["HV02"]
    assert sql("SELECT h.name, s.last_error IS NOT NULL FROM hyperv_host_syncs s JOIN hyperv_hosts h ON h.id = s.host_id"
               " WHERE s.task = 'vm_paths' ORDER BY h.name") == [("HV01", False), ("HV02", True)]


# -- VPS usage samples -------------------------------------------------------------------------------------

def stats(sql, vm_id, at, memory_mb):
    sql("INSERT INTO hyperv_vm_stats (vm_id, sampled_at, state, cpu_percent, memory_assigned_mb) VALUES (%s, %s,"
        " 'Running', 5, %s)", (vm_id, at, memory_mb))


def test_vps_usage_samples_per_subscription_only_when_every_vm_was_sampled(world, panel_db, sql):
    from panelflow.steps.hyperv.usage_samples import write_vps_usage_samples

    vms, subs = world["vms"], world["subs"]
    stats(sql, vms["web01"], T0, 8192)
    stats(sql, vms["sql01"], T0, 0)          # off
    # app02 (HV02) has no sample at T0: its host failed, so subscription 1 is left out
    with panel_db.get_conn() as conn:
        assert write_vps_usage_samples(conn, T0) == {"vps_usage_samples_written": 3, "vps_subscriptions_incomplete": 1}
    assert sql("SELECT subscription_id, resource, sampled_at, used FROM resource_usage_samples ORDER BY resource") == [
        (subs[1], "disk_space", T0, Decimal(60 * 1024)), (subs[1], "vps_memory", T0, 0),
        (subs[1], "vps_processors", T0, 8)]

    later = T0 + timedelta(hours=1)
    for vm, memory in (("web01", 8192), ("sql01", 4096), ("app02", 2048)):
        stats(sql, vms[vm], later, memory)
    with panel_db.get_conn() as conn:
        assert write_vps_usage_samples(conn, later)["vps_usage_samples_written"] == 6
        assert write_vps_usage_samples(conn, later)["vps_usage_samples_written"] == 0     # a rerun adds nothing
    assert sql("SELECT resource, used FROM resource_usage_samples WHERE subscription_id = %s AND sampled_at = %s"
               " ORDER BY resource", (subs[0], later)) == [
        ("disk_space", Decimal(150 * 1024)), ("vps_memory", 10240), ("vps_processors", 6)]
