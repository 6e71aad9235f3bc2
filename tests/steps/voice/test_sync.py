"""VoiceSyncWork on a real Kamailio: subscribers, numbers and limits of every company with sync
enabled read from the platform into the panel (added, changed, gone); a rerun changes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from panelflow.step import Interval
from panelflow.steps.voice.sync import sync_voice_companies

CLOCK = datetime(2026, 12, 7, 10, 20, tzinfo=timezone.utc)
RUN = Interval(CLOCK - timedelta(hours=1), CLOCK, "UTC")


def subscribers(sql):
    return sql("SELECT c.sip_domain, s.username, s.status, s.external_ref IS NOT NULL FROM voice_subscribers s"
               " JOIN voice_companies c ON c.id = s.company_id ORDER BY 1, 2")


def test_the_platforms_companies_subscribers_and_numbers_come_into_the_panel(
        voice_db, platform, panel, world, new_domain, sql):
    acme, quiet, gone, stranger = new_domain("acme"), new_domain("quiet"), new_domain("gone"), new_domain("stranger")
    with platform.hook() as hook:
        for domain in (acme, quiet, stranger):
            hook.ensure_company(domain, 3)
        hook.set_company_suspended(acme, True)
        for user in ("alice", "bob"):
            hook.ensure_subscriber(acme, user, f"pw-{user}")
        hook.set_subscriber_suspended(acme, "alice", True)
        hook.assign_number(acme, "bob", "441130000077")
        hook.ensure_subscriber(quiet, "quinn", "pw-q")
    c_acme = panel.company(platform.id, world["customer"]["acme"], world["subscription"]["acme"], acme, channel_limit=9)
    panel.subscriber(c_acme, "alice")
    panel.subscriber(c_acme, "carol")                                           # gone from the platform
    c_quiet = panel.company(platform.id, world["customer"]["globex"], None, quiet)
    sql("UPDATE voice_companies SET sync_enabled = false WHERE id = %s", (c_quiet,))
    panel.company(platform.id, world["customer"]["globex"], None, gone)         # the platform has no such company

    summary = sync_voice_companies(voice_db, RUN)

    assert sql("SELECT sip_domain, channel_limit, status, synced_at FROM voice_companies ORDER BY id") == [
        (acme, 3, "suspended", CLOCK), (quiet, None, "active", None), (gone, None, "deleted", CLOCK)]
    assert subscribers(sql) == [(acme, "alice", "suspended", True), (acme, "bob", "active", True),
                                (acme, "carol", "deleted", False)]               # quinn: his company is not synced
    assert sql("SELECT n.number, s.username FROM voice_numbers n JOIN voice_subscribers s ON s.id = n.subscriber_id") \
        == [("441130000077", "bob")]
    assert {k: summary[k] for k in ("companies_synced", "companies_changed", "companies_gone", "subscribers_added",
                                    "subscribers_changed", "subscribers_gone", "numbers_changed")} == {
        "companies_synced": 1, "companies_changed": 1, "companies_gone": 1, "subscribers_added": 1,
        "subscribers_changed": 1, "subscribers_gone": 1, "numbers_changed": 1}
    assert summary["skipped"] == {"company on the platform that the panel does not know": 1}
    assert f"{stranger}: company on the platform that the panel does not know" in summary["skipped_examples"]

    rows = sql("SELECT * FROM voice_subscribers ORDER BY id"), sql("SELECT * FROM voice_numbers")
    again = sync_voice_companies(voice_db, RUN)
    assert (sql("SELECT * FROM voice_subscribers ORDER BY id"), sql("SELECT * FROM voice_numbers")) == rows
    assert again["companies_changed"] == again["subscribers_added"] == again["subscribers_changed"] == 0


def test_moves_and_removals_on_the_platform_follow_and_a_returning_user_is_live_again(
        voice_db, platform, panel, world, new_domain, sql):
    acme = new_domain("acme")
    with platform.hook() as hook:
        hook.ensure_company(acme, None)
        for user in ("alice", "bob"):
            hook.ensure_subscriber(acme, user, f"pw-{user}")
        hook.assign_number(acme, "alice", "441130000088")
        hook.assign_number(acme, "alice", "441130000089")
    panel.company(platform.id, world["customer"]["acme"], world["subscription"]["acme"], acme)
    sync_voice_companies(voice_db, RUN)

    with platform.hook() as hook:
        hook.release_number("441130000088")
        hook.release_number("441130000089")
        hook.assign_number(acme, "bob", "441130000089")                            # moved to bob
        hook.delete_subscriber(acme, "alice")
    summary = sync_voice_companies(voice_db, RUN)
    assert subscribers(sql) == [(acme, "alice", "deleted", True), (acme, "bob", "active", True)]
    assert sql("SELECT n.number, s.username FROM voice_numbers n JOIN voice_subscribers s ON s.id = n.subscriber_id") \
        == [("441130000089", "bob")]
    assert (summary["subscribers_gone"], summary["numbers_changed"], summary["numbers_removed"]) == (1, 1, 1)

    with platform.hook() as hook:
        hook.ensure_subscriber(acme, "alice", "pw-new")
    sync_voice_companies(voice_db, RUN)
    assert sql("SELECT status, deleted_at FROM voice_subscribers WHERE username = 'alice'") == [("active", None)]


def test_a_platform_account_the_panel_cannot_hold_is_reported_and_skipped(
        voice_db, platform, panel, world, new_domain, sql):
    acme = new_domain("acme")
    with platform.hook() as hook:
        hook.ensure_company(acme, None)
        hook.ensure_subscriber(acme, "alice", "pw-a")
    # written on the platform by another tool, past the hook's rules
    platform.rows("INSERT INTO subscriber (username, domain, password, ha1, ha1b)"
                  " VALUES ('front desk', %s, '', '', '')", (acme,))
    panel.company(platform.id, world["customer"]["acme"], world["subscription"]["acme"], acme)

    summary = sync_voice_companies(voice_db, RUN)

    assert summary["subscribers_added"] == 1
    assert summary["skipped"]["platform account whose user name the panel cannot hold"] == 1
    assert f"front desk@{acme}: platform account whose user name the panel cannot hold" in summary["skipped_examples"]
    assert [r[1] for r in subscribers(sql)] == ["alice"]


def test_a_platform_answering_no_companies_at_all_fails_and_deletes_nothing(
        voice_db, platform, panel, world, postgres, monkeypatch, sql):
    """An empty platform database behind a connection (a wrong one, a restore gone wrong) is not
    "every company deleted": that platform fails the run and the panel keeps its companies."""
    import json
    import uuid
    from pathlib import Path

    import psycopg

    from panelflow.hooks.sip_platform import SCHEMA_ADDITIONS

    empty = f"kamailio_empty_{uuid.uuid4().hex[:8]}"
    postgres.create_database(empty)
    with psycopg.connect(postgres.uri(empty), autocommit=True) as conn:
        for name in ("standard", "auth_db", "domain", "group", "alias_db", "acc"):
            conn.execute(Path(f"/usr/share/kamailio/postgres/{name}-create.sql").read_text())
        for statement in SCHEMA_ADDITIONS:
            conn.execute(statement)
    monkeypatch.setenv("AIRFLOW_CONN_SIP_EMPTY", json.dumps({
        "conn_type": "panelflow_sip_platform", "host": "127.0.0.1", "port": postgres.port, "schema": empty,
        "login": "postgres", "extra": {"rpc_url": "http://127.0.0.1:9/RPC"}}))
    empty_platform = panel.platform("empty", "sip_empty")
    panel.company(empty_platform, world["customer"]["acme"], world["subscription"]["acme"], "acme.test")

    try:
        summary = sync_voice_companies(voice_db, RUN)
    finally:
        with psycopg.connect(postgres.uri("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{empty}" WITH (FORCE)')

    assert summary["failed_platforms"] == ["empty"]
    assert "answered no companies at all" in " ".join(summary["skipped"])
    assert sql("SELECT status FROM voice_companies") == [("active",)]
