"""Orphans: AD users no panel customer owns (ProvisioningWork 40), and the panel's records of AD
organisations that are gone (UsageReportWork 7).

**Orphan users (40).** A user under a directory's managed subtree is an orphan when no panel
customer owns it: it sits outside every organisation OU (directly in ``base_dn``), or its OU is no
live ``ad_organisations`` row, or that organisation has no customer (never linked, or its customer
was deleted: ``ON DELETE SET NULL``). Accounts younger than ``orphan_grace_days`` (7, by AD's
``whenCreated`` against the run's clock) are left out — a user a group action just created may not
be synced and linked yet — and so are the domain's critical system objects. Every orphan is
recorded in ``ad_orphan_users`` (first and last seen; ``cleared_at`` once it is no orphan) and
named in the summary. What is done to it is the operator's choice, never a default:

- ``disable_orphan_ad_users`` (false): disable orphans' accounts (ACCOUNTDISABLE; other bits kept),
  once: an account an operator enables again after that is left enabled (``re_enabled_kept``);
- ``delete_orphan_ad_users_after_days`` (unset: never): delete an orphan this step itself disabled
  when it has been an orphan for at least that many days (at least 1) and still is one. A user first
  seen in this run is therefore never deleted by it: an operator has at least one run's summary and
  a day to object (or to link the organisation to its customer) before anything is lost.

Actions are bounded by ``orphan_actions_per_run`` (100) per directory; the rest follow next run.

**Orphan organisation records (7).** The panel keeps AD objects deleted in AD (``deleted``) so it
can still show or bill them. Once an organisation's OU is gone, the rows of its users, groups and
contacts deleted in AD for more than ``ad_orphan_record_days`` (30), and users/groups/contacts
deleted that long that belong to no organisation, are orphans: deleted in bounded batches
(``ad_orphan_records_batch`` 1000, ``ad_orphan_records_per_run`` 20000), then the organisation
rows deleted that long with nothing left under them. Panel DB only: AD is not asked (the sync has
already said these objects are gone), and ``ad_user_backups`` is untouched — a restore still has
what it needs.
"""

from __future__ import annotations

from datetime import timedelta

from panelflow.hooks.active_directory import UF_ACCOUNTDISABLE, USER_FILTER, ActiveDirectoryRejected, dn_key
from panelflow.step import StepReport

from ._backend import Directory, copy, each_directory, organisation_of

KEEP_ORPHANS = 50        # orphans the summary names
ORPHAN_ATTRIBUTES = ("objectGUID", "sAMAccountName", "userAccountControl", "whenCreated")
NOT_CRITICAL = "(!(isCriticalSystemObject=TRUE))"

_RECORD_ORPHANS = """
INSERT INTO ad_orphan_users AS o (directory_id, object_guid, dn, sam_account_name, reason, first_seen_at, last_seen_at)
SELECT %(d)s, object_guid, dn, sam, reason, %(at)s, %(at)s FROM _orphans_in WHERE NOT fresh
ON CONFLICT (directory_id, object_guid) DO UPDATE SET dn = EXCLUDED.dn, sam_account_name = EXCLUDED.sam_account_name,
    reason = EXCLUDED.reason, last_seen_at = EXCLUDED.last_seen_at,
    first_seen_at = CASE WHEN o.cleared_at IS NULL THEN o.first_seen_at ELSE EXCLUDED.first_seen_at END,
    cleared_at = NULL
RETURNING (xmax = 0) AS inserted
"""

_CLEAR_ORPHANS = """
UPDATE ad_orphan_users o SET cleared_at = %(at)s
WHERE o.directory_id = %(d)s AND o.cleared_at IS NULL AND o.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM _orphans_in i WHERE i.object_guid = o.object_guid)
"""

# Orphans this step disabled before: one enabled again was re-enabled by an operator, who decides.
_DISABLED_BEFORE = """
SELECT o.object_guid FROM ad_orphan_users o JOIN _orphans_in i USING (object_guid)
WHERE o.directory_id = %(d)s AND o.disabled_at IS NOT NULL
"""

