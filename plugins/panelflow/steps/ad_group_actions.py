"""GroupActionWorkAD steps 1, 4, 5 and AutoAddUsersInSecurityGroupWork steps 1–3: the AD group-action
queue and the upkeep that keeps the directory and the panel in step.

Every directory is an ``ad_directories`` row (0015): its Airflow connection (``conn_id``, reached
through :class:`~panelflow.hooks.active_directory.ActiveDirectoryHook`) and its managed subtree
``base_dn``, whose child OUs are the hosted organisations. Nothing outside ``base_dn`` is ever
written: a job or a setting naming an object elsewhere (``CN=Administrator,CN=Users,…``) is refused.
A directory that cannot be reached is reported in the step's summary and the others are still
worked; a step fails only when every directory failed.

GroupActionWorkAD
-----------------

1. :func:`process_ad_group_actions` — works ``group_action_jobs`` rows of backend ``ad`` through
   :func:`panelflow.services.group_actions.process_group_actions` (one job claimed at a time, priority 0
   first, ``FOR UPDATE SKIP LOCKED``; secrets dropped from the payload once finished). A DC that
   cannot be reached, times out, is busy or refuses the service account → :class:`JobDeferred`
   (back to pending, retried until ``job_max_attempts``); the DC refusing the request itself
   (a password failing the domain's policy, no such object, a name already taken) →
   :class:`JobRejected` with the DC's own message.

   Payload keys (``user``/``group``/``member`` name an object by objectGUID, DN, UPN or
   sAMAccountName; every job names its directory by ``organisation_id`` — an ``ad_organisations``
   row, whose OU is then the parent or destination — or by ``directory_id`` with an explicit DN)::

       create_user          organisation_id | directory_id + parent_dn, sam_account_name,
                            user_principal_name, password, cn? (the UPN's local part),
                            display_name?, given_name?, surname?, mail?, description?,
                            enabled? (true), must_change_password? (false), attributes? {name: value}
       update_user          user, attributes {name: value | [values] | null (clears)}
       reset_password       user, password, must_change_password? (false), unlock? (true)
       enable_user          user
       disable_user         user
       unlock_user          user
       move_user            user, organisation_id (the destination) | directory_id + target_dn
       delete_user          user
       add_group_member     group, member
       remove_group_member  group, member
       create_group         organisation_id | directory_id + parent_dn, name, sam_account_name? (name),
                            scope? (global | domain_local | universal), security? (true),
                            description?, mail?, auto_add_users? (false)
       create_organization  directory_id, name, parent_dn? (the directory's base_dn),
                            description?, upn_suffixes? [..], customer_id?

   Results (``group_action_jobs.result``) carry the object's ``dn`` and ``object_guid`` and what
   was done (``created``/``added``/``moved``/``deleted`` false when it was already so).

   Exactly once. A worker killed mid-job leaves it running and a later run takes it again, so
   every action is a state, not a toggle: create_user/create_group look the account up by
   sAMAccountName (and UPN) in the whole domain first and return the one found (a name held by a
   *different* account is a rejection); create_organization finds the OU by its DN; delete_user
   of an absent user, remove_group_member of a non-member and add_group_member of a member
   succeed as they are; enable/disable set the ACCOUNTDISABLE bit rather than flip it; unlock
   writes ``lockoutTime = 0``. A password travels only in the ``unicodePwd`` of the add or modify,
   over LDAPS/StartTLS (the hook refuses otherwise), and is removed from the payload once the job
   is finished. create_organization and create_group also write the panel's ``ad_organisations``
   / ``ad_groups`` row (the job's result names it) so the panel can use the object at once; the
   other objects reach ``ad_users`` through the AD sync.

4. :func:`disable_logins_by_mailbox_type` — a shared, room, equipment, linked or discovery
   mailbox is reached by its users' own accounts (permissions), never by logging in as it: such
   an account must be disabled (``userAccountControl`` ACCOUNTDISABLE). The type comes from AD's
   ``msExchRecipientTypeDetails`` where the directory has the Exchange schema (it is what Exchange
   itself says), else from the panel's ``ad_user_mailbox_types`` row (0019). Enabled accounts of
   such types are disabled and logged in ``ad_mailbox_login_disables``; already disabled ones are
   left alone (a rerun changes nothing). Nothing is ever re-enabled here: converting a mailbox
   back to a user mailbox does not decide that its account may log in again — an operator does.

5. :func:`rename_delete_hostmatic_db_users` — Hostmatic database logins (MSSQL Windows logins
   ``DOMAIN\\sam``, MySQL users ``prefix_sam``: ``hosting_database_users``, 0019) are named after
   their AD user's sAMAccountName. Each row's AD user is looked up by objectGUID in the whole
   domain: renamed → the row takes the new name; gone (not found anywhere in the domain) → the
   row is deleted. **The database servers themselves are not touched here**: each rename or
   delete queues exactly one group action for the hosting backend (``group_action_jobs``,
   backend ``hostmatic``: ``rename_database_user`` / ``delete_database_user``, payload with the
   server, engine and old/new login), written in the same statement that changes the row, so a
   rerun (the row already changed) queues nothing more. A new name already used on that server,
   or a MySQL name longer than 32 characters, is reported and the row left as it was.

AutoAddUsersInSecurityGroupWork
-------------------------------

1. :func:`add_users_to_security_groups` — every security group with ``ad_groups.auto_add_users``
   (its optional ``user_filter``/``include_disabled`` in ``ad_group_auto_add_settings``) gets every
   user of its organisation's OU who is not yet a direct member (the DC answers that question
   itself: ``(!(memberOf=<group>))``), up to 100 per modify; members are never re-added. Group and OU are found by objectGUID (a rename or move does not lose them); a
   distribution group, a bad filter or a group gone from AD is reported and skipped.

2. :func:`change_cn_on_upn_change` — a user's CN follows its UPN: when a UPN has changed since
   the last run (``ad_user_cn_upn`` remembers the UPN each user had; the first sight of a user is
   only remembered), the user is renamed (modify DN, same OU) to ``CN=<the new UPN's local
   part>`` — the same rule create_user names new accounts by. Another object already holding that
   CN in the OU is a collision: reported, the user skipped (and tried again next run). The panel's
   ``ad_users.cn``/``dn`` follow the rename.

3. :func:`sync_system_alerts` — conditions an operator must see, one open ``system_alerts`` row per
   condition and object, kept open (``last_seen_at``) while the condition holds and resolved by the
   first run that no longer finds it:

   - ``ad_directory_unreachable`` (critical): the directory could not be searched this run; its
     other alerts are then left as they were (unknown is not resolved);
   - ``ad_account_locked`` (warning): an account of the managed subtree locked out
     (``msDS-User-Account-Control-Computed`` LOCKOUT, i.e. still inside the lockout duration);
   - ``ad_password_expired`` (info): an enabled account whose password expired by the run's end
     (``msDS-UserPasswordExpiryTimeComputed`` ≤ ``interval.end``; never-expiring passwords and
     "must change at next logon" are not expiries);
   - ``group_action_failed`` (warning): a group-action job of any backend that failed within the
     last ``alert_failed_job_hours`` (24) — resolved when it is re-queued or ages out.

   The run's ``interval.end`` is the alerts' clock, so a rerun of an interval writes the same rows.
   A disabled directory's AD alerts are resolved.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow.exceptions import AirflowNotFoundException

from panelflow.step import StepReport
from panelflow.services.group_actions import JobDeferred, JobRejected, process_group_actions
from panelflow.hooks.active_directory import (
    GROUP_FILTER,
    MATCHING_RULE_BIT_AND,
    UF_ACCOUNTDISABLE,
    UF_DONT_EXPIRE_PASSWD,
    UF_LOCKOUT,
    UF_NORMAL_ACCOUNT,
    USER_FILTER,
    ActiveDirectoryError,
    ActiveDirectoryHook,
    ActiveDirectoryRejected,
    ActiveDirectoryUnavailable,
    datetime_to_filetime,
    dn_components,
    dn_key,
    encode_password,
    escape_filter_value,
    filetime_to_datetime,
    guid_filter_value,
)

BACKEND = "ad"
HOSTMATIC_BACKEND = "hostmatic"
ACTIONS = ("create_user", "update_user", "reset_password", "enable_user", "disable_user", "unlock_user",
           "move_user", "delete_user", "add_group_member", "remove_group_member", "create_group",
           "create_organization")

MEMBER_FILTER = f"(|{USER_FILTER}{GROUP_FILTER}(objectClass=contact))"
ENABLED_ONLY = f"(!(userAccountControl:{MATCHING_RULE_BIT_AND}:={UF_ACCOUNTDISABLE}))"
GROUP_SECURITY = 0x80000000
GROUP_SCOPES = {"global": 0x2, "domain_local": 0x4, "universal": 0x8}

# msExchRecipientTypeDetails → our mailbox type (Exchange's RecipientTypeDetails flags). A value not
# listed (mail users, remote mailboxes …) is no local mailbox: it decides nothing here.
EXCHANGE_MAILBOX_TYPES = {1: "user", 2: "linked", 4: "shared", 16: "room", 32: "equipment", 536870912: "discovery"}
NO_LOGIN_TYPES = ("shared", "room", "equipment", "linked", "discovery")

# Attributes update_user may not write: each has its own action (password, enable, unlock, move,
# membership) or is the directory's to keep.
PROTECTED_ATTRIBUTES = frozenset(a.lower() for a in (
    "unicodePwd", "userPassword", "userAccountControl", "lockoutTime", "pwdLastSet", "member", "memberOf",
    "objectClass", "objectCategory", "objectGUID", "objectSid", "sAMAccountType", "primaryGroupID", "cn", "name",
    "distinguishedName", "nTSecurityDescriptor", "adminCount", "sIDHistory", "msDS-AllowedToDelegateTo"))
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")

GUID_CHUNK = 100            # objectGUIDs per OR-filter search
MEMBERS_PER_MODIFY = 100    # DNs added to a group in one modify
MYSQL_USER_MAX = 32
CN_MAX = 64


# -- directories ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    id: int
    name: str
    conn_id: str
    base_dn: str


_DIRECTORIES = "SELECT id, name, conn_id, base_dn FROM ad_directories WHERE enabled ORDER BY id"


def _directories(conn) -> list[Directory]:
    return [Directory(*row) for row in conn.execute(_DIRECTORIES).fetchall()]


def _hook(directory: Directory):
    return ActiveDirectoryHook(directory.conn_id)


def _unreachable_types() -> tuple[type[BaseException], ...]:
    """What makes a whole directory fail for a run: the DC unreachable or refusing the run's reads,
    or its connection missing or unusable."""
    return ActiveDirectoryError, AirflowNotFoundException, ValueError


def _each_directory(panel_db, report: StepReport, log, work: Callable[[Any, Directory, Any], None],
                    on_failure: Callable[[Any, Directory, Exception], None] | None = None) -> None:
    """``work(conn, directory, hook)`` for each enabled directory, each on the task's own thread
    (hooks fetch their connection there). A failing directory is reported, the others still run;
    raises at the end only when every directory failed."""
    failures = _unreachable_types()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        directories = _directories(conn)
        report.add("directories", len(directories))
        failed: list[str] = []
        for directory in directories:
            try:
                with _hook(directory) as hook:
                    work(conn, directory, hook)
            except failures as exc:
                text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                failed.append(f"{directory.name}: {text}")
                report.add("directories_failed")
                report.skip(f"directory failed: {text}", f"directory {directory.name}")
                if log is not None:
                    log.warning("AD directory %s failed: %s", directory.name, text)
                if on_failure is not None:
                    on_failure(conn, directory, exc)
    if directories and len(failed) == len(directories):
        raise RuntimeError("every AD directory failed: " + "; ".join(failed[:5]))


def _within(dn: str, base_dn: str) -> bool:
    """Whether ``dn`` is ``base_dn`` or below it (compared component by component)."""
    key, base = dn_key(dn), dn_key(base_dn)
    return key == base or key.endswith("," + base)


def _parent_dn(dn: str) -> str:
    return ",".join(dn_components(dn)[1:])


def _rdn(attribute: str, value: str) -> str:
    from ldap3.utils.dn import escape_rdn

    escaped = escape_rdn(value)
    if escaped.startswith("#"):
        escaped = "\\" + escaped
    return f"{attribute}={escaped}"


def _guid_or(guids: Iterable[Any]) -> str:
    return "(|" + "".join(f"(objectGUID={guid_filter_value(g)})" for g in guids) + ")"


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _copy(conn, table: str, columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


# -- 1. group actions ------------------------------------------------------------------------------


def _text(payload: dict, key: str, required: bool = True) -> str | None:
    value = payload.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise JobRejected(f"payload has no {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise JobRejected(f"payload {key!r} is not a string")
    return str(value).strip()


def _flag(payload: dict, key: str, default: bool) -> bool:
    value = payload.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise JobRejected(f"payload {key!r} is not true/false")
    return value


def _int(payload: dict, key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise JobRejected(f"payload {key!r} is not an id")
    return int(value)


def _attribute_values(raw: Any, what: str) -> dict[str, list[str] | None]:
    if not isinstance(raw, dict) or not raw:
        raise JobRejected(f"{what} must be a non-empty object of attribute: value")
    out: dict[str, list[str] | None] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
            raise JobRejected(f"{what}: {name!r} is not an attribute name")
        if name.lower() in PROTECTED_ATTRIBUTES:
            raise JobRejected(f"{what}: {name} cannot be written by this action")
        if value is None or value == []:
            out[name] = None
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise JobRejected(f"{what}: {name} must be a string, a number or a list of them")
        out[name] = [str(v) for v in values]
    return out


@dataclass
class _Target:
    directory: Directory
    organisation_id: int | None = None
    organisation_guid: uuid.UUID | None = None
    parent_dn: str | None = None        # the payload's explicit DN (with directory_id)


_ORGANISATION = """
SELECT o.id, o.object_guid, o.deleted, d.id, d.name, d.conn_id, d.base_dn, d.enabled
FROM ad_organisations o JOIN ad_directories d ON d.id = o.directory_id WHERE o.id = %s
"""
_DIRECTORY = "SELECT id, name, conn_id, base_dn, enabled FROM ad_directories WHERE id = %s"

_UPSERT_ORGANISATION = """
INSERT INTO ad_organisations (directory_id, object_guid, dn, name, description, customer_id, upn_suffixes)
VALUES (%(directory)s, %(guid)s, %(dn)s, %(name)s, %(description)s, %(customer)s, %(suffixes)s)
ON CONFLICT (directory_id, object_guid) DO UPDATE
SET dn = EXCLUDED.dn, name = EXCLUDED.name, deleted = false, deleted_at = NULL,
    description = coalesce(EXCLUDED.description, ad_organisations.description),
    customer_id = coalesce(EXCLUDED.customer_id, ad_organisations.customer_id)
