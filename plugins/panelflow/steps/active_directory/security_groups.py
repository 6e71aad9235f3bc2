"""AutoAddUsersInSecurityGroupWork step 1: the organisation's users join its auto-add security groups.

Every security group with ``ad_groups.auto_add_users`` (its optional ``user_filter`` /
``include_disabled`` in ``ad_group_auto_add_settings``) gets every user of its organisation's OU who
is not yet a direct member (the DC answers that question itself: ``(!(memberOf=<group>))``), up to
100 per modify; members are never re-added. Group and OU are found by objectGUID (a rename or move
does not lose them); a distribution group, a bad filter or a group gone from AD is reported and
skipped.
"""

from __future__ import annotations

from panelflow.hooks.active_directory import (
    GROUP_FILTER,
    USER_FILTER,
    ActiveDirectoryRejected,
    ActiveDirectoryUnavailable,
    escape_filter_value,
)
from panelflow.step import StepReport

from ._backend import ENABLED_ONLY, GROUP_SECURITY, Directory, chunks, copy, each_directory, within

MEMBERS_PER_MODIFY = 100    # DNs added to a group in one modify

_AUTO_ADD_GROUPS = """
SELECT g.id, g.object_guid, g.dn, g.organisation_id, o.object_guid, s.user_filter, coalesce(s.include_disabled, false)
FROM ad_groups g
LEFT JOIN ad_organisations o ON o.id = g.organisation_id AND NOT o.deleted
LEFT JOIN ad_group_auto_add_settings s ON s.group_id = g.id
WHERE g.directory_id = %s AND g.auto_add_users AND NOT g.deleted
ORDER BY g.id
"""

_AUTO_ADD_RECORD = """
INSERT INTO ad_group_auto_add_settings (group_id, last_run_at, last_added, last_error)
SELECT group_id, %(at)s, added, error FROM tmp_auto_add
ON CONFLICT (group_id) DO UPDATE
SET last_run_at = EXCLUDED.last_run_at, last_added = EXCLUDED.last_added, last_error = EXCLUDED.last_error
"""

_AUTO_ADD_MEMBERS = """
INSERT INTO ad_group_members (group_id, member_guid, member_dn)
SELECT group_id, member_guid, member_dn FROM tmp_auto_add_members
ON CONFLICT (group_id, member_guid) DO UPDATE SET member_dn = EXCLUDED.member_dn
"""


def _valid_filter(text: str) -> bool:
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import parse_filter

    try:
        parse_filter(text, None, True, True, None, False)
    except LDAPException:
        return False
    return True


def _add_members(hook, group_dn: str, member_dns: list[str]) -> list[str]:
    """Add ``member_dns`` to the group, many per modify → the DNs that were added. A batch one of
    whose DNs became a member meanwhile is refused whole by the DC; it is then added one by one."""
    from ldap3 import MODIFY_ADD
    from ldap3.core.exceptions import LDAPException, LDAPOperationResult

    added: list[str] = []
    for chunk in chunks(member_dns, MEMBERS_PER_MODIFY):
        conn = hook.get_conn()
        try:
            conn.modify(group_dn, {"member": [(MODIFY_ADD, chunk)]})
        except LDAPOperationResult as exc:
            if exc.result in (20, 68):          # attributeOrValueExists / entryAlreadyExists
                added.extend(dn for dn in chunk if hook.add_member(group_dn, dn))
                continue
            if exc.result in (3, 51, 52, 80):   # timeLimitExceeded, busy, unavailable, other
                hook.close()
                raise ActiveDirectoryUnavailable(f"add members to {group_dn}: {exc.description}") from exc
            raise ActiveDirectoryRejected("add member", exc.result, exc.description, exc.message or "",
                                          group_dn) from exc
        except LDAPException as exc:            # socket, timeout: the session is gone
            hook.close()
            raise ActiveDirectoryUnavailable(f"add members to {group_dn}: {type(exc).__name__}: {exc}") from exc
        added.extend(chunk)
    return added


def add_users_to_security_groups(panel_db, interval, params=None, log=None) -> dict:
    """Step 1 of AutoAddUsersInSecurityGroupWork (see the module's doc). Params:
    ``auto_add_users_per_group`` (5000): at most this many users added to one group per run."""
    params = params or {}
    at = interval.end
    per_group = int(params.get("auto_add_users_per_group", 5000))
    report = StepReport()
    for key in ("groups", "groups_done", "users_added", "already_members"):
        report.add(key, 0)

    def work(conn, directory: Directory, hook) -> None:
        groups = conn.execute(_AUTO_ADD_GROUPS, (directory.id,)).fetchall()
        outcomes, members = [], []
        for group_id, group_guid, group_dn, organisation_id, ou_guid, user_filter, include_disabled in groups:
            report.add("groups")
            record = f"group {group_id} ({group_dn})"

            def fail(reason: str) -> None:
                report.skip(reason, record)
                outcomes.append((group_id, 0, reason))

            if ou_guid is None:
                fail("the group belongs to no (live) organisation")
                continue
            if user_filter and not _valid_filter(user_filter.strip()):
                fail(f"user_filter {user_filter!r} is not an LDAP filter")
                continue
            try:
                group = hook.get(f"<GUID={group_guid}>", ["objectGUID", "groupType"], filter=GROUP_FILTER)
                ou = hook.get(f"<GUID={ou_guid}>", ["objectGUID"])
                if group is None:
                    fail("the group is not in the directory")
                    continue
                if ou is None:
                    fail("the organisation's OU is not in the directory")
                    continue
                if not (within(group.dn, directory.base_dn) and within(ou.dn, directory.base_dn)):
                    fail("the group or its OU is outside the managed subtree")
                    continue
                if not (group.int("groupType") or 0) & GROUP_SECURITY:
                    fail("not a security group")
                    continue
                wanted = (f"(&{USER_FILTER}(!(memberOf={escape_filter_value(group.dn)}))"
                          + ("" if include_disabled else ENABLED_ONLY)
                          + (user_filter.strip() if user_filter else "") + ")")
                missing = []
                for entry in hook.search(ou.dn, wanted, ["objectGUID"]):
                    if len(missing) >= per_group:
                        report.add("users_left_for_next_run")
                        break
                    missing.append(entry)
                already = sum(1 for _ in hook.search(ou.dn, f"(&{USER_FILTER}(memberOf={escape_filter_value(group.dn)}))",
                                                     ["objectGUID"]))
                by_dn = {e.dn: e for e in missing}
                added = _add_members(hook, group.dn, list(by_dn))
            except ActiveDirectoryRejected as exc:
                fail(f"refused: {exc}")
                continue
            report.add("groups_done")
            report.add("users_added", len(added))
            report.add("already_members", already + len(missing) - len(added))
            outcomes.append((group_id, len(added), None))
            for dn in added:
                members.append((group_id, by_dn[dn].guid(), dn))
            if log is not None and added:
                log.info("added %s users to %s", len(added), group.dn)
        if not outcomes:
            return
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE tmp_auto_add (group_id bigint, added integer, error text) ON COMMIT DROP")
            copy(conn, "tmp_auto_add", ("group_id", "added", "error"), outcomes)
            conn.execute(_AUTO_ADD_RECORD, {"at": at})
            if members:
                conn.execute("CREATE TEMP TABLE tmp_auto_add_members (group_id bigint, member_guid uuid, member_dn text)"
                             " ON COMMIT DROP")
                copy(conn, "tmp_auto_add_members", ("group_id", "member_guid", "member_dn"), members)
                conn.execute(_AUTO_ADD_MEMBERS)

    each_directory(panel_db, report, log, work)
    return report.as_dict()

