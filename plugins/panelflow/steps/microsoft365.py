"""Microsoft 365 tenants from Microsoft Graph: Office365SyncWork, O365SyncAdminLogsWork,
Office365TenantFirstSyncWork.

Every enabled ``m365_tenants`` row is synced through its own Airflow connection
(:mod:`panelflow.hooks.microsoft_graph`: tokens, throttling, paging), tenants in parallel on a
bounded thread pool (``params["tenant_concurrency"]``, default 4), each thread with its own event
loop (the Graph hook is asynchronous) and its own panel-DB connection. A tenant that fails —
credentials refused, throttled past the retries, a malformed page — is recorded on its row
(``last_error``) and named in the summary; the other tenants are synced all the same. The step
fails only when tenants were due and none could be synced (an outage should be seen).

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

Page writes use ``synchronous_commit = off``: a crash may lose the last few commits, but never
out of order, so a saved deltaLink is never ahead of the pages it covers — the worst case is
reading those changes again.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from urllib.parse import quote

from panelflow.step import StepReport

CONCURRENCY = 4
PIPELINE_DEPTH = 3      # pages fetched ahead of the one being written
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
FIRST_SYNC_TEMPLATE = "o365_first_sync"


class RawJson(bytes):
    """A page's body as it came, sent to PostgreSQL as a ``jsonb`` parameter without decoding it here."""


def _raw_json_dumper():
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class RawJsonDumper(Dumper):
        format = Format.TEXT

        def dump(self, obj):
            return obj

    return RawJsonDumper


def _prepare(conn) -> None:
    """A sync connection: pages go as raw jsonb, commits do not wait for the disk (see the module's doc)."""
    dumper = _raw_json_dumper()
    dumper.oid = conn.adapters.types["jsonb"].oid
    conn.adapters.register_dumper(RawJson, dumper)
    conn.autocommit = True
    conn.execute("SET synchronous_commit = off")


class TenantSyncFailed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _hook_errors():
    from panelflow.hooks import microsoft_graph as g

    return g