_DUE_DELETIONS = """
SELECT o.object_guid, o.dn FROM ad_orphan_users o JOIN _orphans_in i USING (object_guid)
WHERE NOT i.fresh AND o.directory_id = %(d)s AND o.disabled_at IS NOT NULL AND o.deleted_at IS NULL AND o.cleared_at IS NULL
  AND o.first_seen_at <= %(due)s
ORDER BY o.first_seen_at, o.object_guid LIMIT %(n)s
"""


def _owned_organisations(conn, d: Directory) -> dict[str, bool]:
    """dn key → whether a customer owns the live organisation."""
    return {dn_key(dn): customer is not None for dn, customer in conn.execute(
        "SELECT dn, customer_id FROM ad_organisations WHERE directory_id = %s AND NOT deleted", (d.id,))}


def orphan_reason(dn: str, base_dn: str, owned: dict[str, bool]) -> str | None:
    """Why the user at ``dn`` belongs to no panel customer, or None when one owns it."""
    org_dn = organisation_of(dn, base_dn)
    if org_dn is None:
        return "outside any organisation OU"
    if dn_key(org_dn) not in owned:
        return "organisation not in the panel"
    if not owned[dn_key(org_dn)]:
        return "organisation has no customer"
    return None


def remove_orphan_ad_users(panel_db, interval, params=None, log=None) -> dict:
    """Step 40 of ProvisioningWork: report AD users no customer owns; disable or (later) delete them
    only when a setting says so (see the module's doc)."""
    params = params or {}
    at = interval.end
    grace = timedelta(days=float(params.get("orphan_grace_days", 7)))
    disable = bool(params.get("disable_orphan_ad_users", False))
    delete_days = params.get("delete_orphan_ad_users_after_days")
    delete_after = timedelta(days=max(1.0, float(delete_days))) if delete_days is not None else None
    per_run = int(params.get("orphan_actions_per_run", 100))
    report = StepReport().zero("users", "orphans", "new_orphans", "too_new", "disabled", "already_disabled",
                               "re_enabled_kept", "deleted", "cleared")
    named: list[str] = []

    def work(conn, d: Directory, hook) -> None:
        owned = _owned_organisations(conn, d)
        rows, enabled = [], {}
        for entry in hook.search(d.base_dn, f"(&{USER_FILTER}{NOT_CRITICAL})", ORPHAN_ATTRIBUTES):
            report.add("users")
            reason = orphan_reason(entry.dn, d.base_dn, owned)
            if reason is None:
                continue
            try:
                guid, created, uac = entry.guid(), entry.time("whenCreated"), entry.int("userAccountControl") or 0
            except ValueError as exc:
                report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
                continue
            fresh = created is not None and created > at - grace
            rows.append((guid, entry.dn, entry.text("sAMAccountName"), reason, fresh))
            if fresh:          # not recorded nor acted on yet, but still no reason to clear its record
                report.add("too_new")
                continue
            if not uac & UF_ACCOUNTDISABLE:
                enabled[guid] = entry.dn
            if len(named) < KEEP_ORPHANS:
                named.append(f"{d.name}: {entry.dn}: {reason}")
        orphans = sum(1 for row in rows if not row[4])
        report.add("orphans", orphans)
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE _orphans_in (object_guid uuid PRIMARY KEY, dn text, sam text, reason text,"
                         " fresh boolean) ON COMMIT DROP")
            copy(conn, "_orphans_in", ("object_guid", "dn", "sam", "reason", "fresh"), rows)
            report.add("new_orphans", sum(1 for (new,) in conn.execute(_RECORD_ORPHANS, {"d": d.id, "at": at}) if new))
            report.add("cleared", conn.execute(_CLEAR_ORPHANS, {"d": d.id, "at": at}).rowcount)
            due = (conn.execute(_DUE_DELETIONS, {"d": d.id, "due": at - delete_after, "n": per_run}).fetchall()
                   if delete_after is not None else [])
            once = {g for (g,) in conn.execute(_DISABLED_BEFORE, {"d": d.id})}
        if disable:
            report.add("already_disabled", orphans - len(enabled))
            report.add("re_enabled_kept", len(set(enabled) & once))
            todo = sorted(((g, dn) for g, dn in enabled.items() if g not in once), key=lambda kv: kv[1])
            _disable(conn, hook, d, todo[:per_run], at, report, log)
        _delete(conn, hook, d, due, at, report, log)

    each_directory(panel_db, report, log, work)
    return {**report.as_dict(), "orphans_named": named}