RETURNING id
"""

_UPSERT_GROUP = """
INSERT INTO ad_groups (directory_id, organisation_id, object_guid, sam_account_name, cn, dn, mail, description,
                       group_type, auto_add_users)
VALUES (%(directory)s, %(organisation)s, %(guid)s, %(sam)s, %(cn)s, %(dn)s, %(mail)s, %(description)s,
        %(group_type)s, %(auto_add)s)
ON CONFLICT (directory_id, object_guid) DO UPDATE
SET dn = EXCLUDED.dn, deleted = false, deleted_at = NULL,
    organisation_id = coalesce(ad_groups.organisation_id, EXCLUDED.organisation_id),
    auto_add_users = ad_groups.auto_add_users OR EXCLUDED.auto_add_users
RETURNING id
"""


class _AdJobs:
    """The handler process_group_actions calls per job: one bound hook per directory for the run,
    dropped when its DC stops answering (the next job connects afresh)."""

    USER_ATTRS = ("objectGUID", "objectClass", "sAMAccountName", "userPrincipalName", "userAccountControl",
                  "lockoutTime", "cn")

    def __init__(self, panel_db):
        self.conn = panel_db.get_conn()
        self.conn.autocommit = True
        self.hooks: dict[int, Any] = {}
        self.naming_contexts: dict[int, str] = {}
        self.down: dict[int, str] = {}     # directories that could not be connected to in this run

    def close(self) -> None:
        for hook in self.hooks.values():
            hook.close()
        self.hooks.clear()
        self.conn.close()

    # dispatch -------------------------------------------------------------------------------------

    def __call__(self, action: str, payload: dict) -> dict:
        target = self._target(action, payload)
        directory = target.directory
        try:
            try:
                hook = self._hook(directory)
            except ValueError as exc:           # the connection lacks a host or login: an operator fixes it
                raise JobDeferred(f"directory {directory.name}: {exc}") from exc
            return getattr(self, action)(hook, target, payload)
        except ActiveDirectoryUnavailable as exc:
            self._drop(directory)
            raise JobDeferred(f"directory {directory.name}: {exc}") from exc
        except ActiveDirectoryRejected as exc:
            raise JobRejected(str(exc)) from exc
        except AirflowNotFoundException as exc:
            raise JobDeferred(f"directory {directory.name}: connection {directory.conn_id!r} is not defined") from exc

    def _hook(self, directory: Directory):
        """The directory's bound hook. A DC that could not be connected to is not tried again in the
        same run: its other jobs are deferred at once instead of each waiting out the connect timeout."""
        if directory.id in self.down:
            raise JobDeferred(f"directory {directory.name}: {self.down[directory.id]} (earlier in this run)")
        hook = self.hooks.get(directory.id)
        if hook is None:
            hook = _hook(directory)
            try:
                hook.get_conn()
            except ActiveDirectoryUnavailable as exc:
                hook.close()
                self.down[directory.id] = str(exc)
                raise
            except Exception:
                hook.close()
                raise
            self.hooks[directory.id] = hook
        return hook

    def _drop(self, directory: Directory) -> None:
        hook = self.hooks.pop(directory.id, None)
        self.naming_contexts.pop(directory.id, None)
        if hook is not None:
            hook.close()

    def _naming_context(self, directory: Directory, hook) -> str:
        if directory.id not in self.naming_contexts:
            self.naming_contexts[directory.id] = hook.root_dse()["defaultNamingContext"]
        return self.naming_contexts[directory.id]

    def _target(self, action: str, p: dict) -> _Target:
        organisation_id, directory_id = _int(p, "organisation_id"), _int(p, "directory_id")
        if organisation_id is not None and action != "create_organization":
            row = self.conn.execute(_ORGANISATION, (organisation_id,)).fetchone()
            if row is None:
                raise JobRejected(f"no organisation {organisation_id} (ad_organisations)")
            if row[2]:
                raise JobRejected(f"organisation {organisation_id} is deleted")
            directory, enabled = Directory(row[3], row[4], row[5], row[6]), row[7]
            target = _Target(directory, organisation_id=organisation_id, organisation_guid=row[1])
        elif directory_id is not None:
            row = self.conn.execute(_DIRECTORY, (directory_id,)).fetchone()
            if row is None:
                raise JobRejected(f"no directory {directory_id} (ad_directories)")
            directory, enabled = Directory(*row[:4]), row[4]
            target = _Target(directory)
            explicit = _text(p, "target_dn" if action == "move_user" else "parent_dn", required=False)
            if explicit is not None:
                if not _within(explicit, directory.base_dn):
                    raise JobRejected(f"{explicit} is outside the managed subtree {directory.base_dn}")
                target.parent_dn = explicit
        else:
            raise JobRejected("payload names neither organisation_id nor directory_id")
        if not enabled:
            raise JobRejected(f"directory {directory.name} is disabled")
        return target

    def _parent(self, hook, target: _Target, action: str) -> str:
        """The OU an object is created in or moved to: the organisation's, found by its GUID."""
        if target.organisation_id is not None:
            entry = hook.get(f"<GUID={target.organisation_guid}>", ["objectGUID"])
            if entry is None:
                raise JobRejected(f"organisation {target.organisation_id}: its OU ({target.organisation_guid})"
                                  " is not in the directory")
            if not _within(entry.dn, target.directory.base_dn):
                raise JobRejected(f"organisation {target.organisation_id}: {entry.dn} is outside the managed"
                                  f" subtree {target.directory.base_dn}")
            return entry.dn
        if target.parent_dn is None:
            raise JobRejected(f"{action} needs organisation_id or " + ("target_dn" if action == "move_user"
                                                                        else "parent_dn"))
        return target.parent_dn

    # looking objects up ---------------------------------------------------------------------------

    def _find(self, hook, directory: Directory, ref: str, class_filter: str, attrs: Iterable[str]):
        """The object ``ref`` names (objectGUID, DN, UPN or sAMAccountName) within the domain, or None."""
        attrs = list(attrs)
        try:
            guid = uuid.UUID(ref)
        except ValueError:
            guid = None
        if guid is not None or ("=" in ref and "," in ref):
            entry = hook.get(f"<GUID={guid}>" if guid is not None else ref, attrs, filter=class_filter)
        else:
            key = "userPrincipalName" if "@" in ref else "sAMAccountName"
            found = list(hook.search(self._naming_context(directory, hook),
                                     f"(&{class_filter}({key}={escape_filter_value(ref)}))", attrs, page_size=2))
            if len(found) > 1:
                raise JobRejected(f"{key} {ref!r} names {len(found)} objects")
            entry = found[0] if found else None
        if entry is not None and not _within(entry.dn, directory.base_dn):
            raise JobRejected(f"{ref!r} is {entry.dn}, outside the managed subtree {directory.base_dn}")
        return entry

    def _user(self, hook, target: _Target, p: dict, key: str = "user", required: bool = True):
        ref = _text(p, key)
        entry = self._find(hook, target.directory, ref, USER_FILTER, self.USER_ATTRS)
        if entry is None and required:
            raise JobRejected(f"no user {ref!r} in directory {target.directory.name}")
        return entry

    @staticmethod
    def _described(entry, **extra) -> dict:
        return {"dn": entry.dn, "object_guid": str(entry.guid()), **extra}

    # the actions ----------------------------------------------------------------------------------

    def create_user(self, hook, target: _Target, p: dict) -> dict:
        sam, upn, password = _text(p, "sam_account_name"), _text(p, "user_principal_name"), _text(p, "password")
        local, at, suffix = upn.partition("@")
        if not local or not at or not suffix:
            raise JobRejected(f"user_principal_name {upn!r} is not name@suffix")
        if len(sam) > 20 or re.search(r'["/\\\[\]:;|=,+*?<>@]', sam):
            raise JobRejected(f"sam_account_name {sam!r} is not a valid pre-Windows 2000 logon name")
        enabled = _flag(p, "enabled", True)
        must_change = _flag(p, "must_change_password", False)
        extra = _attribute_values(p["attributes"], "attributes") if p.get("attributes") else {}
        parent = self._parent(hook, target, "create_user")
        if not hook.encrypted:
            raise JobRejected(f"directory {target.directory.name}: its connection uses neither LDAPS nor StartTLS;"
                              " AD accepts a password only over TLS")

        nc = self._naming_context(target.directory, hook)
        taken = list(hook.search(nc, f"(&(objectClass=user)(|(sAMAccountName={escape_filter_value(sam)})"
                                     f"(userPrincipalName={escape_filter_value(upn)})))", self.USER_ATTRS, page_size=5))
        if taken:
            entry = taken[0]
            ours = (len(taken) == 1 and (entry.text("sAMAccountName") or "").lower() == sam.lower()
                    and (entry.text("userPrincipalName") or "").lower() == upn.lower())
            if not ours:      # the name belongs to another account: not this job's user
                raise JobRejected(f"sAMAccountName {sam!r} or UPN {upn!r} is already used by "
                                  + ", ".join(e.dn for e in taken))
            if not _within(entry.dn, target.directory.base_dn):
                raise JobRejected(f"sAMAccountName {sam!r} is already used by {entry.dn}, outside the managed subtree")
            return self._described(entry, sam_account_name=sam, user_principal_name=upn, created=False)

        cn = _text(p, "cn", required=False) or local
        if len(cn) > CN_MAX:
            raise JobRejected(f"cn {cn!r} is longer than {CN_MAX} characters")
        dn = f"{_rdn('CN', cn)},{parent}"
        attrs: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}    # the payload's own keys win
        attrs |= {"sAMAccountName": sam, "userPrincipalName": upn,
                                 "unicodePwd": encode_password(password),
                                 "userAccountControl": str(UF_NORMAL_ACCOUNT | (0 if enabled else UF_ACCOUNTDISABLE))}
        for key, name in (("display_name", "displayName"), ("given_name", "givenName"), ("surname", "sn"),
                          ("mail", "mail"), ("description", "description")):
            value = _text(p, key, required=False)
            if value is not None:
                attrs[name] = value
        if must_change:
            attrs["pwdLastSet"] = "0"
        hook.add(dn, ["top", "person", "organizationalPerson", "user"], attrs)
        entry = hook.get(dn, self.USER_ATTRS)
        if entry is None:
            raise JobDeferred(f"{dn} was added but cannot be read back yet")
        return self._described(entry, sam_account_name=sam, user_principal_name=upn, created=True, enabled=enabled,
                               must_change_password=must_change)

    def update_user(self, hook, target: _Target, p: dict) -> dict:
        changes = _attribute_values(p.get("attributes"), "attributes")
        entry = self._user(hook, target, p)
        hook.replace_attributes(entry.dn, changes)
        return self._described(entry, updated=sorted(changes))

    def reset_password(self, hook, target: _Target, p: dict) -> dict:
        password = _text(p, "password")
        must_change, unlock = _flag(p, "must_change_password", False), _flag(p, "unlock", True)
        entry = self._user(hook, target, p)
        try:
            hook.set_password(entry.dn, password, must_change=must_change)
        except ValueError as exc:         # the connection has no TLS
            raise JobRejected(str(exc)) from exc
        was_locked = (entry.int("lockoutTime") or 0) > 0
        if unlock and was_locked:
            hook.unlock(entry.dn)
        return self._described(entry, password_reset=True, must_change_password=must_change,
                               unlocked=unlock and was_locked)

    def _set_enabled(self, hook, target: _Target, p: dict, enabled: bool) -> dict:
        entry = self._user(hook, target, p)
        before = entry.int("userAccountControl")
        after = hook.set_enabled(entry.dn, enabled)
        return self._described(entry, enabled=enabled, changed=before != after, user_account_control=after)

    def enable_user(self, hook, target: _Target, p: dict) -> dict:
        return self._set_enabled(hook, target, p, True)

    def disable_user(self, hook, target: _Target, p: dict) -> dict:
        return self._set_enabled(hook, target, p, False)

    def unlock_user(self, hook, target: _Target, p: dict) -> dict:
        entry = self._user(hook, target, p)
        was_locked = (entry.int("lockoutTime") or 0) > 0
        hook.unlock(entry.dn)
        return self._described(entry, unlocked=True, was_locked=was_locked)

    def move_user(self, hook, target: _Target, p: dict) -> dict:
        destination = self._parent(hook, target, "move_user")
        entry = self._user(hook, target, p)
        if dn_key(_parent_dn(entry.dn)) == dn_key(destination):
            return self._described(entry, moved=False, previous_dn=entry.dn)
        new_dn = hook.move(entry.dn, destination)
        return {"dn": new_dn, "object_guid": str(entry.guid()), "moved": True, "previous_dn": entry.dn}

    def delete_user(self, hook, target: _Target, p: dict) -> dict:
        entry = self._user(hook, target, p, required=False)
        if entry is None:
            return {"user": _text(p, "user"), "deleted": False, "already_absent": True}
        hook.delete(entry.dn)
        return self._described(entry, deleted=True)

    def _membership(self, hook, target: _Target, p: dict, need_member: bool):
        group_ref, member_ref = _text(p, "group"), _text(p, "member")
        group = self._find(hook, target.directory, group_ref, GROUP_FILTER, ("objectGUID", "groupType"))
        if group is None:
            raise JobRejected(f"no group {group_ref!r} in directory {target.directory.name}")
        member = self._find(hook, target.directory, member_ref, MEMBER_FILTER, ("objectGUID",))
        if member is None and need_member:
            raise JobRejected(f"no user, group or contact {member_ref!r} in directory {target.directory.name}")
        return group, member, member_ref

    def add_group_member(self, hook, target: _Target, p: dict) -> dict:
        group, member, _ = self._membership(hook, target, p, need_member=True)
        added = hook.add_member(group.dn, member.dn)
        return {"group_dn": group.dn, "group_guid": str(group.guid()), "member_dn": member.dn,
                "member_guid": str(member.guid()), "added": added, "already_member": not added}

    def remove_group_member(self, hook, target: _Target, p: dict) -> dict:
        group, member, member_ref = self._membership(hook, target, p, need_member=False)
        if member is None:
            return {"group_dn": group.dn, "member": member_ref, "removed": False, "already_absent": True}
        removed = hook.remove_member(group.dn, member.dn)
        return {"group_dn": group.dn, "group_guid": str(group.guid()), "member_dn": member.dn,
                "member_guid": str(member.guid()), "removed": removed, "already_absent": not removed}

    def create_group(self, hook, target: _Target, p: dict) -> dict:
        name = _text(p, "name")
        sam = _text(p, "sam_account_name", required=False) or name
        scope = (_text(p, "scope", required=False) or "global").lower()
        if scope not in GROUP_SCOPES:
            raise JobRejected(f"scope {scope!r} is not one of {', '.join(GROUP_SCOPES)}")
        if len(sam) > 256 or len(name) > CN_MAX:
            raise JobRejected(f"group name {name!r} is too long")
        security = _flag(p, "security", True)
        auto_add = _flag(p, "auto_add_users", False)
        description, mail = _text(p, "description", required=False), _text(p, "mail", required=False)
        group_type = GROUP_SCOPES[scope] | (GROUP_SECURITY if security else 0)
        group_type -= (1 << 32) if group_type >= (1 << 31) else 0        # groupType is a signed 32-bit integer
        parent = self._parent(hook, target, "create_group")
        attrs = ("objectGUID", "groupType", "sAMAccountName", "cn")

        nc = self._naming_context(target.directory, hook)
        found = list(hook.search(nc, f"(&(objectClass=group)(sAMAccountName={escape_filter_value(sam)}))", attrs,
                                 page_size=2))
        created = not found
        if found:
            entry = found[0]
            if not _within(entry.dn, target.directory.base_dn):
                raise JobRejected(f"sAMAccountName {sam!r} is already used by {entry.dn}")
        else:
            dn = f"{_rdn('CN', name)},{parent}"
            values = {"sAMAccountName": sam, "groupType": str(group_type)}
            if description:
                values["description"] = description
            if mail:
                values["mail"] = mail
            hook.add(dn, ["top", "group"], values)
            entry = hook.get(dn, attrs)
            if entry is None:
                raise JobDeferred(f"{dn} was added but cannot be read back yet")
        (group_id,) = self.conn.execute(_UPSERT_GROUP, {
            "directory": target.directory.id, "organisation": target.organisation_id, "guid": entry.guid(),
            "sam": entry.text("sAMAccountName"), "cn": entry.text("cn"), "dn": entry.dn, "mail": mail,
            "description": description, "group_type": entry.int("groupType"), "auto_add": auto_add}).fetchone()
        return self._described(entry, group_id=group_id, created=created, group_type=entry.int("groupType"))

    def create_organization(self, hook, target: _Target, p: dict) -> dict:
        name = _text(p, "name")
        if len(name) > CN_MAX:
            raise JobRejected(f"organisation name {name!r} is longer than {CN_MAX} characters")
        parent = target.parent_dn or target.directory.base_dn
        description = _text(p, "description", required=False)
        customer_id = _int(p, "customer_id")
        suffixes = p.get("upn_suffixes") or []
        if isinstance(suffixes, str):
            suffixes = [suffixes]
        if not isinstance(suffixes, list) or not all(isinstance(s, str) and "." in s and "@" not in s for s in suffixes):
            raise JobRejected("upn_suffixes must be a list of domain names")
        suffixes = [s.strip().lower() for s in suffixes]
        if customer_id is not None and self.conn.execute("SELECT 1 FROM customers WHERE id = %s",
                                                         (customer_id,)).fetchone() is None:
            raise JobRejected(f"no customer {customer_id}")
        dn = f"{_rdn('OU', name)},{parent}"
        attrs = ("objectGUID", "uPNSuffixes", "description")
        entry = hook.get(dn, attrs)
        created = entry is None
        if created:
            values: dict[str, Any] = {}
            if description:
                values["description"] = description
            if suffixes:
                values["uPNSuffixes"] = suffixes
            hook.add(dn, ["top", "organizationalUnit"], values)
            entry = hook.get(dn, attrs)
            if entry is None:
                raise JobDeferred(f"{dn} was added but cannot be read back yet")
        (organisation_id,) = self.conn.execute(_UPSERT_ORGANISATION, {
            "directory": target.directory.id, "guid": entry.guid(), "dn": entry.dn, "name": name,
            "description": description, "customer": customer_id,
            "suffixes": [s.lower() for s in entry.texts("uPNSuffixes")]}).fetchone()
        return self._described(entry, organisation_id=organisation_id, created=created)


