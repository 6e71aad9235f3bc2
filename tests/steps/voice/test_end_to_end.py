"""The voice story end to end on a real Kamailio with SIPp: companies and subscribers made by
GroupActionWorkSIP jobs, a real call between two companies' subscribers imported once by
CallDataProcessWork, rated by BillingWork onto the caller's invoice, and counted against the
caller's bundle by GroupActionWorkLync."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

from panelflow.step import Interval
from panelflow.steps.voice.bundles import process_call_bundles
from panelflow.steps.voice.calls import import_sip_call_records
from panelflow.steps.voice.jobs import process_sip_group_actions
from panelflow.steps.voice_billing import sip_billing_and_exports


def billing_day(started_at: datetime) -> Interval:
    """BillingWork's run covering the call's day (UTC)."""
    day = started_at.astimezone(timezone.utc).date()
    start = datetime.combine(day, time.min, timezone.utc)
    return Interval(start, start + timedelta(days=1), "UTC")


def test_a_real_call_is_imported_once_billed_to_the_caller_and_counted_in_its_bundle(
        voice_db, platform, panel, world, new_domain, sql, now_interval):
    acme, globex = new_domain("acme"), new_domain("globex")
    for name, domain in (("acme", acme), ("globex", globex)):
        panel.queue("create_company", platform="sip1", domain=domain, customer_id=world["customer"][name],
                    subscription_id=world["subscription"][name])
    panel.queue("create_subscriber", platform="sip1", domain=acme, username="alice", password="pw-alice-e2e")
    panel.queue("create_subscriber", platform="sip1", domain=globex, username="bob", password="pw-bob-e2e")
    panel.queue("assign_number", platform="sip1", domain=globex, username="bob", number="441130000200")
    assert process_sip_group_actions(voice_db, now_interval)["succeeded"] == 5
    assert platform.kam.register(acme, "alice", "pw-alice-e2e") == 200
    assert platform.kam.register(globex, "bob", "pw-bob-e2e") == 200
    sql("INSERT INTO voice_rates (rate_table, prefix, description, currency, per_minute, connection_fee)"
        " VALUES ('sip', '4411300', 'Leeds', 'GBP', 0.50, 0.10)")
    bundle = panel.bundle(world["subscription"]["acme"], 1)

    platform.kam.call(acme, "alice", "pw-alice-e2e", "441130000200", duration_ms=1000)

    imported = import_sip_call_records(voice_db, now_interval)
    rerun = import_sip_call_records(voice_db, now_interval)
    assert (imported["records_imported"], rerun["records_imported"], rerun["records_already_imported"]) == (1, 0, 1)
    [(subscription, account, destination, started_at, seconds)] = sql(
        "SELECT subscription_id, sip_account, destination, started_at, duration_seconds FROM sip_usage")
    assert (subscription, account, destination) == (world["subscription"]["acme"], f"alice@{acme}", "441130000200")
    assert 0 < seconds <= 3

    billed = sip_billing_and_exports(voice_db, billing_day(started_at))
    assert billed["invoices"] == 1 and billed["calls_billed"] == 1
    # 1 started minute at 0.50 + 0.10 connection = 0.60; VAT 20 % = 0.12
    assert sql("SELECT customer_id, kind, subtotal, tax, total FROM invoices") == [
        (world["customer"]["acme"], "sip", Decimal("0.60"), Decimal("0.12"), Decimal("0.72"))]

    assert process_call_bundles(voice_db, now_interval)["bundle_periods_over_limit"] == 0
    assert sql("SELECT bundle_id, minutes_used, calls, over_limit FROM voice_bundle_usage") == [(bundle, 1, 1, False)]

    platform.kam.call(acme, "alice", "pw-alice-e2e", "441130000200", duration_ms=1000)
    assert import_sip_call_records(voice_db, now_interval)["records_imported"] == 1
    assert process_call_bundles(voice_db, now_interval)["bundle_periods_over_limit"] == 1
    assert sql("SELECT minutes_used, calls, over_limit, over_since FROM voice_bundle_usage") == [
        (2, 2, True, now_interval.end)]
