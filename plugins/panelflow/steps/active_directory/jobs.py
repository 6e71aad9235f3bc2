"""GroupActionWorkAD step 1: the AD group-action queue (``group_action_jobs`` rows of backend ``ad``).

:func:`process_ad_group_actions` works the queue through
:func:`panelflow.services.group_actions.process_group_actions` (one job claimed at a time, priority 0
first, ``FOR UPDATE SKIP LOCKED``; secrets dropped from the payload once finished). A DC that cannot
be reached, times out, is busy or refuses the service account → :class:`JobDeferred` (back to
pending, retried until ``job_max_attempts``); the DC refusing the request itself (a password failing
the domain's policy, no such object, a name already taken) → :class:`JobRejected` with the DC's own
message. A payload is read with :class:`~panelflow.services.group_actions.Payload` (text is a JSON
string, ids are JSON integers); a field of the wrong kind rejects the job.

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

Results (``group_action_jobs.result``) carry the object's ``dn`` and ``object_guid`` and what was
done (``created``/``added``/``moved``/``deleted`` false when it was already so).

Exactly once. A worker killed mid-job leaves it running and a later run takes it again, so every
action is a state, not a toggle: create_user/create_group look the account up by sAMAccountName
(and UPN) in the whole domain first and return the one found (a name held by a *different* account
is a rejection); create_organization finds the OU by its DN; delete_user of an absent user,
remove_group_member of a non-member and add_group_member of a member succeed as they are;
enable/disable set the ACCOUNTDISABLE bit rather than flip it; unlock writes ``lockoutTime = 0``. A
password travels only in the ``unicodePwd`` of the add or modify, over LDAPS/StartTLS (the hook
refuses otherwise), and is removed from the payload once the job is finished. create_organization
and create_group also write the panel's ``ad_organisations`` / ``ad_groups`` row (the job's result
names it) so the panel can use the object at once; the other objects reach ``ad_users`` through the
AD sync.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from airflow.exceptions import AirflowNotFoundException

from panelflow.hooks.active_directory import (
    GROUP_FILTER,
    UF_ACCOUNTDISABLE,
    UF_NORMAL_ACCOUNT,
    USER_FILTER,
    ActiveDirectoryRejected,
    ActiveDirectoryUnavailable,
    dn_key,
    encode_password,
    escape_filter_value,
)
from panelflow.services.group_actions import JobDeferred, JobRejected, Payload, process_group_actions

from ._backend import CN_MAX, GROUP_SECURITY, Directory, parent_dn, rdn, read_directories, session, within

BACKEND = "ad"
ACTIONS = ("create_user", "update_user", "reset_password", "enable_user", "disable_user", "unlock_user",
           "move_user", "delete_user", "add_group_member", "remove_group_member", "create_group",
           "create_organization")

MEMBER_FILTER = f"(|{USER_FILTER}{GROUP_FILTER}(objectClass=contact))"
GROUP_SCOPES = {"global": 0x2, "domain_local": 0x4, "universal": 0x8}

# Attributes update_user may not write: each has its own action (password, enable, unlock, move,
# membership) or is the directory's to keep.
PROTECTED_ATTRIBUTES = frozenset(a.lower() for a in (
    "unicodePwd", "userPassword", "userAccountControl", "lockoutTime", "pwdLastSet", "member", "memberOf",
    "objectClass", "objectCategory", "objectGUID", "objectSid", "sAMAccountType", "primaryGroupID", "cn", "name",
    "distinguishedName", "nTSecurityDescriptor", "adminCount", "sIDHistory", "msDS-AllowedToDelegateTo"))
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
DN_MAX = 2048               # a DN or an object named by DN, GUID, UPN or sAMAccountName


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


def _add(hook, dn: str, object_class: list[str], values: dict[str, Any], attrs: Iterable[str]):
    """Add the object with its values that are given (not empty) and read it back; a DC that does
    not show it yet defers the job (the retry finds it and returns it, as every create does)."""
    hook.add(dn, object_class, {k: v for k, v in values.items() if v not in (None, "", [])})
    entry = hook.get(dn, attrs)
    if entry is None:
        raise JobDeferred(f"{dn} was added but cannot be read back yet")
    return entry


@dataclass
class _Target:
    directory: Directory
    organisation_id: int | None = None
    organisation_guid: uuid.UUID | None = None
    parent_dn: str | None = None        # the payload's explicit DN (with directory_id)


_ORGANISATION = "SELECT id, object_guid, deleted, directory_id FROM ad_organisations WHERE id = %s"

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
        payload = Payload(payload)
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
            hook = session(directory)
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

    def _target(self, action: str, p: Payload) -> _Target:
        organisation_id, directory_id = p.integer("organisation_id", low=0), p.integer("directory_id", low=0)
        if organisation_id is not None and action != "create_organization":
            row = self.conn.execute(_ORGANISATION, (organisation_id,)).fetchone()
            if row is None:
                raise JobRejected(f"no organisation {organisation_id} (ad_organisations)")
            if row[2]:
                raise JobRejected(f"organisation {organisation_id} is deleted")
            directory = read_directories(self.conn, row[3])[0]
            target = _Target(directory, organisation_id=organisation_id, organisation_guid=row[1])
        elif directory_id is not None:
            found = read_directories(self.conn, directory_id)
            if not found:
                raise JobRejected(f"no directory {directory_id} (ad_directories)")
            directory = found[0]
            target = _Target(directory)
            explicit = p.text("target_dn" if action == "move_user" else "parent_dn", required=False, limit=DN_MAX)
            if explicit is not None:
                if not within(explicit, directory.base_dn):
                    raise JobRejected(f"{explicit} is outside the managed subtree {directory.base_dn}")
                target.parent_dn = explicit
        else:
            raise JobRejected("payload names neither organisation_id nor directory_id")
        if not directory.enabled:
            raise JobRejected(f"directory {directory.name} is disabled")
        return target

    def _parent(self, hook, target: _Target, action: str) -> str:
        """The OU an object is created in or moved to: the organisation's, found by its GUID."""
        if target.organisation_id is not None:
            entry = hook.get(f"<GUID={target.organisation_guid}>", ["objectGUID"])
            if entry is None:
                raise JobRejected(f"organisation {target.organisation_id}: its OU ({target.organisation_guid})"
                                  " is not in the directory")
            if not within(entry.dn, target.directory.base_dn):
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
        if entry is not None and not within(entry.dn, directory.base_dn):
            raise JobRejected(f"{ref!r} is {entry.dn}, outside the managed subtree {directory.base_dn}")
        return entry

    def _user(self, hook, target: _Target, p: Payload, key: str = "user", required: bool = True):
        ref = p.text(key, limit=DN_MAX)
        entry = self._find(hook, target.directory, ref, USER_FILTER, self.USER_ATTRS)
        if entry is None and required:
            raise JobRejected(f"no user {ref!r} in directory {target.directory.name}")
        return entry

    @staticmethod
    def _described(entry, **extra) -> dict:
        return {"dn": entry.dn, "object_guid": str(entry.guid()), **extra}

    # the actions ----------------------------------------------------------------------------------

    def create_user(self, hook, target: _Target, p: Payload) -> dict:
        sam, upn, password = p.text("sam_account_name"), p.text("user_principal_name"), p.text("password")
        local, at, suffix = upn.partition("@")
        if not local or not at or not suffix:
            raise JobRejected(f"user_principal_name {upn!r} is not name@suffix")
        if len(sam) > 20 or re.search(r'["/\\\[\]:;|=,+*?<>@]', sam):
            raise JobRejected(f"sam_account_name {sam!r} is not a valid pre-Windows 2000 logon name")
        enabled = p.flag("enabled", True)
        must_change = p.flag("must_change_password", False)
        extra = _attribute_values(p.get("attributes"), "attributes") if p.get("attributes") else {}
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
            if not within(entry.dn, target.directory.base_dn):
                raise JobRejected(f"sAMAccountName {sam!r} is already used by {entry.dn}, outside the managed subtree")
            return self._described(entry, sam_account_name=sam, user_principal_name=upn, created=False)

        cn = p.text("cn", required=False) or local
        if len(cn) > CN_MAX:
            raise JobRejected(f"cn {cn!r} is longer than {CN_MAX} characters")
        dn = f"{rdn('CN', cn)},{parent}"
        attrs: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}    # the payload's own keys win
        attrs |= {"sAMAccountName": sam, "userPrincipalName": upn, "unicodePwd": encode_password(password),
                  "userAccountControl": str(UF_NORMAL_ACCOUNT | (0 if enabled else UF_ACCOUNTDISABLE))}
        for key, name in (("display_name", "displayName"), ("given_name", "givenName"), ("surname", "sn"),
                          ("mail", "mail"), ("description", "description")):
            value = p.text(key, required=False)
            if value is not None:
                attrs[name] = value
        if must_change:
            attrs["pwdLastSet"] = "0"
        entry = _add(hook, dn, ["top", "person", "organizationalPerson", "user"], attrs, self.USER_ATTRS)
        return self._described(entry, sam_account_name=sam, user_principal_name=upn, created=True, enabled=enabled,
                               must_change_password=must_change)

    def update_user(self, hook, target: _Target, p: Payload) -> dict:
        changes = _attribute_values(p.get("attributes"), "attributes")
        entry = self._user(hook, target, p)
        hook.replace_attributes(entry.dn, changes)
        return self._described(entry, updated=sorted(changes))

    def reset_password(self, hook, target: _Target, p: Payload) -> dict:
        password = p.text("password")
        must_change, unlock = p.flag("must_change_password", False), p.flag("unlock", True)
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

    def _set_enabled(self, hook, target: _Target, p: Payload, enabled: bool) -> dict:
        entry = self._user(hook, target, p)
        before = entry.int("userAccountControl")
        after = hook.set_enabled(entry.dn, enabled)
        return self._described(entry, enabled=enabled, changed=before != after, user_account_control=after)

    def enable_user(self, hook, target: _Target, p: Payload) -> dict:
        return self._set_enabled(hook, target, p, True)

    def disable_user(self, hook, target: _Target, p: Payload) -> dict:
        return self._set_enabled(hook, target, p, False)

    def unlock_user(self, hook, target: _Target, p: Payload) -> dict:
        entry = self._user(hook, target, p)
        was_locked = (entry.int("lockoutTime") or 0) > 0
        hook.unlock(entry.dn)
        return self._described(entry, unlocked=True, was_locked=was_locked)

    def move_user(self, hook, target: _Target, p: Payload) -> dict:
        destination = self._parent(hook, target, "move_user")
        entry = self._user(hook, target, p)
        if dn_key(parent_dn(entry.dn)) == dn_key(destination):
            return self._described(entry, moved=False, previous_dn=entry.dn)
        new_dn = hook.move(entry.dn, destination)
        return {"dn": new_dn, "object_guid": str(entry.guid()), "moved": True, "previous_dn": entry.dn}

    def delete_user(self, hook, target: _Target, p: Payload) -> dict:
        entry = self._user(hook, target, p, required=False)
        if entry is None:
            return {"user": p.text("user", limit=DN_MAX), "deleted": False, "already_absent": True}
        hook.delete(entry.dn)
        return self._described(entry, deleted=True)

    def _membership(self, hook, target: _Target, p: Payload, need_member: bool):
        group_ref, member_ref = p.text("group", limit=DN_MAX), p.text("member", limit=DN_MAX)
        group = self._find(hook, target.directory, group_ref, GROUP_FILTER, ("objectGUID", "groupType"))
        if group is None:
            raise JobRejected(f"no group {group_ref!r} in directory {target.directory.name}")
        member = self._find(hook, target.directory, member_ref, MEMBER_FILTER, ("objectGUID",))
        if member is None and need_member:
            raise JobRejected(f"no user, group or contact {member_ref!r} in directory {target.directory.name}")
        return group, member, member_ref

    def add_group_member(self, hook, target: _Target, p: Payload) -> dict:
        group, member, _ = self._membership(hook, target, p, need_member=True)
        added = hook.add_member(group.dn, member.dn)
        return {"group_dn": group.dn, "group_guid": str(group.guid()), "member_dn": member.dn,
                "member_guid": str(member.guid()), "added": added, "already_member": not added}

    def remove_group_member(self, hook, target: _Target, p: Payload) -> dict:
        group, member, member_ref = self._membership(hook, target, p, need_member=False)
        if member is None:
            return {"group_dn": group.dn, "member": member_ref, "removed": False, "already_absent": True}
        removed = hook.remove_member(group.dn, member.dn)
        return {"group_dn": group.dn, "group_guid": str(group.guid()), "member_dn": member.dn,
                "member_guid": str(member.guid()), "removed": removed, "already_absent": not removed}

    def create_group(self, hook, target: _Target, p: Payload) -> dict:
        name = p.text("name")
        sam = p.text("sam_account_name", required=False) or name
        scope = (p.text("scope", required=False) or "global").lower()
        if scope not in GROUP_SCOPES:
            raise JobRejected(f"scope {scope!r} is not one of {', '.join(GROUP_SCOPES)}")
        if len(sam) > 256 or len(name) > CN_MAX:
            raise JobRejected(f"group name {name!r} is too long")
        security = p.flag("security", True)
        auto_add = p.flag("auto_add_users", False)
        description, mail = p.text("description", required=False), p.text("mail", required=False)
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
            if not within(entry.dn, target.directory.base_dn):
                raise JobRejected(f"sAMAccountName {sam!r} is already used by {entry.dn}")
        else:
            dn = f"{rdn('CN', name)},{parent}"
            entry = _add(hook, dn, ["top", "group"], {"sAMAccountName": sam, "groupType": str(group_type),
                                                      "description": description, "mail": mail}, attrs)
        (group_id,) = self.conn.execute(_UPSERT_GROUP, {
            "directory": target.directory.id, "organisation": target.organisation_id, "guid": entry.guid(),
            "sam": entry.text("sAMAccountName"), "cn": entry.text("cn"), "dn": entry.dn, "mail": mail,
            "description": description, "group_type": entry.int("groupType"), "auto_add": auto_add}).fetchone()
        return self._described(entry, group_id=group_id, created=created, group_type=entry.int("groupType"))

    def create_organization(self, hook, target: _Target, p: Payload) -> dict:
        name = p.text("name")
        if len(name) > CN_MAX:
            raise JobRejected(f"organisation name {name!r} is longer than {CN_MAX} characters")
        parent = target.parent_dn or target.directory.base_dn
        description = p.text("description", required=False)
        customer_id = p.integer("customer_id", low=0)
        suffixes = p.get("upn_suffixes") or []
        if isinstance(suffixes, str):
            suffixes = [suffixes]
        if not isinstance(suffixes, list) or not all(isinstance(s, str) and "." in s and "@" not in s for s in suffixes):
            raise JobRejected("upn_suffixes must be a list of domain names")
        suffixes = [s.strip().lower() for s in suffixes]
        if customer_id is not None and self.conn.execute("SELECT 1 FROM customers WHERE id = %s",
                                                         (customer_id,)).fetchone() is None:
            raise JobRejected(f"no customer {customer_id}")
        dn = f"{rdn('OU', name)},{parent}"
        attrs = ("objectGUID", "uPNSuffixes", "description")
        entry = hook.get(dn, attrs)
        created = entry is None
        if created:
            entry = _add(hook, dn, ["top", "organizationalUnit"], {"description": description, "uPNSuffixes": suffixes},
                         attrs)
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