def process_ad_group_actions(panel_db, interval, params=None, log=None) -> dict:
    """Step 1 of GroupActionWorkAD: work the ``ad`` group-action queue (see the module's doc).

    Params: ``jobs_per_run`` (50), ``job_max_attempts`` (5), ``job_stale_minutes`` (60).
    """
    jobs = _AdJobs(panel_db)
    try:
        return process_group_actions(panel_db, BACKEND, jobs, interval, params, log, actions=ACTIONS)
    finally:
        jobs.close()


# -- 4. logins of non-user mailboxes ---------------------------------------------------------------

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
        for chunk in _chunks(list(panel_types), GUID_CHUNK):
            for entry in hook.search(directory.base_dn, f"(&{USER_FILTER}{_guid_or(chunk)})", attrs):
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
                _copy(conn, "tmp_mailbox_disables",
                      ("object_guid", "dn", "mailbox_type", "type_source", "user_account_control"), disabled_rows)
                conn.execute(_RECORD_DISABLES, {"directory": directory.id, "at": at})
                conn.execute(_DISABLED_IN_PANEL, {"directory": directory.id})
            if panel_types:
                conn.execute("UPDATE ad_user_mailbox_types SET checked_at = %s WHERE directory_id = %s"
                             " AND object_guid = ANY(%s)", (at, directory.id, list(panel_types)))

    _each_directory(panel_db, report, log, work)
    return report.as_dict()


