"""UsageReportWork 6: the Lync SPLA report from the pools' Get-CsUser answers, once per pool and month."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from panelflow.step import Interval
from panelflow.steps.lync.spla import lync_spla_report, report_month
from steps.lync.records import FE01, FE02, POOL01_FQDN, POOL02_FQDN, on

LONDON = ZoneInfo("Europe/London")


def run_at(year, month, day, hour=3, minute=20) -> Interval:
    """UsageReportWork's fixed-time run (no data interval: start = end = the run's time)."""
    end = datetime(year, month, day, hour, minute, tzinfo=LONDON).astimezone(ZoneInfo("UTC"))
    return Interval(end, end, "Europe/London")


def pool_user(sip, enabled=True, voice=False, conferencing=""):
    return {"SipAddress": sip, "Enabled": enabled, "EnterpriseVoiceEnabled": voice, "ConferencingPolicy": conferencing,
            "VoicePolicy": "UK-National" if voice else ""}


POOL01_USERS = [
    pool_user("sip:a1@contoso.com"),                                               # Standard
    pool_user("sip:a2@contoso.com", conferencing="Hosted-Conferencing"),           # Enterprise
    pool_user("sip:a3@contoso.com", voice=True, conferencing="Hosted-Conferencing"),  # Plus (counted once)
    pool_user("sip:a4@contoso.com", voice=True),                                   # Plus
    pool_user("sip:a5@contoso.com", enabled=False, voice=True),                    # suspended: not licensed
    pool_user("SIP:A1@Contoso.com"),                                               # the same user twice: once
    {"SipAddress": None, "Enabled": True},                                         # malformed: reported
]


def reports(sql):
    return sql("SELECT p.name, r.month, r.edition, r.users FROM lync_spla_reports r"
               " JOIN lync_pools p ON p.id = r.pool_id ORDER BY p.name, r.month, r.edition")


def test_report_month_is_the_month_before_the_clock_in_the_thread_zone():
    assert report_month(run_at(2026, 4, 1)) == date(2026, 3, 1)
    assert report_month(run_at(2026, 1, 1)) == date(2025, 12, 1)
    # 00:30 on 1 June in London is still 31 May in UTC: the London day decides
    assert report_month(run_at(2026, 6, 1, 0, 30)) == date(2026, 5, 1)


def test_spla_report_per_pool_and_edition_written_once(recorded_powershell, pools, panel_db, sql):
    ps = recorded_powershell
    ps.answer("lync/get_pool_users", POOL01_USERS, when=on(FE01))
    ps.answer("lync/get_pool_users", timeout=True, when=on(FE02))

    summary = lync_spla_report(panel_db, run_at(2026, 4, 1))
    assert summary["month"] == "2026-03-01" and summary["failed_pools"] == ["POOL02"]
    assert (summary["pools"], summary["pools_reported"], summary["pools_failed"]) == (2, 1, 1)
    assert (summary["users_standard"], summary["users_enterprise"], summary["users_plus"]) == (1, 1, 2)
    assert summary["skipped"]["Lync user #6: SipAddress: Input should be a valid string"] == 1
    assert [k for k in summary["skipped"] if "Read timed out" in k] != []
    assert [(c.conn_host, c.parameters) for c in ps.calls("lync/get_pool_users")] == [
        (FE01, {"RegistrarPool": POOL01_FQDN}), (FE02, {"RegistrarPool": POOL02_FQDN})]
    assert reports(sql) == [("POOL01", date(2026, 3, 1), "Enterprise", 1), ("POOL01", date(2026, 3, 1), "Plus", 2),
                            ("POOL01", date(2026, 3, 1), "Standard", 1)]

    # the 15:20 run: POOL02 answers (no users at all: three zero rows); POOL01 is not asked again
    ps.answer("lync/get_pool_users", [], when=on(FE02))
    ps.answer("lync/get_pool_users", [pool_user("sip:late@contoso.com", voice=True)], when=on(FE01))
    sent = len(ps.sent)
    summary = lync_spla_report(panel_db, run_at(2026, 4, 1, 15, 20))
    assert [c.conn_host for c in ps.sent[sent:]] == [FE02]
    assert (summary["pools_already_reported"], summary["pools_reported"]) == (1, 1)
    assert [r for r in reports(sql) if r[0] == "POOL02"] == [
        ("POOL02", date(2026, 3, 1), e, 0) for e in ("Enterprise", "Plus", "Standard")]

    # a rerun of either run changes nothing and asks nobody
    before, sent = reports(sql), len(ps.sent)
    lync_spla_report(panel_db, run_at(2026, 4, 1))
    assert reports(sql) == before and len(ps.sent) == sent
    assert sql("SELECT count(DISTINCT reported_at) FROM lync_spla_reports") == [(2,)]


def test_spla_report_with_no_pools_is_nothing_to_do(panel_db):
    summary = lync_spla_report(panel_db, run_at(2026, 4, 1))
    assert (summary["pools"], summary["pools_reported"], summary["failed_pools"]) == (0, 0, [])
