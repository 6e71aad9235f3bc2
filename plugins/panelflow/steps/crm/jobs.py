"""GroupActionWorkCRM 1: the CRM group actions (enable/disable users, security roles, licences).

:func:`process_crm_group_actions` — the ``crm`` queue of ``group_action_jobs`` through
:func:`panelflow.services.group_actions.process_group_actions`. Every payload names the organisation
(``organization_id``: a ``crm_organizations`` row) and the user (``systemuserid`` GUID, or ``domainname``
— the UPN), who must be in the panel already (SyncFromBackendWork 1 brings CRM's users)::

    assign_role   role_id | role_name (looked up in the user's business unit: a role exists per unit)
    remove_role   role_id | role_name
    disable_user
    enable_user
    set_licence   access_mode? (0 read-write … 5 delegated admin), cal_type? (0 professional … 12), at least one

What the Web API lets a provider's panel do to a user's access, honestly: on Dataverse a user's
``isdisabled`` is read-only — it follows the user's Microsoft Entra account and licence (blocked
sign-in or no licence → disabled), which GroupActionWorkO365 manages, not this thread. What CRM itself
grants is the user's security roles: a user without a role can open no app. So ``disable_user`` takes
every role away (first saving them in ``crm_users.suspended_roles``, so a job retried halfway loses
none) and ``enable_user`` gives those back; the result reports ``isdisabled`` as Dataverse has it.

Exactly once: each job reads the user as CRM has it now and only changes what differs — a role already
held (or already gone) is a success without a request, an association CRM reports as a duplicate key
too, a licence already set is not written. ``set_licence`` writes with the ETag just read; a 412 (CRM
changed the user meanwhile) re-reads and tries once more, then leaves the job for a later run.
Throttled through every retry, unreachable, or the organisation's connection missing or refused: the
job is retried by a later run (and the run's other jobs for that organisation wait too). CRM refusing
the request as made, an unknown user, role or organisation: the job fails with why.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from panelflow.hooks.dynamics import (
    DynamicsAuthenticationError,
    DynamicsError,
    DynamicsHook,
    DynamicsPreconditionFailed,
    DynamicsUnavailable,
    SystemUser,
)
from panelflow.services.group_actions import JobDeferred, JobRejected, Payload, process_group_actions
from panelflow.step import first_line
from panelflow.steps.crm._backend import Organization, OrganizationMisconfigured, open_hook, organizations

BACKEND = "crm"
ACTIONS = ("assign_role", "remove_role", "disable_user", "enable_user", "set_licence")
ROW_ID = (1, 2**63 - 1)
T = TypeVar("T")

_USER_ROW = """
SELECT id, systemuserid, suspended_roles FROM crm_users
WHERE organization_id = %(org)s AND removed_at IS NULL
  AND (systemuserid = %(id)s OR (%(id)s::uuid IS NULL AND lower(domainname) = lower(%(upn)s)))
"""

_RECORD = """
UPDATE crm_users SET roles = %(roles)s, is_disabled = %(disabled)s, access_mode = %(access_mode)s,
       cal_type = %(cal_type)s, etag = %(etag)s, crm_modified_on = %(modified_on)s
WHERE id = %(id)s
"""

_SUSPEND = """
UPDATE crm_users SET access_revoked = true,
       suspended_roles = ARRAY(SELECT DISTINCT r FROM unnest(suspended_roles || %(roles)s::uuid[]) AS r ORDER BY r)
