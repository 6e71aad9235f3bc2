"""SyncFromBackendWork 2, "Sync SharePoint data from backend": every site collection of every farm and
opted-in SharePoint Online tenant into ``sharepoint_site_collections`` — added, changed, gone —
with owners, quota and storage used; then storage used per subscription as a usage sample.

- **Farms** (PowerShell remoting): ``sharepoint/get_site_collections`` (``Get-SPSite -Limit All``)
  per farm; owners are the site's owner and secondary contact, sizes bytes → MB.
- **Online** (Microsoft Graph): ``GET /sites/getAllSites`` (app-only; personal OneDrive sites
  left out), then per site ``GET /sites/{id}/drive`` — the document library's ``quota.used`` /
  ``quota.total`` — and, for a group-connected site, ``GET /groups/{id}/owners``: a group site's
  owners are its Microsoft 365 group's owners (otherwise the drive's owner user). At most
  ``sharepoint_sites_per_tenant`` (5000) sites a run, ``SITE_CONCURRENCY`` at a time; a listing cut
  by that bound marks nothing gone (reported). A site whose drive cannot be read is reported and
  skipped, and not taken for deleted.
- **Usage samples**: per subscription, the storage used by its live site collections (MB) as a
  ``resource_usage_samples`` row of resource ``sharepoint_storage`` at the run's clock — only when
  every live site of it was listed by this run, since a farm or tenant that failed would make the
  usage look smaller than it is (those subscriptions are named and sampled by a later run).

Reruns: sites are keyed by URL and samples by (subscription, resource, clock): a rerun of the same
interval changes nothing and adds no row.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from panelflow.step import StepReport, run_parts
from panelflow.steps.sharepoint._backend import (URL, FarmSite, farm_site_row, for_each_farm, for_each_tenant, mb,
                                                 merge_sites, site_url, summary)

SITES_PER_TENANT = 5000
SITE_CONCURRENCY = 8
SITE_SELECT = "id,name,displayName,webUrl,isPersonalSite"
UNSAMPLED = ("not sampled: a site of the subscription was not read this run (its farm or tenant failed, or its "
             "record was skipped)")

_SAMPLES = """
WITH per_subscription AS (
    SELECT subscription_id, round(coalesce(sum(storage_used_mb), 0), 3) AS used,
           bool_and(synced_at = %(at)s) AS complete
    FROM sharepoint_site_collections
    WHERE subscription_id IS NOT NULL AND deleted_at IS NULL
    GROUP BY subscription_id
), written AS (
    INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used)
    SELECT subscription_id, 'sharepoint_storage', %(at)s, used FROM per_subscription WHERE complete
    ON CONFLICT (subscription_id, resource, sampled_at) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM written),
       (SELECT count(*) FROM per_subscription WHERE NOT complete),
       (SELECT (array_agg(subscription_id ORDER BY subscription_id))[1:%(keep)s] FROM per_subscription
        WHERE NOT complete)
