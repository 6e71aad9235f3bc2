"""GroupActionWorkSIP on a real Kamailio (SIPp REGISTERs): what a job provisions is what the platform
enforces, each job once — a retried job finds what the first try did — and no password outlives its job."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from harness.kamailio import free_port
from panelflow.steps.voice.jobs import process_sip_group_actions


def run(voice_db, interval):
    return process_sip_group_actions(voice_db, interval)


@pytest.fixture
def acme(platform, panel, world, new_domain, voice_db, now_interval):
    """acme's company on the platform (channel limit 2), made by a create_company job."""
    domain = new_domain("acme")
    panel.queue("create_company", platform="sip1", domain=domain, customer_id=world["customer"]["acme"],
                subscription_id=world["subscription"]["acme"], channel_limit=2)
    assert run(voice_db, now_interval)["succeeded"] == 1
    return domain


def test_a_created_subscriber_registers_and_a_deleted_one_no_longer_can(voice_db, platform, panel, acme, sql,
                                                                        now_interval):
    created = panel.queue("create_subscriber", platform="sip1", domain=acme, username="alice", password="Al1ce-pw")
    panel.queue("assign_number", platform="sip1", domain=acme, username="alice", number="+441130000001")
    summary = run(voice_db, now_interval)

    assert (summary["succeeded"], summary["failed"]) == (2, 0)
    assert panel.job(created)["payload"] == {"platform": "sip1", "domain": acme, "username": "alice"}  # no password
    assert "Al1ce-pw" not in json.dumps(panel.job(created)) + json.dumps(summary)
    ref = platform.rows("SELECT id::text FROM subscriber WHERE username = 'alice' AND domain = %s", (acme,))[0][0]
    assert sql("SELECT c.sip_domain, c.channel_limit, c.status, s.username, s.external_ref, s.status, n.number"
               " FROM voice_companies c JOIN voice_subscribers s ON s.company_id = c.id"
               " JOIN voice_numbers n ON n.subscriber_id = s.id") == [(acme, 2, "active", "alice", ref, "active",
                                                                      "441130000001")]
    assert platform.kam.register(acme, "alice", "Al1ce-pw") == 200
    assert platform.kam.register(acme, "alice", "wrong") != 200

    deleted = panel.queue("delete_subscriber", platform="sip1", domain=acme, username="alice")
    run(voice_db, now_interval)
    assert panel.job(deleted)["result"]["numbers_released"] == ["441130000001"]
    assert platform.kam.register(acme, "alice", "Al1ce-pw") != 200
    assert sql("SELECT status, deleted_at IS NOT NULL FROM voice_subscribers") == [("deleted", True)]
    assert sql("SELECT count(*) FROM voice_numbers") == [(0,)]
    assert platform.rows("SELECT count(*) FROM dbaliases WHERE alias_username = '441130000001'") == [(0,)]


def test_a_job_retried_after_a_crash_creates_nothing_twice(voice_db, platform, panel, acme, sql, now_interval):
    created = panel.queue("create_subscriber", platform="sip1", domain=acme, username="bob", password="B0b-pw")
    run(voice_db, now_interval)
    # the worker "died" after the platform write, before the panel's: the job is still running with
    # its payload (password included), the panel has no row
    sql("DELETE FROM voice_subscribers")
    sql("UPDATE group_action_jobs SET status = 'running', started_at = %s, payload = payload || %s::jsonb,"
        " result = NULL, finished_at = NULL WHERE id = %s",
        (now_interval.end - timedelta(hours=2), json.dumps({"password": "B0b-pw"}), created))

    summary = run(voice_db, now_interval)

    assert (summary["reclaimed"], summary["succeeded"]) == (1, 1)
    assert panel.job(created)["result"]["created"] is False and "password" not in panel.job(created)["payload"]
    assert platform.rows("SELECT count(*) FROM subscriber WHERE username = 'bob' AND domain = %s", (acme,)) == [(1,)]
    assert sql("SELECT username, status FROM voice_subscribers") == [("bob", "active")]
    assert platform.kam.register(acme, "bob", "B0b-pw") == 200

    again = panel.queue("create_company", platform="sip1", domain=acme, customer_id=panel.one(
        "SELECT customer_id FROM voice_companies"), channel_limit=2)
    run(voice_db, now_interval)
    assert panel.job(again)["status"] == "succeeded"
    assert platform.rows("SELECT count(*) FROM domain WHERE domain = %s", (acme,)) == [(1,)]
    assert sql("SELECT count(*) FROM voice_companies") == [(1,)]


def test_suspend_resume_password_and_channel_limit_set_states(voice_db, platform, panel, acme, sql, now_interval):
    panel.queue("create_subscriber", platform="sip1", domain=acme, username="carol", password="first-pw")
    panel.queue("change_password", platform="sip1", domain=acme, username="carol", password="second-pw")
    panel.queue("suspend_subscriber", platform="sip1", domain=acme, username="carol")
    panel.queue("set_channel_limit", platform="sip1", domain=acme, channel_limit=None)
    assert run(voice_db, now_interval)["succeeded"] == 4
    assert sql("SELECT status FROM voice_subscribers") == [("suspended",)]
    assert sql("SELECT channel_limit FROM voice_companies") == [(None,)]
    assert platform.kam.register(acme, "carol", "second-pw") == 403

    panel.queue("resume_subscriber", platform="sip1", domain=acme, username="carol")
    panel.queue("suspend_company", platform="sip1", domain=acme)
    run(voice_db, now_interval)
    assert sql("SELECT c.status, s.status FROM voice_companies c JOIN voice_subscribers s ON s.company_id = c.id") \
        == [("suspended", "active")]
    assert platform.kam.register(acme, "carol", "second-pw") == 403                 # the company is suspended

    panel.queue("resume_company", platform="sip1", domain=acme)
    run(voice_db, now_interval)
    assert platform.kam.register(acme, "carol", "first-pw") != 200
    assert platform.kam.register(acme, "carol", "second-pw") == 200

    panel.queue("delete_company", platform="sip1", domain=acme)
    run(voice_db, now_interval)
    assert sql("SELECT c.status, s.status FROM voice_companies c JOIN voice_subscribers s ON s.company_id = c.id") \
        == [("deleted", "deleted")]
    assert platform.rows("SELECT count(*) FROM domain WHERE domain = %s", (acme,)) == [(0,)]
    assert platform.kam.register(acme, "carol", "second-pw") != 200


