"""RDSSyncWork: which users may log on through Remote Desktop Services (``ad_rds_users``)."""

from __future__ import annotations

from collections import Counter

from panelflow.hooks.active_directory import (
    MATCHING_RULE_IN_CHAIN,
    UF_ACCOUNTDISABLE,
    USER_FILTER,
    dn_key,
    escape_filter_value,
)

from ._backend import copy, sync_each_directory

def sync_rds_users(panel_db, interval, params, log) -> dict:
    """Get AD users with RDS service and sync into database.

    RDS is a group membership: the organisation's ``rds_group_dn``, else the directory's, else the
    domain's built-in Remote Desktop Users (what grants "Allow log on through Remote Desktop
    Services" on a session host). Members are read with LDAP_MATCHING_RULE_IN_CHAIN, so nested
    groups count as they do for the logon right."""

    def work(conn, ad, d, report):
        counts: Counter = Counter()
        default = d.rds_group_dn or ad.builtin_rds_group_dn()
        orgs = conn.execute("SELECT id, coalesce(rds_group_dn, %s) FROM ad_organisations WHERE directory_id = %s"
                            " AND NOT deleted ORDER BY id", (default, d.id)).fetchall()
        groups: dict[str, str] = {}
        for _, group in orgs:
            groups.setdefault(dn_key(group), group)
        rows, evaluated = [], []
        for key, group in groups.items():
            if ad.get(group, ["objectGUID"]) is None:
                report.skip("RDS group does not exist", f"directory {d.name}: {group}")
                continue
            evaluated.append(key)
            counts["groups_read"] += 1
            flt = f"(&{USER_FILTER}(memberOf:{MATCHING_RULE_IN_CHAIN}:={escape_filter_value(group)}))"
            for entry in ad.search(d.base_dn, flt, ["objectGUID", "userAccountControl"]):
                counts["members_read"] += 1
                try:
                    rows.append((entry.guid(), key, group,
                                 not ((entry.int("userAccountControl") or 0) & UF_ACCOUNTDISABLE)))
                except ValueError as exc:
                    report.skip("unreadable user", f"directory {d.name}: {entry.dn}: {exc}")
        evaluated_orgs = [oid for oid, group in orgs if dn_key(group) in evaluated]
        conn.execute("CREATE TEMP TABLE _ad_rds_in (object_guid uuid, group_key text, group_dn text, enabled boolean)"
                     " ON COMMIT DROP")
        copy(conn, "_ad_rds_in", ("object_guid", "group_key", "group_dn", "enabled"), rows)
        conn.execute("CREATE TEMP TABLE _ad_rds_org (id bigint, group_key text) ON COMMIT DROP")
        copy(conn, "_ad_rds_org", ("id", "group_key"), [(oid, dn_key(g)) for oid, g in orgs])
        # Only the group of the user's own organisation counts.
        conn.execute("""
            CREATE TEMP TABLE _ad_rds_eff ON COMMIT DROP AS
            SELECT DISTINCT ON (u.id) u.id AS user_id, i.group_dn, i.enabled
            FROM _ad_rds_in i
            JOIN ad_users u ON u.directory_id = %s AND u.object_guid = i.object_guid AND NOT u.deleted
            JOIN _ad_rds_org o ON o.id = u.organisation_id AND o.group_key = i.group_key
            ORDER BY u.id""", (d.id,))
        counts["unknown_users"] += conn.execute(
            "SELECT count(DISTINCT object_guid) FROM _ad_rds_in i WHERE NOT EXISTS (SELECT 1 FROM ad_users u"
            " WHERE u.directory_id = %s AND u.object_guid = i.object_guid)", (d.id,)).fetchone()[0]
        counts["rds_written"] += conn.execute("""
            INSERT INTO ad_rds_users AS r (user_id, directory_id, rds_group_dn, account_enabled, since, synced_at)
            SELECT user_id, %(d)s, group_dn, enabled, %(at)s, %(at)s FROM _ad_rds_eff
            ON CONFLICT (user_id) DO UPDATE SET rds_group_dn = EXCLUDED.rds_group_dn,
                account_enabled = EXCLUDED.account_enabled,
                since = CASE WHEN r.removed_at IS NULL THEN r.since ELSE EXCLUDED.since END,
                removed_at = NULL, synced_at = EXCLUDED.synced_at
            WHERE (r.rds_group_dn, r.account_enabled, r.removed_at IS NULL)
                  IS DISTINCT FROM (EXCLUDED.rds_group_dn, EXCLUDED.account_enabled, true)""",
                                          {"d": d.id, "at": interval.end}).rowcount
        counts["rds_removed"] += conn.execute("""
            UPDATE ad_rds_users r SET removed_at = %(at)s, synced_at = %(at)s
            FROM ad_users u
            WHERE r.directory_id = %(d)s AND r.removed_at IS NULL AND u.id = r.user_id
              AND (u.deleted OR u.organisation_id = ANY(%(orgs)s::bigint[]) OR u.organisation_id IS NULL)
              AND NOT EXISTS (SELECT 1 FROM _ad_rds_eff e WHERE e.user_id = r.user_id)""",
                                          {"d": d.id, "at": interval.end, "orgs": evaluated_orgs}).rowcount
        conn.execute("""
            UPDATE ad_users u SET rds_enabled = EXISTS (SELECT 1 FROM ad_rds_users r WHERE r.user_id = u.id
                                                        AND r.removed_at IS NULL)
            WHERE u.directory_id = %s AND u.rds_enabled IS DISTINCT FROM EXISTS (
                SELECT 1 FROM ad_rds_users r WHERE r.user_id = u.id AND r.removed_at IS NULL)""", (d.id,))
        counts["rds_users"] += conn.execute("SELECT count(*) FROM ad_rds_users WHERE directory_id = %s"
                                            " AND removed_at IS NULL", (d.id,)).fetchone()[0]
        return counts, "live", None, None

    return sync_each_directory(panel_db, interval, log, "sync_rds_users", work)

