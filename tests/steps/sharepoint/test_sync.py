"""SyncFromBackendWork 2 (panelflow.steps.sharepoint.sync): farms at the PSRP boundary and SharePoint Online
through the loopback Graph sandbox (sites, drives, group owners) into the real panel DB."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from panelflow.steps.sharepoint.sync import UNSAMPLED
from steps.sharepoint.records import (CONTOSO, FABRIKAM, FARM1, FARM2, GIB, MIB, NORTHWIND, T0, at, farm1_sites,
                                      farm2_sites, on)


def _sync(panel_db, end=T0):
    from panelflow.steps.sharepoint.sync import sync_sharepoint_data

    return sync_sharepoint_data(panel_db, at(end), {}, None)


def _sites(sql):
    return {url: rest for url, *rest in sql(
        "SELECT url, coalesce(farm_id::text, tenant_id::text), owners, quota_mb, storage_used_mb, lock_state,"
        " deleted_at IS NOT NULL FROM sharepoint_site_collections ORDER BY url")}


def test_farms_and_online_sites_sync_then_storage_is_sampled_once(recorded_powershell, farms, online, customer,
                                                                  panel_db, sql):
    sites = online(tenants=2)
    tenant0, tenant1 = sites.graph.tenant_id(0), sites.graph.tenant_id(1)
    sales = sites.add_site(0, "sales", owners=["megan@tenant0.example", "alex@tenant0.example"], used_bytes=3 * GIB)
    sites.add_site(0, "intranet", group=False, owners=["admin@tenant0.example"], used_bytes=512 * MIB)
    sites.add_site(1, "projects", owners=["lee@tenant1.example"], used_bytes=GIB)
    recorded_powershell.answer("sharepoint/get_site_collections", farm1_sites(), when=on(FARM1))
    recorded_powershell.answer("sharepoint/get_site_collections", farm2_sites(), when=on(FARM2))

    first = _sync(panel_db)
    assert first["farms"]["farms_synced"] == 2 and first["online"]["tenants_synced"] == 2, first
    assert (first["farms"]["sites_added"], first["online"]["sites_added"]) == (3, 3)
    assert first["farms"]["skipped_examples"] == [
        "farm SP2019 site collection 2: farm SP2019 site collection #2: Url: Field required"]
    stored = _sites(sql)
    assert stored[CONTOSO] == [str(farms["SP2019"]), ["CORP\\alice", "CORP\\bob"], Decimal("10240.000"),
                               Decimal("2560.000"), "Unlock", False]
    assert stored[FABRIKAM][2] is None                                     # quota 0: none
    assert stored[NORTHWIND][0] == str(farms["SPSE"])
    assert stored["https://tenant0.sharepoint.com/sites/sales"] == [
        tenant0, ["alex@tenant0.example", "megan@tenant0.example"], Decimal(26214400), Decimal("3072.000"), None,
        False]                                                             # a group site: its group's owners
    assert stored["https://tenant0.sharepoint.com/sites/intranet"][1] == ["System Account"]   # the drive's owner
    assert stored["https://tenant1.sharepoint.com/sites/projects"][0] == tenant1
    assert sql("SELECT site_id, customer_id FROM sharepoint_site_collections WHERE url LIKE '%%/sales'") == [
        (sales, customer["customer"])]                                     # the tenant's customer
    assert [c.parameters for c in recorded_powershell.calls("sharepoint/get_site_collections")] == [{}, {}]
    assert first["usage_samples"]["usage_samples"] == 0                    # no site is a subscription's yet

    # the panel links sites to subscriptions; the next run samples their storage
    sql("UPDATE sharepoint_site_collections SET subscription_id = %s WHERE url IN (%s, %s)",
        (customer["sub1"], CONTOSO, FABRIKAM))
    sql("UPDATE sharepoint_site_collections SET subscription_id = %s WHERE url LIKE '%%/sales'", (customer["sub2"],))
    t1 = T0 + timedelta(hours=1)
    second = _sync(panel_db, t1)
    assert second["usage_samples"]["usage_samples"] == 2, second
    assert (second["farms"]["sites_added"], second["farms"]["sites_changed"], second["online"]["sites_changed"]) == (
        0, 0, 0)
    assert sql("SELECT subscription_id, resource, sampled_at, used FROM resource_usage_samples ORDER BY 1") == [
        (customer["sub1"], "sharepoint_storage", t1, Decimal("2860.000")),
        (customer["sub2"], "sharepoint_storage", t1, Decimal("3072.000"))]

    rerun = _sync(panel_db, t1)                                            # a retry of the same interval
    assert rerun["usage_samples"]["usage_samples"] == 0
    assert sql("SELECT count(*) FROM resource_usage_samples")[0][0] == 2
    assert sql("SELECT count(*) FROM sharepoint_site_collections")[0][0] == 6

    # changed and gone, in both worlds
    sites.remove_site(0, sales)
    sites.update_site(1, next(iter(sites.sites[tenant1])), used=2 * GIB)
    recorded_powershell.answer("sharepoint/get_site_collections", farm1_sites(lock="ReadOnly")[:1], when=on(FARM1))
    t2 = t1 + timedelta(hours=1)
    third = _sync(panel_db, t2)
    assert (third["farms"]["sites_changed"], third["farms"]["sites_gone"]) == (1, 1), third
    assert (third["online"]["sites_changed"], third["online"]["sites_gone"]) == (1, 1)
    stored = _sites(sql)
    assert stored[CONTOSO][4] == "ReadOnly" and stored[FABRIKAM][5] is True
    assert stored["https://tenant0.sharepoint.com/sites/sales"][5] is True
    assert sql("SELECT changed_at FROM sharepoint_site_collections WHERE url = %s", (NORTHWIND,)) == [(T0,)]
    assert sql("SELECT subscription_id, used FROM resource_usage_samples WHERE sampled_at = %s", (t2,)) == [
        (customer["sub1"], Decimal("2560.000"))]                           # sub2's only site is gone


def test_a_farm_timing_out_fails_alone_and_its_subscriptions_wait(recorded_powershell, farms, customer, panel_db,
                                                                   sql):
    recorded_powershell.answer("sharepoint/get_site_collections", farm1_sites(), when=on(FARM1))
    recorded_powershell.answer("sharepoint/get_site_collections", farm2_sites(), when=on(FARM2))
    _sync(panel_db)
    sql("UPDATE sharepoint_site_collections SET subscription_id = %s WHERE url = %s", (customer["sub1"], CONTOSO))
    sql("UPDATE sharepoint_site_collections SET subscription_id = %s WHERE url = %s", (customer["sub2"], NORTHWIND))
    recorded_powershell.answer("sharepoint/get_site_collections", timeout=True, when=on(FARM2))
    t1 = T0 + timedelta(hours=1)

    out = _sync(panel_db, t1)
    assert (out["farms"]["farms_synced"], out["farms"]["farms_failed"]) == (1, 1), out
    assert out["farms"]["skipped_examples"][-1].startswith("farm SPSE: PowerShellUnavailable")
    assert sql("SELECT subscription_id FROM resource_usage_samples") == [(customer["sub1"],)]
    assert out["usage_samples"]["skipped_examples"] == [
        f"subscription {customer['sub2']}: {UNSAMPLED}"]
    assert _sites(sql)[NORTHWIND][5] is False                              # not taken for deleted
    assert sql("SELECT name, last_error IS NOT NULL, synced_at FROM sharepoint_farms ORDER BY id") == [
        ("SP2019", False, t1), ("SPSE", True, T0)]


def test_every_farm_failing_fails_the_task_after_the_tenants_synced(recorded_powershell, farms, online, panel_db, sql):
    from panelflow.step import PartsFailed

    sites = online(tenants=1)
    sites.add_site(0, "sales")
    recorded_powershell.answer("sharepoint/get_site_collections", hang_up=True)
    with pytest.raises(PartsFailed, match="farms: SharePointFarmsFailed"):
        _sync(panel_db)
    assert sql("SELECT url FROM sharepoint_site_collections") == [("https://tenant0.sharepoint.com/sites/sales",)]


def test_a_tenant_whose_credentials_are_refused_is_named_and_the_other_synced(online, panel_db, sql):
    sites = online(tenants=2)
    sites.add_site(0, "sales")
    sites.add_site(1, "projects")
    sites.graph.issuer.fail_tenant(sites.graph.tenant_id(1))
    out = _sync(panel_db)
    assert (out["online"]["tenants_synced"], out["online"]["tenants_failed"]) == (1, 1), out
    assert "credentials refused" in out["online"]["skipped_examples"][0]
    assert sql("SELECT url FROM sharepoint_site_collections") == [("https://tenant0.sharepoint.com/sites/sales",)]
    assert sql("SELECT last_error IS NOT NULL FROM sharepoint_online_tenants ORDER BY tenant_id = %s",
               (sites.graph.tenant_id(1),)) == [(False,), (True,)]


def test_nothing_configured_is_a_summary_not_a_failure(panel_db):
    out = _sync(panel_db)
    assert (out["farms"]["farms"], out["online"]["tenants"], out["usage_samples"]["usage_samples"]) == (0, 0, 0)


def test_a_listing_cut_by_the_bound_marks_nothing_gone(online, panel_db, sql):
    from panelflow.steps.sharepoint.sync import sync_sharepoint_data

    sites = online(tenants=1, page_size=2)                                 # getAllSites pages of two
    for name in ("a", "b", "c", "d", "e"):
        sites.add_site(0, name)
    first = _sync(panel_db)
    assert first["online"]["sites_added"] == 5 and sites.served[(sites.graph.tenant_id(0), "/sites/getAllSites")] == 3
    cut = sync_sharepoint_data(panel_db, at(T0 + timedelta(hours=1)), {"sharepoint_sites_per_tenant": 3}, None)
    assert (cut["online"]["sites_seen"], cut["online"]["sites_gone"]) == (3, 0), cut
    assert cut["online"]["skipped_examples"] == [
        f"tenant {sites.graph.tenant_id(0)}: more than 3 sites: the rest next run, none marked gone"]
    assert sql("SELECT count(*) FROM sharepoint_site_collections WHERE deleted_at IS NULL")[0][0] == 5


def test_a_site_whose_drive_is_refused_is_reported_and_not_taken_for_deleted(online, panel_db, sql):
    sites = online(tenants=1)
    sites.add_site(0, "sales")
    hidden = sites.add_site(0, "board")
    _sync(panel_db)
    sites.denied.add(hidden)
    out = _sync(panel_db, T0 + timedelta(hours=1))
    assert (out["online"]["sites_seen"], out["online"]["sites_gone"]) == (1, 0), out
    assert out["online"]["skipped_examples"] == [
        "site https://tenant0.sharepoint.com/sites/board: Graph refused the site's drive or owners (403 accessDenied)"]
    assert sql("SELECT url, deleted_at, synced_at FROM sharepoint_site_collections ORDER BY url") == [
        ("https://tenant0.sharepoint.com/sites/board", None, T0),
        ("https://tenant0.sharepoint.com/sites/sales", None, T0 + timedelta(hours=1))]
