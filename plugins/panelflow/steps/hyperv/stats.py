"""HyperVHomeBackendThread 3: how busy each Hyper-V host and its VMs are.

:func:`sync_server_resource_stats` — services, volumes, CPU and memory of the host → its ``servers``
row's ``server_stats`` / ``server_volume_stats`` / ``server_services`` (the monitors' tables, written
as ServerStatsWork writes them: :mod:`panelflow.services.server_samples`), the hypervisor's run time
→ ``hyperv_host_stats``, and every VM's CPU/memory/uptime → ``hyperv_vm_stats``, all keyed by the
run's clock, so a rerun of the same run adds nothing. A VM the inventory has not seen yet gets no
sample (it has no row to key it by); it is named in the summary. Then each VPS subscription's
usage samples (``vps_processors``, ``vps_memory``, ``disk_space``) from this run's VM samples
(:mod:`.usage_samples`), which QuotaOverUsedWork and pay-per-use read.
"""

from __future__ import annotations

import json

from panelflow.hooks.powershell import parse_records
from panelflow.services.server_samples import MIB, SCRIPT, parse_sample, write_server_sample
from panelflow.steps.hyperv._backend import (Host, HypervisorStatsRecord, VMStatsRecord, for_each_host, host_report,
                                             hosts, one)
from panelflow.steps.hyperv.usage_samples import write_vps_usage_samples

_HOST_STATS = """
INSERT INTO hyperv_host_stats (host_id, sampled_at, cpu_percent, hypervisor_run_time_percent, memory_total_mb,
                               memory_available_mb, vms_total, vms_running)
VALUES (%(host)s, %(at)s, %(cpu)s, %(run_time)s, %(total)s, %(available)s, %(vms)s, %(running)s)
ON CONFLICT (host_id, sampled_at) DO NOTHING
"""

_VM_STATS = """
WITH x AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(vm_guid uuid, name text, state text, cpu_percent numeric,
                                                          memory_assigned_mb bigint, memory_demand_mb bigint,
                                                          uptime_seconds bigint)
), written AS (
    INSERT INTO hyperv_vm_stats (vm_id, sampled_at, state, cpu_percent, memory_assigned_mb, memory_demand_mb,
                                 uptime_seconds)
    SELECT v.id, %(at)s, x.state, x.cpu_percent, x.memory_assigned_mb, x.memory_demand_mb, x.uptime_seconds
    FROM x JOIN hyperv_vms v ON v.vm_guid = x.vm_guid
    ON CONFLICT (vm_id, sampled_at) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM written),
       (SELECT array_agg(x.name ORDER BY x.name) FROM x WHERE NOT EXISTS (SELECT 1 FROM hyperv_vms v
                                                                      WHERE v.vm_guid = x.vm_guid))
"""


def sync_server_resource_stats(panel_db, interval, log=None) -> dict:
    """Sync server services, Hyper visors, volume, CPU, memory."""
    report = host_report("samples_written", "volume_samples_written", "services_updated", "services_removed",
                     "hosts_without_server", "host_samples_written", "vm_samples_written", "vms_not_in_inventory")
    at = interval.end

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, host: Host) -> None:
            server_rows = hook.run_script(SCRIPT)
            hv_rows = hook.run_script("hyperv/get_vm_stats")
            parsed = parse_sample(server_rows[0] if server_rows else None, report, f"host {host.name}")
            hv = one(HypervisorStatsRecord, hv_rows, report, f"host {host.name} hypervisor")
            vms = parse_records(VMStatsRecord, hv.VMs if hv else [], report, f"host {host.name} VM")
            sample = parsed[0] if parsed else None
            vm_rows = [{"vm_guid": str(vm.Id), "name": vm.Name, "state": vm.State, "cpu_percent": vm.CPUUsage,
                        "memory_assigned_mb": vm.MemoryAssigned // MIB,
                        "memory_demand_mb": None if vm.MemoryDemand is None else vm.MemoryDemand // MIB,
                        "uptime_seconds": vm.Uptime} for vm in {vm.Id: vm for vm in vms}.values()]
            with conn.transaction():
                if parsed is not None and host.server_id is not None:
                    for key, n in write_server_sample(conn, host.server_id, at, *parsed).items():
                        report.add(key, n)
                elif parsed is not None:
                    report.add("hosts_without_server")
                if sample is not None or hv is not None:
                    report.add("host_samples_written", conn.execute(_HOST_STATS, {
                        "host": host.id, "at": at,
                        "cpu": None if sample is None else round(min(sample.CpuPercent, 100.0), 2),
                        "run_time": None if hv is None else round(min(hv.HypervisorRunTimePercent, 100.0), 2),
                        "total": None if sample is None else sample.MemoryTotalBytes // MIB,
                        "available": None if sample is None else sample.MemoryAvailableBytes // MIB,
                        "vms": len(vm_rows), "running": sum(1 for r in vm_rows if r["state"] == "Running")}).rowcount)
                written, unknown = conn.execute(_VM_STATS, {"at": at, "rows": json.dumps(vm_rows)}).fetchone()
            report.add("vm_samples_written", written)
            report.add("vms_not_in_inventory", len(unknown or []))
            for name in unknown or []:
                report.skip("VM not in the inventory yet (no sample kept)", f"host {host.name} VM {name}")

        summary = for_each_host(conn, hosts(conn), "server_resource_stats", at, report, log, work)
        return {**summary, **write_vps_usage_samples(conn, at)}
