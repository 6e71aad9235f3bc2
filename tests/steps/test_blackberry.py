"""BBSyncWork against UEM sandboxes and the real panel DB: devices and their state stored per user.

Proves: every user's devices are stored with their state; a rerun changes nothing; changes,
removals and returns are recorded as such; a server that fails part-way keeps its previous
picture whole while the other servers sync; every server failing fails the task; a backfill with
an older clock leaves newer state alone.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import EndpointsFailed, Interval
from panelflow.steps.blackberry import sync_blackberry_stats
from sandbox.blackberry_uem import BlackBerryUemSandbox, demo

CLOCK = datetime(2026, 12, 7, 10, 17, tzinfo=timezone.utc)


def _interval(at=CLOCK):
    return Interval(at - timedelta(minutes=30), at)


def _connect(monkeypatch, conn_id: str, sandbox: BlackBerryUemSandbox, **extra) -> None:
    """The Airflow connection ``conn_id`` pointed at ``sandbox``."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "panelflow_blackberry_uem", "host": sandbox.url, "login": sandbox.username,
        "password": sandbox.password, "extra": {"tenant_guid": sandbox.tenant, "backoff": 0, "retries": 2, **extra}}))


@pytest.fixture
def servers(panel_db, sql, monkeypatch):
    """``servers(n)`` → n UEM sandboxes, each a bb_uem_servers row with its connection."""
    sql("TRUNCATE bb_uem_servers RESTART IDENTITY CASCADE")
    started = []

    def make(n: int):
        for i in range(n):
            sandbox = BlackBerryUemSandbox().start()
            started.append(sandbox)
            conn_id = f"bb_uem_{i}"
            _connect(monkeypatch, conn_id, sandbox, page_size=2)
            sql("INSERT INTO bb_uem_servers (name, conn_id) VALUES (%s, %s)", (f"UEM {i}", conn_id))
        return started

    yield make
    for sandbox in started:
        sandbox.stop()
    sql("TRUNCATE bb_uem_servers RESTART IDENTITY CASCADE")


def _devices(sql):
    return sql("SELECT u.username, d.hardware_model, d.os_family, d.ownership, d.enrollment_state, d.compromised,"
               " d.out_of_compliance, d.compliant, d.last_contact_at, d.gone_at IS NOT NULL"
               " FROM bb_devices d JOIN bb_users u ON u.id = d.bb_user_id ORDER BY u.username, d.hardware_model")


def test_devices_and_their_state_are_stored_per_user(panel_db, sql, servers):
    (uem,) = servers(1)
    alice = uem.add_user("alice", email="alice@contoso.example", groups=("Sales",))
    bob = uem.add_user("bob", email="bob@contoso.example")
    phone = uem.add_device(alice, model="iPhone 15")
    uem.add_device(alice, model="Galaxy S24", os="Android 14", family="android", ownership="PERSONAL",
                   out_of_compliance=("jailbroken",), compromised=True)
    tablet = uem.add_device(bob, model="iPad Air")
    uem.add_user("carol")                                                   # no devices

    first = sync_blackberry_stats(panel_db, _interval())
    assert (first["servers"], first["users_added"], first["devices_added"]) == (1, 3, 3)
    assert (first["devices_present"], first["devices_not_compliant"], first["devices_compromised"]) == (3, 1, 1)
    assert sql("SELECT username, email, groups, changed_at = synced_at FROM bb_users ORDER BY username") == [
        ("alice", "alice@contoso.example", ["Sales"], True), ("bob", "bob@contoso.example", [], True),
        ("carol", None, [], True)]
    contact = datetime(2026, 12, 6, 22, 15, tzinfo=timezone.utc)
    assert _devices(sql) == [
        ("alice", "Galaxy S24", "android", "PERSONAL", "ACTIVE", True, ["jailbroken"], False, contact, False),
        ("alice", "iPhone 15", "ios", "CORPORATE", "ACTIVE", False, [], True, contact, False),
        ("bob", "iPad Air", "ios", "CORPORATE", "ACTIVE", False, [], True, contact, False)]
    assert sql("SELECT last_synced_at, last_error FROM bb_uem_servers") == [(CLOCK, None)]

    rerun = sync_blackberry_stats(panel_db, _interval())
    assert {k: rerun[k] for k in ("users_added", "users_changed", "users_gone", "devices_added", "devices_changed",
                                  "devices_gone")} == dict.fromkeys(("users_added", "users_changed", "users_gone",
                                                                     "devices_added", "devices_changed",
                                                                     "devices_gone"), 0)

    later = CLOCK + timedelta(minutes=30)
    uem.set_device(alice, phone, enrollmentState="PENDING", lastContactTime="2026-12-07T10:30:00.00Z",
                   device={"compromised": True})
    uem.remove_device(bob, tablet)
    uem.add_device(bob, model="Pixel 8", os="Android 15", family="android")
    next_run = sync_blackberry_stats(panel_db, _interval(later))
    assert (next_run["devices_changed"], next_run["devices_gone"], next_run["devices_added"]) == (1, 1, 1)
    phone_row = sql("SELECT enrollment_state, compromised, last_contact_at, changed_at FROM bb_devices"
                    " WHERE user_device_guid = %s", (phone,))
    assert phone_row == [("PENDING", True, datetime(2026, 12, 7, 10, 30, tzinfo=timezone.utc), later)]
    assert sql("SELECT gone_at FROM bb_devices WHERE user_device_guid = %s", (tablet,)) == [(later,)]


