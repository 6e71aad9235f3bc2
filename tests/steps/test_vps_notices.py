"""ProvisioningWork 30 on the real panel DB: one notice per VM whose host or plan changed since its
customer was last told, once; the Hyper-V inventory's rows are written as its upsert writes them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval
from panelflow.steps import vps_notices
from panelflow.steps.vps_notices import send_vps_update_notifications

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
GiB = 1024 ** 3
TABLES = ("vps_update_notices", "vps_notified_states", "hyperv_vm_disks", "hyperv_vms", "hyperv_hosts")


@pytest.fixture(autouse=True)
def _clean(panel_db, sql):
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def world(sql):
    """Two hosts, a customer with a VPS S subscription, and their VM web01 (2 vCPU, 4 GiB, one 60 GiB disk)."""
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
    (provider,) = sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Hosting Co',"
                      " 'billing@hosting.example', 'GBP') RETURNING id")[0]
    (customer,) = sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES (%s, 'Contoso Ltd',"
                      " ' it@contoso.example ', 'GB', 'GBP') RETURNING id", (provider,))[0]
    (subscription,) = sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle,"
                          " next_bill_date, started_on) VALUES (%s, 'VPS S', 10, 'GBP', 'monthly', '2026-04-01', '2026-03-01')"
                          " RETURNING id", (customer,))[0]
    hosts = {name: sql("INSERT INTO hyperv_hosts (name, fqdn, conn_id, vhd_archive_path) VALUES (%s, %s, %s,"
                       " 'D:\\Hyper-V\\Archive') RETURNING id", (name, f"{name.lower()}.corp.example",
                                                                  name.lower()))[0][0]
             for name in ("HV01", "HV02")}
    vm = add_vm(sql, "web01", hosts["HV01"], customer, subscription)
    sql("INSERT INTO hyperv_vm_disks (vm_id, path, size_bytes, first_seen_at, synced_at) VALUES (%s, %s, %s, %s, %s)",
        (vm, r"D:\Hyper-V\web01.vhdx", 60 * GiB, T0, T0))
    return {"hosts": hosts, "customer": customer, "subscription": subscription, "vm": vm}


def add_vm(sql, name, host, customer=None, subscription=None, guid_tail=1):
    return sql("INSERT INTO hyperv_vms (vm_guid, host_id, name, state, processor_count, memory_startup_bytes,"
               " memory_assigned_bytes, customer_id, subscription_id, first_seen_at, synced_at, changed_at)"
               " VALUES (%s, %s, %s, 'Running', 2, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
               (f"5b0c7f4e-2a71-4c8e-9d3b-{guid_tail:012d}", host, name, 4 * GiB, 4 * GiB, customer, subscription,
                T0, T0, T0))[0][0]


def inventory(sql, vm, at, **values):
    """What the hypervisor inventory's upsert does to a VM row at ``at``."""
    sets = ", ".join(f"{column} = %({column})s" for column in values)
    sql(f"UPDATE hyperv_vms SET {sets}, synced_at = %(at)s WHERE id = %(vm)s", {**values, "at": at, "vm": vm})


def run(panel_db, minutes, **params):
    end = T0 + timedelta(minutes=minutes)
    return send_vps_update_notifications(panel_db, Interval(end - timedelta(minutes=5), end), params)


def mails(sql):
    return sql("SELECT to_address, subject, body_text FROM email_outbox ORDER BY id")


def test_one_notice_per_change_once_and_a_move_back_is_a_new_change(panel_db, sql, world):
    first = run(panel_db, 5)
    assert first["vms_baselined"] == 1 and first["notices_queued"] == 0 and mails(sql) == []   # a new VM: no notice

    inventory(sql, world["vm"], T0 + timedelta(minutes=7), host_id=world["hosts"]["HV02"], processor_count=4)
    summary = run(panel_db, 10)
    assert summary["notices_queued"] == 1
    ((to, subject, body),) = mails(sql)
    assert (to, subject) == ("it@contoso.example", "Your virtual server web01 has been updated")
    assert "moved to another host server" in body and "processors: 2 → 4" in body and "HV0" not in body
    assert sql("SELECT seq, changes, old_state->>'host_name', new_state->>'host_name' FROM vps_update_notices") == [
        (1, ["host_id", "processor_count"], "HV01", "HV02")]

    for minutes in (10, 15, 20):                                      # a retry, and later runs: nothing new
        assert run(panel_db, minutes)["notices_queued"] == 0
    assert len(mails(sql)) == 1

    inventory(sql, world["vm"], T0 + timedelta(minutes=22), host_id=world["hosts"]["HV01"])
    run(panel_db, 25)
    assert [r[0] for r in sql("SELECT seq FROM vps_update_notices ORDER BY seq")] == [1, 2]
    assert len(mails(sql)) == 2


