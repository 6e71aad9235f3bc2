"""SipPlatformHook against a real Kamailio (its own database on the test PostgreSQL) with SIPp placing
real REGISTERs and calls: what the hook provisions is what Kamailio enforces."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from harness.kamailio import Kamailio, SippFailed, free_port
from panelflow.hooks.sip_platform import (SipCompany, SipNumber, SipPlatformHook, SipPlatformRefused,
                                          SipPlatformUnavailable)

CONN_ID = "sip_platform_test"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def kamailio(postgres, tmp_path_factory):
    with Kamailio(postgres, tmp_path_factory.mktemp("kamailio")) as kam, pytest.MonkeyPatch.context() as mp:
        mp.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", kam.connection_uri())
        yield kam


@pytest.fixture
def hook(kamailio):
    with SipPlatformHook(CONN_ID) as hook:
        yield hook


@pytest.fixture
def company(hook):
    """A fresh SIP domain of the test's own, with subscribers alice (pw-a) and bob (pw-b)."""
    domain = f"c{next(_names)}.example.test"
    hook.ensure_company(domain, None)
    hook.ensure_subscriber(domain, "alice", "pw-a")
    hook.ensure_subscriber(domain, "bob", "pw-b")
    return domain


def _platform_rows(kamailio, query: str, params=()) -> list[tuple]:
    with psycopg.connect(kamailio.db_uri, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def test_ensure_and_delete_company_are_idempotent(hook, kamailio):
    domain = f"c{next(_names)}.example.test"
    assert hook.ensure_company(domain, 4) is True
    assert hook.ensure_company(domain, 4) is False
    assert hook.ensure_company(domain.upper(), 4) is False           # domains compare case-insensitively
    assert hook.set_channel_limit(domain, 6) is True
    assert hook.set_channel_limit(domain, 6) is False
    assert hook.set_company_suspended(domain, True) is True
    assert hook.set_company_suspended(domain, True) is False
    assert [c for c in hook.companies() if c.domain == domain] == [SipCompany(domain, 6, True)]
    assert hook.set_channel_limit(domain, None) is True
    assert [c for c in hook.companies() if c.domain == domain] == [SipCompany(domain, None, True)]

    hook.ensure_subscriber(domain, "carol", "pw-c")
    hook.set_subscriber_suspended(domain, "carol", True)
    hook.assign_number(domain, "carol", "3312345678")
    assert hook.delete_company(domain) is True
    assert hook.delete_company(domain) is False
    assert domain not in [c.domain for c in hook.companies()]
    assert hook.subscribers(domain) == [] and hook.numbers(domain) == []
    leftovers = _platform_rows(kamailio, """
        SELECT (SELECT count(*) FROM domain WHERE domain = %(d)s) + (SELECT count(*) FROM domain_attrs WHERE did = %(d)s)
             + (SELECT count(*) FROM subscriber WHERE domain = %(d)s) + (SELECT count(*) FROM grp WHERE domain = %(d)s)
             + (SELECT count(*) FROM dbaliases WHERE domain = %(d)s)""", {"d": domain})
    assert leftovers == [(0,)]
    # Kamailio's cached domain list followed: the deleted company's subscriber cannot sign in
    assert kamailio.register(domain, "carol", "pw-c") == 403


def test_ensure_and_delete_subscriber_are_idempotent(hook, kamailio, company):
    assert hook.ensure_subscriber(company, "dave", "first-pw") is True
    assert hook.ensure_subscriber(company, "dave", "other-pw") is False   # an existing one keeps its password
    assert [s.username for s in hook.subscribers(company)].count("dave") == 1
    assert kamailio.register(company, "dave", "first-pw") == 200
    assert kamailio.register(company, "dave", "other-pw") == 401
    # the platform DB keeps digests only, never the password
    assert _platform_rows(kamailio, "SELECT password, length(ha1), length(ha1b) FROM subscriber"
                                    " WHERE username = 'dave' AND domain = %s", (company,)) == [("", 32, 32)]

    assert hook.set_password(company, "dave", "new-pw") is True
    assert hook.set_password(company, "dave", "new-pw") is False
    assert kamailio.register(company, "dave", "new-pw") == 200

    assert hook.delete_subscriber(company, "dave") is True
    assert hook.delete_subscriber(company, "dave") is False
    assert "dave" not in [s.username for s in hook.subscribers(company)]
    assert kamailio.register(company, "dave", "new-pw") == 401


def test_subscriber_registers_with_its_password_only(kamailio, company):
    assert kamailio.register(company, "alice", "pw-a") == 200
    assert kamailio.register(company, "alice", "pw-b") == 401
    assert kamailio.register(company, "nobody", "pw-a") == 401


def test_suspended_subscriber_and_company_are_refused(hook, kamailio, company):
    assert hook.set_subscriber_suspended(company, "alice", True) is True
    assert hook.set_subscriber_suspended(company, "alice", True) is False
    assert [s.suspended for s in hook.subscribers(company) if s.username == "alice"] == [True]
    assert kamailio.register(company, "alice", "pw-a") == 403
    with pytest.raises(SippFailed) as refused:
        kamailio.call(company, "alice", "pw-a", "bob")
    assert refused.value.status == 403
    assert hook.set_subscriber_suspended(company, "alice", False) is True
    assert kamailio.register(company, "alice", "pw-a") == 200

    assert hook.set_company_suspended(company, True) is True
    assert kamailio.register(company, "bob", "pw-b") == 403
    assert hook.set_company_suspended(company, False) is True
    assert kamailio.register(company, "bob", "pw-b") == 200


def test_assigned_number_routes_a_real_call_to_its_subscriber(hook, kamailio, company):
    other = f"c{next(_names)}.example.test"
    hook.ensure_company(other, None)
    hook.ensure_subscriber(other, "erin", "pw-e")

    assert hook.assign_number(company, "bob", "4420790001") is True
    assert hook.assign_number(company, "bob", "4420790001") is False
    with pytest.raises(SipPlatformRefused, match="held by another"):
        hook.assign_number(other, "erin", "4420790001")
    assert [n for n in hook.numbers() if n.number == "4420790001"] == [SipNumber("4420790001", "bob", company)]

    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    kamailio.call(other, "erin", "pw-e", "4420790001", duration_ms=500)   # another company's caller
    calls = [c for c in hook.call_records(start, start + timedelta(minutes=5)) if c.caller_domain == other]
    assert [(c.caller, c.callee, c.callee_domain) for c in calls] == [("erin", "4420790001", other)]

    assert hook.release_number("4420790001") is True
    assert hook.release_number("4420790001") is False
    with pytest.raises(SippFailed) as unrouted:
        kamailio.call(other, "erin", "pw-e", "4420790001", duration_ms=500)
    assert unrouted.value.status == 404


def test_a_real_call_gives_exactly_one_call_record(hook, kamailio, company):
    before = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    kamailio.call(company, "alice", "pw-a", "bob", duration_ms=2000)
    after = datetime.now(timezone.utc) + timedelta(seconds=2)

    calls = [c for c in hook.call_records(before, after) if c.caller_domain == company]
    assert len(calls) == 1
    call = calls[0]
    assert (call.caller, call.caller_domain, call.callee, call.callee_domain) == ("alice", company, "bob", company)
    assert call.duration_seconds == 2
    assert call.started_at.tzinfo is not None and before <= call.started_at <= call.ended_at <= after
    assert call.callid
    # the window is [start, end) on the end time
    assert [c for c in hook.call_records(before, call.ended_at) if c.callid == call.callid] == []
    assert [c.callid for c in hook.call_records(call.ended_at, after) if c.callid == call.callid] == [call.callid]

    chunks: list[bytes] = []
    copied = hook.copy_call_records(before, after, chunks.append)
    rows = [line.split("\t") for line in b"".join(chunks).decode().splitlines()]
    assert copied == len(rows)
    mine = [r for r in rows if r[0] == call.callid]
    assert mine == [[call.callid, "alice", company, "bob", company,
                     call.started_at.strftime("%Y-%m-%d %H:%M:%S+00"), call.ended_at.strftime("%Y-%m-%d %H:%M:%S+00"),
                     "2"]]


def test_live_calls_by_company_and_subscriber_and_the_channel_limit(hook, kamailio, company):
    hook.set_channel_limit(company, 2)
    with kamailio.hold_calls(company, "alice", "pw-a", "bob", count=2, duration_ms=4000):
        assert hook.live_calls_by_company().get(company) == 2
        assert hook.live_calls_by_subscriber().get((company, "alice")) == 2
        assert (company, "bob") not in hook.live_calls_by_subscriber()      # counted as the caller only
        with pytest.raises(SippFailed) as over:                              # Kamailio enforces the limit
            kamailio.call(company, "bob", "pw-b", "alice", duration_ms=200)
        assert over.value.status == 403
        # lowering the limit never cuts calls: the company shows over its limit while they last
        assert hook.set_channel_limit(company, 1) is True
        limit = [c.channel_limit for c in hook.companies() if c.domain == company][0]
        assert hook.live_calls_by_company()[company] > limit
    assert hook.live_calls_by_company().get(company, 0) == 0
    assert hook.live_calls_by_subscriber().get((company, "alice"), 0) == 0


@pytest.mark.parametrize("bad", ["x'; DROP TABLE subscriber; --", "a b", "", "bob@evil.example", "x" * 65])
def test_hostile_names_are_refused_and_harm_nothing(hook, kamailio, company, bad):
    count = _platform_rows(kamailio, "SELECT count(*) FROM subscriber")
    for attempt in (lambda: hook.ensure_company(bad, None), lambda: hook.ensure_subscriber(company, bad, "pw"),
                    lambda: hook.ensure_subscriber(bad, "alice", "pw"), lambda: hook.assign_number(company, "bob", bad),
                    lambda: hook.set_subscriber_suspended(company, bad, True), lambda: hook.delete_company(bad),
                    lambda: hook.delete_subscriber(company, bad), lambda: hook.subscribers(bad)):
        with pytest.raises(SipPlatformRefused):
            attempt()
    assert _platform_rows(kamailio, "SELECT count(*) FROM subscriber") == count
    assert kamailio.register(company, "alice", "pw-a") == 200


def test_what_the_platform_does_not_know_is_refused(hook, company):
    with pytest.raises(SipPlatformRefused):
        hook.ensure_subscriber("nowhere.example.test", "alice", "pw")
    with pytest.raises(SipPlatformRefused):
        hook.set_password(company, "nobody", "pw")
    with pytest.raises(SipPlatformRefused):
        hook.assign_number(company, "nobody", "4420790009")
    with pytest.raises(SipPlatformRefused):
        hook.set_channel_limit(company, -1)
    with pytest.raises(SipPlatformRefused):
        hook.ensure_subscriber(company, "frank", "")


def test_a_stopped_platform_is_unavailable(postgres, tmp_path, monkeypatch):
    kamailio = Kamailio(postgres, tmp_path)
    monkeypatch.setenv("AIRFLOW_CONN_SIP_PLATFORM_GONE", kamailio.connection_uri())
    hook = SipPlatformHook("sip_platform_gone")
    assert hook.test_connection()[0] is True
    kamailio.stop()                                      # kamailio stopped and its database dropped
    with pytest.raises(SipPlatformUnavailable):
        hook.live_calls_by_company()
    with pytest.raises(SipPlatformUnavailable):
        hook.companies()
    assert hook.test_connection()[0] is False
    hook.close()


def test_nothing_listening_is_unavailable(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SIP_PLATFORM_NONE", json.dumps({
        "conn_type": "panelflow_sip_platform", "host": "127.0.0.1", "port": free_port(), "schema": "kamailio",
        "login": "postgres", "extra": {"rpc_url": f"http://127.0.0.1:{free_port()}/RPC", "timeout": 1}}))
    with SipPlatformHook("sip_platform_none") as hook:
        with pytest.raises(SipPlatformUnavailable):
            hook.ensure_company("acme.example.test", 3)
        with pytest.raises(SipPlatformUnavailable):
            hook.live_calls_by_subscriber()


