"""VoiceCurrentLimitSyncWork 2 and 3 on a real Kamailio with SIPp holding calls open: live calls per
subscriber and company, minutes in the bundle period, and a company over its (lowered) channel limit."""

from __future__ import annotations

import itertools

import pytest

from harness.kamailio import SippFailed
from panelflow.steps.voice.calls import import_sip_call_records
from panelflow.steps.voice.jobs import process_sip_group_actions
from panelflow.steps.voice.usage import sync_company_sip_usage, sync_subscriber_sip_usage


_numbers = itertools.count(100)


@pytest.fixture
def two_companies(platform, panel, world, new_domain, voice_db, now_interval):
    """acme (channel limit 3) with alice, globex with bob on a number of his own, made by SIP jobs:
    (acme's domain, globex's domain, bob's number)."""
    acme, globex = new_domain("acme"), new_domain("globex")
    for name, domain in (("acme", acme), ("globex", globex)):
        panel.queue("create_company", platform="sip1", domain=domain, customer_id=world["customer"][name],
                    subscription_id=world["subscription"][name], channel_limit=3)
    panel.queue("create_subscriber", platform="sip1", domain=acme, username="alice", password="pw-alice-1")
    panel.queue("create_subscriber", platform="sip1", domain=globex, username="bob", password="pw-bob-1")
    number = f"44113{next(_numbers):07d}"
    panel.queue("assign_number", platform="sip1", domain=globex, username="bob", number=number)
    assert process_sip_group_actions(voice_db, now_interval)["succeeded"] == 5
    return acme, globex, number


def company_usage(sql, domain):
    return sql("SELECT current_calls, minutes_used, over_channel_limit, channel_limit FROM voice_companies"
               " WHERE sip_domain = %s", (domain,))[0]


def test_calls_held_open_over_a_lowered_limit_show_the_company_over_it(
        voice_db, platform, panel, two_companies, sql, now_interval):
    acme, globex, number = two_companies
    with platform.kam.hold_calls(acme, "alice", "pw-alice-1", number, count=2, duration_ms=4000):
        panel.queue("set_channel_limit", platform="sip1", domain=acme, channel_limit=1)
        assert process_sip_group_actions(voice_db, now_interval)["succeeded"] == 1
        companies = sync_company_sip_usage(voice_db, now_interval)
        subscribers = sync_subscriber_sip_usage(voice_db, now_interval)

        assert company_usage(sql, acme) == (2, 0, True, 1)
        assert company_usage(sql, globex) == (0, 0, False, 3)       # calls count for the caller's company
        assert companies["companies_over_channel_limit"] == 1
        assert companies["over_channel_limit"] == [f"{acme}: 2 calls, limit 1"]
        assert sql("SELECT s.username, s.current_calls FROM voice_subscribers s ORDER BY 1") == [("alice", 2),
                                                                                                 ("bob", 0)]
        assert (subscribers["subscribers_on_a_call"], subscribers["live_calls"]) == (1, 2)
        # the platform refuses a third call over the new limit
        with pytest.raises(SippFailed) as refused:
            platform.kam.call(acme, "alice", "pw-alice-1", number, duration_ms=500)
        assert refused.value.status == 403

    import_sip_call_records(voice_db, now_interval)
    sync_company_sip_usage(voice_db, now_interval)
    sync_subscriber_sip_usage(voice_db, now_interval)
    assert company_usage(sql, acme) == (0, 2, False, 1)               # two calls of a few seconds: 1 min each
    assert sql("SELECT s.username, s.current_calls, s.minutes_used FROM voice_subscribers s ORDER BY 1") == [
        ("alice", 0, 2), ("bob", 0, 0)]


def test_live_calls_of_an_account_the_panel_does_not_know_are_reported(
        voice_db, platform, two_companies, sql, now_interval):
    acme, _, number = two_companies
    with platform.hook() as hook:                      # made on the platform, never through the panel
        hook.ensure_subscriber(acme, "intruder", "pw-intruder-1")
    with platform.kam.hold_calls(acme, "intruder", "pw-intruder-1", number, count=1, duration_ms=2000):
        summary = sync_subscriber_sip_usage(voice_db, now_interval)
        companies = sync_company_sip_usage(voice_db, now_interval)
    assert summary["skipped"] == {"live calls of a user the panel does not know": 1}
    assert f"intruder@{acme} (1 calls): live calls of a user the panel does not know" in summary["skipped_examples"]
    assert summary["live_calls"] == 0
    assert companies["live_calls"] == 1 and company_usage(sql, acme)[0] == 1   # still the company's call
