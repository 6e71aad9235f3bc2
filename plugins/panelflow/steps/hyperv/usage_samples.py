"""Usage samples of VPS subscriptions, from what HyperVHomeBackendThread 3 sampled.

QuotaOverUsedWork, pay-per-use billing and the ``resource_usage`` reports read
``resource_usage_samples``; a VPS subscription's come from its VMs (``hyperv_vms.subscription_id``),
for the resources ``quota_resources`` defines for a VPS — a resource not defined there is not
sampled:

- ``vps_processors``: the virtual processors its VMs have (allocated, running or not);
- ``vps_memory``: the memory assigned to them at the sample, MB (0 for a VM that is off);
- ``disk_space``: the size of their virtual disk files on the hosts' storage, MB.

Keyed by the stats run's clock, written from that run's ``hyperv_vm_stats`` rows: a subscription
one of whose live VMs has no sample at that clock (its host failed, the VM is not in the inventory
yet) gets none — a partial sum would read as usage going down — and is counted. A rerun adds nothing.
"""

from __future__ import annotations

_SAMPLES = """
WITH vms AS (
    SELECT v.id, v.subscription_id, v.processor_count, st.memory_assigned_mb, st.vm_id IS NOT NULL AS sampled
    FROM hyperv_vms v
    JOIN subscriptions s ON s.id = v.subscription_id AND s.status <> 'cancelled'
    LEFT JOIN hyperv_vm_stats st ON st.vm_id = v.id AND st.sampled_at = %(at)s
    WHERE v.deleted_at IS NULL
), subs AS (
    SELECT vms.subscription_id, bool_and(sampled) AS complete, bool_or(sampled) AS any_sampled,
           sum(processor_count) AS processors, sum(memory_assigned_mb) AS memory_mb,
           round(coalesce(sum(disk.bytes), 0) / 1048576.0, 2) AS disk_mb
    FROM vms
    LEFT JOIN LATERAL (SELECT sum(file_size_bytes) AS bytes FROM hyperv_vm_disks k WHERE k.vm_id = vms.id) disk ON true
    GROUP BY vms.subscription_id
), written AS (
    INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used)
    SELECT subs.subscription_id, r.resource, %(at)s, r.used
    FROM subs
    CROSS JOIN LATERAL (VALUES ('vps_processors', subs.processors::numeric), ('vps_memory', subs.memory_mb::numeric),
                               ('disk_space', subs.disk_mb)) AS r(resource, used)
    JOIN quota_resources q ON q.code = r.resource
    WHERE subs.complete AND r.used IS NOT NULL
    ON CONFLICT (subscription_id, resource, sampled_at) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM subs WHERE any_sampled AND NOT complete)
"""


def write_vps_usage_samples(conn, at) -> dict:
    """The VPS subscriptions' usage samples for the stats run at ``at`` (call after its hosts are done)."""
    written, incomplete = conn.execute(_SAMPLES, {"at": at}).fetchone()
    return {"vps_usage_samples_written": written, "vps_subscriptions_incomplete": incomplete}
