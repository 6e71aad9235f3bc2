"""Office365SyncWork: Microsoft 365 tenants from Microsoft Graph into the panel.

Tenants are worked by :func:`panelflow.steps.microsoft365._backend.run_tenants` (parallel, one
failing tenant recorded and named; see there), or one mapped task instance each (:func:`sync_tenant`).

Writes are set-based and a page is written all or nothing: each page's body goes to PostgreSQL
as it came (one ``jsonb`` parameter, never decoded or re-encoded here) and is applied by one
statement — one ``INSERT … ON CONFLICT`` / ``DELETE … USING`` sub-statement per table, in one
transaction. Pages are written in order by a worker thread while the next ones are fetched
(up to ``PIPELINE_DEPTH`` ahead). A page PostgreSQL cannot take (a value of the wrong type) is
rejected whole, like one the hook finds malformed, and the tenant stops there. A user's
licences are its ``assignedLicenses`` (``m365_user_licenses`` is a view of them); mailboxes are
a view too (0012 says why).

Users and groups are read with delta queries. The first round (no deltaLink yet, or Graph said
the link expired) reads everything and, once all its pages are written, deletes the tenant's
rows it did not see; later rounds read only changes from the deltaLink: changed objects merged
into the stored ones, ``@removed`` objects and members deleted. A round's deltaLink is saved only
after every page of the round is written, so a round cut short is simply read again.
The organisation, domains, subscribed SKUs and policies are small and replaced whole in one
transaction each; org contacts are a plain list, replaced page by page with a final sweep.

Page writes commit without waiting for the disk: why that is safe is in :mod:`._backend`.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from functools import lru_cache

from panelflow.steps.microsoft365._backend import (
    RawJson,
    TenantSyncFailed,
    graph_errors,
    in_thread,
    page_rejected,
    pipelined,
    prepare_connection,
    run_tenants,
)

PREFER = {"Prefer": "odata.maxpagesize=999"}
USER_SELECT = ("userPrincipalName,displayName,givenName,surname,mail,accountEnabled,usageLocation,jobTitle,"
               "department,proxyAddresses,assignedLicenses,createdDateTime")
GROUP_SELECT = ("displayName,description,mail,mailEnabled,mailNickname,securityEnabled,groupTypes,visibility,"
                "proxyAddresses,createdDateTime,members")
CONTACT_SELECT = "displayName,givenName,surname,mail,companyName,proxyAddresses"
URLS = {
    "users": f"users/delta?$select={USER_SELECT}",
    "groups": f"groups/delta?$select={GROUP_SELECT}",
    "contacts": f"contacts?$select={CONTACT_SELECT}&$top=999",
}
POLICIES = ("authorizationPolicy", "identitySecurityDefaultsEnforcementPolicy")


# -- SQL ------------------------------------------------------------------------------------------

# A page is applied by ONE statement: the page's body is parsed once (the ``page`` CTE) and each
# table gets one set-based sub-statement; the whole page commits or none of it does. Whether a
# page needs the removal sub-statements is decided from the page itself.
_PAGE = """page AS (
    SELECT o AS ord, (x ->> 'id')::uuid AS id, x ? '@removed' AS removed, x AS e
    FROM jsonb_array_elements(%(page)s -> 'value') WITH ORDINALITY AS v(x, o))"""

# In a full round an object is written whole and stamped with the round; in a delta round the
# changed properties are merged into the stored object, and an object the merge leaves as it was
# (a group whose only change is its members) is not rewritten.
_UPSERT = """{name} AS (
    INSERT INTO {table} AS t (tenant_id, id, data, sync_gen)
    SELECT DISTINCT ON (id) %(t)s, id, {data}, %(gen)s
    FROM page WHERE NOT removed ORDER BY id, ord DESC
    ON CONFLICT (tenant_id, id) DO UPDATE SET
        data = CASE WHEN %(full)s THEN EXCLUDED.data ELSE t.data || EXCLUDED.data END,
        sync_gen = CASE WHEN %(full)s THEN EXCLUDED.sync_gen ELSE t.sync_gen END
    WHERE %(full)s OR t.data || EXCLUDED.data IS DISTINCT FROM t.data
    RETURNING 1)"""
_REMOVE = """{name} AS (
    DELETE FROM {table} t USING page p WHERE p.removed AND t.tenant_id = %(t)s AND t.{key} = p.id RETURNING 1)"""

# members@delta: a full round lists every member, a delta round the added ones and the removed
# ones (``@removed``).
_MEMBERS = """mem AS (
    SELECT p.id AS group_id, (m ->> 'id')::uuid AS member_id, m ? '@removed' AS removed, p.ord,
           coalesce(replace(m ->> '@odata.type', '#microsoft.graph.', ''), 'unknown') AS member_type
    FROM page p CROSS JOIN LATERAL jsonb_array_elements(nullif(p.e -> 'members@delta', 'null')) m
    WHERE NOT p.removed),
