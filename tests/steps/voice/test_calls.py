"""CallDataProcessWork's SIP importer on a real platform database: the call records Kamailio keeps
(``acc_cdrs``, written here as Kamailio writes them) become ``sip_usage`` rows, each exactly once."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval
from panelflow.steps.voice.calls import import_sip_call_records

START = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
RUN = Interval(START, START + timedelta(minutes=15), "UTC")


@pytest.fixture
def companies(platform, panel, world):
    acme = panel.company(platform.id, world["customer"]["acme"], world["subscription"]["acme"], "acme.test")
    globex = panel.company(platform.id, world["customer"]["globex"], world["subscription"]["globex"], "globex.test")
    nosub = panel.company(platform.id, world["customer"]["globex"], None, "nosub.test")
    ids = {"alice": panel.subscriber(acme, "alice"), "gone": panel.subscriber(acme, "gone", status="deleted"),
           "bob": panel.subscriber(globex, "bob"), "nina": panel.subscriber(nosub, "nina")}
    panel.sql("INSERT INTO voice_numbers (platform_id, number, subscriber_id, assigned_at) VALUES"
              " (%s, '441130000002', %s, now()), (%s, '441130000001', %s, now())",
              (platform.id, ids["bob"], platform.id, ids["bob"]))
    return ids


def cdr(platform, callid, caller, caller_domain, callee, callee_domain, ended_min: float, seconds: float):
    """One acc_cdrs row as Kamailio writes it: UTC local times without a zone."""
    ended = (START + timedelta(minutes=ended_min)).replace(tzinfo=None)
    platform.rows("INSERT INTO acc_cdrs (start_time, end_time, duration, callid, caller, caller_domain, callee,"
                  " callee_domain) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                  (ended - timedelta(seconds=seconds), ended, seconds, callid, caller, caller_domain, callee,
                   callee_domain))


def usage(sql):
    return sql("SELECT callid, subscription_id, sip_account, destination, duration_seconds, voice_subscriber_id"
               " FROM sip_usage ORDER BY callid")


def test_each_call_that_ended_in_the_interval_is_imported_once_for_its_callers_subscription(
        voice_db, platform, companies, world, sql):
    cdr(platform, "c1", "alice", "acme.test", "+447700900123", "acme.test", 1, 61.4)   # a dialled number
    cdr(platform, "c2", "alice", "Acme.TEST", "bob", "GLOBEX.test", 2, 30)            # a user: his (lowest) number
    cdr(platform, "c3", "bob", "globex.test", "alice", "acme.test", 3, 12)           # a user without a number
    cdr(platform, "c4", "gone", "acme.test", "441130000001", "acme.test", 4, 5)      # placed before its deletion
    cdr(platform, "c5", "bob", "globex.test", "+12345678901234567890", "globex.test", 5, 7)   # 20 digits: a number
    cdr(platform, "c6", "bob", "globex.test", "123456789012345678901", "globex.test", 6, 8)   # 21: a user name
    cdr(platform, "c0", "alice", "acme.test", "4420", "acme.test", -0.5, 5)          # ended before the interval
    cdr(platform, "c9", "alice", "acme.test", "4420", "acme.test", 15, 5)            # ended at its end: the next run's

    first = import_sip_call_records(voice_db, RUN)
    again = import_sip_call_records(voice_db, RUN)

    acme, globex = world["subscription"]["acme"], world["subscription"]["globex"]
    assert usage(sql) == [("c1", acme, "alice@acme.test", "447700900123", 61, companies["alice"]),
                          ("c2", acme, "alice@acme.test", "441130000001", 30, companies["alice"]),
                          ("c3", globex, "bob@globex.test", "", 12, companies["bob"]),
                          ("c4", acme, "gone@acme.test", "441130000001", 5, companies["gone"]),
                          ("c5", globex, "bob@globex.test", "12345678901234567890", 7, companies["bob"]),
                          ("c6", globex, "bob@globex.test", "", 8, companies["bob"])]
    assert (first["records_read"], first["records_imported"], first["records_already_imported"]) == (6, 6, 0)
    assert (again["records_read"], again["records_imported"], again["records_already_imported"]) == (6, 0, 6)
    assert first["failed_platforms"] == [] and first["skipped"] == {}

    # an overlapping (backfill) interval finds them all again and adds only the new one
    wider = Interval(START - timedelta(hours=1), START + timedelta(hours=1), "UTC")
    assert import_sip_call_records(voice_db, wider)["records_imported"] == 2
    assert sql("SELECT count(*), count(DISTINCT callid) FROM sip_usage") == [(8, 8)]


def test_a_call_id_twice_in_the_days_records_is_imported_once(voice_db, platform, companies, sql):
    """The fast insert (no ON CONFLICT) meets the unique key; the import then skips the
    duplicate instead of failing the platform on every rerun."""
    cdr(platform, "dup", "alice", "acme.test", "+447700900123", "acme.test", 1, 20)
    cdr(platform, "dup", "alice", "acme.test", "+447700900123", "acme.test", 2, 20)   # a second CDR, same Call-ID
    cdr(platform, "c5", "bob", "globex.test", "alice", "acme.test", 3, 12)

    summary = import_sip_call_records(voice_db, RUN)

    assert summary["failed_platforms"] == []
    assert (summary["records_read"], summary["records_imported"], summary["records_already_imported"]) == (3, 2, 1)
    assert [(c, d) for c, _, _, _, d, _ in usage(sql)] == [("c5", 12), ("dup", 20)]


def test_records_the_panel_cannot_bill_are_counted_and_named_not_lost(voice_db, platform, companies, sql):
    cdr(platform, "u1", "mallory", "acme.test", "4420", "acme.test", 1, 10)          # no such subscriber
    cdr(platform, "u2", "zed", "elsewhere.test", "4420", "elsewhere.test", 2, 10)     # no such company
    cdr(platform, "u3", "nina", "nosub.test", "4420", "nosub.test", 3, 10)           # company without subscription
    cdr(platform, "", "alice", "acme.test", "4420", "acme.test", 4, 10)               # no Call-ID
    cdr(platform, "ok", "alice", "acme.test", "4420", "acme.test", 5, 10)

    summary = import_sip_call_records(voice_db, RUN)

    assert (summary["records_read"], summary["records_imported"], summary["records_skipped"]) == (5, 1, 4)
    assert summary["skipped"] == {"caller is not a subscriber in the panel": 1,
                                  "caller's SIP domain is not a voice company in the panel": 1,
                                  "voice company has no subscription to bill": 1, "no Call-ID": 1}
    assert "call u1 from mallory@acme.test: caller is not a subscriber in the panel" in summary["skipped_examples"]
    assert [r[0] for r in usage(sql)] == ["ok"]

    # once the panel knows the caller, a rerun imports the record it skipped
    panel_company = sql("SELECT id FROM voice_companies WHERE sip_domain = 'acme.test'")[0][0]
    sql("INSERT INTO voice_subscribers (company_id, username, created_at) VALUES (%s, 'mallory', now())",
        (panel_company,))
    assert import_sip_call_records(voice_db, RUN)["records_imported"] == 1


def test_a_platform_that_cannot_be_reached_fails_alone(voice_db, platform, companies, panel, monkeypatch, sql):
    import json

    from harness.kamailio import free_port

    monkeypatch.setenv("AIRFLOW_CONN_SIP_DOWN", json.dumps({
        "conn_type": "panelflow_sip_platform", "host": "127.0.0.1", "port": free_port(), "schema": "kamailio",
        "login": "postgres", "extra": {"rpc_url": f"http://127.0.0.1:{free_port()}/RPC", "timeout": 1}}))
    panel.platform("down", "sip_down")
    cdr(platform, "c1", "alice", "acme.test", "4420", "acme.test", 1, 10)

    summary = import_sip_call_records(voice_db, RUN)

    assert summary["failed_platforms"] == ["down"] and summary["platforms_failed"] == 1
    assert summary["records_imported"] == 1

    sql("UPDATE sip_platforms SET enabled = false WHERE name = 'sip1'")
    from panelflow.steps.voice._backend import SipPlatformsFailed

    with pytest.raises(SipPlatformsFailed):
        import_sip_call_records(voice_db, RUN)