def test_plan_and_size_count_running_figures_and_unknowns_do_not(panel_db, sql, world):
    run(panel_db, 5)
    inventory(sql, world["vm"], T0 + timedelta(minutes=7), state="Off", memory_assigned_bytes=0, name="web01")
    sql("UPDATE hyperv_vm_disks SET size_bytes = NULL")                # Get-VHD failed: size unknown
    assert run(panel_db, 10)["notices_queued"] == 0

    sql("UPDATE hyperv_vm_disks SET size_bytes = %s", (120 * GiB,))
    sql("UPDATE subscriptions SET plan = 'VPS M'")
    inventory(sql, world["vm"], T0 + timedelta(minutes=12), memory_startup_bytes=8 * GiB)
    assert run(panel_db, 15)["notices_queued"] == 1
    ((_, _, body),) = mails(sql)
    assert "memory: 4 GiB → 8 GiB" in body and "disk space: 60 GiB → 120 GiB" in body
    assert "plan: VPS S → VPS M" in body


def test_who_is_told_and_when(panel_db, sql, world):
    orphan = add_vm(sql, "lab01", world["hosts"]["HV01"], guid_tail=2)
    run(panel_db, 5)
    sql("UPDATE customers SET email = 'not an address'")
    inventory(sql, world["vm"], T0 + timedelta(minutes=7), processor_count=8)
    inventory(sql, orphan, T0 + timedelta(minutes=7), processor_count=8)
    summary = run(panel_db, 10)
    assert summary["vms_without_customer"] == 1 and summary["notices_queued"] == 0
    assert summary["skipped"] == {"customer has no usable e-mail address": 1}
    assert sql("SELECT processor_count FROM vps_notified_states WHERE vm_id = %s", (orphan,)) == [(8,)]

    sql("UPDATE customers SET email = 'it@contoso.example'")          # fixed: the notice goes now, once
    assert run(panel_db, 15)["notices_queued"] == 1
    assert run(panel_db, 20)["notices_queued"] == 0

    # deleted (a live migration seen on the old host first): it waits for the new host's sync
    sql("UPDATE hyperv_vms SET deleted_at = %s WHERE id = %s", (T0 + timedelta(minutes=22), world["vm"]))
    assert run(panel_db, 25)["notices_queued"] == 0
    inventory(sql, world["vm"], T0 + timedelta(minutes=27), host_id=world["hosts"]["HV02"], deleted_at=None)
    assert run(panel_db, 30)["notices_queued"] == 1


def test_an_older_run_replayed_reads_nothing_newer_than_its_clock(panel_db, sql, world):
    run(panel_db, 5)
    inventory(sql, world["vm"], T0 + timedelta(minutes=12), processor_count=4)
    assert run(panel_db, 10)["notices_queued"] == 0                    # synced after this run's clock
    assert run(panel_db, 15)["notices_queued"] == 1
    assert run(panel_db, 10)["notices_queued"] == 0                    # replayed after: the newer baseline stays
    assert sql("SELECT processor_count, recorded_at FROM vps_notified_states") == [(4, T0 + timedelta(minutes=15))]


def test_a_run_dying_after_the_e_mail_leaves_nothing_and_the_rerun_sends_one(panel_db, sql, world, monkeypatch):
    run(panel_db, 5)
    inventory(sql, world["vm"], T0 + timedelta(minutes=7), processor_count=4)
    real = vps_notices.enqueue

    def enqueue_then_die(conn, **kwargs):
        real(conn, **kwargs)
        raise ConnectionError("server closed the connection unexpectedly")

    monkeypatch.setattr(vps_notices, "enqueue", enqueue_then_die)
    with pytest.raises(ConnectionError):
        run(panel_db, 10)
    assert mails(sql) == [] and sql("SELECT count(*) FROM vps_update_notices") == [(0,)]
    monkeypatch.setattr(vps_notices, "enqueue", real)
    run(panel_db, 10)
    run(panel_db, 10)
    assert len(mails(sql)) == 1 and sql("SELECT count(*) FROM vps_update_notices") == [(1,)]


def test_the_run_is_bounded(panel_db, sql, world):
    others = [add_vm(sql, f"vm{i}", world["hosts"]["HV01"], world["customer"], guid_tail=10 + i) for i in range(3)]
    run(panel_db, 5)
    for vm in [world["vm"], *others]:
        inventory(sql, vm, T0 + timedelta(minutes=7), processor_count=4)
    summary = run(panel_db, 10, vps_checks_per_run=3)
    assert summary["notices_queued"] == 3 and summary["vms_deferred"] == 1
    assert run(panel_db, 15, vps_checks_per_run=3)["notices_queued"] == 1
