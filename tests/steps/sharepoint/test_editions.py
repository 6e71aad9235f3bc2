"""ProvisioningWork 37 (panelflow.steps.sharepoint.editions): the farm's edition and version from
``(Get-SPFarm).BuildVersion`` / ``.Products`` at the PSRP boundary."""

from __future__ import annotations

from datetime import timedelta

from steps.sharepoint.records import FARM1, FARM2, T0, at, on

ENTERPRISE = "716578D2-2029-4FF2-8053-637391A7E683"
STANDARD = "4F593424-7178-467A-B612-D02D85C56940"
PROJECT = "0e4d8f8d-8a3c-4e69-8c59-2d4c5b3a9b11"    # a SKU of no known edition (e.g. an add-on)


def _run(panel_db, end=T0, **params):
    from panelflow.steps.sharepoint.editions import update_sharepoint_editions

    return update_sharepoint_editions(panel_db, at(end), params, None)


def _farm(name, build, products):
    return [{"Name": f"SharePoint_Config_{name}", "Id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
             "BuildVersion": build, "Products": products}]


def _editions(sql):
    return sql("SELECT name, edition, version, build_version, edition_changed_at FROM sharepoint_farms ORDER BY id")


def test_editions_from_the_farm_products_and_build_once(recorded_powershell, farms, panel_db, sql):
    recorded_powershell.answer("sharepoint/get_farm", _farm("SP2019", "16.0.10396.20000", [STANDARD, ENTERPRISE]),
                               when=on(FARM1))
    recorded_powershell.answer("sharepoint/get_farm", _farm("SPSE", "16.0.17928.20238", [STANDARD]), when=on(FARM2))

    out = _run(panel_db)
    assert (out["farms_synced"], out["editions_changed"], out["skipped"]) == (2, 2, {}), out
    assert _editions(sql) == [("SP2019", "Enterprise", "2019", "16.0.10396.20000", T0),
                              ("SPSE", "Standard", "Subscription Edition", "16.0.17928.20238", T0)]
    assert [(c.conn_host, c.parameters) for c in recorded_powershell.calls("sharepoint/get_farm")] == [
        (FARM1, {}), (FARM2, {})]

    assert _run(panel_db)["editions_changed"] == 0                      # a rerun changes nothing
    t1 = T0 + timedelta(days=1)                                          # SPSE upgraded to Enterprise
    recorded_powershell.answer("sharepoint/get_farm", _farm("SPSE", "16.0.17928.20238", [STANDARD, ENTERPRISE]),
                               when=on(FARM2))
    assert _run(panel_db, t1)["editions_changed"] == 1
    assert _editions(sql)[1][1:] == ("Enterprise", "Subscription Edition", "16.0.17928.20238", t1)
    assert _editions(sql)[0][4] == T0


def test_unknown_products_keep_the_edition_and_a_bad_answer_is_skipped(recorded_powershell, farms, panel_db, sql):
    sql("UPDATE sharepoint_farms SET edition = 'Standard' WHERE name = 'SP2019'")
    recorded_powershell.answer("sharepoint/get_farm", _farm("SP2019", "16.0.10396.20000", [PROJECT]), when=on(FARM1))
    recorded_powershell.answer("sharepoint/get_farm", [{"Name": "SharePoint_Config", "BuildVersion": "sixteen"}],
                               when=on(FARM2))
    out = _run(panel_db)
    assert out["farms_synced"] == 2 and out["editions_changed"] == 1, out   # SP2019's version became known
    assert out["skipped_examples"][0].startswith(
        f"farm SP2019 ({PROJECT}): no known SharePoint Server SKU among the farm's products: edition kept")
    assert "farm SPSE Get-SPFarm SharePoint_Config: BuildVersion: String should match" in out["skipped_examples"][1]
    assert [r[1:3] for r in _editions(sql)] == [("Standard", "2019"), (None, None)]
    assert _run(panel_db, sharepoint_skus={PROJECT: "Enterprise"})["editions_changed"] == 1   # the panel's own SKU
    assert _editions(sql)[0][1] == "Enterprise"


def test_no_farm_is_a_summary_not_a_failure(panel_db):
    assert _run(panel_db)["farms"] == 0