# -- 5. Hostmatic database users -------------------------------------------------------------------

_HOSTMATIC_BATCH = """
SELECT id, ad_object_guid FROM hosting_database_users WHERE directory_id = %s
ORDER BY checked_at NULLS FIRST, id LIMIT %s
"""

_HOSTMATIC_RENAME = """
WITH renamed AS (
    UPDATE hosting_database_users h
    SET ad_sam_account_name = t.sam, renamed_at = %(at)s, checked_at = %(at)s
    FROM hosting_database_users old, tmp_hostmatic_ad t
    WHERE old.id = h.id AND h.id = ANY(%(ids)s) AND h.directory_id = %(directory)s
      AND h.ad_object_guid = t.object_guid AND h.ad_sam_account_name IS DISTINCT FROM t.sam
      AND (h.engine <> 'mysql' OR length(h.login_prefix || t.sam) <= %(mysql_max)s)
      AND NOT EXISTS (SELECT 1 FROM hosting_database_users o
                      WHERE o.engine = h.engine AND o.db_server = h.db_server
                        AND o.login_name = h.login_prefix || t.sam AND o.id <> h.id)
    RETURNING h.id, h.engine, h.db_server, h.ad_object_guid, old.login_name AS old_login, h.login_name AS new_login,
              old.ad_sam_account_name AS old_sam, h.ad_sam_account_name AS new_sam
), queued AS (
    INSERT INTO group_action_jobs (backend, action, payload, priority)
    SELECT %(backend)s, 'rename_database_user',
           jsonb_build_object('database_user_id', id, 'engine', engine, 'db_server', db_server,
                              'old_login', old_login, 'new_login', new_login, 'ad_object_guid', ad_object_guid,
                              'old_sam_account_name', old_sam, 'new_sam_account_name', new_sam,
                              'directory_id', %(directory)s::bigint),
           %(priority)s
    FROM renamed ORDER BY id
    RETURNING id
)
SELECT count(*) FROM queued
"""

