"""GroupActionWorkSP 1: the SharePoint group actions (site collections), on farms and Online, exactly once.

:func:`process_sharepoint_group_actions` works the ``sp`` queue of ``group_action_jobs`` through
:func:`panelflow.services.group_actions.process_group_actions`. Payloads (sizes in MB, as the panel
enters them)::

    create_site_collection  farm, url, owner, secondary_owner?, template? ("STS#3"), title?,
                            quota_mb?, warning_mb?, customer_id?, subscription_id?
    set_quota               url, quota_mb (0: no quota), warning_mb? (default 90 % of the quota)
    lock                    url, lock_state? (NoAdditions | ReadOnly | NoAccess; default NoAccess)
    unlock                  url
    delete                  url

A job names its site by URL; a site the panel knows is worked on its own farm (``farm`` is needed
only to create). Every action sets a state, so a retried job does it once: create_site looks the
URL up first and returns the site that is there (``created: false``), set_quota and lock/unlock
set a value (``Set-SPSite``), delete of a site already gone succeeds (``already_absent``).

SharePoint Online (a job naming ``tenant_id``, or a URL the panel holds for a tenant) goes through
Microsoft Graph on the tenant's connection, as far as Graph reaches::

    create_site_collection  tenant_id, alias, title, owner (a UPN), visibility? (Private | Public),
                            customer_id?, subscription_id?
    delete                  url (of a group-connected site the panel knows)

Graph creates a team site only with its Microsoft 365 group: create looks the group up by its
alias first (``$filter=mailNickname eq …``) and creates it (``POST /groups``, Unified, the owner
bound) only when there is none, so a retry — also one after a lost answer — makes no second group;
the group's site (``GET /groups/{id}/sites/root``) is recorded when SharePoint has provisioned it,
otherwise the row holds the URL SharePoint gives a new group site
(``https://<host>/sites/<alias>``) and SyncFromBackendWork 2 completes it. Delete deletes the
site's group (``DELETE /groups/{id}``, which deletes its site; both recoverable for 30 days); a
404 means already gone. Refused with the reason: set_quota, lock and unlock (Graph has no API
for a site's quota or lock state — ``Set-SPOSite``), and delete of a site without a group.

Errors: the farm's refusal (the script's error) fails the job with the farm's message; a farm that
cannot be reached or times out — or whose connection is missing — puts the job back for a later
run, and the rest of the run's jobs for that farm too, untried. Online: Graph unavailable (past the
hook's retries) or the tenant's credentials refused puts the job back; Graph refusing the request
(a 4xx) fails it with Graph's message. Payloads are read by
:class:`panelflow.services.group_actions.Payload`; every value reaches the farm as a PSRP
parameter, never in script text. One PowerShell session per farm serves the whole run.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from panelflow.services.group_actions import (JobDeferred, JobRejected, Payload, PowerShellSessions,
                                              process_group_actions)
from panelflow.step import first_line
from panelflow.steps.sharepoint._backend import (LOCK_STATES, MIB, URL, Farm, FarmSite, Tenant, farm_named, farms, mb,
                                                 site_url)

BACKEND = "sp"
ACTIONS = ("create_site_collection", "set_quota", "lock", "unlock", "delete")
QUOTA_MB = (0, 25 * 1024 * 1024)          # 25 TB (SharePoint Online's ceiling for a site): a typo's bound
WARNING_SHARE = 0.9
ROW_ID = (1, 2**63 - 1)
TEMPLATE = re.compile(r"^[A-Za-z0-9_]+#\d+$")
ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")     # a group's mailNickname (no spaces, no quotes)
ONLINE_REFUSED = {
    "set_quota": "Microsoft Graph has no API to set a site's storage quota (Set-SPOSite -StorageQuota)",
    "lock": "Microsoft Graph has no API to lock a site (Set-SPOSite -LockState)",
    "unlock": "Microsoft Graph has no API to unlock a site (Set-SPOSite -LockState)",
    "delete": "Microsoft Graph deletes only a group-connected site, with its group; this site has no group "
              "(Remove-SPOSite)",
}

_EXISTS = {"customer": "SELECT 1 FROM customers WHERE id = %s",
           "subscription": "SELECT 1 FROM subscriptions WHERE id = %s"}

_TENANT = """
SELECT t.tenant_id::text, t.conn_id, t.customer_id, t.enabled AND coalesce(o.enabled, false)
FROM m365_tenants t LEFT JOIN sharepoint_online_tenants o USING (tenant_id) WHERE t.tenant_id::text = %s
"""

_SITE = "SELECT id, farm_id, tenant_id::text, deleted_at FROM sharepoint_site_collections WHERE url = %s"
_SITE_ID = "SELECT site_id FROM sharepoint_site_collections WHERE url = %s AND tenant_id = %s::uuid"

_CREATED = """
INSERT INTO sharepoint_site_collections AS s (farm_id, tenant_id, url, site_id, title, owners, template, quota_mb,
    storage_used_mb, customer_id, subscription_id, first_seen_at, synced_at, changed_at)