def test_a_removed_user_is_gone_with_its_devices_kept_and_comes_back(panel_db, sql, servers):
    (uem,) = servers(1)
    erin = uem.add_user("erin")
    uem.add_device(erin)
    sync_blackberry_stats(panel_db, _interval())
    uem.remove_user(erin)
    gone = sync_blackberry_stats(panel_db, _interval(CLOCK + timedelta(minutes=30)))
    assert gone["users_gone"] == 1
    assert sql("SELECT gone_at FROM bb_users") == [(CLOCK + timedelta(minutes=30),)]
    assert sql("SELECT count(*) FROM bb_devices") == [(1,)]                 # history kept
    uem.add_user("erin", guid=erin)
    back = sync_blackberry_stats(panel_db, _interval(CLOCK + timedelta(hours=1)))
    assert back["users_changed"] == 1 and sql("SELECT gone_at FROM bb_users") == [(None,)]


def test_make_runs_demo_sandbox_restarted_holds_the_same_users_and_devices(panel_db, sql, servers, monkeypatch):
    (before,) = servers(1)
    demo(before, 5)
    first = sync_blackberry_stats(panel_db, _interval())
    assert (first["users_added"], first["devices_added"]) == (5, 7)
    before.stop()
    after = BlackBerryUemSandbox().start()                                  # make run restarted
    try:
        demo(after, 5)
        _connect(monkeypatch, "bb_uem_0", after)
        again = sync_blackberry_stats(panel_db, _interval(CLOCK + timedelta(minutes=30)))
    finally:
        after.stop()
    assert {k: again[k] for k in ("users_added", "users_changed", "users_gone", "devices_added", "devices_changed",
                                  "devices_gone")} == dict.fromkeys(("users_added", "users_changed", "users_gone",
                                                                     "devices_added", "devices_changed",
                                                                     "devices_gone"), 0)
    assert sql("SELECT count(*) FROM bb_devices WHERE gone_at IS NULL") == [(7,)]


def test_a_failing_server_keeps_its_picture_while_the_others_sync(panel_db, sql, servers):
    good, bad = servers(2)
    for uem in (good, bad):
        user = uem.add_user("frank")
        uem.add_device(user)
    sync_blackberry_stats(panel_db, _interval())
    victim = bad.add_user("gina")
    bad.add_device(victim)
    bad.fail_devices(victim)                                                # 500, every attempt
    good.add_device(good.add_user("hank"))

    result = sync_blackberry_stats(panel_db, _interval(CLOCK + timedelta(minutes=30)))
    assert (result["servers"], result["servers_failed"], result["users_added"]) == (2, 1, 1)
    assert "BlackBerryUnavailable" in result["skipped_examples"][0]
    rows = sql("SELECT s.name, count(u.id) FROM bb_uem_servers s LEFT JOIN bb_users u ON u.server_id = s.id"
               " GROUP BY s.name ORDER BY s.name")
    assert rows == [("UEM 0", 2), ("UEM 1", 1)]                             # nothing half-written for UEM 1
    (error,) = sql("SELECT last_error FROM bb_uem_servers WHERE name = 'UEM 1'")[0]
    assert "HTTP 500" in error

    good.revoke()
    good.password = "rotated"                                               # its account no longer works either
    with pytest.raises(EndpointsFailed, match="every BlackBerry UEM server failed"):
        sync_blackberry_stats(panel_db, _interval(CLOCK + timedelta(hours=1)))


def test_a_backfill_leaves_newer_state_alone_and_no_servers_is_nothing_to_do(panel_db, sql, servers):
    assert sync_blackberry_stats(panel_db, _interval())["servers"] == 0
    (uem,) = servers(1)
    uem.add_device(uem.add_user("ivy"))
    sync_blackberry_stats(panel_db, _interval())
    old = sync_blackberry_stats(panel_db, _interval(CLOCK - timedelta(days=1)))
    assert old["servers_synced_later"] == 1 and old["devices_added"] == 0
    assert sql("SELECT last_synced_at FROM bb_uem_servers") == [(CLOCK,)]
