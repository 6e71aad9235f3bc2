"""UsageReportWork 5 (panelflow.steps.sharepoint.usage): the portal usage report per month — Online from
Graph's site usage report (302 to a CSV download, in the loopback sandbox) and farms at the PSRP
boundary — stored once per source, month and site."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from steps.sharepoint.records import CONTOSO, FARM1, FARM2, GIB, MIB, farm1_sites, farm2_sites, on

APRIL_1 = datetime(2026, 4, 1, 3, 20, tzinfo=timezone.utc)


def _interval(end):
    from panelflow.step import Interval

    return Interval(end - timedelta(hours=12), end)


def _run(panel_db, end=APRIL_1):
    from panelflow.steps.sharepoint.usage import sharepoint_usage_report

    return sharepoint_usage_report(panel_db, _interval(end), {}, None)


def _rows(sql):
    return sql("SELECT coalesce(farm_id::text, tenant_id::text), month, site_url, owner, storage_used_mb,"
               " storage_allocated_mb, file_count, page_view_count, visited_page_count, last_activity_on,"
               " report_refresh_on, recorded_at FROM sharepoint_usage_reports ORDER BY site_url")


def test_the_month_is_stored_once_for_farms_and_tenants(recorded_powershell, farms, online, panel_db, sql):
    sites = online(tenants=1)
    tenant = sites.graph.tenant_id(0)
    sites.add_site(0, "sales", owners=["megan@tenant0.example"], used_bytes=3 * GIB, files=1200, page_views=845,
                   visited_pages=97)
    gone = sites.add_site(0, "archive", owners=["admin@tenant0.example"], used_bytes=GIB, last_activity=None)
    sites.remove_site(0, gone)
    recorded_powershell.answer("sharepoint/get_site_collections", farm1_sites(), when=on(FARM1))
    recorded_powershell.answer("sharepoint/get_site_collections", farm2_sites(), when=on(FARM2))

    out = _run(panel_db)
    assert out["month"] == "2026-03-01"
    assert (out["farms"]["reports_stored"], out["farms"]["rows_stored"]) == (2, 3), out
    assert (out["online"]["reports_stored"], out["online"]["rows_stored"]) == (1, 2)
    rows = {r[2]: r for r in _rows(sql)}
    assert rows["https://tenant0.sharepoint.com/sites/sales"] == (
        tenant, date(2026, 3, 1), "https://tenant0.sharepoint.com/sites/sales", "megan@tenant0.example",
        Decimal("3072.000"), Decimal(26214400), 1200, 845, 97, date(2026, 2, 20), date(2026, 2, 27), APRIL_1)
    assert rows["https://tenant0.sharepoint.com/sites/archive"][9] is None     # deleted in the period: kept
    assert rows[CONTOSO] == (str(farms["SP2019"]), date(2026, 3, 1), CONTOSO, "CORP\\alice", Decimal("2560.000"),
                             Decimal("10240.000"), None, 120, 40, date(2026, 2, 26), None, APRIL_1)
    assert out["farms"]["skipped_examples"] == [
        "farm SP2019 site collection 2: farm SP2019 site collection #2: Url: Field required"]
    assert sites.served[(tenant, "/reports/getSharePointSiteUsageDetail(period='D30')")] == 1

    later = _run(panel_db, APRIL_1 + timedelta(hours=12))                  # the afternoon run, and a rerun
    again = _run(panel_db, APRIL_1 + timedelta(hours=12))
    for run in (later, again):
        assert (run["farms"]["sources_already_stored"], run["online"]["sources_already_stored"]) == (2, 1), run
        assert run["farms"]["farms"] == 0 and run["online"]["tenants"] == 0   # no backend asked
    assert len(recorded_powershell.calls("sharepoint/get_site_collections")) == 2
    assert sql("SELECT count(*) FROM sharepoint_usage_reports")[0][0] == 5

    may = _run(panel_db, datetime(2026, 5, 1, 3, 20, tzinfo=timezone.utc))     # the next month: April
    assert may["month"] == "2026-04-01" and may["online"]["rows_stored"] == 2
    assert sql("SELECT month, count(*) FROM sharepoint_usage_reports GROUP BY 1 ORDER BY 1") == [
        (date(2026, 3, 1), 5), (date(2026, 4, 1), 5)]


def test_a_concealed_report_is_matched_by_site_id_and_unknown_sites_skipped(online, panel_db, sql):
    from panelflow.steps.sharepoint.sync import sync_sharepoint_data

    sites = online(tenants=1)
    sites.add_site(0, "sales", used_bytes=512 * MIB)
    sync_sharepoint_data(panel_db, _interval(APRIL_1 - timedelta(days=1)), {}, None)    # the panel knows "sales"
    sites.add_site(0, "secret")                                                        # … not this one
    sites.conceal = True

    out = _run(panel_db)
    assert out["online"]["rows_stored"] == 1, out
    assert sql("SELECT site_url, owner, storage_used_mb FROM sharepoint_usage_reports") == [
        ("https://tenant0.sharepoint.com/sites/sales", None, Decimal("512.000"))]
    assert out["online"]["skipped"] == {"site URL concealed in the report and the site is unknown to the panel": 1}


def test_a_report_without_its_columns_fails_the_tenant_and_stores_nothing(online, panel_db, sql, monkeypatch):
    import pytest

    from panelflow.step import PartsFailed
    from sandbox import graph_sites

    sites = online(tenants=1)
    sites.add_site(0, "sales")
    monkeypatch.setattr(graph_sites, "REPORT_COLUMNS", ("Report Refresh Date", "Site Id") + graph_sites.REPORT_COLUMNS[
        3:])                                                                          # "Site URL" dropped
    with pytest.raises(PartsFailed, match="online: SharePointTenantsFailed"):
        _run(panel_db)
    assert sql("SELECT count(*) FROM sharepoint_usage_reports")[0][0] == 0
    assert "has no column 'Site URL'" in sql("SELECT last_error FROM sharepoint_online_tenants")[0][0]
