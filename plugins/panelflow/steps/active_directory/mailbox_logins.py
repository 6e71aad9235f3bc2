"""GroupActionWorkAD step 4: no one logs in as a shared, room, equipment, linked or discovery mailbox.

Such a mailbox is reached by its users' own accounts (permissions), never by logging in as it: its
account must be disabled (``userAccountControl`` ACCOUNTDISABLE). The type comes from AD's
``msExchRecipientTypeDetails`` where the directory has the Exchange schema (it is what Exchange
itself says), else from the panel's ``ad_user_mailbox_types`` row (0019). Enabled accounts of such
types are disabled and logged in ``ad_mailbox_login_disables``; already disabled ones are left alone
(a rerun changes nothing). Nothing is ever re-enabled here: converting a mailbox back to a user
mailbox does not decide that its account may log in again — an operator does.
"""

from __future__ import annotations

import uuid
from typing import Any

from panelflow.hooks.active_directory import UF_ACCOUNTDISABLE, UF_NORMAL_ACCOUNT, USER_FILTER, ActiveDirectoryRejected
from panelflow.step import StepReport

from ._backend import ENABLED_ONLY, Directory, chunks, copy, each_directory, guid_or

# msExchRecipientTypeDetails → our mailbox type (Exchange's RecipientTypeDetails flags). A value not
# listed (mail users, remote mailboxes …) is no local mailbox: it decides nothing here.
EXCHANGE_MAILBOX_TYPES = {1: "user", 2: "linked", 4: "shared", 16: "room", 32: "equipment", 536870912: "discovery"}
NO_LOGIN_TYPES = ("shared", "room", "equipment", "linked", "discovery")

_MAILBOX_CANDIDATES = """
SELECT object_guid, mailbox_type FROM ad_user_mailbox_types
WHERE directory_id = %s AND mailbox_type <> 'user'
ORDER BY checked_at NULLS FIRST, object_guid
LIMIT %s
"""

_RECORD_DISABLES = """
INSERT INTO ad_mailbox_login_disables (directory_id, object_guid, dn, mailbox_type, type_source,
                                       first_disabled_at, disabled_at)
SELECT %(directory)s, object_guid, dn, mailbox_type, type_source, %(at)s, %(at)s FROM tmp_mailbox_disables
ON CONFLICT (directory_id, object_guid) DO UPDATE
SET dn = EXCLUDED.dn, mailbox_type = EXCLUDED.mailbox_type, type_source = EXCLUDED.type_source,
    disabled_at = EXCLUDED.disabled_at,
    times = ad_mailbox_login_disables.times + CASE WHEN ad_mailbox_login_disables.disabled_at = EXCLUDED.disabled_at
                                                   THEN 0 ELSE 1 END
"""

_DISABLED_IN_PANEL = """
UPDATE ad_users u SET enabled = false, user_account_control = t.user_account_control
FROM tmp_mailbox_disables t WHERE u.directory_id = %(directory)s AND u.object_guid = t.object_guid
"""


def no_login_mailbox(exchange_value: int | None, panel_type: str | None) -> tuple[str, str] | None:
    """The (mailbox type, where the type came from) that forbids an account to log in, or None.

    Exchange's ``msExchRecipientTypeDetails``, where AD has one, decides alone — a mailbox converted
    in Exchange is what it now is, whatever the panel recorded; a value that is no local mailbox
    (a mail user, a remote mailbox) forbids nothing. Without it the panel's type decides."""
    if exchange_value is not None:
        kind = EXCHANGE_MAILBOX_TYPES.get(exchange_value)
        return (kind, "ad") if kind in NO_LOGIN_TYPES else None
    if panel_type in NO_LOGIN_TYPES:
        return panel_type, "panel"
    return None