def _page_rejected(entity: str, page, exc: Exception):
    g = _hook_errors()
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return g.GraphMalformedResponse(f"{entity} page {page.number} ({page.url}) rejected, nothing of it written: "
                                    f"{detail}", url=page.url)


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
        _prepare(conn)

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
            raise _hook_errors().GraphMalformedResponse(f"{entity} rejected, nothing of it written: "
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
            raise _page_rejected(entity, page, exc) from exc
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


async def _pipelined(pages, write, depth: int = PIPELINE_DEPTH) -> object:
    """Write each page (in a worker thread) while the next ones are fetched; the last page is returned.

    Pages are written in order, one at a time; at most ``depth`` fetched pages wait for their
    write. A failed write stops the fetching (its error is raised) and the pages after it are not
    written; whatever ends the loop, no write is left running.
    """
    inflight: deque = deque()
    last = None

    async def after(previous, page):
        if previous is not None:
            await previous          # a failed write fails every later one, unwritten
        await asyncio.to_thread(write, page)

    try:
        async for page in pages:
            while inflight and (len(inflight) >= depth or inflight[0].done()):
                await inflight.popleft()
            inflight.append(asyncio.ensure_future(after(inflight[-1] if inflight else None, page)))
            last = page
        while inflight:
            await inflight.popleft()
    finally:
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
    return last


async def _delta_round(hook, w: _Writer, entity: str) -> None:
    g = _hook_errors()
    link = await asyncio.to_thread(w.delta_link, entity)
    while True:
        full = link is None
        gen = await asyncio.to_thread(w.begin_round, full)
        try:
            last = await _pipelined(hook.pages(link or URLS[entity], headers=PREFER),
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
    await _pipelined(hook.pages(URLS[entity]), lambda page: w.write_page(entity, page, gen, True))
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


def _classify(exc: BaseException) -> str:
    g = _hook_errors()
    import psycopg

    if isinstance(exc, TenantSyncFailed):
        return exc.reason
    for cls, reason in ((g.GraphAuthenticationError, "credentials refused"),
                        (g.GraphMalformedResponse, "malformed page rejected"),
                        (g.GraphUnavailable, "Graph unavailable (throttled or failing past the retries)"),
                        (g.GraphRequestRejected, "Graph refused a request"),
                        (psycopg.Error, "panel database error")):
        if isinstance(exc, cls):
            return reason
    return "unexpected error"


def _record_failure(panel_db, tenant_id: str, at: datetime, message: str) -> None:
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        conn.execute("UPDATE m365_tenants SET last_error = %s, last_error_at = %s WHERE tenant_id = %s",
                     (message[:2000], at, tenant_id))


def _in_thread(panel_db, tenant_id: str, conn_id: str, at: datetime, job) -> dict:
    """Run one tenant's job (a coroutine function) on this thread's own event loop and DB connection."""
    from collections import Counter

    counts: Counter = Counter()
    try:
        with panel_db.get_conn() as conn:
            first = asyncio.run(job(conn, tenant_id, conn_id, at, counts))
    except Exception as exc:  # one tenant's failure, whatever it is, must not stop the others
        message = str(exc) or type(exc).__name__
        try:
            _record_failure(panel_db, tenant_id, at, message)
        except Exception:  # noqa: BLE001 — the DB may be what failed; the report still names the tenant
            pass
        raise TenantSyncFailed(_classify(exc), message) from exc
    counts["first_syncs"] += int(bool(first))
    return counts


def _run_tenants(panel_db, interval, params, log, job, label: str) -> dict:
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        tenants = [(str(t), c) for t, c in conn.execute(
            "SELECT tenant_id, conn_id FROM m365_tenants WHERE enabled ORDER BY tenant_id").fetchall()]
        if label == "sync":
            conn.execute("UPDATE m365_tenants SET last_sync_started_at = now() WHERE enabled")
    report.add("tenants", len(tenants))
    notes = []
    default = CONCURRENCY if label == "sync" else 1
    workers = max(1, min(int((params or {}).get("tenant_concurrency") or default), len(tenants) or 1))
    # In an Airflow task, connections are fetched through the task supervisor's channel, which
    # only the task's own thread may use: with one worker the tenants run inline on that thread.
    # (Office365SyncWork's DAG gets its parallelism from one mapped task per tenant instead.)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"m365-{label}") if workers > 1 else None

    class _Done:
        def __init__(self, fn):
            try:
                self.value, self.error = fn(), None
            except Exception as exc:  # noqa: BLE001 - re-raised by result(), as a future does
                self.value, self.error = None, exc

        def result(self):
            if self.error is not None:
                raise self.error
            return self.value

    def submit(t, c):
        if pool is not None:
            return pool.submit(_in_thread, panel_db, t, c, interval.end, job)
        return _Done(lambda: _in_thread(panel_db, t, c, interval.end, job))

    try:
        futures = {submit(t, c): (t, c) for t, c in tenants}
        done = as_completed(futures) if pool is not None else list(futures)
        for future in done:
            tenant_id, conn_id = futures[future]
            try:
                counts = future.result()
            except TenantSyncFailed as exc:
                report.add("tenants_failed")
                report.skip(exc.reason, f"tenant {tenant_id} ({conn_id}): {exc}")
                if log is not None:
                    log.warning("M365 %s of tenant %s (%s) failed: %s", label, tenant_id, conn_id, exc)
                continue
            report.add("tenants_synced")
            notes += [f"tenant {tenant_id}: {n}" for n in counts.pop("_notes", [])]
            for key, n in counts.items():
                report.add(key, n)
    finally:
        if pool is not None:
            pool.shutdown()
    report.counts.setdefault("tenants_synced", 0)
    report.counts.setdefault("tenants_failed", 0)
    summary = report.as_dict()
    if notes:
        summary["notes"] = notes[: report.keep]
    if tenants and not report.counts["tenants_synced"]:
        raise RuntimeError(f"M365 {label}: none of the {len(tenants)} tenant(s) could be synced: "
                           f"{summary['skipped_examples'][:5]}")
    return summary


def sync_tenant_entities(panel_db, interval, params, log) -> dict:
    """Sync O365 tenant entities (Tenant, Domains, Licenses & Policies, Users, Mailboxes, Groups, Contacts)."""
    return _run_tenants(panel_db, interval, params, log, _sync_tenant, "sync")


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
        counts = _in_thread(panel_db, item, row[0], interval.end, _sync_tenant)
    except TenantSyncFailed as exc:
        log.error("M365 sync of tenant %s (%s) failed: %s: %s", item, row[0], exc.reason, exc)
        raise
    notes = counts.pop("_notes", [])
    return {"tenant": item, **counts, **({"notes": notes[:50]} if notes else {})}


# -- O365SyncAdminLogsWork ------------------------------------------------------------------------

_AUDITS = """
INSERT INTO o365_admin_audit_logs (occurred_at, actor, action, target, details, tenant_id, graph_id)
SELECT (x ->> 'activityDateTime')::timestamptz,
       coalesce(x #>> '{initiatedBy,user,userPrincipalName}', x #>> '{initiatedBy,app,displayName}',
                x #>> '{initiatedBy,app,servicePrincipalName}', x #>> '{initiatedBy,user,id}', 'unknown'),
       coalesce(x ->> 'activityDisplayName', x ->> 'operationType', 'unknown'),
       coalesce(x #>> '{targetResources,0,userPrincipalName}', x #>> '{targetResources,0,displayName}',
                x #>> '{targetResources,0,id}'),
       x, %(t)s, x ->> 'id'
FROM jsonb_array_elements(%(page)s -> 'value') x
ON CONFLICT (tenant_id, graph_id) DO NOTHING
"""


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _audit_window(interval) -> tuple[datetime, datetime]:
    start, end = interval.start, interval.end
    if start >= end:  # a run without a data interval covers the hour before its clock
        start = end - timedelta(hours=1)
    return start, end


async def _sync_audits(conn, tenant_id: str, conn_id: str, at: datetime, counts, *, window) -> bool:
    import psycopg

    from panelflow.hooks.microsoft_graph import MicrosoftGraphHook

    start, end = window
    _prepare(conn)
    flt = f"activityDateTime ge {_iso(start)} and activityDateTime lt {_iso(end)}"
    url = f"auditLogs/directoryAudits?$filter={quote(flt)}&$top=999"

    def write(page):
        try:
            with conn.transaction():
                n = conn.execute(_AUDITS, {"t": tenant_id, "page": RawJson(page.raw)}).rowcount
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise _page_rejected("directoryAudits", page, exc) from exc
        counts["audit_entries_read"] += len(page.value)
        counts["audit_entries_written"] += n
        counts["audit_pages"] += 1

    async with MicrosoftGraphHook(conn_id) as hook:
        try:
            await _pipelined(hook.pages(url), write)
        finally:
            for key in ("requests", "throttled", "token_refreshes"):
                counts[f"graph_{key}"] += getattr(hook.stats, key)
    conn.execute(
        "INSERT INTO m365_sync_state AS s (tenant_id, entity, watermark, synced_at) VALUES (%s, 'directoryAudits', %s, %s)"
        " ON CONFLICT (tenant_id, entity) DO UPDATE SET watermark = greatest(s.watermark, EXCLUDED.watermark),"
        " synced_at = EXCLUDED.synced_at", (tenant_id, end, at))
    return False


def sync_o365_admin_audit_logs(panel_db, interval, params, log) -> dict:
    """Sync O365 admin audit logs: every tenant's directory audits of the run's data interval."""
    import functools

    window = _audit_window(interval)
    summary = _run_tenants(panel_db, interval, params, log, functools.partial(_sync_audits, window=window), "audit")
    summary.pop("first_syncs", None)
    summary["window"] = [window[0].isoformat(), window[1].isoformat()]
    summary.setdefault("audit_entries_written", 0)
    return summary


# -- Office365TenantFirstSyncWork -----------------------------------------------------------------

_FIRST_SYNCED = """
SELECT t.tenant_id, t.display_name, t.default_domain, t.first_synced_at, c.id, c.name, c.email,
       coalesce(c.email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$', false)
FROM m365_tenants t LEFT JOIN customers c ON c.id = t.customer_id
WHERE t.first_synced_at IS NOT NULL AND t.first_sync_notified_at IS NULL AND t.first_synced_at <= %(end)s
ORDER BY t.first_synced_at, t.tenant_id
LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED
"""

_TENANT_FIGURES = """
SELECT (SELECT count(*) FROM m365_users WHERE tenant_id = %(t)s),
       (SELECT count(*) FROM m365_mailboxes WHERE tenant_id = %(t)s AND kind = 'user'),
       (SELECT count(*) FROM m365_groups WHERE tenant_id = %(t)s),
       (SELECT count(*) FROM m365_domains WHERE tenant_id = %(t)s),
       (SELECT coalesce(jsonb_agg(jsonb_build_object('sku', sku_part_number, 'assigned', consumed_units,
                                                     'available', enabled_units) ORDER BY sku_part_number), '[]')
        FROM m365_subscribed_skus WHERE tenant_id = %(t)s)::text
"""

FIRST_SYNC_BATCH = 500


def send_first_sync_notifications(panel_db, interval, log) -> dict:
    """Send O365 tenant first sync notification: one e-mail per tenant, when its first full sync is done."""
    from panelflow.services.outbox import enqueue

    report = StepReport()
    queued = marked = 0
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # the notices, their e-mails and the marks together, or none
            due = conn.execute(_FIRST_SYNCED, {"end": interval.end, "limit": FIRST_SYNC_BATCH}).fetchall()
            report.add("tenants_due", len(due))
            for tenant_id, name, domain, first_synced_at, customer_id, customer, email, mailable in due:
                label = f"tenant {tenant_id} ({name or domain or 'unnamed'})"
                if customer_id is None:
                    report.skip("tenant is not linked to a customer", label)
                    continue
                if not mailable:
                    report.skip("customer has no usable e-mail address", f"{label}, customer {customer_id}")
                    continue
                users, mailboxes, groups, domains, skus = conn.execute(_TENANT_FIGURES, {"t": tenant_id}).fetchone()
                context = {"name": customer, "tenant": name or domain or str(tenant_id), "domain": domain,
                           "synced_at": first_synced_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "users": users, "mailboxes": mailboxes, "groups": groups, "domains": domains,
                           "licences": json.loads(skus)}
                queued += enqueue(conn, dedupe_key=f"o365-first-sync:{tenant_id}", to=email,
                                  template=FIRST_SYNC_TEMPLATE, context=context, not_before=interval.end)
                conn.execute("UPDATE m365_tenants SET first_sync_notified_at = %s WHERE tenant_id = %s",
                             (interval.end, tenant_id))
                marked += 1
    report.add("notified", marked)
    report.add("emails_queued", queued)
    summary = report.as_dict()
    if log is not None and summary["skipped"]:
        log.warning("O365 first-sync notices not sent: %s", summary["skipped"])
    return summary
