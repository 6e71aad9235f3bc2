"""ProvisioningWork 37, "Update SharePoint server editions": each farm's edition and version from the farm.

``sharepoint/get_farm`` returns ``(Get-SPFarm).BuildVersion`` and ``.Products`` — the GUIDs of the
SKUs installed on the farm. The edition is the highest SKU found (Enterprise over Standard over
Foundation); the version follows from the build (15.x is 2013; 16.0 builds below 10000 are 2016,
below 14000 2019, later ones Subscription Edition). The SKU GUIDs below are the product ids
SharePoint Server's setup registers, as published for each release; they have not been read off a
real farm here, so a farm whose products hold none of them is reported and keeps its edition, and
``params["sharepoint_skus"]`` (``{guid: edition}``) adds or corrects SKUs without a release.
``edition_changed_at`` moves only when the edition or version changes: a rerun writes the same
values and changes nothing.
"""

from __future__ import annotations

from panelflow.step import StepReport
from panelflow.steps.sharepoint._backend import FarmRecord, for_each_farm, summary

EDITIONS = ("Foundation", "Standard", "Enterprise")        # lowest → highest
SKUS = {
    "9ff54ebc-8c12-47d7-854f-3865d4be8118": "Foundation",   # SharePoint Foundation 2013
    "c5d855ee-f32b-4a1c-97a8-f0a28ce02f9c": "Standard",     # SharePoint Server 2013 Standard
    "b7d84c2b-0754-49e4-b7be-7ee321dce0a9": "Enterprise",   # SharePoint Server 2013 Enterprise
    "4f593424-7178-467a-b612-d02d85c56940": "Standard",     # SharePoint Server 2016 / 2019 / SE Standard
    "716578d2-2029-4ff2-8053-637391a7e683": "Enterprise",   # SharePoint Server 2016 / 2019 / SE Enterprise
}

_UPDATE = """
WITH old AS (SELECT id, edition, version FROM sharepoint_farms WHERE id = %(farm)s FOR UPDATE)
UPDATE sharepoint_farms f
SET edition = coalesce(%(edition)s, old.edition), version = %(version)s, build_version = %(build)s,
    products = %(products)s, edition_synced_at = %(at)s,
    edition_changed_at = CASE WHEN (coalesce(%(edition)s, old.edition), %(version)s) IS DISTINCT FROM
                                   (old.edition, old.version) THEN %(at)s ELSE f.edition_changed_at END
FROM old WHERE f.id = old.id
RETURNING (coalesce(%(edition)s, old.edition), %(version)s) IS DISTINCT FROM (old.edition, old.version)
"""


def version_of(build: str) -> str | None:
    """SharePoint's release from a farm's build version (``16.0.10396.20000`` → ``2019``)."""
    major, _minor, build_no, _rev = (int(p) for p in build.split("."))
    if major == 15:
        return "2013"
    if major == 16:
        return "2016" if build_no < 10000 else "2019" if build_no < 14000 else "Subscription Edition"
    return None


def edition_of(products: list[str], skus: dict[str, str]) -> str | None:
    found = {skus[p.lower()] for p in products if p.lower() in skus}
    return max(found, key=EDITIONS.index) if found else None


def update_sharepoint_editions(panel_db, interval, params=None, log=None) -> dict:
    """Update SharePoint server editions."""
    at = interval.end
    skus = {**SKUS, **{k.lower(): v for k, v in ((params or {}).get("sharepoint_skus") or {}).items()
                       if v in EDITIONS}}
    report = StepReport().zero("editions_changed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, farm) -> None:
            from panelflow.hooks.powershell import parse_records

            records = parse_records(FarmRecord, hook.run_script("sharepoint/get_farm")[:1], report,
                                    f"farm {farm.name} Get-SPFarm")
            if not records:
                return
            record = records[0]
            edition, version = edition_of(record.Products, skus), version_of(record.BuildVersion)
            if edition is None:
                report.skip("no known SharePoint Server SKU among the farm's products: edition kept",
                            f"farm {farm.name} ({', '.join(record.Products) or 'no products'})")
            if version is None:
                report.skip("a build version of no known SharePoint release",
                            f"farm {farm.name} ({record.BuildVersion})")
            (changed,) = conn.execute(_UPDATE, {"farm": farm.id, "edition": edition, "version": version,
                                                "build": record.BuildVersion, "products": record.Products,
                                                "at": at}).fetchone()
            report.add("editions_changed", int(bool(changed)))

        for_each_farm(conn, at, report, log, work)
    return summary(report, log, "SharePoint editions")
