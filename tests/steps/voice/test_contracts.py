"""ProvisioningWork 31 on the real panel DB: SIP contracts started, renewed and ended on their day,
each action once per contract and day (reruns, backfills, missed days)."""

from __future__ import annotations

from datetime import date, timedelta

import pendulum
import pytest

from panelflow.step import Interval
from panelflow.steps.voice.contracts import execute_sip_contracts

TZ = "Europe/London"


def run_on(day: str, hh_mm: str = "09:00") -> Interval:
    end = pendulum.parse(f"{day}T{hh_mm}:00", tz=TZ)
    return Interval(end - timedelta(minutes=10), end, TZ)


@pytest.fixture
def contracts(world, panel, sql):
    platform = panel.platform()

    def contract(name: str, starts_on: str, term_months: int, auto_renew: bool, domain: str, limit=None) -> int:
        start = date.fromisoformat(starts_on)
        ends = pendulum.date(start.year, start.month, start.day).add(months=term_months)
        return panel.one("INSERT INTO sip_contracts (subscription_id, platform_id, sip_domain, channel_limit,"
                         " starts_on, term_months, auto_renew, ends_on) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                         " RETURNING id", (world["subscription"][name], platform, domain, limit, start, term_months,
                                           auto_renew, date(ends.year, ends.month, ends.day)))

    sql("UPDATE subscriptions SET status = 'suspended'")   # sold, not running yet
    return contract


def state(sql):
    return sql("SELECT k.id, k.status, k.ends_on, s.status FROM sip_contracts k"
               " JOIN subscriptions s ON s.id = k.subscription_id ORDER BY k.id")


def jobs(sql):
    return sql("SELECT action, payload FROM group_action_jobs WHERE backend = 'sip' ORDER BY id")


def actions(sql):
    return sql("SELECT contract_id, day, action, job_id IS NOT NULL FROM sip_contract_actions ORDER BY 1, 2, 3")


def test_a_contract_starts_on_its_day_once(voice_db, contracts, world, sql):
    acme = contracts("acme", "2026-12-07", 1, True, "acme.test", limit=5)

    assert execute_sip_contracts(voice_db, run_on("2026-12-06"))["start"] == 0     # not yet
    first = execute_sip_contracts(voice_db, run_on("2026-12-07"))
    again = execute_sip_contracts(voice_db, run_on("2026-12-07", "09:10"))         # the next run of the day
    rerun = execute_sip_contracts(voice_db, run_on("2026-12-07"))                  # a rerun of the first

    assert (first["start"], first["jobs_queued"], first["subscriptions_changed"]) == (1, 1, 1)
    assert again["start"] == rerun["start"] == again["jobs_queued"] == rerun["jobs_queued"] == 0
    assert state(sql) == [(acme, "active", date(2027, 1, 7), "active")]
    assert jobs(sql) == [("create_company", {"platform": "sip1", "domain": "acme.test", "contract_id": acme,
                                             "customer_id": world["customer"]["acme"],
                                             "subscription_id": world["subscription"]["acme"], "channel_limit": 5})]
    assert actions(sql) == [(acme, date(2026, 12, 7), "start", True)]


def test_renewals_are_anchored_on_the_first_day_and_an_end_suspends_the_company(voice_db, contracts, sql):
    renewing = contracts("acme", "2026-01-31", 1, True, "acme.test")
    ending = contracts("globex", "2026-01-31", 1, False, "globex.test")
    execute_sip_contracts(voice_db, run_on("2026-01-31"))
    assert [r[1] for r in state(sql)] == ["active", "active"]

    summary = execute_sip_contracts(voice_db, run_on("2026-02-28"))                # Jan 31 + 1 month
    assert (summary["renew"], summary["end"], summary["jobs_queued"]) == (1, 1, 1)
    assert state(sql) == [(renewing, "active", date(2026, 3, 31), "active"),        # not the 28th
                          (ending, "ended", date(2026, 2, 28), "cancelled")]
    assert jobs(sql)[-1] == ("suspend_company", {"platform": "sip1", "domain": "globex.test", "contract_id": ending})
    assert execute_sip_contracts(voice_db, run_on("2026-02-28", "09:10"))["renew"] == 0


def test_a_backfilled_day_executes_that_days_actions_once_and_missed_days_are_caught_up(voice_db, contracts, sql):
    acme = contracts("acme", "2026-10-15", 1, True, "acme.test")
    # the thread did not run for two months: one run catches the start and both renewals up
    summary = execute_sip_contracts(voice_db, run_on("2026-12-20"))
    assert (summary["start"], summary["renew"]) == (1, 2)
    assert state(sql) == [(acme, "active", date(2027, 1, 15), "active")]
    assert actions(sql) == [(acme, date(2026, 10, 15), "start", True), (acme, date(2026, 11, 15), "renew", False),
                            (acme, date(2026, 12, 15), "renew", False)]
    # backfilling the missed days afterwards executes nothing twice
    for day in ("2026-10-15", "2026-11-15", "2026-12-15"):
        assert execute_sip_contracts(voice_db, run_on(day))["jobs_queued"] == 0
    assert len(jobs(sql)) == 1 and len(actions(sql)) == 3


def test_an_action_already_executed_for_its_day_is_not_executed_again(voice_db, contracts, sql):
    acme = contracts("acme", "2026-12-07", 1, True, "acme.test")
    execute_sip_contracts(voice_db, run_on("2026-12-07"))
    sql("UPDATE sip_contracts SET status = 'pending'")                              # the panel puts it back
    summary = execute_sip_contracts(voice_db, run_on("2026-12-08"))
    assert summary["start"] == 0 and len(jobs(sql)) == 1
    assert state(sql)[0][:2] == (acme, "pending")