def test_bad_jobs_fail_before_anything_is_sent_and_refusals_fail_with_the_platforms_word(
        voice_db, platform, panel, world, acme, new_domain, now_interval):
    other = new_domain("globex")
    jobs = {
        "no_password": panel.queue("create_subscriber", platform="sip1", domain=acme, username="dave"),
        "bad_name": panel.queue("create_subscriber", platform="sip1", domain=acme, username="da ve", password="x1"),
        "no_platform": panel.queue("suspend_company", platform="nowhere", domain=acme),
        "unknown_company": panel.queue("create_subscriber", platform="sip1", domain=other, username="eve",
                                       password="pw-e"),
        "someone_elses": panel.queue("create_company", platform="sip1", domain=acme,
                                     customer_id=world["customer"]["globex"]),
        "no_limit_given": panel.queue("set_channel_limit", platform="sip1", domain=acme),
        "unknown_action": panel.queue("reboot_platform", platform="sip1"),
    }
    panel.queue("create_subscriber", platform="sip1", domain=acme, username="frank", password="pw-f")
    panel.queue("assign_number", platform="sip1", domain=acme, username="frank", number="441130000009")
    panel.queue("create_subscriber", platform="sip1", domain=acme, username="gina", password="pw-g")
    jobs["number_taken"] = panel.queue("assign_number", platform="sip1", domain=acme, username="gina",
                                       number="441130000009")

    summary = run(voice_db, now_interval)

    assert {name: panel.job(j)["status"] for name, j in jobs.items()} == {name: "failed" for name in jobs}
    assert "held by another subscriber" in panel.job(jobs["number_taken"])["error"]
    assert "belongs to customer" in panel.job(jobs["someone_elses"])["error"]
    assert summary["succeeded"] == 3
    assert platform.rows("SELECT username FROM subscriber WHERE domain = %s ORDER BY 1", (acme,)) == [
        ("frank",), ("gina",)]
    assert all("password" not in panel.job(j)["payload"] for j in jobs.values())


def test_an_unreachable_platform_puts_its_jobs_back_for_a_later_run(voice_db, platform, panel, world, new_domain,
                                                                    sql, monkeypatch, now_interval):
    monkeypatch.setenv("AIRFLOW_CONN_SIP_DOWN", json.dumps({
        "conn_type": "panelflow_sip_platform", "host": "127.0.0.1", "port": free_port(), "schema": "kamailio",
        "login": "postgres", "extra": {"rpc_url": f"http://127.0.0.1:{free_port()}/RPC", "timeout": 1}}))
    panel.platform("down", "sip_down")
    first = panel.queue("create_company", platform="down", domain=new_domain("acme"),
                        customer_id=world["customer"]["acme"])
    second = panel.queue("create_subscriber", platform="down", domain=new_domain("acme"), username="x",
                         password="pw-x")

    summary = run(voice_db, now_interval)

    assert summary["retry_later"] == 1 and panel.job(first)["status"] == "pending"
    assert "SipPlatformUnavailable" in panel.job(first)["error"]
    assert panel.job(second)["status"] == "failed"          # its company is unknown: refused before any call
    assert sql("SELECT count(*) FROM voice_companies") == [(0,)]


def test_a_job_waits_while_voice_sync_holds_its_platform(voice_db, platform, panel, world, new_domain,
                                                         migrated_panel_db, now_interval):
    """VoiceSyncWork reads the platform and merges under the platform's lock: a job arriving in
    between waits for the merge, so the sync never marks what the job just created as gone."""
    import threading
    import time

    import psycopg

    from panelflow.steps.voice._backend import Platform, lock_platform

    domain = new_domain("acme")
    queued = panel.queue("create_company", platform="sip1", domain=domain, customer_id=world["customer"]["acme"])
    outcome = {}
    with psycopg.connect(migrated_panel_db, autocommit=True) as sync_conn:
        with sync_conn.transaction():
            lock_platform(sync_conn, Platform(platform.id, "sip1", "unused"), shared=False)
            worker = threading.Thread(target=lambda: outcome.update(run(voice_db, now_interval)))
            worker.start()
            deadline = time.monotonic() + 20
            while not sync_conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                        " AND NOT granted").fetchone()[0]:
                assert time.monotonic() < deadline, "the job never waited for the sync's lock"
                time.sleep(0.05)
            assert panel.job(queued)["status"] == "running" and outcome == {}
        worker.join(30)
    assert outcome["succeeded"] == 1
    assert platform.rows("SELECT count(*) FROM domain WHERE domain = %s", (domain,)) == [(1,)]