_HOSTMATIC_NOT_RENAMED = """
SELECT h.id, h.engine, h.db_server, h.login_name, h.login_prefix || t.sam
FROM hosting_database_users h JOIN tmp_hostmatic_ad t ON t.object_guid = h.ad_object_guid
WHERE h.id = ANY(%(ids)s) AND h.directory_id = %(directory)s AND h.ad_sam_account_name IS DISTINCT FROM t.sam
"""

_HOSTMATIC_DELETE = """
WITH gone AS (
    DELETE FROM hosting_database_users h WHERE h.id IN (
        SELECT id FROM hosting_database_users
        WHERE directory_id = %(directory)s AND ad_object_guid = ANY(%(guids)s)
        ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
    RETURNING h.id, h.engine, h.db_server, h.login_name, h.ad_object_guid, h.ad_sam_account_name
), queued AS (
    INSERT INTO group_action_jobs (backend, action, payload, priority)
    SELECT %(backend)s, 'delete_database_user',
           jsonb_build_object('database_user_id', id, 'engine', engine, 'db_server', db_server,
                              'login', login_name, 'ad_object_guid', ad_object_guid,
                              'sam_account_name', ad_sam_account_name, 'directory_id', %(directory)s::bigint),
           %(priority)s
    FROM gone ORDER BY id
    RETURNING id
)
SELECT count(*) FROM queued
"""