def _disable(conn, hook, d: Directory, users, at, report: StepReport, log) -> None:
    for guid, dn in users:
        try:
            hook.set_enabled(dn, False)
        except ActiveDirectoryRejected as exc:
            report.skip(f"not disabled: {exc}", dn)
            continue
        conn.execute("UPDATE ad_orphan_users SET disabled_at = coalesce(disabled_at, %s)"
                     " WHERE directory_id = %s AND object_guid = %s", (at, d.id, guid))
        report.add("disabled")
        if log is not None:
            log.info("disabled orphan AD user %s", dn)


def _delete(conn, hook, d: Directory, due, at, report: StepReport, log) -> None:
    """Delete the due orphans that are still disabled in AD (an operator re-enabling one keeps it)."""
    for guid, dn in due:
        entry = hook.get(dn, ["userAccountControl"])
        if entry is None or not (entry.int("userAccountControl") or 0) & UF_ACCOUNTDISABLE:
            report.skip("orphan re-enabled or moved since it was disabled: not deleted", dn)
            continue
        try:
            hook.delete(dn)
        except ActiveDirectoryRejected as exc:
            report.skip(f"not deleted: {exc}", dn)
            continue
        conn.execute("UPDATE ad_orphan_users SET deleted_at = %s WHERE directory_id = %s AND object_guid = %s",
                     (at, d.id, guid))
        report.add("deleted")
        if log is not None:
            log.info("deleted orphan AD user %s", dn)


# -- UsageReportWork 7 ----------------------------------------------------------------------------------

# Rows of objects deleted in AD before the cutoff whose organisation is gone (deleted before it
# too, or none); the organisation rows follow once nothing references them.
_ORPHAN_OBJECTS = """
DELETE FROM {table} WHERE id IN (
    SELECT t.id FROM {table} t LEFT JOIN ad_organisations o ON o.id = t.organisation_id
    WHERE t.deleted AND t.deleted_at < %(cutoff)s
      AND (t.organisation_id IS NULL OR (o.deleted AND o.deleted_at < %(cutoff)s))
    ORDER BY t.id LIMIT %(n)s)
"""
_ORPHAN_ORGANISATIONS = """
DELETE FROM ad_organisations WHERE id IN (
    SELECT o.id FROM ad_organisations o
    WHERE o.deleted AND o.deleted_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM ad_users u WHERE u.organisation_id = o.id)
      AND NOT EXISTS (SELECT 1 FROM ad_groups g WHERE g.organisation_id = o.id)
      AND NOT EXISTS (SELECT 1 FROM ad_contacts c WHERE c.organisation_id = o.id)
    ORDER BY o.id LIMIT %(n)s)
"""


def remove_orphan_ad_organization_records(panel_db, interval, params=None) -> dict:
    """Step 7 of UsageReportWork: delete the panel's records of AD organisations that are gone (see
    the module's doc), in bounded batches, each its own transaction."""
    params = params or {}
    cutoff = interval.end - timedelta(days=float(params.get("ad_orphan_record_days", 30)))
    batch = int(params.get("ad_orphan_records_batch", 1000))
    budget = int(params.get("ad_orphan_records_per_run", 20_000))
    if batch < 1 or budget < 1:
        raise ValueError("ad_orphan_records_batch and ad_orphan_records_per_run must be positive")
    report = StepReport().zero("users_deleted", "groups_deleted", "contacts_deleted", "organisations_deleted",
                               "batches")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        for table, key in (("ad_users", "users_deleted"), ("ad_groups", "groups_deleted"),
                           ("ad_contacts", "contacts_deleted"), ("ad_organisations", None)):
            sql = _ORPHAN_ORGANISATIONS if key is None else _ORPHAN_OBJECTS.format(table=table)
            while budget > 0:
                with conn.transaction():
                    n = conn.execute(sql, {"cutoff": cutoff, "n": min(batch, budget)}).rowcount
                report.add("batches")
                report.add(key or "organisations_deleted", n)
                budget -= n
                if n < batch:
                    break
        report.counts["budget_spent"] = int(budget <= 0)
    return report.as_dict()
