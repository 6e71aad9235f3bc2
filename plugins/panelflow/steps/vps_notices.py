"""ProvisioningWork 30: tell a VPS's customer, once, when their VM moved host or changed size.

The Hyper-V inventory (HyperVHomeBackendThread 2) keeps only each VM's current row in
``hyperv_vms`` — no history, and its ``changed_at`` also moves for a renamed or restarted VM. So a
change is measured against what the customer was last told: ``vps_notified_states`` holds, per VM,
the host and the size (processors, startup memory, total virtual disk, the subscription's plan)
as of the last notice. A VM first seen gets that baseline silently (a new VM is not an update). A
VM whose current row differs gets one e-mail naming every difference, its ``vps_update_notices``
row (numbered per VM; the outbox key names VM and number) and its new baseline, in one
transaction that holds the baseline row locked: a rerun, a racing run or a worker killed
half-way sends it exactly once, and a later change (even back to the old host) is a new notice.

What counts. Running figures (memory assigned, demand, state, uptime) are not a plan. A field the
inventory does not know right now (a disk whose Get-VHD failed, a VM with no subscription) is not
a change, and its baseline value is kept. A VM the inventory marked deleted waits: a live
migration seen first on the old host looks like a deletion until the new host is synced.

Who is told. The VM's customer (``customer_id``). A customer without a usable address is reported
and the baseline not moved, so the notice goes once the address is fixed; a VM with no customer
has nobody to tell, and its baseline just follows it.

The clock is ``interval.end``: only VM rows synced at or before it are read, and a baseline a
later run recorded is left alone by an older run replayed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from panelflow.services.outbox import enqueue
from panelflow.step import StepReport

TEMPLATE = "vps_update_notice"
BATCH = 200
VMS_PER_RUN = 2000
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
GiB = 1024 ** 3
FIELDS = ("host_id", "processor_count", "memory_startup_bytes", "disk_bytes", "plan")

# The VM as the inventory has it now. Disk size is known only when every disk's size is.
_CURRENT = """
SELECT v.id, v.name, v.host_id, h.name AS host_name, v.processor_count, v.memory_startup_bytes,
       (SELECT CASE WHEN count(*) = count(d.size_bytes) THEN coalesce(sum(d.size_bytes), 0)::bigint END
        FROM hyperv_vm_disks d WHERE d.vm_id = v.id) AS disk_bytes,
       s.plan, v.customer_id
FROM hyperv_vms v
JOIN hyperv_hosts h ON h.id = v.host_id
LEFT JOIN subscriptions s ON s.id = v.subscription_id
WHERE v.deleted_at IS NULL AND v.synced_at <= %(at)s
"""

_BASELINE_NEW = f"""
INSERT INTO vps_notified_states (vm_id, host_id, host_name, processor_count, memory_startup_bytes, disk_bytes, plan,
                                 recorded_at)
SELECT c.id, c.host_id, c.host_name, c.processor_count, c.memory_startup_bytes, c.disk_bytes, c.plan, %(at)s
FROM ({_CURRENT}) c
WHERE NOT EXISTS (SELECT 1 FROM vps_notified_states b WHERE b.vm_id = c.id)
ON CONFLICT (vm_id) DO NOTHING
"""

# VMs that differ from their baseline, one page after ``after`` (keyset: each VM once a run).
_CHANGED = f"""
SELECT c.id FROM ({_CURRENT}) c JOIN vps_notified_states b ON b.vm_id = c.id
WHERE b.recorded_at <= %(at)s AND c.id > %(after)s
  AND ({" OR ".join(f"(c.{f} IS NOT NULL AND c.{f} IS DISTINCT FROM b.{f})" for f in FIELDS)})
ORDER BY c.id LIMIT %(batch)s
"""

# One VM, current and baseline, its baseline locked for the transaction.
_ONE = f"""
SELECT c.name, c.customer_id, cu.name, btrim(cu.email), pr.name,
       {", ".join(f"c.{f}, b.{f}" for f in FIELDS)}, c.host_name, b.host_name
FROM ({_CURRENT} AND v.id = %(vm)s) c
JOIN vps_notified_states b ON b.vm_id = c.id
LEFT JOIN customers cu ON cu.id = c.customer_id
LEFT JOIN providers pr ON pr.id = cu.provider_id
WHERE b.recorded_at <= %(at)s
FOR UPDATE OF b
"""

_MOVE_BASELINE = f"""
UPDATE vps_notified_states SET {", ".join(f"{f} = coalesce(%({f})s, {f})" for f in FIELDS)},
       host_name = %(host_name)s, recorded_at = %(at)s