VALUES (%(farm)s, %(tenant)s, %(url)s, %(site_id)s, %(title)s, %(owners)s, %(template)s, %(quota)s, %(used)s,
        %(customer)s, %(subscription)s, %(at)s, %(at)s, %(at)s)
ON CONFLICT (url) DO UPDATE
SET site_id = EXCLUDED.site_id, title = EXCLUDED.title, owners = EXCLUDED.owners, template = EXCLUDED.template,
    quota_mb = EXCLUDED.quota_mb, storage_used_mb = EXCLUDED.storage_used_mb,
    customer_id = coalesce(EXCLUDED.customer_id, s.customer_id),
    subscription_id = coalesce(EXCLUDED.subscription_id, s.subscription_id),
    synced_at = EXCLUDED.synced_at, changed_at = EXCLUDED.changed_at, deleted_at = NULL
WHERE (s.farm_id, s.tenant_id) IS NOT DISTINCT FROM (EXCLUDED.farm_id, EXCLUDED.tenant_id)
"""

_SET = """
UPDATE sharepoint_site_collections
SET quota_mb = %(quota)s, storage_used_mb = coalesce(%(used)s, storage_used_mb), lock_state = %(lock)s,
    changed_at = %(at)s
WHERE url = %(url)s AND farm_id = %(farm)s
  AND (quota_mb, storage_used_mb, lock_state) IS DISTINCT FROM
      (%(quota)s, coalesce(%(used)s, storage_used_mb), %(lock)s)
"""

_DELETED = """
UPDATE sharepoint_site_collections SET deleted_at = coalesce(deleted_at, %(at)s), changed_at = %(at)s
WHERE url = %(url)s AND (farm_id, tenant_id) IS NOT DISTINCT FROM (%(farm)s::bigint, %(tenant)s::uuid)
  AND deleted_at IS NULL
"""


def _bytes(megabytes: int | None):
    """MB as PSRP Int64 bytes (pypsrp would send any Python int as an Int32)."""
    from pypsrp.serializer import TaggedValue

    return None if megabytes is None else TaggedValue("I64", megabytes * MIB)


def _owner_of(conn, p: Payload) -> tuple[int | None, int | None]:
    """The panel's customer and subscription a new site is for (both optional), each known to the panel."""
    ids = {"customer": p.integer("customer_id", *ROW_ID), "subscription": p.integer("subscription_id", *ROW_ID)}
    for what, row_id in ids.items():
        if row_id is not None and not conn.execute(_EXISTS[what], (row_id,)).fetchone():
            raise JobRejected(f"no {what} {row_id}")
    return ids["customer"], ids["subscription"]


