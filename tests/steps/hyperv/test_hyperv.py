"""Hyper-V at the PSRP boundary: HyperVHomeBackendThread, GroupActionWorkVPS and the VPS threshold alerts.

The real PowerShellHook/pypsrp build each CreatePipeline; the recorded endpoint decodes it (script
text, parameters) and answers with what our scripts print on a Windows Server 2022 Hyper-V host.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from psycopg.types.json import Jsonb

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
INJECTION = "x'; Stop-VM -Name * -TurnOff -Force; '"
WEB01 = "5b0c7f4e-2a71-4c8e-9d3b-7e1f0a6c2d11"
SQL01 = "c3a9e2d0-8f14-4b6a-a7e5-2d9b1c0f4e82"
LEGACY01 = "0e6d2b1a-94c7-4f3e-b5a8-6c1d7e9f2a30"
APP02 = "7f2e4c1b-3d5a-4e9f-8b6c-1a0d2e3f4b57"
GiB = 1024 ** 3
ARCHIVE = r"D:\Hyper-V\Archive"
VHDS = r"D:\Hyper-V\Virtual Hard Disks"
OS = "Microsoft Windows Server 2022 Datacenter"

HYPERV_TABLES = ("hyperv_hosts", "hyperv_host_syncs", "hyperv_host_hardware", "hyperv_host_nics", "hyperv_hypervisors",
                 "hyperv_vms", "hyperv_vm_disks", "hyperv_vm_network_adapters", "hyperv_host_stats", "hyperv_vm_stats",
                 "hyperv_archived_vhds", "vps_thresholds", "vps_threshold_alerts", "servers")


@pytest.fixture(autouse=True)
def _clean(panel_db, sql):
    sql("TRUNCATE " + ", ".join(HYPERV_TABLES) + " RESTART IDENTITY CASCADE")


def _at(end=T0, minutes=10):
    return Interval(end - timedelta(minutes=minutes), end)


@pytest.fixture
def hosts(recorded_powershell, monkeypatch, sql):
    """HV01 (linked to its servers row) and HV02, each reached through its own psrp connection."""
    monkeypatch.setenv("AIRFLOW_CONN_HV01", recorded_powershell.connection("hv01.corp.example", auth="ntlm"))
    monkeypatch.setenv("AIRFLOW_CONN_HV02", recorded_powershell.connection("hv02.corp.example", auth="ntlm"))
    (server,) = sql("INSERT INTO servers (name, role, host) VALUES ('HV01', 'remote', 'hv01.corp.example')"
                    " RETURNING id")[0]
    ids = {}
    for name, conn_id, server_id in (("HV01", "hv01", server), ("HV02", "hv02", None)):
        ids[name] = sql("INSERT INTO hyperv_hosts (name, fqdn, conn_id, server_id, cluster, vhd_archive_path)"
                        " VALUES (%s, %s, %s, %s, 'HVCL01', %s) RETURNING id",
                        (name, f"{name.lower()}.corp.example", conn_id, server_id, ARCHIVE))[0][0]
    ids["server"] = server
    return ids


def on(host):
    return lambda sent: sent.conn_host == host


# -- recordings: ConvertTo-Json of our scripts' objects on Windows Server 2022 -------------------

HARDWARE_HV01 = {
    "ComputerName": "HV01", "Manufacturer": "Dell Inc.", "Model": "PowerEdge R750", "SerialNumber": "7XK2R53",
    "BiosManufacturer": "Dell Inc.", "BiosVersion": "1.9.2", "BiosReleaseDate": "2022-11-08T00:00:00.0000000Z",
    "ProcessorName": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "ProcessorSockets": 2, "ProcessorCores": 64,
    "LogicalProcessors": 128, "TotalPhysicalMemory": 549386133504, "OsName": OS, "OsVersion": "10.0.20348",
    "NetworkAdapters": [
        {"Name": "NIC1", "InterfaceDescription": "Broadcom NetXtreme Gigabit Ethernet",
         "MacAddress": "B0-7B-25-D1-3A-10", "LinkSpeedBps": 1000000000, "Status": "Up"},
        {"Name": "SLOT 3 Port 1", "InterfaceDescription": "Intel(R) Ethernet Controller E810-XXV for SFP",
         "MacAddress": "40-A6-B7-5C-22-90", "LinkSpeedBps": 25000000000, "Status": "Up"},
        {"Name": "SLOT 3 Port 2", "InterfaceDescription": "Intel(R) Ethernet Controller E810-XXV for SFP #2",
         "MacAddress": "40-A6-B7-5C-22-91", "LinkSpeedBps": 0, "Status": "Disconnected"},
    ],
}
HARDWARE_HV02 = {
    "ComputerName": "HV02", "Manufacturer": "HPE", "Model": "ProLiant DL380 Gen10 Plus", "SerialNumber": "CZJ2140B7Q",
    "BiosManufacturer": "HPE", "BiosVersion": "U46", "BiosReleaseDate": "2023-03-09T00:00:00.0000000Z",
    "ProcessorName": "Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz", "ProcessorSockets": 2, "ProcessorCores": 32,
    "LogicalProcessors": 64, "TotalPhysicalMemory": 274609471488, "OsName": OS, "OsVersion": "10.0.20348",
    "NetworkAdapters": [{"Name": "Embedded LOM 1 Port 1",
                         "InterfaceDescription": "HPE Ethernet 1Gb 4-port 369i Adapter",
                         "MacAddress": "94-40-C9-3E-71-A4", "LinkSpeedBps": 1000000000, "Status": "Up"},
                        {"Name": None, "InterfaceDescription": "HPE Ethernet 1Gb 4-port 369i Adapter #2"}],
}

VMHOST_HV01 = {"ComputerName": "HV01", "OsName": OS, "OsVersion": "10.0.20348", "DefaultVmVersion": "10.0",
               "LogicalProcessorCount": 128, "MemoryCapacity": 549386133504,
               "VirtualMachinePath": r"C:\ProgramData\Microsoft\Windows\Hyper-V", "VirtualHardDiskPath": VHDS,
               "NumaSpanningEnabled": True}


def _disk(path, vhd_type="Dynamic", file_size=34359738368, size=137438953472, controller="SCSI", number=0,
          location=0, fmt="VHDX"):
    return {"Path": path, "ControllerType": controller, "ControllerNumber": number, "ControllerLocation": location,
            "VhdType": vhd_type, "VhdFormat": fmt, "FileSize": file_size, "Size": size}


def _vm(name, vm_id, state="Running", cpu=7, assigned=8589934592, demand=5368709120, startup=8589934592,
        uptime=1296000, generation=2, cpus=4, disks=(), adapters=()):
    return {"Name": name, "Id": vm_id, "State": state, "CPUUsage": cpu, "MemoryAssigned": assigned,
            "MemoryDemand": demand, "MemoryStartup": startup, "DynamicMemoryEnabled": False, "Uptime": uptime,
            "Generation": generation, "ProcessorCount": cpus, "Version": "10.0", "Path": rf"D:\Hyper-V\{name}",
            "Disks": list(disks), "NetworkAdapters": list(adapters)}


def _adapter(vm_id, adapter, mac, ips, vlan=None, switch="External vSwitch"):
    return {"Id": f"Microsoft:{vm_id.upper()}\\{adapter}", "Name": "Network Adapter", "SwitchName": switch,
            "MacAddress": mac, "DynamicMacAddressEnabled": False, "IPAddresses": ips, "VlanId": vlan}


def vms_hv01(with_sql01=True, malformed=False):
    rows = [
        _vm("web01", WEB01, disks=[_disk(rf"{VHDS}\web01.vhdx"),
                                   _disk(r"E:\Hyper-V\web01-data.vhdx", "Fixed", 107378376704, 107374182400,
                                         location=1)],
            adapters=[_adapter(WEB01, "9A1C4D2E-6B3F-4E8A-8C7D-1F2E3A4B5C6D", "00155D0A1B01",
                               ["203.0.113.21", "fe80::215:5dff:fe0a:1b01"], vlan=120)]),
        _vm("legacy01", LEGACY01, cpu=2, assigned=2147483648, demand=1932735283, startup=2147483648, generation=1,
            cpus=2, uptime=86400, disks=[_disk(rf"{VHDS}\legacy01.vhd", file_size=21474836480, size=42949672960,
                                               controller="IDE", fmt="VHD")]),
    ]
    if with_sql01:
        rows.insert(1, _vm("sql01", SQL01, state="Off", cpu=0, assigned=0, demand=0, startup=17179869184, uptime=0,
                           cpus=8, disks=[_disk(rf"{VHDS}\sql01.vhdx", file_size=68719476736, size=274877906944)],
                           adapters=[_adapter(SQL01, "1C2D3E4F-5A6B-4C7D-8E9F-0A1B2C3D4E5F", "00155D0A1B02", [])]))
    if malformed:   # a VM whose Id did not serialize (a half-created VM): reported and skipped
        rows.append(_vm("broken", "", state="Running"))
    return rows


SERVER_STATS_HV01 = {
    "ComputerName": "HV01", "CpuPercent": 23.47, "MemoryTotalBytes": 549386133504, "MemoryAvailableBytes": 141733920768,
    "Volumes": [
        {"DriveLetter": "C", "FileSystemLabel": "", "FileSystem": "NTFS", "Size": 239511535616,
         "SizeRemaining": 181345456128, "HealthStatus": "Healthy"},
        {"DriveLetter": "D", "FileSystemLabel": "VMs", "FileSystem": "ReFS", "Size": 3840551763968,
         "SizeRemaining": 1910156550144, "HealthStatus": "Healthy"},
    ],
    "Services": [
        {"Name": "vmms", "DisplayName": "Hyper-V Virtual Machine Management", "Status": "Running",
         "StartType": "Automatic"},
        {"Name": "WinRM", "DisplayName": "Windows Remote Management (WS-Management)", "Status": "Running",
         "StartType": "Automatic"},
        {"Name": "MSiSCSI", "DisplayName": "Microsoft iSCSI Initiator Service", "Status": "StartPending",
         "StartType": "Automatic"},
        {"Name": "W32Time", "DisplayName": "Windows Time", "Status": "Stopped", "StartType": "Manual"},
    ],
}

VM_STATS_HV01 = {"ComputerName": "HV01", "HypervisorRunTimePercent": 18.42, "VMs": [
    {"Name": "web01", "Id": WEB01, "State": "Running", "CPUUsage": 7, "MemoryAssigned": 8589934592,
     "MemoryDemand": 5368709120, "Uptime": 1296000},
    {"Name": "sql01", "Id": SQL01, "State": "Off", "CPUUsage": 0, "MemoryAssigned": 0, "MemoryDemand": 0, "Uptime": 0},
    {"Name": "app02", "Id": APP02, "State": "Running", "CPUUsage": 3, "MemoryAssigned": 4294967296,
     "MemoryDemand": 1288490188, "Uptime": 600},
    {"Name": "web01-clone", "Id": "not-a-guid", "State": "Running", "CPUUsage": 1, "MemoryAssigned": 0, "Uptime": 5},
]}


def _sync_inventory(panel_db, at=T0):
    from panelflow.steps.hyperv.inventory import sync_hypervisor_inventory

    return sync_hypervisor_inventory(panel_db, _at(at))


def _inventory(recorded_powershell, panel_db, vms, at=T0 - timedelta(minutes=10)):
    """HV01 holds ``vms``, HV02 none: synced, then the recorded calls forgotten."""
    recorded_powershell.answer("hyperv/get_host", [VMHOST_HV01], when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/get_vms", vms, when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/get_host", [{**VMHOST_HV01, "ComputerName": "HV02"}],
                               when=on("hv02.corp.example"))
    recorded_powershell.answer("hyperv/get_vms", [], when=on("hv02.corp.example"))
    _sync_inventory(panel_db, at)
    recorded_powershell.sent.clear()


# -- HyperVHomeBackendThread ---------------------------------------------------------------------


def test_bare_metal_inventory_per_host_with_one_host_timing_out(recorded_powershell, hosts, panel_db, sql):
    from panelflow.steps.hyperv.inventory import sync_bare_metal_inventory

    recorded_powershell.answer("windows/get_hardware_inventory", [HARDWARE_HV01], when=on("hv01.corp.example"))
    recorded_powershell.answer("windows/get_hardware_inventory", timeout=True, when=on("hv02.corp.example"))

    out = sync_bare_metal_inventory(panel_db, _at())
    assert (out["hosts"], out["hosts_synced"], out["hosts_failed"], out["failed_hosts"]) == (2, 1, 1, ["HV02"]), out
    assert out["hardware_added"] == 1 and out["nics_seen"] == 3
    sent = recorded_powershell.calls("windows/get_hardware_inventory")
    assert [(c.conn_host, c.parameters) for c in sent] == [("hv01.corp.example", {}), ("hv02.corp.example", {})]
    assert sql("SELECT host_id, manufacturer, model, serial_number, bios_manufacturer, bios_version, bios_release_date,"
               " cpu_model, cpu_sockets, cpu_cores, cpu_logical_processors, memory_bytes, os_name, os_version,"
               " synced_at, changed_at FROM hyperv_host_hardware") == [
        (hosts["HV01"], "Dell Inc.", "PowerEdge R750", "7XK2R53", "Dell Inc.", "1.9.2",
         datetime(2022, 11, 8, tzinfo=timezone.utc), "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", 2, 64, 128,
         549386133504, OS, "10.0.20348", T0, T0)]
    assert sql("SELECT name, description, mac_address, link_speed_bps, status FROM hyperv_host_nics ORDER BY name") == [
        ("NIC1", "Broadcom NetXtreme Gigabit Ethernet", "B0-7B-25-D1-3A-10", 1000000000, "Up"),
        ("SLOT 3 Port 1", "Intel(R) Ethernet Controller E810-XXV for SFP", "40-A6-B7-5C-22-90", 25000000000, "Up"),
        ("SLOT 3 Port 2", "Intel(R) Ethernet Controller E810-XXV for SFP #2", "40-A6-B7-5C-22-91", 0, "Disconnected")]
    syncs = dict(sql("SELECT h.name, s.last_error FROM hyperv_host_syncs s JOIN hyperv_hosts h ON h.id = s.host_id"
                     " WHERE s.task = 'bare_metal_inventory'"))
    assert syncs["HV01"] is None and "Read timed out" in syncs["HV02"]

    # HV02 answers next run: its malformed adapter is skipped, the rest written; HV01's rerun changes nothing
    before = sql("SELECT * FROM hyperv_host_hardware WHERE host_id = %s", (hosts["HV01"],))
    recorded_powershell.answer("windows/get_hardware_inventory", [HARDWARE_HV02], when=on("hv02.corp.example"))
    out = sync_bare_metal_inventory(panel_db, _at(T0 + timedelta(minutes=10)))
    assert out["hosts_synced"] == 2 and out["hardware_added"] == 1 and out["hardware_changed"] == 0, out
    assert out["skipped_examples"] == [
        "host HV02 network adapter 1: host HV02 network adapter #1: Name: Input should be a valid string"]
    assert sql("SELECT name FROM hyperv_host_nics WHERE host_id = %s", (hosts["HV02"],)) == [("Embedded LOM 1 Port 1",)]
    after = sql("SELECT * FROM hyperv_host_hardware WHERE host_id = %s", (hosts["HV01"],))
    assert after[0][:-2] == before[0][:-2] and after[0][-1] == T0           # unchanged since T0

    # every host timing out fails the step (Airflow retries and alerts)
    from panelflow.steps.hyperv._backend import HyperVHostsFailed

    recorded_powershell.answer("windows/get_hardware_inventory", timeout=True)
    with pytest.raises(HyperVHostsFailed, match="every Hyper-V host failed"):
        sync_bare_metal_inventory(panel_db, _at(T0 + timedelta(minutes=20)))


def test_hypervisor_inventory_upserts_vms_disks_adapters_and_marks_gone_vms_deleted(recorded_powershell, hosts,
                                                                                     panel_db, sql):
    recorded_powershell.answer("hyperv/get_host", [VMHOST_HV01], when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/get_vms", vms_hv01(malformed=True), when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/get_host", [{**VMHOST_HV01, "ComputerName": "HV02"}],
                               when=on("hv02.corp.example"))
    recorded_powershell.answer("hyperv/get_vms", timeout=True, when=on("hv02.corp.example"))

    out = _sync_inventory(panel_db)
    assert (out["hosts_synced"], out["failed_hosts"], out["vms_seen"], out["vms_added"]) == (1, ["HV02"], 3, 3), out
    assert out["disks_seen"] == 4 and out["adapters_seen"] == 2 and out["vms_marked_deleted"] == 0
    assert any(e.startswith("host HV01 VM broken: host HV01 VM broken: Id: Input should be a valid UUID")
               for e in out["skipped_examples"]), out["skipped_examples"]
    # one session per host: both scripts went through it, with no parameters
    assert [(c.script, c.conn_host) for c in recorded_powershell.sent] == [
        ("hyperv/get_host", "hv01.corp.example"), ("hyperv/get_vms", "hv01.corp.example"),
        ("hyperv/get_host", "hv02.corp.example"), ("hyperv/get_vms", "hv02.corp.example")]

    assert sql("SELECT host_id, computer_name, os_name, os_version, default_vm_version, logical_processors,"
               " memory_capacity_bytes, vm_path, vhd_path, numa_spanning, synced_at FROM hyperv_hypervisors") == [
        (hosts["HV01"], "HV01", OS, "10.0.20348", "10.0", 128, 549386133504,
         r"C:\ProgramData\Microsoft\Windows\Hyper-V", VHDS, True, T0)]
    assert sql("SELECT vm_guid::text, host_id, name, state, generation, processor_count, memory_startup_bytes,"
               " memory_assigned_bytes, memory_demand_bytes, dynamic_memory, uptime_seconds, version, config_path,"
               " first_seen_at, deleted_at FROM hyperv_vms ORDER BY name") == [
        (LEGACY01, hosts["HV01"], "legacy01", "Running", 1, 2, 2147483648, 2147483648, 1932735283, False, 86400, "10.0",
         r"D:\Hyper-V\legacy01", T0, None),
        (SQL01, hosts["HV01"], "sql01", "Off", 2, 8, 17179869184, 0, 0, False, 0, "10.0", r"D:\Hyper-V\sql01", T0,
         None),
        (WEB01, hosts["HV01"], "web01", "Running", 2, 4, 8589934592, 8589934592, 5368709120, False, 1296000, "10.0",
         r"D:\Hyper-V\web01", T0, None)]
    assert sql("SELECT v.name, d.path, d.controller_type, d.controller_number, d.controller_location, d.vhd_type,"
               " d.vhd_format, d.file_size_bytes, d.size_bytes, d.storage_type FROM hyperv_vm_disks d"
               " JOIN hyperv_vms v ON v.id = d.vm_id ORDER BY v.name, d.path") == [
        ("legacy01", rf"{VHDS}\legacy01.vhd", "IDE", 0, 0, "Dynamic", "VHD", 21474836480, 42949672960, None),
        ("sql01", rf"{VHDS}\sql01.vhdx", "SCSI", 0, 0, "Dynamic", "VHDX", 68719476736, 274877906944, None),
        ("web01", rf"{VHDS}\web01.vhdx", "SCSI", 0, 0, "Dynamic", "VHDX", 34359738368, 137438953472, None),
        ("web01", r"E:\Hyper-V\web01-data.vhdx", "SCSI", 0, 1, "Fixed", "VHDX", 107378376704, 107374182400, None)]
    assert sql("SELECT v.name, a.adapter_id, a.switch_name, a.mac_address, a.ip_addresses, a.vlan_id"
               " FROM hyperv_vm_network_adapters a JOIN hyperv_vms v ON v.id = a.vm_id ORDER BY v.name") == [
        ("sql01", f"Microsoft:{SQL01.upper()}\\1C2D3E4F-5A6B-4C7D-8E9F-0A1B2C3D4E5F", "External vSwitch",
         "00155D0A1B02", [], None),
        ("web01", f"Microsoft:{WEB01.upper()}\\9A1C4D2E-6B3F-4E8A-8C7D-1F2E3A4B5C6D", "External vSwitch",
         "00155D0A1B01", ["203.0.113.21", "fe80::215:5dff:fe0a:1b01"], 120)]

    # a rerun of the same run leaves every row as it was
    tables = ("hyperv_hypervisors", "hyperv_vms", "hyperv_vm_disks", "hyperv_vm_network_adapters")
    snapshot = {t: sql(f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    _sync_inventory(panel_db)
    assert {t: sql(f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables} == snapshot

    # later: sql01 is gone from the host, web01 lost its data disk and was resized; no record malformed
    later = T0 + timedelta(minutes=10)
    vms = vms_hv01(with_sql01=False)
    vms[0]["Disks"] = vms[0]["Disks"][:1]
    vms[0]["ProcessorCount"] = 8
    recorded_powershell.answer("hyperv/get_vms", vms, when=on("hv01.corp.example"))
    out = _sync_inventory(panel_db, later)
    assert out["vms_marked_deleted"] == 1 and out["vms_added"] == 0, out
    rows = {name: rest for name, *rest in sql("SELECT name, deleted_at, changed_at, processor_count, synced_at"
                                              " FROM hyperv_vms")}
    assert rows["sql01"] == [later, later, 8, T0]                    # kept, marked deleted
    assert rows["web01"] == [None, later, 8, later]                  # a configuration change
    assert rows["legacy01"] == [None, T0, 2, later]                  # only running figures moved
    assert sql("SELECT path FROM hyperv_vm_disks d JOIN hyperv_vms v ON v.id = d.vm_id WHERE v.name = 'web01'") == \
        [(rf"{VHDS}\web01.vhdx",)]
    assert sql("SELECT count(*) FROM hyperv_vm_disks d JOIN hyperv_vms v ON v.id = d.vm_id WHERE v.name = 'sql01'") == \
        [(1,)]                                                        # a deleted VM's record stays readable

    # sql01 is live-migrated onto HV02: same GUID, so the same row, undeleted and moved
    recorded_powershell.answer("hyperv/get_vms", [_vm("sql01", SQL01, state="Running", cpus=8)],
                               when=on("hv02.corp.example"))
    _sync_inventory(panel_db, later + timedelta(minutes=10))
    assert sql("SELECT host_id, deleted_at FROM hyperv_vms WHERE vm_guid = %s", (SQL01,)) == [(hosts["HV02"], None)]


def test_server_resource_stats_into_the_monitor_tables_and_vm_samples(recorded_powershell, hosts, panel_db, sql):
    from panelflow.steps.hyperv.stats import sync_server_resource_stats

    _inventory(recorded_powershell, panel_db, vms_hv01())

    recorded_powershell.answer("windows/get_server_stats", [SERVER_STATS_HV01], when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/get_vm_stats", [VM_STATS_HV01], when=on("hv01.corp.example"))
    recorded_powershell.answer("windows/get_server_stats", hang_up=True, when=on("hv02.corp.example"))

    out = sync_server_resource_stats(panel_db, _at())
    assert (out["hosts_synced"], out["failed_hosts"]) == (1, ["HV02"]), out
    assert (out["samples_written"], out["volume_samples_written"], out["services_updated"]) == (1, 2, 4)
    assert (out["host_samples_written"], out["vm_samples_written"], out["vms_not_in_inventory"]) == (1, 2, 1)
    assert "host HV01 VM app02: VM not in the inventory yet (no sample kept)" in out["skipped_examples"]
    assert any(e.startswith("host HV01 VM web01-clone: host HV01 VM web01-clone: Id: Input should be a valid UUID")
               for e in out["skipped_examples"]), out["skipped_examples"]
    assert [(c.script, c.conn_host) for c in recorded_powershell.sent] == [
        ("windows/get_server_stats", "hv01.corp.example"), ("hyperv/get_vm_stats", "hv01.corp.example"),
        ("windows/get_server_stats", "hv02.corp.example")]

    server = hosts["server"]
    assert sql("SELECT server_id, sampled_at, cpu_percent, memory_total_mb, memory_used_mb FROM server_stats") == [
        (server, T0, Decimal("23.47"), 523935, 388767)]
    assert sql("SELECT volume, sampled_at, size_mb, free_mb FROM server_volume_stats ORDER BY volume") == [
        ("C:", T0, 228416, 172944), ("D:", T0, 3662635, 1821667)]
    assert sql("SELECT service_name, display_name, state, sampled_at FROM server_services"
               " ORDER BY lower(service_name)") == [
        ("MSiSCSI", "Microsoft iSCSI Initiator Service", "starting", T0),
        ("vmms", "Hyper-V Virtual Machine Management", "running", T0),
        ("W32Time", "Windows Time", "stopped", T0),
        ("WinRM", "Windows Remote Management (WS-Management)", "running", T0)]
    assert sql("SELECT host_id, sampled_at, cpu_percent, hypervisor_run_time_percent, memory_total_mb,"
               " memory_available_mb, vms_total, vms_running FROM hyperv_host_stats") == [
        (hosts["HV01"], T0, Decimal("23.47"), Decimal("18.42"), 523935, 135168, 3, 2)]
    assert sql("SELECT v.name, s.sampled_at, s.state, s.cpu_percent, s.memory_assigned_mb, s.memory_demand_mb,"
               " s.uptime_seconds FROM hyperv_vm_stats s JOIN hyperv_vms v ON v.id = s.vm_id ORDER BY v.name") == [
        ("sql01", T0, "Off", Decimal("0.00"), 0, 0, 0), ("web01", T0, "Running", Decimal("7.00"), 8192, 5120, 1296000)]

    # a rerun of the same run adds nothing
    counts = sql("SELECT (SELECT count(*) FROM server_stats), (SELECT count(*) FROM server_volume_stats),"
                 " (SELECT count(*) FROM hyperv_host_stats), (SELECT count(*) FROM hyperv_vm_stats)")
    out = sync_server_resource_stats(panel_db, _at())
    assert (out["samples_written"], out["volume_samples_written"], out["vm_samples_written"]) == (0, 0, 0)
    assert sql("SELECT (SELECT count(*) FROM server_stats), (SELECT count(*) FROM server_volume_stats),"
               " (SELECT count(*) FROM hyperv_host_stats), (SELECT count(*) FROM hyperv_vm_stats)") == counts


# -- GroupActionWorkVPS: the queue ---------------------------------------------------------------


def _job(sql, action, payload, priority=5):
    return sql("INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES ('vps', %s, %s, %s)"
               " RETURNING id", (action, Jsonb(payload), priority))[0][0]


def _process(panel_db, at=T0, **params):
    from panelflow.steps.hyperv.jobs import process_vps_group_actions

    return process_vps_group_actions(panel_db, _at(at, 5), params, None)


def _state(sql, job):
    return sql("SELECT status, attempts, result, error FROM group_action_jobs WHERE id = %s", (job,))[0]


def _customer(sql, email="ops@contoso.example"):
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
    (provider,) = sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Hosting Co',"
                      " 'billing@hosting.example', 'GBP') RETURNING id")[0]
    return sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES (%s, 'Contoso Ltd', %s,"
               " 'GB', 'GBP') RETURNING id", (provider, email))[0][0]


def _vm_answer(name, vm_id, state, **extra):
    return {"Name": name, "Id": vm_id, "State": state, "Generation": 2, "ProcessorCount": 4,
            "MemoryStartup": 8589934592, **extra}


NEW01 = "2d4f6a8c-1b3e-4d5f-9a7b-c8e0f2a4b6d8"


def test_vps_group_actions_in_priority_order_rejected_deferred_and_literal_parameters(recorded_powershell, hosts,
                                                                                      panel_db, sql):
    recorded_powershell.answer("hyperv/get_host", [VMHOST_HV01], when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/get_vms", vms_hv01(), when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/get_host", timeout=True, when=on("hv02.corp.example"))
    _sync_inventory(panel_db, T0 - timedelta(minutes=10))
    recorded_powershell.sent.clear()
    customer = _customer(sql)

    recorded_powershell.answer("hyperv/create_vm", lambda sent: [{
        "Name": sent.parameters["Name"], "Id": NEW01, "State": "Off", "Generation": sent.parameters["Generation"],
        "ProcessorCount": sent.parameters["ProcessorCount"], "MemoryStartup": sent.parameters["MemoryStartupBytes"],
        "Created": True,
        "Disks": [_disk(rf"{VHDS}\new01.vhdx", file_size=4194304, size=sent.parameters["VhdSizeBytes"])]}])
    recorded_powershell.answer("hyperv/start_vm", lambda sent: [_vm_answer("web01", WEB01, "Running",
                                                                           PreviousState="Running", Changed=False)])
    recorded_powershell.answer("hyperv/start_vm", error=f"No virtual machine '{INJECTION}' on HV01",
                               when=lambda sent: sent.parameters.get("Name") == INJECTION)
    recorded_powershell.answer("hyperv/stop_vm", error="'sql01' failed to change state. The operation cannot be "
                               "performed while the object is in its current state.")
    recorded_powershell.answer("hyperv/stop_vm", timeout=True, when=on("hv02.corp.example"))

    jobs = {
        "start_later": _job(sql, "start_vm", {"vm_id": WEB01}, priority=7),
        "create": _job(sql, "create_vm", {"host": "HV01", "name": "new01", "memory_mb": 4096, "disk_gb": 64,
                                          "processor_count": 2, "switch_name": "External vSwitch",
                                          "customer_id": customer}, priority=1),
        "injection": _job(sql, "start_vm", {"host": "HV01", "name": INJECTION}, priority=2),
        "refused": _job(sql, "stop_vm", {"vm_id": SQL01, "turn_off": True}, priority=3),
        "hv02": _job(sql, "stop_vm", {"host": "HV02", "name": "app02"}, priority=4),
        "hv02_again": _job(sql, "stop_vm", {"host": "HV02", "name": "app03"}, priority=4),
        "unknown_host": _job(sql, "start_vm", {"host": "HV09", "name": "web09"}, priority=5),
        "bad_payload": _job(sql, "create_vm", {"host": "HV01", "name": "big", "memory_mb": 4096, "disk_gb": 10**9},
                            priority=5),
        "unknown_action": _job(sql, "format_host", {"host": "HV01"}, priority=6),
    }
    out = _process(panel_db)
    assert (out["claimed"], out["succeeded"], out["failed"], out["retry_later"]) == (9, 2, 5, 2), out

    # priority order, then id; the jobs that fail before reaching a host send nothing
    assert [(c.script, c.conn_host) for c in recorded_powershell.sent] == [
        ("hyperv/create_vm", "hv01.corp.example"), ("hyperv/start_vm", "hv01.corp.example"),
        ("hyperv/stop_vm", "hv01.corp.example"), ("hyperv/stop_vm", "hv02.corp.example"),
        ("hyperv/start_vm", "hv01.corp.example")]
    create, injection, refused, hv02, start = recorded_powershell.sent
    assert create.parameters == {"Name": "new01", "Generation": 2, "MemoryStartupBytes": 4 * GiB, "ProcessorCount": 2,
                                 "VhdSizeBytes": 64 * GiB, "SwitchName": "External vSwitch"}
    assert '<I64 N="V">68719476736</I64>' in create.clixml and '<I64 N="V">4294967296</I64>' in create.clixml
    # the injection arrives as one literal parameter, never inside the script text
    from panelflow.hooks.powershell import script_text

    assert injection.is_script and injection.command == script_text("hyperv/start_vm")
    assert injection.parameters == {"Name": INJECTION} and injection.clixml.count("Stop-VM -Name *") == 1
    assert refused.parameters == {"Id": SQL01, "TurnOff": True}
    assert start.parameters == {"Id": WEB01}

    status, attempts, result, error = _state(sql, jobs["create"])
    assert (status, attempts, error) == ("succeeded", 1, None)
    assert result == {"host": "HV01", "vm_id": NEW01, "name": "new01", "state": "Off", "created": True,
                      "vhd_paths": [rf"{VHDS}\new01.vhdx"]}
    assert sql("SELECT name, host_id, state, generation, processor_count, memory_startup_bytes, customer_id,"
               " first_seen_at FROM hyperv_vms WHERE vm_guid = %s", (NEW01,)) == [
        ("new01", hosts["HV01"], "Off", 2, 2, 4 * GiB, customer, T0)]
    assert sql("SELECT d.path, d.vhd_type, d.size_bytes FROM hyperv_vm_disks d JOIN hyperv_vms v ON v.id = d.vm_id"
               " WHERE v.vm_guid = %s", (NEW01,)) == [(rf"{VHDS}\new01.vhdx", "Dynamic", 64 * GiB)]
    assert _state(sql, jobs["start_later"])[:3] == ("succeeded", 1, {
        "host": "HV01", "vm_id": WEB01, "name": "web01", "state": "Running", "previous_state": "Running",
        "changed": False})

    # the host refused: failed with the host's message, not retried
    assert _state(sql, jobs["refused"])[0] == "failed"
    assert _state(sql, jobs["refused"])[3] == ("HV01: 'sql01' failed to change state. The operation cannot be "
                                               "performed while the object is in its current state.")
    assert _state(sql, jobs["injection"])[3] == f"HV01: No virtual machine '{INJECTION}' on HV01"
    # the host timed out: back to pending; its next job is deferred without another call
    status, attempts, _, error = _state(sql, jobs["hv02"])
    assert status == "pending" and attempts == 1 and error.startswith("HV02: hyperv/stop_vm on hv02: ReadTimeout")
    assert hv02.parameters == {"Name": "app02"}
    status, _, _, error = _state(sql, jobs["hv02_again"])
    assert status == "pending" and error.startswith("HV02 not tried: unreachable earlier in this run")
    for key, words in (("unknown_host", "no Hyper-V host 'HV09'"),
                       ("bad_payload", "payload 'disk_gb' must be a whole number from 1 to 65536"),
                       ("unknown_action", "unknown vps action 'format_host'")):
        assert _state(sql, jobs[key])[:2] == ("failed", 1) and _state(sql, jobs[key])[3] == words

    # a rerun: HV02's jobs are tried again (HV02 answers now); creating new01 again finds it, creates nothing
    recorded_powershell.sent.clear()
    recorded_powershell.answer("hyperv/stop_vm", lambda sent: [_vm_answer(sent.parameters["Name"], APP02, "Off",
                                                                          PreviousState="Running", Changed=True)],
                               when=on("hv02.corp.example"))
    recorded_powershell.answer("hyperv/create_vm", lambda sent: [{**_vm_answer("new01", NEW01, "Off"), "Created": False,
                                                                  "Disks": []}])
    again = _job(sql, "create_vm", {"host": "HV01", "name": "new01", "memory_mb": 4096, "disk_gb": 64})
    out = _process(panel_db, T0 + timedelta(minutes=5))
    assert (out["claimed"], out["succeeded"]) == (3, 3), out
    assert _state(sql, jobs["hv02"])[:2] == ("succeeded", 2) and _state(sql, again)[2]["created"] is False
    assert sql("SELECT count(*) FROM hyperv_vms WHERE name = 'new01'") == [(1,)]
    assert sql("SELECT customer_id FROM hyperv_vms WHERE vm_guid = %s", (NEW01,)) == [(customer,)]   # link kept
    assert _process(panel_db, T0 + timedelta(minutes=10))["claimed"] == 0


def test_vps_resize_disks_checkpoint_restart_and_delete_with_archived_disks(recorded_powershell, hosts, panel_db,
                                                                            sql):
    _inventory(recorded_powershell, panel_db, vms_hv01())

    recorded_powershell.answer("hyperv/resize_vm", [_vm_answer("sql01", SQL01, "Off", ProcessorCount=12,
                                                               MemoryStartup=32 * GiB,
                                                               Changed=["ProcessorCount", "MemoryStartup"])])
    recorded_powershell.answer("hyperv/add_disk", lambda sent: [_vm_answer("sql01", SQL01, "Off", Disk=_disk(
        sent.parameters["Path"], "Fixed", 214752559104, sent.parameters["SizeBytes"], location=1),
        Created=True, Attached=True)])
    recorded_powershell.answer("hyperv/expand_disk", lambda sent: [_vm_answer("web01", WEB01, "Running", Disk={
        "Path": sent.parameters["Path"], "VhdType": "Dynamic", "VhdFormat": "VHDX", "FileSize": 34363932672,
        "Size": sent.parameters["SizeBytes"]}, Resized=True)])
    recorded_powershell.answer("hyperv/checkpoint_vm", lambda sent: [_vm_answer("web01", WEB01, "Running",
        CheckpointId="8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b", CheckpointName=sent.parameters["CheckpointName"],
        CreationTime="2026-03-02T09:58:41.1234567Z", Created=True)])
    recorded_powershell.answer("hyperv/restart_vm", [_vm_answer("legacy01", LEGACY01, "Running",
                                                                PreviousState="Running", Changed=True)])
    archived = [{"Path": rf"{VHDS}\sql01.vhdx", "ArchivePath": rf"{ARCHIVE}\{SQL01}\sql01.vhdx",
                 "FileSize": 68719476736},
                {"Path": rf"{VHDS}\sql01-logs.vhdx", "ArchivePath": rf"{ARCHIVE}\{SQL01}\sql01-logs.vhdx",
                 "FileSize": 4194304}]
    recorded_powershell.answer("hyperv/delete_vm", [{"Found": True, "Id": SQL01, "Name": "sql01",
                                                     "Archived": archived}])
    recorded_powershell.answer("hyperv/delete_vm", [{"Found": False, "Id": None, "Name": "gone01", "Archived": []}],
                               when=lambda sent: sent.parameters.get("Name") == "gone01")

    jobs = [_job(sql, "resize_vm", {"vm_id": SQL01, "processor_count": 12, "memory_mb": 32768}),
            _job(sql, "add_disk", {"vm_id": SQL01, "file_name": "sql01-logs.vhdx", "size_gb": 200,
                                   "vhd_type": "Fixed"}),
            _job(sql, "expand_disk", {"vm_id": WEB01, "path": rf"{VHDS}\web01.vhdx", "size_gb": 256}),
            _job(sql, "checkpoint_vm", {"vm_id": WEB01, "checkpoint_name": "before upgrade 2026-03-02"}),
            _job(sql, "restart_vm", {"host": "HV01", "name": "legacy01", "hard": True}),
            _job(sql, "delete_vm", {"vm_id": SQL01}),
            _job(sql, "delete_vm", {"host": "HV01", "name": "gone01"}),
            _job(sql, "expand_disk", {"vm_id": WEB01, "path": r"..\..\Windows\System32\config\SAM", "size_gb": 1})]
    out = _process(panel_db)
    assert (out["succeeded"], out["failed"]) == (7, 1), out

    sent = {c.script: c for c in recorded_powershell.sent}
    assert sent["hyperv/resize_vm"].parameters == {"Id": SQL01, "ProcessorCount": 12, "MemoryStartupBytes": 32 * GiB}
    assert sent["hyperv/add_disk"].parameters == {"Id": SQL01, "Path": rf"{VHDS}\sql01-logs.vhdx",
                                                  "SizeBytes": 200 * GiB, "VhdType": "Fixed"}
    assert sent["hyperv/expand_disk"].parameters == {"Id": WEB01, "Path": rf"{VHDS}\web01.vhdx", "SizeBytes": 256 * GiB}
    assert sent["hyperv/checkpoint_vm"].parameters == {"Id": WEB01, "CheckpointName": "before upgrade 2026-03-02"}
    assert sent["hyperv/restart_vm"].parameters == {"Name": "legacy01", "Hard": True}
    deletes = recorded_powershell.calls("hyperv/delete_vm")
    assert [d.parameters for d in deletes] == [
        {"Id": SQL01, "ArchivePath": ARCHIVE, "KnownDiskPaths": [rf"{VHDS}\sql01-logs.vhdx", rf"{VHDS}\sql01.vhdx"]},
        {"Name": "gone01", "ArchivePath": ARCHIVE}]

    results = [_state(sql, j) for j in jobs]
    assert results[0][2] == {"host": "HV01", "vm_id": SQL01, "name": "sql01", "state": "Off", "processor_count": 12,
                             "memory_mb": 32768, "changed": ["ProcessorCount", "MemoryStartup"]}
    assert results[1][2]["path"] == rf"{VHDS}\sql01-logs.vhdx" and results[1][2]["size_gb"] == 200
    assert results[2][2]["resized"] is True and results[2][2]["size_gb"] == 256
    assert results[3][2]["checkpoint_id"] == "8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
    assert results[5][2] == {"host": "HV01", "vm_id": SQL01, "name": "sql01", "deleted": True,
                             "archived": [a["ArchivePath"] for a in archived]}
    assert results[6][2] == {"host": "HV01", "vm_id": None, "name": "gone01", "deleted": False, "archived": [],
                             "already_absent": True}
    assert results[7][0] == "failed" and "is not an absolute .vhdx/.vhd path" in results[7][3]

    assert sql("SELECT size_bytes, file_size_bytes FROM hyperv_vm_disks WHERE path = %s", (rf"{VHDS}\web01.vhdx",)) == \
        [(256 * GiB, 34363932672)]
    assert sql("SELECT deleted_at, processor_count, memory_startup_bytes FROM hyperv_vms WHERE vm_guid = %s",
               (SQL01,)) == [(T0, 12, 32 * GiB)]
    assert sql("SELECT count(*) FROM hyperv_vm_disks d JOIN hyperv_vms v ON v.id = d.vm_id WHERE v.vm_guid = %s",
               (SQL01,)) == [(0,)]
    assert sql("SELECT host_id, vm_guid::text, vm_name, original_path, archive_path, file_size_bytes, archived_at,"
               " status FROM hyperv_archived_vhds ORDER BY id") == [
        (hosts["HV01"], SQL01, "sql01", a["Path"], a["ArchivePath"], a["FileSize"], T0, "archived") for a in archived]

    # a delete by name whose first try was cut off after Remove-VM: the panel knows the VM, so the retry
    # goes by its GUID with the disks it had, and the host archives them although the VM is gone
    recorded_powershell.sent.clear()
    legacy_archive = {"Path": rf"{VHDS}\legacy01.vhd", "ArchivePath": rf"{ARCHIVE}\{LEGACY01}\legacy01.vhd",
                      "FileSize": 21474836480}
    recorded_powershell.answer("hyperv/delete_vm", [{"Found": False, "Id": LEGACY01, "Name": None,
                                                     "Archived": [legacy_archive]}],
                               when=lambda sent: sent.parameters.get("Id") == LEGACY01)
    job = _job(sql, "delete_vm", {"host": "HV01", "name": "legacy01"})
    assert _process(panel_db, T0 + timedelta(minutes=5))["succeeded"] == 1
    (call,) = recorded_powershell.sent
    assert call.parameters == {"Id": LEGACY01, "ArchivePath": ARCHIVE, "KnownDiskPaths": [rf"{VHDS}\legacy01.vhd"]}
    assert _state(sql, job)[2] == {"host": "HV01", "vm_id": LEGACY01, "name": "legacy01", "deleted": False,
                                   "archived": [legacy_archive["ArchivePath"]], "already_absent": True}
    assert sql("SELECT deleted_at FROM hyperv_vms WHERE vm_guid = %s", (LEGACY01,)) == [(T0 + timedelta(minutes=5),)]
    assert sql("SELECT vm_name, archive_path FROM hyperv_archived_vhds WHERE vm_guid = %s", (LEGACY01,)) == [
        ("legacy01", legacy_archive["ArchivePath"])]


# -- GroupActionWorkVPS: storage types and archived disks ----------------------------------------


def test_disk_storage_types_from_the_physical_media(recorded_powershell, hosts, panel_db, sql):
    from panelflow.steps.hyperv.storage import update_disk_storage_types

    vms = vms_hv01()
    vms[2]["Disks"].append(_disk(r"\\fs01.corp.example\vms$\legacy01-data.vhdx", location=1))
    _inventory(recorded_powershell, panel_db, vms)

    media = {"D:\\": ("D:\\", 1, "VMPool", ["SSD", "SSD", "HDD", "HDD"], ["SAS", "SAS", "SAS", "SAS"]),
             "E:\\": ("E:\\", 2, None, ["SSD"], ["NVMe"])}

    def storage(sent):
        rows = []
        for path in sent.parameters["Paths"]:
            volume, disk, pool, types, buses = media.get(path[:3], (None, None, None, [], []))
            rows.append({"Path": path, "Volume": volume, "DiskNumber": disk, "StoragePool": pool, "MediaTypes": types,
                         "BusTypes": buses})
        rows.append({"Path": 42})      # a malformed record: reported, skipped
        return rows

    recorded_powershell.answer("hyperv/get_disk_storage", storage)
    out = update_disk_storage_types(panel_db, _at())
    assert (out["hosts"], out["paths_checked"], out["disks_updated"], out["disks_retyped"]) == (1, 5, 5, 5), out
    (call,) = recorded_powershell.sent
    assert call.conn_host == "hv01.corp.example" and sorted(call.parameters["Paths"]) == sorted([
        rf"{VHDS}\legacy01.vhd", rf"{VHDS}\sql01.vhdx", rf"{VHDS}\web01.vhdx", r"E:\Hyper-V\web01-data.vhdx",
        r"\\fs01.corp.example\vms$\legacy01-data.vhdx"])
    assert sql("SELECT path, storage_type, storage_pool, storage_checked_at FROM hyperv_vm_disks ORDER BY path") == [
        (rf"{VHDS}\legacy01.vhd", "Mixed", "VMPool", T0), (rf"{VHDS}\sql01.vhdx", "Mixed", "VMPool", T0),
        (rf"{VHDS}\web01.vhdx", "Mixed", "VMPool", T0), (r"E:\Hyper-V\web01-data.vhdx", "NVMe", None, T0),
        (r"\\fs01.corp.example\vms$\legacy01-data.vhdx", "Network", None, T0)]
    assert len(out["skipped_examples"]) == 1 and "Input should be a valid string" in out["skipped_examples"][0]

    # the tier is rebuilt on SSDs only: the next run retypes those disks, and a rerun changes nothing
    media["D:\\"] = ("D:\\", 1, "VMPool", ["SSD", "SSD"], ["SAS", "SAS"])
    out = update_disk_storage_types(panel_db, _at(T0 + timedelta(hours=1)))
    assert (out["disks_updated"], out["disks_retyped"]) == (5, 3), out
    assert update_disk_storage_types(panel_db, _at(T0 + timedelta(hours=1)))["disks_retyped"] == 0
    assert sql("SELECT DISTINCT storage_type FROM hyperv_vm_disks WHERE path LIKE 'D:%%'") == [("SSD",)]


def _archived(sql, host, path, days_ago, vm=SQL01):
    return sql("INSERT INTO hyperv_archived_vhds (host_id, vm_guid, vm_name, original_path, archive_path,"
               " file_size_bytes, archived_at) VALUES (%s, %s, 'sql01', %s, %s, 4194304, %s) RETURNING id",
               (host, vm, path.replace(ARCHIVE, VHDS), path, T0 - timedelta(days=days_ago)))[0][0]


def test_archived_vhd_deletion_is_bounded_and_path_guarded(recorded_powershell, hosts, panel_db, sql):
    from panelflow.steps.hyperv.storage import delete_archived_vhd_files

    folder = rf"{ARCHIVE}\{SQL01}"
    rows = {
        "old": _archived(sql, hosts["HV01"], rf"{folder}\sql01.vhdx", 30),
        "escape": _archived(sql, hosts["HV01"], rf"{ARCHIVE}\..\Virtual Hard Disks\web01.vhdx", 20),
        "hv02": _archived(sql, hosts["HV02"], rf"{ARCHIVE}\{APP02}\app02.vhdx", 15),
        "missing": _archived(sql, hosts["HV01"], rf"{folder}\sql01-logs.vhdx", 10),
        "locked": _archived(sql, hosts["HV01"], rf"{folder}\sql01-tempdb.vhdx", 9),
        "config": _archived(sql, hosts["HV01"], rf"{folder}\sql01.vmcx", 8),
        "recent": _archived(sql, hosts["HV01"], rf"{folder}\sql01-new.vhdx", 2),
    }

    def removal(sent):
        out = []
        for path in sent.parameters["Paths"]:
            if path.endswith("sql01-logs.vhdx"):
                out.append({"Path": path, "Deleted": False, "Missing": True, "Error": None})
            elif path.endswith("tempdb.vhdx"):
                out.append({"Path": path, "Deleted": False, "Missing": False,
                            "Error": f"The process cannot access the file '{path}' because it is being used by "
                                     "another process."})
            else:
                out.append({"Path": path, "Deleted": True, "Missing": False, "Error": None})
        return out

    recorded_powershell.answer("hyperv/remove_archived_vhds", removal, when=on("hv01.corp.example"))
    recorded_powershell.answer("hyperv/remove_archived_vhds", timeout=True, when=on("hv02.corp.example"))

    out = delete_archived_vhd_files(panel_db, _at(), {"vhd_delete_batch": 4})
    assert (out["files_due"], out["files_deleted"], out["files_missing"], out["files_refused"]) == (4, 1, 1, 1), out
    assert out["failed_hosts"] == ["HV02"]
    # only the four oldest, and only the paths inside the archive folder reach the host
    assert [(c.conn_host, c.parameters) for c in recorded_powershell.sent] == [
        ("hv01.corp.example", {"ArchiveRoot": ARCHIVE,
                               "Paths": [rf"{folder}\sql01.vhdx", rf"{folder}\sql01-logs.vhdx"]}),
        ("hv02.corp.example", {"ArchiveRoot": ARCHIVE, "Paths": [rf"{ARCHIVE}\{APP02}\app02.vhdx"]})]
    state = {k: sql("SELECT status, deleted_at, last_error FROM hyperv_archived_vhds WHERE id = %s", (v,))[0]
             for k, v in rows.items()}
    assert state["old"] == ("deleted", T0, None) and state["missing"] == ("deleted", T0, None)
    assert state["escape"] == ("refused", None, "refused: not an absolute local path")   # never sent
    assert state["hv02"] == ("archived", None, None) and state["locked"] == ("archived", None, None)
    assert state["recent"] == ("archived", None, None)

    # next run: what is left and due (HV02's file, the locked one, the config file), still bounded
    recorded_powershell.sent.clear()
    recorded_powershell.answer("hyperv/remove_archived_vhds", removal, when=on("hv02.corp.example"))
    out = delete_archived_vhd_files(panel_db, _at(T0 + timedelta(minutes=10)), {"vhd_delete_batch": 4})
    assert (out["files_due"], out["files_deleted"], out["files_failed"], out["files_refused"]) == (3, 1, 1, 1), out
    assert [c.parameters["Paths"] for c in recorded_powershell.sent] == [
        [rf"{folder}\sql01-tempdb.vhdx"], [rf"{ARCHIVE}\{APP02}\app02.vhdx"]]
    assert sql("SELECT status, last_error FROM hyperv_archived_vhds WHERE id = %s", (rows["locked"],)) == [
        ("archived", rf"The process cannot access the file '{folder}\sql01-tempdb.vhdx' because it is being used by "
                     "another process.")]
    assert sql("SELECT status, last_error FROM hyperv_archived_vhds WHERE id = %s", (rows["config"],)) == [
        ("refused", "refused: not a virtual disk file")]
    # the recent file waits for its 7 days; with 1 day it is due
    recorded_powershell.sent.clear()
    assert delete_archived_vhd_files(panel_db, _at(T0 + timedelta(minutes=20)))["files_due"] == 1   # the locked one
    assert delete_archived_vhd_files(panel_db, _at(T0 + timedelta(minutes=30)),
                                     {"vhd_archive_days": 1})["files_deleted"] == 1


def test_archive_guard_refuses_anything_outside_the_archive_folder():
    from panelflow.steps.hyperv.storage import archive_refusal

    assert archive_refusal(rf"{ARCHIVE}\{SQL01}\sql01.vhdx", ARCHIVE) is None
    assert archive_refusal(rf"{ARCHIVE.lower()}\x\disk.AVHDX", ARCHIVE) is None
    assert archive_refusal(rf"{ARCHIVE}\..\Virtual Hard Disks\web01.vhdx", ARCHIVE) == "not an absolute local path"
    assert archive_refusal(rf"{ARCHIVE}-old\web01.vhdx", ARCHIVE) == rf"outside the archive folder {ARCHIVE}"
    assert archive_refusal(rf"{ARCHIVE}\x\disk.vhdx:stream", ARCHIVE) == "not an absolute local path"
    assert archive_refusal(r"\\fs01\share\disk.vhdx", ARCHIVE) == "not an absolute local path"
    assert archive_refusal(r"D:\disk.vhdx", "D:") == "the archive folder 'D:' is not an absolute local folder"
    assert archive_refusal(rf"{ARCHIVE}\notes.txt", ARCHIVE) == "not a virtual disk file"


def test_hosts_table_refuses_a_drive_root_or_relative_archive_folder(hosts, sql):
    import psycopg

    for bad in ("D:\\", "D:", r"Archive\VHDs", r"D:\Hyper-V\..\Windows", r"\\fs01\share"):
        with pytest.raises(psycopg.errors.CheckViolation):
            sql("INSERT INTO hyperv_hosts (name, fqdn, conn_id, vhd_archive_path) VALUES ('HV03', 'hv03', 'hv03', %s)",
                (bad,))


# -- ProvisioningWork: VPS threshold alerts ------------------------------------------------------


def _alerts(panel_db, at, **params):
    from panelflow.steps.hyperv.thresholds import generate_vps_threshold_alerts

    return generate_vps_threshold_alerts(panel_db, _at(at), params, None)


def _sample(sql, guid, at, cpu, assigned_mb=8192, demand_mb=4096):
    sql("INSERT INTO hyperv_vm_stats (vm_id, sampled_at, state, cpu_percent, memory_assigned_mb, memory_demand_mb,"
        " uptime_seconds) SELECT id, %s, 'Running', %s, %s, %s, 3600 FROM hyperv_vms WHERE vm_guid = %s",
        (at, cpu, assigned_mb, demand_mb, guid))


def test_vps_threshold_alert_once_per_crossing_and_cleared(recorded_powershell, hosts, panel_db, sql, monkeypatch):
    vms = vms_hv01()
    vms[1]["Disks"][0]["FileSize"] = 236223201280            # sql01's dynamic disk: 86 % of 256 GiB allocated
    _inventory(recorded_powershell, panel_db, vms, T0 - timedelta(hours=1))
    customer = _customer(sql, "ops@contoso.example")
    (other,) = sql("INSERT INTO customers (provider_id, name, email, country, currency) SELECT provider_id,"
                   " 'Fabrikam', 'it@fabrikam.example', 'GB', 'GBP' FROM customers WHERE id = %s RETURNING id",
                   (customer,))[0]
    (subscription,) = sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle,"
                          " next_bill_date, started_on)"
                          " VALUES (%s, 'VPS L', 40, 'GBP', 'monthly', '2026-04-01', '2026-03-01')"
                          " RETURNING id", (other,))[0]
    sql("UPDATE hyperv_vms SET customer_id = %s WHERE vm_guid = %s", (customer, WEB01))
    sql("UPDATE hyperv_vms SET subscription_id = %s WHERE vm_guid = %s", (subscription, SQL01))
    sql("INSERT INTO vps_thresholds (vm_id, cpu_percent, memory_percent, disk_percent) VALUES (NULL, 85, 90, 80)")
    sql("INSERT INTO vps_thresholds (vm_id, cpu_percent) SELECT id, 50 FROM hyperv_vms WHERE vm_guid = %s", (WEB01,))

    # web01 averages 60 % CPU over the window (its own level: 50), legacy01 needs 95 % of its memory (no
    # customer), sql01's disk is 86 % allocated; a sample older than the window does not count
    _sample(sql, WEB01, T0 - timedelta(minutes=40), 99)
    for minutes, cpu in ((20, 55), (10, 65)):
        _sample(sql, WEB01, T0 - timedelta(minutes=minutes), cpu)
    _sample(sql, LEGACY01, T0 - timedelta(minutes=10), 3, assigned_mb=2048, demand_mb=1946)

    out = _alerts(panel_db, T0)
    assert (out["alerts_opened"], out["emails_queued"], out["alerts_without_customer"]) == (3, 2, 1), out
    assert sql("SELECT v.name, a.metric, a.threshold_percent, a.value_percent, a.detail, a.opened_at, a.outbox_key"
               " IS NOT NULL FROM vps_threshold_alerts a JOIN hyperv_vms v ON v.id = a.vm_id ORDER BY v.name") == [
        ("legacy01", "memory", Decimal("90.00"), Decimal("95.02"), None, T0, False),
        ("sql01", "disk", Decimal("80.00"), Decimal("85.94"), rf"{VHDS}\sql01.vhdx", T0, True),
        ("web01", "cpu", Decimal("50.00"), Decimal("60.00"), None, T0, True)]
    mails = sql("SELECT to_address, subject, body_text, dedupe_key FROM email_outbox ORDER BY to_address")
    assert [(m[0], m[1]) for m in mails] == [
        ("it@fabrikam.example", "sql01: disk usage at 85.94 % (alert level 80.00 %)"),
        ("ops@contoso.example", "web01: CPU usage at 60.00 % (alert level 50.00 %)")]
    assert "has filled 85.94 % of its disk sql01.vhdx" in mails[0][2] and VHDS not in mails[0][2]
    assert "on average over the last 30 minutes" in mails[1][2]

    # a rerun of the same run, and later runs while still over: no new alert, no new e-mail
    assert _alerts(panel_db, T0)["alerts_opened"] == 0
    _sample(sql, WEB01, T0 + timedelta(minutes=5), 70)
    _sample(sql, LEGACY01, T0 + timedelta(minutes=5), 3, assigned_mb=2048, demand_mb=1946)
    out = _alerts(panel_db, T0 + timedelta(minutes=10))
    assert (out["alerts_opened"], out["alerts_still_open"], out["alerts_cleared"]) == (0, 3, 0), out

    # web01 calms down and legacy01 gets more memory: cleared; sql01's disk stays over
    for minutes in (15, 25, 35):
        _sample(sql, WEB01, T0 + timedelta(minutes=minutes), 10)
    _sample(sql, LEGACY01, T0 + timedelta(minutes=35), 3, assigned_mb=4096, demand_mb=1946)
    out = _alerts(panel_db, T0 + timedelta(minutes=40))
    assert (out["alerts_cleared"], out["alerts_still_open"]) == (2, 1), out
    assert sql("SELECT count(*) FROM vps_threshold_alerts WHERE cleared_at = %s",
               (T0 + timedelta(minutes=40),)) == [(2,)]

    # web01 crosses again: a new alert and a new e-mail; a VPS switched off silences its alerts
    for minutes in (45, 55, 65):
        _sample(sql, WEB01, T0 + timedelta(minutes=minutes), 90)
    sql("INSERT INTO vps_thresholds (vm_id, enabled) SELECT id, false FROM hyperv_vms WHERE vm_guid = %s", (SQL01,))
    out = _alerts(panel_db, T0 + timedelta(minutes=70))
    assert (out["alerts_opened"], out["emails_queued"], out["alerts_cleared"]) == (1, 1, 1), out
    assert sql("SELECT count(*) FROM email_outbox WHERE to_address = 'ops@contoso.example'") == [(2,)]
    assert sql("SELECT count(*) FROM vps_threshold_alerts WHERE cleared_at IS NULL") == [(1,)]