def test_a_statement_that_waits_too_long_is_unavailable(kamailio, company, monkeypatch):
    uri = json.loads(kamailio.connection_uri())
    uri["extra"]["timeout"] = 1
    monkeypatch.setenv("AIRFLOW_CONN_SIP_PLATFORM_SLOW", json.dumps(uri))
    with psycopg.connect(kamailio.db_uri) as blocker, SipPlatformHook("sip_platform_slow") as hook:
        blocker.execute("SELECT 1 FROM domain WHERE domain = %s FOR UPDATE", (company,))
        with pytest.raises(SipPlatformUnavailable):
            hook.set_channel_limit(company, 3)
        blocker.rollback()
        assert hook.set_channel_limit(company, 3) is True      # the next call reconnects


def test_call_records_need_aware_bounds(hook):
    with pytest.raises(ValueError):
        list(hook.call_records(datetime(2026, 1, 1), datetime(2026, 1, 2)))


def test_schema_additions_apply_twice_and_the_connection_tests_green(hook):
    hook.ensure_schema()                                 # the harness applied them already: a no-op
    ok, message = hook.test_connection()
    assert ok and "kamailio" in message.lower()
    assert set(SipPlatformHook.get_ui_field_behaviour()) >= {"hidden_fields", "relabeling", "placeholders"}