WHERE id = %(id)s
"""

_RESTORED = "UPDATE crm_users SET access_revoked = false, suspended_roles = '{}' WHERE id = %s"


def _guid(p: Payload, key: str) -> uuid.UUID | None:
    value = p.text(key, required=False, limit=36)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise JobRejected(f"payload {key!r} is not a GUID: {value!r}") from None


class _CrmJobs:
    """The handler of the ``crm`` queue: one hook (one token) per organisation for the whole run."""

    def __init__(self, conn):
        self.conn = conn
        self.hooks: dict[int, DynamicsHook] = {}
        self.down: dict[int, str] = {}

    def close(self) -> None:
        for hook in self.hooks.values():
            hook.close()
        self.hooks.clear()

    # -- reaching CRM
    def call(self, org: Organization, work: Callable[[DynamicsHook], T]) -> T:
        """``work(hook)``, CRM's failures sorted: retried later, or the job refused as made."""
        if org.id in self.down:
            raise JobDeferred(f"{org.url} not tried: failed earlier in this run ({self.down[org.id]})")
        try:
            hook = self.hooks.get(org.id)
            if hook is None:
                hook = self.hooks[org.id] = open_hook(org)
            return work(hook)
        except (DynamicsUnavailable, DynamicsAuthenticationError, OrganizationMisconfigured) as exc:
            self.down[org.id] = first_line(exc)
            raise JobDeferred(first_line(exc)) from None
        except DynamicsPreconditionFailed:
            raise
        except DynamicsError as exc:
            raise JobRejected(first_line(exc)) from None

    def target(self, p: Payload) -> tuple[Organization, int, SystemUser, list[uuid.UUID]]:
        """The organisation, the user's panel row id, the user as CRM has it now, its suspended roles."""
        org_id = p.integer("organization_id", *ROW_ID, required=True)
        found = organizations(self.conn, [org_id])
        if not found:
            raise JobRejected(f"no enabled CRM organisation {org_id}")
        org = found[0]
        user_id, upn = _guid(p, "systemuserid"), p.text("domainname", required=False)
        if user_id is None and upn is None:
            raise JobRejected("payload needs systemuserid or domainname")
        row = self.conn.execute(_USER_ROW, {"org": org.id, "id": user_id, "upn": upn}).fetchone()
        if row is None:
            raise JobRejected(f"no CRM user {user_id or upn} in organisation {org.url} (not synced yet, or removed)")
        try:
            user = self.call(org, lambda hook: hook.user(row[1]))
        except JobRejected as exc:
            raise JobRejected(f"user {row[1]}: {exc}") from None
        return org, row[0], user, list(row[2])

    def record(self, row_id: int, user: SystemUser, roles) -> None:
        self.conn.execute(_RECORD, {"id": row_id, "roles": sorted(roles), "disabled": user.is_disabled,
                                    "access_mode": user.access_mode, "cal_type": user.cal_type, "etag": user.etag,
                                    "modified_on": user.modified_on})

    def role(self, org: Organization, p: Payload, user: SystemUser) -> uuid.UUID:
        role_id = _guid(p, "role_id")
        if role_id is not None:
            return role_id
        name = p.text("role_name", limit=100)
        if user.business_unit is None:
            raise JobRejected(f"user {user.id} has no business unit to look role {name!r} up in")
        found = self.call(org, lambda hook: hook.roles_named(name, user.business_unit))
        if len(found) != 1:
            raise JobRejected(f"{len(found)} roles named {name!r} in the business unit of user {user.id}")
        return found[0].id

    @staticmethod
    def _result(org: Organization, user: SystemUser, **extra) -> dict[str, Any]:
        return {"organization": org.url, "systemuserid": str(user.id), "domainname": user.domainname, **extra}

    # -- the actions
    def handle(self, action: str, payload: dict) -> dict:
        return getattr(self, action)(Payload(payload))

    def _grant(self, org: Organization, user: SystemUser, role: uuid.UUID) -> bool:
        """Give the role unless the user has it; whether a request was needed and made."""
        if role in (user.roles or ()):
            return False
        try:
            return self.call(org, lambda hook: hook.add_role(user.id, role))
        except JobRejected as exc:
            raise JobRejected(f"role {role}: {exc}") from None

    def assign_role(self, p: Payload) -> dict:
        org, row_id, user, _ = self.target(p)
        role = self.role(org, p, user)
        changed = self._grant(org, user, role)
        self.record(row_id, user, {*(user.roles or ()), role})
        return self._result(org, user, role=str(role), changed=changed)

    def remove_role(self, p: Payload) -> dict:
        org, row_id, user, _ = self.target(p)
        role = self.role(org, p, user)
        held = set(user.roles or ())
        changed = role in held
        if changed:
            self.call(org, lambda hook: hook.remove_role(user.id, role))
        self.record(row_id, user, held - {role})
        return self._result(org, user, role=str(role), changed=changed)

    def disable_user(self, p: Payload) -> dict:
        org, row_id, user, _ = self.target(p)
        held = list(user.roles or ())
        self.conn.execute(_SUSPEND, {"id": row_id, "roles": held})  # saved before anything is taken away
        for role in held:
            try:
                self.call(org, lambda hook, role=role: hook.remove_role(user.id, role))
            except JobRejected:
                if not self._gone(org, role):
                    raise
        self.record(row_id, user, ())
        return self._result(org, user, removed_roles=[str(r) for r in held], isdisabled=user.is_disabled)

    def _gone(self, org: Organization, role: uuid.UUID) -> bool:
        """Whether a role CRM would not remove was deleted from CRM meanwhile (nothing left to take)."""
        return self.call(org, lambda hook: hook.role(role)) is None

    def enable_user(self, p: Payload) -> dict:
        org, row_id, user, suspended = self.target(p)
        if not suspended and not user.roles:
            raise JobRejected(f"user {user.id} has no role and none was taken by disable_user: assign one")
        restored, gone = [], []
        for role in suspended:
            try:
                if self._grant(org, user, role):
                    restored.append(str(role))
            except JobRejected:
                if not self._gone(org, role):
                    raise
                gone.append(str(role))
        self.record(row_id, user, {*(user.roles or ()), *(r for r in suspended if str(r) not in gone)})
        self.conn.execute(_RESTORED, (row_id,))
        return self._result(org, user, restored_roles=restored, roles_gone=gone, isdisabled=user.is_disabled)

    def set_licence(self, p: Payload) -> dict:
        wanted = {"accessmode": p.integer("access_mode", 0, 5), "caltype": p.integer("cal_type", 0, 12)}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        if not wanted:
            raise JobRejected("payload needs access_mode or cal_type")
        org, row_id, user, _ = self.target(p)
        roles = user.roles or ()  # the written representation does not expand them
        for attempt in (1, 2):
            current = {"accessmode": user.access_mode, "caltype": user.cal_type}
            changes = {k: v for k, v in wanted.items() if current[k] != v}
            if not changes:
                break
            try:
                user = self.call(org, lambda hook: hook.update_user(user, changes))
                break
            except DynamicsPreconditionFailed as exc:
                if attempt == 2:
                    raise JobDeferred(f"user {user.id} changed in CRM while being written twice: {first_line(exc)}")
                user = self.call(org, lambda hook: hook.user(user.id))
        self.record(row_id, user, roles)
        return self._result(org, user, access_mode=user.access_mode, cal_type=user.cal_type, changed=bool(changes))


def process_crm_group_actions(panel_db, interval, params=None, log=None) -> dict:
    """Process CRM group actions."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        jobs = _CrmJobs(conn)
        try:
            return process_group_actions(panel_db, BACKEND, jobs.handle, interval, params, log, actions=ACTIONS,
                                         conn=conn)
        finally:
            jobs.close()