"""


def _sync_farm(conn, report: StepReport, at, hook, farm) -> None:
    from panelflow.hooks.powershell import parse_records

    rows = hook.run_script("sharepoint/get_site_collections")
    sites = parse_records(FarmSite, rows, report, f"farm {farm.name} site collection")
    listed = [site_url(r["Url"]) for r in rows if isinstance(r, dict) and isinstance(r.get("Url"), str)]
    merge_sites(conn, report, at, [farm_site_row(s) for s in sites], listed, farm=farm.id)


async def _online_site(hook, site: dict, report: StepReport, gate: asyncio.Semaphore) -> dict | None:
    """One Graph site → a site-collection row (None: reported and skipped)."""
    from panelflow.hooks.microsoft_graph import GraphRequestRejected

    url = site.get("webUrl")
    async with gate:
        try:
            drive = (await hook.get(f"sites/{quote(site['id'], safe=',')}/drive", collection=False)).body
            owner = drive.get("owner") or {}
            group = (owner.get("group") or {}).get("id")
            if group:
                page = await hook.get(f"groups/{quote(group, safe='')}/owners?$select=id,userPrincipalName,mail")
                owners = [u.get("userPrincipalName") or u.get("mail") for u in page.value]
            else:
                user = owner.get("user") or {}
                owners = [user.get("email") or user.get("displayName")]
        except GraphRequestRejected as exc:        # this site only (gone since the listing, no library …)
            report.skip(f"Graph refused the site's drive or owners ({exc.status} {exc.code})", f"site {url}")
            return None
    quota = drive.get("quota") or {}
    used, total = quota.get("used"), quota.get("total")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (used, total)):
        report.skip("the site's drive has no byte quota (quota.used / quota.total)", f"site {url}")
        return None
    return {"url": site_url(url), "site_id": site["id"], "title": site.get("displayName"),
            "owners": sorted(o for o in owners if o), "template": None, "quota_mb": mb(total) or None,
            "storage_used_mb": mb(used), "lock_state": None}


async def _sync_tenant(conn, report: StepReport, at, limit: int, hook, tenant) -> None:
    listing: list[dict] = []
    complete = True
    async for page in hook.pages(f"sites/getAllSites?$select={SITE_SELECT}&$top=200"):
        for site in page.value:
            if site.get("isPersonalSite"):
                continue
            if not isinstance(site.get("webUrl"), str) or not URL.match(site["webUrl"]):
                report.skip("a site without an absolute webUrl", f"tenant {tenant.tenant_id} site {site['id']}")
                continue
            listing.append(site)
        if len(listing) >= limit:
            complete = page.next_link is None and len(listing) == limit
            break
    if not complete:
        report.skip(f"more than {limit} sites: the rest next run, none marked gone", f"tenant {tenant.tenant_id}")
    listing = listing[:limit]
    gate = asyncio.Semaphore(SITE_CONCURRENCY)
    rows = await asyncio.gather(*(_online_site(hook, s, report, gate) for s in listing))
    merge_sites(conn, report, at, [r for r in rows if r is not None], [site_url(s["webUrl"]) for s in listing],
                tenant=tenant.tenant_id, customer=tenant.customer_id, complete=complete)


def sync_sharepoint_data(panel_db, interval, params=None, log=None) -> dict:
    """Sync SharePoint data from backend.

    Farms, Online tenants and the usage samples are independent parts (:func:`panelflow.step.run_parts`):
    every farm failing must not keep the tenants from syncing, and the samples are taken from what
    did sync; the task still fails afterwards when a whole part failed.
    """
    at = interval.end
    limit = int((params or {}).get("sharepoint_sites_per_tenant") or SITES_PER_TENANT)
    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def farms() -> dict:
            report = _site_report()
            for_each_farm(conn, at, report, log, lambda hook, farm: _sync_farm(conn, report, at, hook, farm),
                          listed=True)
            return summary(report, log, "SharePoint farms")

        def online() -> dict:
            report = _site_report()
            for_each_tenant(conn, at, report, log,
                            lambda hook, tenant: _sync_tenant(conn, report, at, limit, hook, tenant), listed=True)
            return summary(report, log, "SharePoint Online")

        def samples() -> dict:
            report = StepReport()
            written, unsampled, examples = conn.execute(_SAMPLES, {"at": at, "keep": report.keep}).fetchone()
            report.add("usage_samples", written)
            report.skip_grouped([(UNSAMPLED,
                                  unsampled, [f"subscription {s}" for s in examples or ()])] if unsampled else [])
            return summary(report, log, "SharePoint storage samples")

        return run_parts([("farms", farms), ("online", online), ("usage_samples", samples)],
                         what="SharePoint sync", log=log)


def _site_report() -> StepReport:
    return StepReport().zero("sites_seen", "sites_added", "sites_changed", "sites_gone")