members_written AS (
    INSERT INTO m365_group_members AS gm (tenant_id, group_id, member_id, member_type, sync_gen)
    SELECT DISTINCT ON (group_id, member_id) %(t)s, group_id, member_id, member_type, %(gen)s
    FROM mem WHERE NOT removed ORDER BY group_id, member_id, ord DESC
    ON CONFLICT (tenant_id, group_id, member_id) DO UPDATE SET
        member_type = EXCLUDED.member_type,
        sync_gen = CASE WHEN %(full)s THEN EXCLUDED.sync_gen ELSE gm.sync_gen END
    WHERE %(full)s OR gm.member_type IS DISTINCT FROM EXCLUDED.member_type
    RETURNING 1)"""
_MEMBERS_REMOVED = """members_removed AS (
    DELETE FROM m365_group_members gm USING mem r
    WHERE r.removed AND gm.tenant_id = %(t)s AND gm.group_id = r.group_id AND gm.member_id = r.member_id
    RETURNING 1)"""


@lru_cache(maxsize=None)
def _page_sql(entity: str, removals: bool, member_removals: bool) -> tuple[str, tuple[str, ...]]:
    """The statement applying one page of ``entity``, and the names of the counts it returns."""
    parts = [_PAGE]
    if entity == "users":
        if removals:
            parts += [_REMOVE.format(name="users_removed", table="m365_users", key="id"),
                      _REMOVE.format(name="memberships_of_removed", table="m365_group_members", key="member_id")]
        parts.append(_UPSERT.format(name="users_written", table="m365_users", data="e"))   # licences inside
    elif entity == "groups":
        if removals:
            parts += [_REMOVE.format(name="groups_removed", table="m365_groups", key="id"),
                      _REMOVE.format(name="members_of_removed", table="m365_group_members", key="group_id")]
        parts += [_UPSERT.format(name="groups_written", table="m365_groups", data="e - 'members@delta'"), _MEMBERS]
        if member_removals:
            parts.append(_MEMBERS_REMOVED)
    elif entity == "contacts":
        parts.append(_UPSERT.format(name="contacts_written", table="m365_contacts", data="e"))
    else:
        raise ValueError(entity)
    body = ",\n".join(parts)
    names = tuple(n for n in re.findall(r"^(\w+) AS \(", body, re.M) if n not in ("page", "mem"))
    counts = ", ".join(f"(SELECT count(*) FROM {n})" for n in names)
    return f"WITH {body}\nSELECT {counts}", names


# After a full round: what it did not see is no longer in the tenant.
_SWEEP = {
    "users": [
        ("users_swept", "DELETE FROM m365_users WHERE tenant_id = %(t)s AND sync_gen < %(gen)s"),
    ],
    "groups": [
        ("groups_swept", "DELETE FROM m365_groups WHERE tenant_id = %(t)s AND sync_gen < %(gen)s"),
        ("members_swept", "DELETE FROM m365_group_members WHERE tenant_id = %(t)s AND sync_gen < %(gen)s"),
    ],
    "contacts": [("contacts_swept", "DELETE FROM m365_contacts WHERE tenant_id = %(t)s AND sync_gen < %(gen)s")],
}

_ORGANIZATION = """
UPDATE m365_tenants SET display_name = %(name)s, default_domain = %(domain)s, country_code = %(country)s,
       tenant_created_at = %(created)s