def rename_delete_hostmatic_db_users(panel_db, interval, params=None, log=None) -> dict:
    """Step 5 of GroupActionWorkAD: Hostmatic database logins follow their AD users' renames and
    deletions in the panel DB; the servers' side is queued for the ``hostmatic`` backend (see the
    module's doc). Params: ``hostmatic_users_per_run`` (2000), ``hostmatic_delete_batch`` (500),
    ``hostmatic_job_priority`` (5)."""
    params = params or {}
    at = interval.end
    per_run = int(params.get("hostmatic_users_per_run", 2000))
    batch = int(params.get("hostmatic_delete_batch", 500))
    priority = int(params.get("hostmatic_job_priority", 5))
    report = StepReport()
    for key in ("checked", "renamed", "deleted", "jobs_queued"):
        report.add(key, 0)

    def work(conn, directory: Directory, hook) -> None:
        rows = conn.execute(_HOSTMATIC_BATCH, (directory.id, per_run)).fetchall()
        if not rows:
            return
        ids = [r[0] for r in rows]
        guids = sorted({r[1] for r in rows})
        report.add("checked", len(ids))
        # the whole domain: a user moved out of the managed subtree still exists
        nc = hook.root_dse()["defaultNamingContext"]
        names: dict[uuid.UUID, str] = {}
        seen: set[uuid.UUID] = set()
        unsure: set[uuid.UUID] = set()       # a chunk whose answer had an unreadable entry proves no deletion
        for chunk in _chunks(guids, GUID_CHUNK):
            for entry in hook.search(nc, f"(&(objectClass=user){_guid_or(chunk)})", ("objectGUID", "sAMAccountName")):
                try:
                    guid, sam = entry.guid(), entry.text("sAMAccountName")
                except ValueError as exc:
                    report.skip(str(exc), entry.dn)
                    unsure.update(chunk)
                    continue
                seen.add(guid)
                if sam:
                    names[guid] = sam
                else:
                    report.skip("the user has no sAMAccountName", entry.dn)
        gone = [g for g in guids if g not in seen and g not in unsure]
        args = {"at": at, "ids": ids, "directory": directory.id, "backend": HOSTMATIC_BACKEND, "priority": priority,
                "mysql_max": MYSQL_USER_MAX}
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE tmp_hostmatic_ad (object_guid uuid PRIMARY KEY, sam text) ON COMMIT DROP")
            _copy(conn, "tmp_hostmatic_ad", ("object_guid", "sam"), names.items())
            (renamed,) = conn.execute(_HOSTMATIC_RENAME, args).fetchone()
            for db_id, engine, server, login, wanted in conn.execute(_HOSTMATIC_NOT_RENAMED, args).fetchall():
                reason = (f"{wanted!r} is longer than {MYSQL_USER_MAX} characters" if engine == "mysql"
                          and len(wanted) > MYSQL_USER_MAX else f"{wanted!r} is already a login on {engine} {server}")
                report.skip(f"not renamed: {reason}", f"database user {db_id} ({login})")
            conn.execute("UPDATE hosting_database_users SET checked_at = %s WHERE id = ANY(%s)", (at, ids))
        report.add("renamed", renamed)
        report.add("jobs_queued", renamed)
        deleted = 0
        for _ in range(-(-len(ids) // batch) + 1 if gone else 0):     # every row of a gone user, in batches
            with conn.transaction():
                (n,) = conn.execute(_HOSTMATIC_DELETE, {"directory": directory.id, "guids": gone, "batch": batch,
                                                        "backend": HOSTMATIC_BACKEND, "priority": priority}).fetchone()
            deleted += n
            if n < batch:
                break
        report.add("deleted", deleted)
        report.add("jobs_queued", deleted)
        if log is not None and (renamed or deleted):
            log.info("directory %s: %s database users renamed, %s deleted", directory.name, renamed, deleted)

    _each_directory(panel_db, report, log, work)
    return report.as_dict()


# -- AutoAddUsersInSecurityGroupWork 1. automatic group members ------------------------------------------

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
    for chunk in _chunks(member_dns, MEMBERS_PER_MODIFY):
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
                if not (_within(group.dn, directory.base_dn) and _within(ou.dn, directory.base_dn)):
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
            _copy(conn, "tmp_auto_add", ("group_id", "added", "error"), outcomes)
            conn.execute(_AUTO_ADD_RECORD, {"at": at})
            if members:
                conn.execute("CREATE TEMP TABLE tmp_auto_add_members (group_id bigint, member_guid uuid, member_dn text)"
                             " ON COMMIT DROP")
                _copy(conn, "tmp_auto_add_members", ("group_id", "member_guid", "member_dn"), members)
                conn.execute(_AUTO_ADD_MEMBERS)

    _each_directory(panel_db, report, log, work)
    return report.as_dict()


# -- AutoAddUsersInSecurityGroupWork 2. CN follows the UPN -------------------------------------------------

_CN_FIRST_SEEN = """
INSERT INTO ad_user_cn_upn (directory_id, object_guid, user_principal_name, cn, dn, checked_at)
SELECT %(directory)s, object_guid, upn, cn, dn, %(at)s FROM tmp_cn_users
ON CONFLICT (directory_id, object_guid) DO NOTHING
"""

_CN_CHANGED_UPN = """
SELECT t.object_guid, s.user_principal_name, t.upn, t.cn, t.dn
FROM tmp_cn_users t JOIN ad_user_cn_upn s ON s.directory_id = %(directory)s AND s.object_guid = t.object_guid
WHERE s.user_principal_name <> t.upn
ORDER BY t.dn
"""

_CN_REMEMBER = """
UPDATE ad_user_cn_upn s
SET user_principal_name = t.upn, cn = t.cn, dn = t.dn, checked_at = %(at)s,
    renamed_at = CASE WHEN t.renamed THEN %(at)s ELSE s.renamed_at END
FROM tmp_cn_users t
WHERE s.directory_id = %(directory)s AND s.object_guid = t.object_guid AND NOT t.skipped
  AND (s.user_principal_name, s.cn, s.dn) IS DISTINCT FROM (t.upn, t.cn, t.dn)
"""

_CN_PANEL_USERS = """
UPDATE ad_users u SET cn = t.cn, dn = t.dn, user_principal_name = t.upn
FROM tmp_cn_users t
WHERE u.directory_id = %(directory)s AND u.object_guid = t.object_guid AND t.follow
  AND (u.cn, u.dn, u.user_principal_name) IS DISTINCT FROM (t.cn, t.dn, t.upn)
"""

_CN_FORGET = """
DELETE FROM ad_user_cn_upn WHERE (directory_id, object_guid) IN (
    SELECT s.directory_id, s.object_guid FROM ad_user_cn_upn s
    WHERE s.directory_id = %(directory)s
      AND NOT EXISTS (SELECT 1 FROM tmp_cn_users t WHERE t.object_guid = s.object_guid)
    LIMIT %(batch)s)
"""


def change_cn_on_upn_change(panel_db, interval, params=None, log=None) -> dict:
    """Step 2 of AutoAddUsersInSecurityGroupWork: rename the CN of users whose UPN changed (see the
    module's doc). Params: ``cn_renames_per_run`` (500), ``cn_forget_batch`` (1000)."""
    params = params or {}
    at = interval.end
    per_run = int(params.get("cn_renames_per_run", 500))
    forget_batch = int(params.get("cn_forget_batch", 1000))
    report = StepReport()
    for key in ("users", "first_seen", "upn_changed", "renamed", "cn_already_matches", "collisions"):
        report.add(key, 0)

    def work(conn, directory: Directory, hook) -> None:
        rows = []
        for entry in hook.search(directory.base_dn, f"(&{USER_FILTER}(userPrincipalName=*))",
                                 ["objectGUID", "userPrincipalName", "cn"]):
            try:
                rows.append((entry.guid(), entry.text("userPrincipalName"), entry.text("cn"), entry.dn))
            except ValueError as exc:
                report.skip(str(exc), entry.dn)
        report.add("users", len(rows))
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_cn_users (object_guid uuid PRIMARY KEY, upn text, cn text,"
                     " dn text, renamed boolean NOT NULL DEFAULT false, skipped boolean NOT NULL DEFAULT false,"
                     " follow boolean NOT NULL DEFAULT false)")
        conn.execute("TRUNCATE tmp_cn_users")
        _copy(conn, "tmp_cn_users", ("object_guid", "upn", "cn", "dn"), rows)
        report.add("first_seen", conn.execute(_CN_FIRST_SEEN, {"directory": directory.id, "at": at}).rowcount)
        changed = conn.execute(_CN_CHANGED_UPN, {"directory": directory.id}).fetchall()
        report.add("upn_changed", len(changed))
        # (guid, cn, dn, renamed, skipped: UPN change not handled yet, follow: the panel's user takes cn/dn/UPN)
        outcomes = []
        attempted = 0
        for guid, old_upn, upn, cn, dn in changed:
            wanted = upn.partition("@")[0]
            if cn == wanted:            # renamed already (by a run that died before recording it, or by hand)
                report.add("cn_already_matches")
                outcomes.append((guid, cn, dn, False, False, True))
                continue
            if attempted >= per_run:
                outcomes.append((guid, cn, dn, False, True, False))
                report.add("renames_left_for_next_run")
                continue
            attempted += 1
            if not wanted or len(wanted) > CN_MAX:
                report.skip(f"the UPN's local part {wanted!r} cannot be a CN", dn)
                outcomes.append((guid, cn, dn, False, True, False))
                continue
            holder = hook.get(f"{_rdn('CN', wanted)},{_parent_dn(dn)}", ["objectGUID"])
            if holder is not None and holder.guid() != guid:
                report.add("collisions")
                report.skip(f"CN collision: {holder.dn} already exists", dn)
                outcomes.append((guid, cn, dn, False, True, False))
                continue
            try:
                new_dn = hook.rename(dn, f"CN={wanted}")
            except ActiveDirectoryRejected as exc:
                if exc.result == 68:
                    report.add("collisions")
                report.skip(f"not renamed: {exc}", dn)
                outcomes.append((guid, cn, dn, False, True, False))
                continue
            report.add("renamed")
            outcomes.append((guid, wanted, new_dn, True, False, True))
            if log is not None:
                log.info("CN of %s → %s (UPN %s → %s)", dn, new_dn, old_upn, upn)
        with conn.transaction():
            if outcomes:
                conn.execute("CREATE TEMP TABLE tmp_cn_outcomes (object_guid uuid, cn text, dn text, renamed boolean,"
                             " skipped boolean, follow boolean) ON COMMIT DROP")
                _copy(conn, "tmp_cn_outcomes", ("object_guid", "cn", "dn", "renamed", "skipped", "follow"), outcomes)
                conn.execute("UPDATE tmp_cn_users t SET cn = o.cn, dn = o.dn, renamed = o.renamed, skipped = o.skipped,"
                             " follow = o.follow FROM tmp_cn_outcomes o WHERE o.object_guid = t.object_guid")
            conn.execute(_CN_REMEMBER, {"directory": directory.id, "at": at})
            conn.execute(_CN_PANEL_USERS, {"directory": directory.id})
        forgotten = 0
        for _ in range(1000):        # users gone from the managed subtree, in batches
            n = conn.execute(_CN_FORGET, {"directory": directory.id, "batch": forget_batch}).rowcount
            forgotten += n
            if n < forget_batch:
                break
        report.add("forgotten", forgotten)

    _each_directory(panel_db, report, log, work)
    return report.as_dict()


# -- AutoAddUsersInSecurityGroupWork 3. system alerts ------------------------------------------------------

AD_ALERT_TYPES = ("ad_account_locked", "ad_password_expired")
ALERT_SEVERITY = {"ad_directory_unreachable": "critical", "ad_account_locked": "warning",
                  "ad_password_expired": "info", "group_action_failed": "warning"}

_ALERTS_TEMP = ("CREATE TEMP TABLE tmp_alerts (alert_type text, object_key text, directory_id bigint, severity text,"
                " title text, detail jsonb) ON COMMIT DROP",
                "CREATE TEMP TABLE tmp_alert_scope (alert_type text, directory_id bigint) ON COMMIT DROP")

_ALERTS_OPEN = """
INSERT INTO system_alerts (alert_type, object_key, directory_id, severity, title, detail, opened_at, last_seen_at)
SELECT alert_type, object_key, directory_id, severity, title, detail, %(at)s, %(at)s FROM tmp_alerts
ON CONFLICT (alert_type, object_key) WHERE resolved_at IS NULL DO UPDATE
SET last_seen_at = greatest(system_alerts.last_seen_at, EXCLUDED.last_seen_at), title = EXCLUDED.title,
    detail = EXCLUDED.detail, severity = EXCLUDED.severity
RETURNING (xmax = 0) AS opened
"""

_ALERTS_RESOLVE = """
UPDATE system_alerts a SET resolved_at = %(at)s
WHERE a.resolved_at IS NULL AND a.opened_at <= %(at)s
  AND EXISTS (SELECT 1 FROM tmp_alert_scope s
              WHERE s.alert_type = a.alert_type AND s.directory_id IS NOT DISTINCT FROM a.directory_id)
  AND NOT EXISTS (SELECT 1 FROM tmp_alerts t WHERE t.alert_type = a.alert_type AND t.object_key = a.object_key)
"""

_FAILED_JOBS = r"""
INSERT INTO tmp_alerts (alert_type, object_key, directory_id, severity, title, detail)
SELECT 'group_action_failed', 'job:' || id, NULL, %(severity)s,
       format('Group action %%s (%%s %%s) failed: %%s', id, backend, action,
              left(split_part(coalesce(error, 'no error recorded'), E'
', 1), 300)),
       jsonb_build_object('job_id', id, 'backend', backend, 'action', action, 'error', error,
                          'failed_at', coalesce(finished_at, created_at))
FROM group_action_jobs
WHERE status = 'failed' AND coalesce(finished_at, created_at) > %(since)s AND coalesce(finished_at, created_at) <= %(at)s
"""


def sync_system_alerts(panel_db, interval, params=None, log=None) -> dict:
    """Step 3 of AutoAddUsersInSecurityGroupWork: open, keep and resolve ``system_alerts`` (see the
    module's doc). Params: ``alert_failed_job_hours`` (24)."""
    params = params or {}
    at = interval.end
    since = at - timedelta(hours=float(params.get("alert_failed_job_hours", 24)))
    report = StepReport()
    for key in ("alerts_current", "opened", "resolved"):
        report.add(key, 0)
    current: list[tuple] = []
    scope: list[tuple] = []
    now_ft = datetime_to_filetime(at)
    attrs = ("objectGUID", "sAMAccountName", "userPrincipalName", "userAccountControl", "lockoutTime",
             "msDS-User-Account-Control-Computed", "msDS-UserPasswordExpiryTimeComputed", "pwdLastSet")

    def work(conn, directory: Directory, hook) -> None:
        found = []
        for entry in hook.search(directory.base_dn, USER_FILTER, attrs):
            try:
                guid = entry.guid()
                name = entry.text("userPrincipalName") or entry.text("sAMAccountName") or entry.dn
                uac = entry.int("userAccountControl") or 0
                computed = entry.int("msDS-User-Account-Control-Computed") or 0
                expiry = entry.int("msDS-UserPasswordExpiryTimeComputed")
                pwd_last_set = entry.int("pwdLastSet")
                locked_at = entry.filetime("lockoutTime")
            except ValueError as exc:
                report.skip(str(exc), entry.dn)
                continue
            key = f"directory:{directory.id}/user:{guid}"
            if computed & UF_LOCKOUT:
                found.append(("ad_account_locked", key, directory.id, f"Account {name} is locked out",
                              {"dn": entry.dn, "object_guid": str(guid),
                               "locked_at": locked_at.isoformat() if locked_at else None}))
            enabled = not uac & UF_ACCOUNTDISABLE
            expires = not uac & UF_DONT_EXPIRE_PASSWD
            if (enabled and expires and pwd_last_set and expiry and 0 < expiry <= now_ft):
                expired_at = filetime_to_datetime(expiry)
                found.append(("ad_password_expired", key, directory.id,
                              f"The password of {name} expired {expired_at:%Y-%m-%d %H:%M} UTC",
                              {"dn": entry.dn, "object_guid": str(guid), "expired_at": expired_at.isoformat()}))
        current.extend(found)
        scope.extend((t, directory.id) for t in (*AD_ALERT_TYPES, "ad_directory_unreachable"))

    def unreachable(conn, directory: Directory, exc: Exception) -> None:
        text = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        current.append(("ad_directory_unreachable", f"directory:{directory.id}", directory.id,
                        f"Directory {directory.name} cannot be reached", {"error": text}))
        scope.append(("ad_directory_unreachable", directory.id))

    every_failed = None
    try:
        _each_directory(panel_db, report, log, work, on_failure=unreachable)
    except RuntimeError as exc:
        every_failed = exc            # the alerts are still written; the step fails after

    with panel_db.get_conn() as conn:
        # disabled directories: nothing of theirs is watched any more
        for (directory_id,) in conn.execute("SELECT id FROM ad_directories WHERE NOT enabled").fetchall():
            scope.extend((t, directory_id) for t in (*AD_ALERT_TYPES, "ad_directory_unreachable"))
        scope.append(("group_action_failed", None))
        with conn.transaction():
            for statement in _ALERTS_TEMP:
                conn.execute(statement)
            _copy(conn, "tmp_alerts", ("alert_type", "object_key", "directory_id", "severity", "title", "detail"),
                  ((t, k, d, ALERT_SEVERITY[t], title, json.dumps(detail, sort_keys=True))
                   for t, k, d, title, detail in current))
            conn.execute(_FAILED_JOBS, {"since": since, "at": at, "severity": ALERT_SEVERITY["group_action_failed"]})
            _copy(conn, "tmp_alert_scope", ("alert_type", "directory_id"), scope)
            counts = conn.execute("SELECT alert_type, count(*) FROM tmp_alerts GROUP BY 1 ORDER BY 1").fetchall()
            opened = sum(1 for (o,) in conn.execute(_ALERTS_OPEN, {"at": at}) if o)
            resolved = conn.execute(_ALERTS_RESOLVE, {"at": at}).rowcount
        report.add("alerts_current", sum(n for _, n in counts))
        report.add("opened", opened)
        report.add("resolved", resolved)
        for alert_type, n in counts:
            report.add(f"current:{alert_type}", n)
    if every_failed is not None:
        raise every_failed
    return report.as_dict()