def _parse(model, rows: list, farm: Farm, script: str):
    from pydantic import ValidationError

    if not rows:
        raise JobRejected(f"{farm.name}: {script} returned nothing")
    try:
        return model.model_validate(rows[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobRejected(f"{farm.name}: {script} returned a malformed record: "
                          f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


class _SpJobs:
    """The handler of the ``sp`` queue: one PowerShell session per farm for the whole run."""

    def __init__(self, conn, at: datetime, log):
        self.conn, self.at, self.log = conn, at, log
        self.sessions = PowerShellSessions(log)
        self.online = _OnlineJobs(conn, at)

    def close(self) -> None:
        self.sessions.close()
        self.online.close()

    def run(self, farm: Farm, script: str, parameters: dict) -> list:
        return self.sessions.run(farm.name, farm.conn_id, script, parameters)

    # -- the site a job names
    def _farm(self, name: str) -> Farm:
        found = farm_named(self.conn, name)
        if found is None:
            raise JobRejected(f"no SharePoint farm {name!r}")
        if not found[1]:
            raise JobRejected(f"SharePoint farm {found[0].name} is disabled")
        return found[0]

    def target(self, action: str, p: Payload) -> tuple[Farm, str, str]:
        """The farm, the URL as the job gave it (sent to the farm) and the panel's key of it."""
        url = p.text("url", limit=2000)
        if not URL.match(url):
            raise JobRejected(f"payload 'url' is not an absolute http(s) URL: {url!r}")
        row = self.conn.execute(_SITE, (site_url(url),)).fetchone()
        name = p.text("farm", required=row is None or action == "create_site_collection", limit=100)
        if name is not None:
            farm = self._farm(name)
            if row is not None and row[1] != farm.id:
                raise JobRejected(f"{url} belongs to another SharePoint farm in the panel")
        else:
            found = [f for f in farms(self.conn) if f.id == row[1]]
            if not found:
                raise JobRejected(f"the SharePoint farm of {url} is disabled")
            farm = found[0]
        return farm, url, site_url(url)

    def handle(self, action: str, payload: dict) -> dict:
        p = Payload(payload)
        tenant = self._online_tenant(p)
        if tenant is None:
            return getattr(self, action)(action, p)
        if action not in ("create_site_collection", "delete"):
            raise JobRejected(f"SharePoint Online: {ONLINE_REFUSED[action]}")
        return self.online.run(action, tenant, p)

    def _online_tenant(self, p: Payload) -> Tenant | None:
        """The Online tenant a job is for: its ``tenant_id``, or the tenant of the site its URL names."""
        tenant = p.text("tenant_id", required=False, limit=36)
        if tenant is None:
            url = p.get("url")
            row = self.conn.execute(_SITE, (site_url(url),)).fetchone() if isinstance(url, str) else None
            if row is None or row[2] is None:
                return None
            tenant = row[2]
        row = self.conn.execute(_TENANT, (tenant.lower(),)).fetchone()
        if row is None:
            raise JobRejected(f"tenant {tenant} is not linked (no m365_tenants row)")
        if not row[3]:
            raise JobRejected(f"tenant {tenant} is disabled or its SharePoint Online is not managed by the panel")
        return Tenant(*row[:3])

    # -- the actions
    def _quota(self, p: Payload, required: bool) -> tuple[int | None, int | None]:
        quota = p.integer("quota_mb", *QUOTA_MB, required=required)
        warning = p.integer("warning_mb", *QUOTA_MB)
        if quota is None:
            if warning is not None:
                raise JobRejected("payload 'warning_mb' needs 'quota_mb'")
            return None, None
        if warning is None:
            warning = int(quota * WARNING_SHARE)
        if warning > quota:
            raise JobRejected("payload 'warning_mb' is above 'quota_mb'")
        return quota, warning

    def create_site_collection(self, action: str, p: Payload) -> dict:
        farm, url, key = self.target(action, p)
        owner = p.text("owner", limit=255)
        template = p.text("template", required=False, limit=100)
        if template is not None and not TEMPLATE.match(template):
            raise JobRejected(f"payload 'template' is not a web template name like STS#3: {template!r}")
        quota, warning = self._quota(p, required=False)
        customer, subscription = _owner_of(self.conn, p)
        rows = self.run(farm, "sharepoint/create_site", {
            "Url": url, "OwnerAlias": owner, "SecondaryOwnerAlias": p.text("secondary_owner", required=False),
            "Template": template, "Name": p.text("title", required=False), "MaxSizeBytes": _bytes(quota or None),
            "WarningSizeBytes": _bytes(warning if quota else None)})
        site = _parse(FarmSite, rows, farm, "create_site")
        self.conn.execute(_CREATED, {"farm": farm.id, "tenant": None, "url": key, "site_id": site.Id,
                                     "title": site.Title,
                                     "owners": site.owners(), "template": site.Template, "quota": site.quota_mb(),
                                     "used": mb(site.StorageUsedBytes), "customer": customer,
                                     "subscription": subscription, "at": self.at})
        return {"farm": farm.name, "url": site.Url, "site_id": site.Id, "created": bool(site.Created),
                "quota_mb": site.quota_mb()}

    def _set(self, farm: Farm, url: str, key: str, parameters: dict) -> FarmSite:
        site = _parse(FarmSite, self.run(farm, "sharepoint/set_site", {"Url": url, **parameters}), farm, "set_site")
        self.conn.execute(_SET, {"farm": farm.id, "url": key, "quota": site.quota_mb(), "lock": site.LockState,
                                 "used": mb(site.StorageUsedBytes), "at": self.at})
        return site

    def set_quota(self, action: str, p: Payload) -> dict:
        farm, url, key = self.target(action, p)
        quota, warning = self._quota(p, required=True)
        site = self._set(farm, url, key, {"MaxSizeBytes": _bytes(quota), "WarningSizeBytes": _bytes(warning)})
        return {"farm": farm.name, "url": site.Url, "quota_mb": site.quota_mb(),
                "storage_used_mb": mb(site.StorageUsedBytes)}

    def lock(self, action: str, p: Payload) -> dict:
        state = p.get("lock_state", "NoAccess")
        if state not in LOCK_STATES[1:]:
            raise JobRejected(f"payload 'lock_state' must be one of {', '.join(LOCK_STATES[1:])}")
        farm, url, key = self.target(action, p)
        site = self._set(farm, url, key, {"LockState": state})
        return {"farm": farm.name, "url": site.Url, "lock_state": site.LockState}

    def unlock(self, action: str, p: Payload) -> dict:
        farm, url, key = self.target(action, p)
        site = self._set(farm, url, key, {"LockState": "Unlock"})
        return {"farm": farm.name, "url": site.Url, "lock_state": site.LockState}

    def delete(self, action: str, p: Payload) -> dict:
        farm, url, key = self.target(action, p)
        rows = self.run(farm, "sharepoint/remove_site", {"Url": url})
        if not rows or not isinstance(rows[0], dict) or not isinstance(rows[0].get("Found"), bool):
            raise JobRejected(f"{farm.name}: remove_site returned a malformed record: {rows[:1]!r}")
        self.conn.execute(_DELETED, {"farm": farm.id, "tenant": None, "url": key, "at": self.at})
        outcome = {"farm": farm.name, "url": url, "deleted": rows[0]["Found"]}
        if not rows[0]["Found"]:
            outcome["already_absent"] = True
        return outcome


class _OnlineJobs:
    """The Online side of the queue: Microsoft Graph on the tenant's connection, all on one event loop."""

    def __init__(self, conn, at: datetime):
        self.conn, self.at = conn, at
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hooks: dict[str, Any] = {}

    def close(self) -> None:
        if self.loop is None:
            return

        async def _close():
            for hook in self.hooks.values():
                await hook.aclose()

        try:
            self.loop.run_until_complete(_close())
        finally:
            self.loop.close()

    def run(self, action: str, tenant: Tenant, p: Payload) -> dict:
        from airflow.exceptions import AirflowException

        from panelflow.hooks.microsoft_graph import (GraphAuthenticationError, GraphError, GraphUnavailable,
                                                     MicrosoftGraphHook)

        self.loop = self.loop or asyncio.new_event_loop()
        fresh = tenant.conn_id not in self.hooks
        hook = self.hooks.setdefault(tenant.conn_id, MicrosoftGraphHook(tenant.conn_id))

        async def go():
            if fresh:
                await hook.__aenter__()    # forgets an adapter another (ended) loop left cached
            return await getattr(self, action)(hook, tenant, p)

        try:
            return self.loop.run_until_complete(go())
        except (GraphUnavailable, GraphAuthenticationError, AirflowException) as exc:
            raise JobDeferred(f"tenant {tenant.tenant_id}: {first_line(exc)}") from exc
        except GraphError as exc:          # refused (4xx) or malformed: not retried
            raise JobRejected(f"tenant {tenant.tenant_id}: {first_line(exc)}") from exc

    @staticmethod
    async def _group(hook, alias: str) -> dict | None:
        page = await hook.get(f"groups?$filter=mailNickname eq '{alias}'&$select=id,displayName,mailNickname")
        return page.value[0] if page.value else None

    async def create_site_collection(self, hook, tenant: Tenant, p: Payload) -> dict:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        alias, title, owner = p.text("alias", limit=64), p.text("title"), p.text("owner")
        if not ALIAS.match(alias):
            raise JobRejected(f"payload 'alias' is not a group alias (letters, digits, . _ -): {alias!r}")
        visibility = p.get("visibility", "Private")
        if visibility not in ("Private", "Public"):
            raise JobRejected("payload 'visibility' must be Private or Public")
        customer, subscription = _owner_of(self.conn, p)
        group, created = await self._group(hook, alias), False
        if group is None:
            try:
                user = (await hook.send("GET", f"users/{quote(owner, safe='@')}?$select=id")).body or {}
            except GraphRequestRejected as exc:
                raise JobRejected(f"owner {owner} is not a user of the tenant ({exc.status})") from None
            body = {"displayName": title, "mailNickname": alias, "mailEnabled": True, "securityEnabled": False,
                    "groupTypes": ["Unified"], "visibility": visibility,
                    "owners@odata.bind": [f"https://graph.microsoft.com/v1.0/users/{user.get('id')}"]}
            try:
                group, created = (await hook.send("POST", "groups", body=body)).body or {}, True
            except GraphRequestRejected as exc:
                if exc.status != 400 or "already exists" not in str(exc):
                    raise
                group = await self._group(hook, alias)   # our own POST, its answer lost: the group is there
                if group is None:
                    raise
        site = await self._group_site(hook, group["id"])
        if site is None:                       # SharePoint is still provisioning it: the URL it will have
            root = (await hook.get("sites/root?$select=webUrl", collection=False)).body
            site = {"id": None, "webUrl": f"{root['webUrl'].rstrip('/')}/sites/{alias}", "displayName": title}
        self.conn.execute(_CREATED, {"farm": None, "tenant": tenant.tenant_id, "url": site_url(site["webUrl"]),
                                     "site_id": site["id"], "title": site.get("displayName"), "owners": [owner],
                                     "template": None, "quota": None, "used": None,
                                     "customer": customer or tenant.customer_id, "subscription": subscription,
                                     "at": self.at})
        return {"tenant_id": tenant.tenant_id, "group_id": group["id"], "url": site["webUrl"], "site_id": site["id"],
                "created": created, "site_provisioned": site["id"] is not None}

    @staticmethod
    async def _group_site(hook, group_id: str) -> dict | None:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        try:
            return (await hook.get(f"groups/{quote(group_id, safe='')}/sites/root", collection=False)).body
        except GraphRequestRejected as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, hook, tenant: Tenant, p: Payload) -> dict:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        url = p.text("url", limit=2000)
        row = self.conn.execute(_SITE_ID, (site_url(url), tenant.tenant_id)).fetchone()
        if row is None or row[0] is None:
            raise JobRejected(f"{url} is not a SharePoint Online site the panel has synced")
        outcome = {"tenant_id": tenant.tenant_id, "url": url, "deleted": True}
        try:
            drive = (await hook.get(f"sites/{quote(row[0], safe=',')}/drive", collection=False)).body
            group = ((drive.get("owner") or {}).get("group") or {}).get("id")
            if not group:
                raise JobRejected(f"SharePoint Online: {ONLINE_REFUSED['delete']}")
            outcome["group_id"] = group
            await hook.send("DELETE", f"groups/{quote(group, safe='')}")
        except GraphRequestRejected as exc:
            if exc.status != 404:
                raise
            outcome.update(deleted=False, already_absent=True)
        self.conn.execute(_DELETED, {"farm": None, "tenant": tenant.tenant_id, "url": site_url(url), "at": self.at})
        return outcome


def process_sharepoint_group_actions(panel_db, interval, params=None, log=None) -> dict:
    """Process SharePoint group actions."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        jobs = _SpJobs(conn, interval.end, log)
        try:
            return process_group_actions(panel_db, BACKEND, jobs.handle, interval, params, log, actions=ACTIONS,
                                         conn=conn)
        finally:
            jobs.close()