WHERE tenant_id = %(t)s
"""
_DOMAINS = """
INSERT INTO m365_domains AS d (tenant_id, name, is_default, is_initial, is_verified, authentication_type,
                               supported_services, sync_gen)
SELECT %(t)s, x ->> 'id', coalesce((x ->> 'isDefault')::boolean, false), coalesce((x ->> 'isInitial')::boolean, false),
       coalesce((x ->> 'isVerified')::boolean, false), x ->> 'authenticationType',
       ARRAY(SELECT jsonb_array_elements_text(coalesce(x -> 'supportedServices', '[]'))), %(gen)s
FROM jsonb_array_elements(%(items)s::jsonb) x
ON CONFLICT (tenant_id, name) DO UPDATE SET is_default = EXCLUDED.is_default, is_initial = EXCLUDED.is_initial,
    is_verified = EXCLUDED.is_verified, authentication_type = EXCLUDED.authentication_type,
    supported_services = EXCLUDED.supported_services, sync_gen = EXCLUDED.sync_gen
"""
_SKUS = """
INSERT INTO m365_subscribed_skus AS s (tenant_id, sku_id, sku_part_number, capability_status, applies_to,
    consumed_units, enabled_units, suspended_units, warning_units, service_plans, sync_gen)
SELECT %(t)s, (x ->> 'skuId')::uuid, x ->> 'skuPartNumber', x ->> 'capabilityStatus', x ->> 'appliesTo',
       coalesce((x ->> 'consumedUnits')::int, 0), coalesce((x #>> '{prepaidUnits,enabled}')::int, 0),
       coalesce((x #>> '{prepaidUnits,suspended}')::int, 0), coalesce((x #>> '{prepaidUnits,warning}')::int, 0),
       coalesce(x -> 'servicePlans', '[]'), %(gen)s
FROM jsonb_array_elements(%(items)s::jsonb) x
ON CONFLICT (tenant_id, sku_id) DO UPDATE SET sku_part_number = EXCLUDED.sku_part_number,
    capability_status = EXCLUDED.capability_status, applies_to = EXCLUDED.applies_to,
    consumed_units = EXCLUDED.consumed_units, enabled_units = EXCLUDED.enabled_units,
    suspended_units = EXCLUDED.suspended_units, warning_units = EXCLUDED.warning_units,
    service_plans = EXCLUDED.service_plans, sync_gen = EXCLUDED.sync_gen
"""


class _Writer:
    """One tenant's panel-DB connection (used by one thread at a time)."""

    def __init__(self, conn, tenant_id: str, at: datetime, counts):
        self.conn, self.t, self.at, self.counts = conn, tenant_id, at, counts
        prepare_connection(conn)

    def _gen(self) -> int:
        return self.conn.execute("SELECT nextval('m365_sync_gen')").fetchone()[0]

    def organization(self, org: dict) -> None:
        domains = org.get("verifiedDomains") or []
        default = next((d.get("name") for d in domains if isinstance(d, dict) and d.get("isDefault")), None)
        self.conn.execute(_ORGANIZATION, {"t": self.t, "name": org.get("displayName"), "domain": default,
                                          "country": org.get("countryLetterCode"),
                                          "created": org.get("createdDateTime")})

    def replace_small(self, entity: str, items: list[dict]) -> None:
        """Domains or SKUs: the whole list in one transaction, what is no longer there removed."""
        import psycopg

        table, sql = {"domains": ("m365_domains", _DOMAINS), "skus": ("m365_subscribed_skus", _SKUS)}[entity]
        try:
            with self.conn.transaction():
                gen = self._gen()
                n = self.conn.execute(sql, {"t": self.t, "gen": gen, "items": json.dumps(items)}).rowcount
                gone = self.conn.execute(f"DELETE FROM {table} WHERE tenant_id = %s AND sync_gen < %s",
                                         (self.t, gen)).rowcount
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise graph_errors().GraphMalformedResponse(f"{entity} rejected, nothing of it written: "
                                                        f"{str(exc).splitlines()[0]}") from exc
        self.counts[f"{entity}_written"] += n
        self.counts[f"{entity}_removed"] += gone

    def policies(self, bodies: dict[str, dict]) -> None:
        with self.conn.transaction():
            for name, body in bodies.items():
                self.conn.execute(
                    "INSERT INTO m365_policies (tenant_id, policy, body, synced_at) VALUES (%s, %s, %s::jsonb, %s)"
                    " ON CONFLICT (tenant_id, policy) DO UPDATE SET body = EXCLUDED.body, synced_at = EXCLUDED.synced_at",
                    (self.t, name, json.dumps({k: v for k, v in body.items() if not k.startswith("@odata")}), self.at))
        self.counts["policies_written"] += len(bodies)

    def delta_link(self, entity: str) -> str | None:
        row = self.conn.execute("SELECT delta_link FROM m365_sync_state WHERE tenant_id = %s AND entity = %s",
                                (self.t, entity)).fetchone()
        return row[0] if row else None

    def begin_round(self, full: bool) -> int:
        """The number a full round stamps its rows with (0 for a delta round, which stamps nothing)."""
        return self._gen() if full else 0

    def write_page(self, entity: str, page, gen: int, full: bool) -> None:
        import psycopg

        # A full round needs no removals: what it does not write, its sweep deletes.
        value = page.value
        removals = not full and any("@removed" in x for x in value)
        member_removals = not full and entity == "groups" and any(
            isinstance(m, dict) and "@removed" in m
            for x in value if isinstance(x.get("members@delta"), list) for m in x["members@delta"])
        sql, names = _page_sql(entity, removals, member_removals)
        try:
            with self.conn.transaction():
                row = self.conn.execute(sql, {"t": self.t, "gen": gen, "full": full,
                                              "page": RawJson(page.raw)}).fetchone()
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise page_rejected(entity, page, exc) from exc
        self.counts[f"{entity}_pages"] += 1
        for key, n in zip(names, row):
            self.counts[key] += n

    def end_round(self, entity: str, delta_link: str | None, gen: int, full: bool) -> None:
        with self.conn.transaction():
            if full:
                for key, sql in _SWEEP[entity]:
                    n = self.conn.execute(sql, {"t": self.t, "gen": gen}).rowcount
                    if key:
                        self.counts[key] += n
            self.conn.execute(
                "INSERT INTO m365_sync_state AS s (tenant_id, entity, delta_link, full_rounds, delta_rounds,"
                " last_full_at, synced_at) VALUES (%(t)s, %(e)s, %(link)s, %(f)s::int, 1 - %(f)s::int,"
                " CASE WHEN %(f)s THEN %(at)s::timestamptz END, %(at)s)"
                " ON CONFLICT (tenant_id, entity) DO UPDATE SET delta_link = EXCLUDED.delta_link,"
                " full_rounds = s.full_rounds + EXCLUDED.full_rounds, delta_rounds = s.delta_rounds + EXCLUDED.delta_rounds,"
                " last_full_at = coalesce(EXCLUDED.last_full_at, s.last_full_at), synced_at = EXCLUDED.synced_at",
                {"t": self.t, "e": entity, "link": delta_link, "f": full, "at": self.at})
        self.counts[f"{entity}_{'full' if full else 'delta'}_rounds"] += 1

    def forget_delta_link(self, entity: str) -> None:
        self.conn.execute("UPDATE m365_sync_state SET delta_link = NULL WHERE tenant_id = %s AND entity = %s",
                          (self.t, entity))

    def finished(self) -> bool:
        """The tenant is synced: returns True when this was its first complete sync."""
        row = self.conn.execute(
            "UPDATE m365_tenants t SET last_synced_at = %(at)s, first_synced_at = coalesce(t.first_synced_at, %(at)s),"
            " last_error = NULL, last_error_at = NULL FROM m365_tenants old"
            " WHERE t.tenant_id = %(t)s AND old.tenant_id = t.tenant_id RETURNING old.first_synced_at IS NULL",
            {"t": self.t, "at": self.at}).fetchone()
        return bool(row and row[0])


async def _delta_round(hook, w: _Writer, entity: str) -> None:
    g = graph_errors()
    link = await asyncio.to_thread(w.delta_link, entity)
    while True:
        full = link is None
        gen = await asyncio.to_thread(w.begin_round, full)
        try:
            last = await pipelined(hook.pages(link or URLS[entity], headers=PREFER),
                                    lambda page: w.write_page(entity, page, gen, full))
        except g.DeltaExpired:
            if full:
                raise
            await asyncio.to_thread(w.forget_delta_link, entity)
            w.counts[f"{entity}_delta_expired"] += 1
            link = None
            continue
        if last is None or not last.delta_link:
            raise g.GraphMalformedResponse(f"{entity}: the delta round ended without an @odata.deltaLink")
        await asyncio.to_thread(w.end_round, entity, last.delta_link, gen, full)
        return


async def _list_round(hook, w: _Writer, entity: str) -> None:
    gen = await asyncio.to_thread(w.begin_round, True)
    await pipelined(hook.pages(URLS[entity]), lambda page: w.write_page(entity, page, gen, True))
    await asyncio.to_thread(w.end_round, entity, None, gen, True)


async def _all(hook, url: str) -> list[dict]:
    items: list[dict] = []
    async for page in hook.pages(url):
        items.extend(page.value)
    return items


async def _sync_tenant(conn, tenant_id: str, conn_id: str, at: datetime, counts) -> bool:
    from panelflow.hooks.microsoft_graph import GraphRequestRejected, MicrosoftGraphHook

    w = _Writer(conn, tenant_id, at, counts)
    async with MicrosoftGraphHook(conn_id) as hook:
        try:
            orgs = await _all(hook, "organization")
            org = orgs[0] if orgs else {}
            if org.get("id", "").lower() != tenant_id.lower():
                raise TenantSyncFailed("connection is for another tenant",
                                       f"{conn_id} signs in to tenant {org.get('id') or hook.tenant_id}, "
                                       f"not {tenant_id}")
            await asyncio.to_thread(w.organization, org)
            w.replace_small("domains", await _all(hook, "domains"))
            w.replace_small("skus", await _all(hook, "subscribedSkus"))
            policies = {}
            for name in POLICIES:
                try:
                    policies[name] = (await hook.get(f"policies/{name}", collection=False)).body
                except GraphRequestRejected as exc:   # a policy the app may not read is not a failed sync
                    counts["policies_unreadable"] += 1
                    counts.setdefault("_notes", []).append(f"{name}: {exc.status} {exc.code or ''}".strip())
            w.policies(policies)
            await _delta_round(hook, w, "users")
            await _delta_round(hook, w, "groups")
            await _list_round(hook, w, "contacts")
        finally:
            for key in ("requests", "pages", "throttled", "retried", "token_refreshes"):
                counts[f"graph_{key}"] += getattr(hook.stats, key)
            counts["graph_waited_ms"] += int(hook.stats.waited_seconds * 1000)
    return w.finished()


def sync_tenant_entities(panel_db, interval, params, log) -> dict:
    """Sync O365 tenant entities (Tenant, Domains, Licenses & Policies, Users, Mailboxes, Groups, Contacts)."""
    return run_tenants(panel_db, interval, params, log, _sync_tenant, "sync")


def tenants_to_sync(panel_db) -> list[str]:
    """The enabled tenants: Office365SyncWork maps one ``sync_tenant`` task instance over each,
    so tenants sync in parallel (as many as the o365_sync pool allows) and one failing tenant
    fails only its own instance, retried on its own."""
    with panel_db.get_conn() as conn:
        return [str(t) for (t,) in conn.execute("SELECT tenant_id FROM m365_tenants WHERE enabled ORDER BY tenant_id")]


def sync_tenant(item, panel_db, interval, log) -> dict:
    """Sync O365 tenant entities of one tenant (one mapped task instance of Office365SyncWork)."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        row = conn.execute("UPDATE m365_tenants SET last_sync_started_at = now() WHERE tenant_id = %s AND enabled"
                           " RETURNING conn_id", (item,)).fetchone()
    if row is None:
        return {"tenant": item, "skipped": "tenant removed or disabled since the run listed it"}
    try:
        counts = in_thread(panel_db, item, row[0], interval.end, _sync_tenant)
    except TenantSyncFailed as exc:
        log.error("M365 sync of tenant %s (%s) failed: %s: %s", item, row[0], exc.reason, exc)
        raise
    notes = counts.pop("_notes", [])
    return {"tenant": item, **counts, **({"notes": notes[:50]} if notes else {})}