def disable_logins_by_mailbox_type(panel_db, interval, params=None, log=None) -> dict:
    """Step 4 of GroupActionWorkAD: disable the accounts of shared/room/equipment/linked/discovery
    mailboxes (see the module's doc). Params: ``mailbox_type_users_per_run`` (5000)."""
    params = params or {}
    at = interval.end
    per_run = int(params.get("mailbox_type_users_per_run", 5000))
    report = StepReport()
    for key in ("checked", "disabled", "already_disabled", "not_in_directory", "type_conflicts"):
        report.add(key, 0)
    attrs = ("objectGUID", "sAMAccountName", "userAccountControl", "msExchRecipientTypeDetails")
    exchange_no_login = "(|" + "".join(f"(msExchRecipientTypeDetails={v})" for v, t in EXCHANGE_MAILBOX_TYPES.items()
                                       if t in NO_LOGIN_TYPES) + ")"

    def work(conn, directory: Directory, hook) -> None:
        # guid → (entry, type, source) of every account that must not log in
        decided: dict[uuid.UUID, tuple[Any, str, str]] = {}
        # Exchange says so (directories with the Exchange schema): enabled accounts of no-login mailboxes
        for entry in hook.search(directory.base_dn, f"(&{USER_FILTER}{ENABLED_ONLY}{exchange_no_login})", attrs):
            try:
                decision = no_login_mailbox(entry.int("msExchRecipientTypeDetails"), None)
                if decision is not None:
                    decided[entry.guid()] = (entry, *decision)
            except ValueError as exc:
                report.skip(str(exc), entry.dn)
        # the panel says so, unless Exchange says otherwise
        candidates = conn.execute(_MAILBOX_CANDIDATES, (directory.id, per_run)).fetchall()
        panel_types = {guid: kind for guid, kind in candidates}
        found: set[uuid.UUID] = set()
        for chunk in chunks(list(panel_types)):
            for entry in hook.search(directory.base_dn, f"(&{USER_FILTER}{guid_or(chunk)})", attrs):
                try:
                    guid, exchange_value = entry.guid(), entry.int("msExchRecipientTypeDetails")
                except ValueError as exc:
                    report.skip(str(exc), entry.dn)
                    continue
                found.add(guid)
                if exchange_value is not None and EXCHANGE_MAILBOX_TYPES.get(exchange_value) != panel_types[guid]:
                    report.add("type_conflicts")
                decision = no_login_mailbox(exchange_value, panel_types[guid])
                if decision is not None and guid not in decided:
                    decided[guid] = (entry, *decision)
        report.add("not_in_directory", len(set(panel_types) - found))
        report.add("checked", len(decided))

        disabled_rows = []
        for guid, (entry, kind, source) in sorted(decided.items(), key=lambda kv: kv[1][0].dn):
            try:
                uac = entry.int("userAccountControl") or UF_NORMAL_ACCOUNT
            except ValueError as exc:
                report.skip(str(exc), entry.dn)
                continue
            if uac & UF_ACCOUNTDISABLE:
                report.add("already_disabled")
                continue
            try:
                hook.replace_attributes(entry.dn, {"userAccountControl": str(uac | UF_ACCOUNTDISABLE)})
            except ActiveDirectoryRejected as exc:
                report.skip(f"not disabled: {exc}", entry.dn)
                continue
            report.add("disabled")
            disabled_rows.append((guid, entry.dn, kind, source, uac | UF_ACCOUNTDISABLE))
            if log is not None:
                log.info("disabled the login of %s (%s mailbox, type from %s)", entry.dn, kind, source)

        with conn.transaction():
            if disabled_rows:
                conn.execute("CREATE TEMP TABLE tmp_mailbox_disables (object_guid uuid, dn text, mailbox_type text,"
                             " type_source text, user_account_control integer) ON COMMIT DROP")
                copy(conn, "tmp_mailbox_disables",
                     ("object_guid", "dn", "mailbox_type", "type_source", "user_account_control"), disabled_rows)
                conn.execute(_RECORD_DISABLES, {"directory": directory.id, "at": at})
                conn.execute(_DISABLED_IN_PANEL, {"directory": directory.id})
            if panel_types:
                conn.execute("UPDATE ad_user_mailbox_types SET checked_at = %s WHERE directory_id = %s"
                             " AND object_guid = ANY(%s)", (at, directory.id, list(panel_types)))

    each_directory(panel_db, report, log, work)
    return report.as_dict()