WHERE vm_id = %(vm)s
"""

_NOTICE = """
INSERT INTO vps_update_notices (vm_id, seq, changes, old_state, new_state, customer_id, to_address, noticed_at)
SELECT %(vm)s, coalesce(max(seq), 0) + 1, %(changes)s, %(old)s, %(new)s, %(customer)s, %(to)s, %(at)s
FROM vps_update_notices WHERE vm_id = %(vm)s
RETURNING seq
"""


def _gib(value) -> str:
    return f"{value / GiB:.2f}".rstrip("0").rstrip(".") + " GiB"


# how the customer reads a change of each field (hosts are not named: they are ours, not theirs)
_LABELS = {"processor_count": ("processors", str), "memory_startup_bytes": ("memory", _gib),
           "disk_bytes": ("disk space", _gib), "plan": ("plan", str)}


@dataclass
class Change:
    field: str
    old: object
    new: object

    def words(self) -> str:
        if self.field == "host_id":
            return "moved to another host server"
        label, show = _LABELS[self.field]
        return f"{label}: {show(self.old) if self.old is not None else 'unknown'} → {show(self.new)}"


def send_vps_update_notifications(panel_db, interval, params=None, log=None) -> dict:
    """Send VPS update notifications: one e-mail per VM whose host or plan changed since its
    customer was last told."""
    params = params or {}
    at = interval.end
    budget = int(params.get("vps_checks_per_run", VMS_PER_RUN))
    report = StepReport().zero("vms_baselined", "vms_changed", "notices_queued", "vms_without_customer")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        report.add("vms_baselined", conn.execute(_BASELINE_NEW, {"at": at}).rowcount)
        after = 0
        while budget > 0:
            ids = [r[0] for r in conn.execute(_CHANGED, {"at": at, "after": after,
                                                         "batch": min(BATCH, budget)}).fetchall()]
            if not ids:
                break
            budget -= len(ids)
            after = ids[-1]
            for vm_id in ids:
                with conn.transaction():
                    _notice(conn, vm_id, at, report, log)
        if budget <= 0 and conn.execute(_CHANGED, {"at": at, "after": after, "batch": 1}).fetchone():
            report.add("vms_deferred")   # the budget ran out: the rest on the next run
    return report.as_dict()


def _notice(conn, vm_id: int, at: datetime, report: StepReport, log) -> None:
    row = conn.execute(_ONE, {"at": at, "vm": vm_id}).fetchone()
    if row is None:
        return   # gone or re-baselined since it was listed
    vm_name, customer_id, customer_name, email, provider = row[:5]
    pairs = row[5:5 + 2 * len(FIELDS)]
    host_name, old_host_name = row[-2:]
    now = dict(zip(FIELDS, pairs[0::2]))
    before = dict(zip(FIELDS, pairs[1::2]))
    changes = [Change(f, before[f], now[f]) for f in FIELDS if now[f] is not None and now[f] != before[f]]
    if not changes:
        return   # another run told them already
    baseline = {**now, "vm": vm_id, "host_name": host_name, "at": at}
    if customer_id is None:
        report.add("vms_without_customer")
        conn.execute(_MOVE_BASELINE, baseline)
        return
    if not email or not EMAIL.match(email):
        report.skip("customer has no usable e-mail address", f"customer {customer_id}, VPS {vm_name}")
        return
    report.add("vms_changed")
    old_state = {**before, "host_name": old_host_name}
    new_state = {**{f: now[f] if now[f] is not None else before[f] for f in FIELDS}, "host_name": host_name}
    (seq,) = conn.execute(_NOTICE, {"vm": vm_id, "changes": [c.field for c in changes], "old": Jsonb(old_state),
                                    "new": Jsonb(new_state), "customer": customer_id, "to": email,
                                    "at": at}).fetchone()
    report.add("notices_queued", enqueue(
        conn, dedupe_key=f"vps-update:{vm_id}:{seq}", to=email, template=TEMPLATE, not_before=at,
        context={"customer_name": customer_name, "vm_name": vm_name, "changes": [c.words() for c in changes],
                 "provider": provider}))
    conn.execute(_MOVE_BASELINE, baseline)
    if log is not None:
        log.info("VPS %s (%s): %s", vm_name, vm_id, ", ".join(c.field for c in changes))
