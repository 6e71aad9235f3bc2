"""GroupActionWorkEx steps 1 and 5: the ``exchange`` group-action queue and the mailbox statuses it settles.

1. :func:`process_exchange_group_actions` — the ``group_action_jobs`` queue of backend ``exchange``
   through :func:`panelflow.services.group_actions.process_group_actions` (one job at a time, by priority).
   Every job names the panel's mailbox (``exchange_mailboxes.id``, a JSON integer); the mailbox's
   server runs it. Payloads are read with :class:`~panelflow.services.group_actions.Payload` (text is a
   JSON string without control characters, flags JSON booleans, numbers JSON integers).
   Payload keys per action::

       create_mailbox            mailbox_id, password (user mailbox without ad_user; removed once the
                                 job is finished), ad_user? (an existing AD user: Enable-Mailbox
                                 instead of New-Mailbox), database? (else the mailbox row's)
       set_mailbox_quota         mailbox_id, use_database_defaults? (true: the database's quotas), else
                                 issue_warning_mb?, prohibit_send_mb?, prohibit_send_receive_mb?
                                 (null: unlimited; a key left out keeps the mailbox row's value)
       set_mailbox_forwarding    mailbox_id, forwarding_smtp_address? | forwarding_address? (neither:
                                 forwarding off), deliver_to_mailbox_and_forward? (false)
       add_mailbox_permission    mailbox_id, trustee, permission (FullAccess | SendAs | SendOnBehalf),
                                 auto_mapping? (true; FullAccess only)
       remove_mailbox_permission mailbox_id, trustee, permission
       disable_mailbox           mailbox_id — suspended: protocols off, a user's AD account disabled
       enable_mailbox            mailbox_id — resumed
       delete_mailbox            mailbox_id, keep_ad_user? (false: Remove-Mailbox; true: Disable-Mailbox)
                                 — into the recycle bin (a disconnected mailbox); already gone = done
       convert_mailbox           mailbox_id, type (user | shared | room | equipment)
       set_owa_policy            mailbox_id, policy (an OWA mailbox policy's name)
       add_email_address         mailbox_id, address, primary? (false)

   Every action is idempotent (each script looks before it changes: a mailbox that exists is not
   created again, a permission granted is not granted twice, a missing one is "removed"), so a job
   re-taken after a worker died does it once. Outcomes: Exchange refusing (the script's error
   record) → the job ``failed`` with Exchange's message; the server unreachable or timing out →
   back to ``pending`` with the error (retried by a later run); the job's result is what Exchange
   reported, and the mailbox row is updated from it (GUID, database, status …). A server that failed
   ``exchange_server_failures_per_run`` (2) times on transport in a run is not called again in that
   run: its further jobs go back to ``pending`` at once.
5. :func:`correct_mailbox_statuses` — see :data:`_CORRECT_STATUSES` for the rules.

A mailbox is identified to Exchange by its ExchangeGuid, else its primary address. The clock is
``interval.end``.
"""

from __future__ import annotations

import re
from uuid import UUID

from panelflow.hooks.powershell import byte_count
from panelflow.services.group_actions import (JobDeferred, JobRejected, Payload, PowerShellSessions,
                                              process_group_actions)
from panelflow.step import StepReport

from ._backend import ForwardingState, OwaAssignment, Record
from ._backend import one_record as _one
from .recycle_bin import RECYCLE_DAYS

BACKEND = "exchange"
ACTIONS = ("create_mailbox", "set_mailbox_quota", "set_mailbox_forwarding", "add_mailbox_permission",
           "remove_mailbox_permission", "disable_mailbox", "enable_mailbox", "delete_mailbox", "convert_mailbox",
           "set_owa_policy", "add_email_address")
PERMISSIONS = ("FullAccess", "SendAs", "SendOnBehalf")
PANEL_TYPE_TO_EXCHANGE = {"user": "Regular", "shared": "Shared", "room": "Room", "equipment": "Equipment"}
RECIPIENT_TYPE_TO_PANEL = {"UserMailbox": "user", "SharedMailbox": "shared", "RoomMailbox": "room",
                           "EquipmentMailbox": "equipment"}
MIB = 1024 * 1024
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

SERVER_FAILURES_PER_RUN = 2

# The customer's recycle-bin item of each mailbox just put in the bin (ProvisioningWork 41 sends its
# notices; GroupActionWorkEx 7 removes it with the purge), run in the transaction that set the
# ``recycle_bin`` status so the two go together. One per mailbox in the bin (unique): a re-taken job
# or a status corrected after the handler already wrote it adds none.
_RECYCLE_BIN_ITEMS = """
INSERT INTO recycle_bin_items (customer_id, kind, name, deleted_at, purge_at, exchange_mailbox_id)
SELECT o.customer_id, 'mailbox', m.primary_smtp_address, m.deleted_at, m.deleted_at + make_interval(days => %(days)s),
       m.id
FROM exchange_mailboxes m JOIN exchange_organizations o ON o.id = m.organization_id
WHERE m.id = ANY(%(ids)s) AND o.customer_id IS NOT NULL
ON CONFLICT (exchange_mailbox_id) WHERE exchange_mailbox_id IS NOT NULL DO NOTHING
"""


# -- what the action scripts print -------------------------------------------------------------------------

def _smtp_addresses(values: list[str]) -> list[str]:
    """EmailAddresses (``SMTP:primary``, ``smtp:secondary``, ``X500:…``) → SMTP addresses, primary first."""
    smtp = [v for v in values if v[:5].lower() == "smtp:"]
    return [v[5:] for v in sorted(smtp, key=lambda v: not v.startswith("SMTP:"))]


class MailboxState(Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    Database: str | None = None
    RecipientTypeDetails: str | None = None
    EmailAddresses: list[str] = []
    Created: bool | None = None


class QuotaState(Record):
    ExchangeGuid: UUID
    UseDatabaseQuotaDefaults: bool
    IssueWarningQuota: str
    ProhibitSendQuota: str
    ProhibitSendReceiveQuota: str

    def mb(self, field: str) -> int | None:
        value = getattr(self, field)
        return None if value.strip().lower() == "unlimited" else byte_count(value) // MIB


class PermissionChange(Record):
    Trustee: str
    AccessRights: list[str] = []
    Changed: bool


class AccessState(Record):
    ExchangeGuid: UUID
    AccountDisabled: bool | None = None
    OWAEnabled: bool
    ActiveSyncEnabled: bool
    EwsEnabled: bool
    MAPIEnabled: bool
    PopEnabled: bool
    ImapEnabled: bool


class RemovedMailbox(Record):
    ExchangeGuid: UUID | None = None
    Database: str | None = None
    Removed: bool
    AlreadyAbsent: bool


class AddressState(Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    EmailAddresses: list[str]
    Changed: bool



# -- 1. the group-action queue ----------------------------------------------------------------------------

_MAILBOX = """
SELECT m.id, m.status, m.exchange_guid::text AS exchange_guid, m.primary_smtp_address, m.alias, m.display_name,
       m.user_principal_name, m.mailbox_type, m.database, m.issue_warning_quota_mb, m.prohibit_send_quota_mb,
       m.prohibit_send_receive_quota_mb, o.organizational_unit, o.address_book_policy,
       s.id AS server_id, s.name AS server_name, s.conn_id, s.enabled AS server_enabled
FROM exchange_mailboxes m
JOIN exchange_organizations o ON o.id = m.organization_id
JOIN exchange_servers s ON s.id = m.exchange_server_id
WHERE m.id = %s
"""

_UPDATABLE = frozenset((
    "status", "previous_status", "status_changed_at", "exchange_guid", "database", "email_addresses",
    "primary_smtp_address", "mailbox_type", "issue_warning_quota_mb", "prohibit_send_quota_mb",
    "prohibit_send_receive_quota_mb", "use_database_quota_defaults", "forwarding_smtp_address", "forwarding_address",
    "deliver_to_mailbox_and_forward", "forwarding_synced_at", "owa_policy_id", "owa_policy_applied",
    "owa_policy_applied_at", "deleted_at", "last_error"))


def _quota(value: int | None) -> str:
    return "Unlimited" if value is None else f"{value}MB"


class _ExchangeJobs:
    """The handler of the ``exchange`` queue: one PowerShell context per server, opened on first use,
    on the shared rule for what a server's answer means (:class:`PowerShellSessions`), a server given
    up on after ``exchange_server_failures_per_run`` transport failures."""

    def __init__(self, conn, at, params: dict, log):
        self.conn, self.at, self.log = conn, at, log
        self.sessions = PowerShellSessions(log, int(params.get("exchange_server_failures_per_run",
                                                               SERVER_FAILURES_PER_RUN)))

    def close(self) -> None:
        self.sessions.close()

    # plumbing
    def handle(self, action: str, payload: dict) -> dict:
        p = Payload(payload)
        return getattr(self, action)(self._mailbox(p), p)

    def _mailbox(self, p: Payload) -> dict:
        from psycopg.rows import dict_row

        raw = p.integer("mailbox_id", low=1, required=True)
        row = self.conn.cursor(row_factory=dict_row).execute(_MAILBOX, (raw,)).fetchone()
        if row is None:
            raise JobRejected(f"no mailbox {raw} in the panel")
        if not row["server_enabled"]:
            raise JobRejected(f"Exchange server {row['server_name']} of mailbox {row['primary_smtp_address']} is disabled")
        if row["status"] == "deleted":
            raise JobRejected(f"mailbox {row['primary_smtp_address']} was purged")
        row["identity"] = row["exchange_guid"] or row["primary_smtp_address"]
        return row

    def run(self, mailbox: dict, script: str, parameters: dict) -> list:
        return self.sessions.run(mailbox["server_name"], mailbox["conn_id"], script, parameters)

    def update(self, mailbox_id: int, **values) -> None:
        from psycopg import sql

        assert set(values) <= _UPDATABLE, set(values) - _UPDATABLE
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values)
        self.conn.execute(sql.SQL("UPDATE exchange_mailboxes SET {} WHERE id = %(id)s").format(assignments),
                          {**values, "id": mailbox_id})

    def settled(self, status: str) -> dict:
        return {"status": status, "previous_status": None, "status_changed_at": self.at, "last_error": None}

    # the actions (see the module's doc)
    def create_mailbox(self, m: dict, p: Payload) -> dict:
        kind = m["mailbox_type"]
        common = {"Alias": m["alias"], "PrimarySmtpAddress": m["primary_smtp_address"],
                  "Type": PANEL_TYPE_TO_EXCHANGE[kind], "Database": p.text("database", required=False) or m["database"],
                  "AddressBookPolicy": m["address_book_policy"]}
        ad_user = p.text("ad_user", required=False)
        if ad_user is not None:
            script = "exchange/enable_user_mailbox"
            rows = self.run(m, script, {"Identity": ad_user, "DisplayName": m["display_name"], **common})
        else:
            password = p.get("password") if kind == "user" else None
            if kind == "user" and (not isinstance(password, str) or not password):
                raise JobRejected("a user mailbox needs a password (payload 'password') or an existing AD user ('ad_user')")
            script = "exchange/new_mailbox"
            rows = self.run(m, script, {"Name": m["display_name"], "DisplayName": m["display_name"],
                                        "UserPrincipalName": m["user_principal_name"] or m["primary_smtp_address"],
                                        "OrganizationalUnit": m["organizational_unit"], "Password": password, **common})
        state = _one(MailboxState, rows, script)
        self.update(m["id"], exchange_guid=state.ExchangeGuid, database=state.Database,
                    email_addresses=_smtp_addresses(state.EmailAddresses), **self.settled("active"))
        return {"mailbox_id": m["id"], "exchange_guid": str(state.ExchangeGuid),
                "primary_smtp_address": state.PrimarySmtpAddress, "database": state.Database,
                "created": bool(state.Created)}

    def set_mailbox_quota(self, m: dict, p: Payload) -> dict:
        script = "exchange/set_mailbox_quota"
        if p.flag("use_database_defaults", False):
            parameters = {"Identity": m["identity"], "UseDatabaseQuotaDefaults": True}
        else:
            values = {}
            for key, column in (("issue_warning_mb", "issue_warning_quota_mb"), ("prohibit_send_mb", "prohibit_send_quota_mb"),
                                ("prohibit_send_receive_mb", "prohibit_send_receive_quota_mb")):
                values[key] = p.integer(key, low=1) if key in p.data else m[column]
            ordered = [v for v in (values["issue_warning_mb"], values["prohibit_send_mb"], values["prohibit_send_receive_mb"])]
            limits = [float("inf") if v is None else v for v in ordered]
            if not limits[0] <= limits[1] <= limits[2]:
                raise JobRejected("quotas must be issue warning ≤ prohibit send ≤ prohibit send and receive")
            parameters = {"Identity": m["identity"], "UseDatabaseQuotaDefaults": False,
                          "IssueWarningQuota": _quota(ordered[0]), "ProhibitSendQuota": _quota(ordered[1]),
                          "ProhibitSendReceiveQuota": _quota(ordered[2])}
        state = _one(QuotaState, self.run(m, script, parameters), script)
        applied = {"issue_warning_quota_mb": state.mb("IssueWarningQuota"),
                   "prohibit_send_quota_mb": state.mb("ProhibitSendQuota"),
                   "prohibit_send_receive_quota_mb": state.mb("ProhibitSendReceiveQuota")}
        self.update(m["id"], use_database_quota_defaults=state.UseDatabaseQuotaDefaults, **applied)
        return {"mailbox_id": m["id"], "use_database_quota_defaults": state.UseDatabaseQuotaDefaults,
                "issue_warning_mb": applied["issue_warning_quota_mb"], "prohibit_send_mb": applied["prohibit_send_quota_mb"],
                "prohibit_send_receive_mb": applied["prohibit_send_receive_quota_mb"]}

    def set_mailbox_forwarding(self, m: dict, p: Payload) -> dict:
        script = "exchange/set_mailbox_forwarding"
        smtp, recipient = p.text("forwarding_smtp_address", required=False), p.text("forwarding_address", required=False)
        if smtp and recipient:
            raise JobRejected("forward either to forwarding_smtp_address or to forwarding_address, not both")
        if smtp and not EMAIL.match(smtp):
            raise JobRejected(f"forwarding_smtp_address {smtp!r} is not an e-mail address")
        keep = p.flag("deliver_to_mailbox_and_forward", False)
        state = _one(ForwardingState, self.run(m, script, {
            "Identity": m["identity"], "ForwardingSmtpAddress": smtp, "ForwardingAddress": recipient,
            "DeliverToMailboxAndForward": keep}), script)
        self.update(m["id"], forwarding_smtp_address=state.ForwardingSmtpAddress,
                    forwarding_address=state.ForwardingAddress,
                    deliver_to_mailbox_and_forward=state.DeliverToMailboxAndForward, forwarding_synced_at=self.at)
        return {"mailbox_id": m["id"], "forwarding_smtp_address": state.ForwardingSmtpAddress,
                "forwarding_address": state.ForwardingAddress,
                "deliver_to_mailbox_and_forward": state.DeliverToMailboxAndForward}

    @staticmethod
    def _permission(p: Payload) -> tuple[str, str]:
        permission = p.get("permission")
        if permission not in PERMISSIONS:
            raise JobRejected(f"permission {permission!r} is not one of {', '.join(PERMISSIONS)}")
        return p.text("trustee"), permission

    def add_mailbox_permission(self, m: dict, p: Payload) -> dict:
        script = "exchange/add_mailbox_permission"
        trustee, permission = self._permission(p)
        auto_mapping = p.flag("auto_mapping", True) if permission == "FullAccess" else None
        out = _one(PermissionChange, self.run(m, script, {"Identity": m["identity"], "Trustee": trustee,
                                                         "Permission": permission, "AutoMapping": auto_mapping}), script)
        self.conn.execute(
            "INSERT INTO exchange_mailbox_permissions (mailbox_id, permission, trustee, access_rights, synced_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (mailbox_id, permission, lower(trustee), deny)"
            " DO UPDATE SET access_rights = EXCLUDED.access_rights, synced_at = EXCLUDED.synced_at",
            (m["id"], permission, out.Trustee, out.AccessRights, self.at))
        return {"mailbox_id": m["id"], "permission": permission, "trustee": out.Trustee, "granted": out.Changed,
                "already_granted": not out.Changed}

    def remove_mailbox_permission(self, m: dict, p: Payload) -> dict:
        script = "exchange/remove_mailbox_permission"
        trustee, permission = self._permission(p)
        out = _one(PermissionChange, self.run(m, script, {"Identity": m["identity"], "Trustee": trustee,
                                                         "Permission": permission, "Confirm": False}), script)
        self.conn.execute("DELETE FROM exchange_mailbox_permissions WHERE mailbox_id = %s AND permission = %s"
                          " AND NOT deny AND lower(trustee) IN (lower(%s), lower(%s))",
                          (m["id"], permission, trustee, out.Trustee))
        return {"mailbox_id": m["id"], "permission": permission, "trustee": out.Trustee, "removed": out.Changed,
                "already_absent": not out.Changed}

    def _access(self, m: dict, enabled: bool) -> dict:
        script = "exchange/set_mailbox_access"
        state = _one(AccessState, self.run(m, script, {"Identity": m["identity"], "Enabled": enabled}), script)
        self.update(m["id"], **self.settled("active" if enabled else "disabled"))
        return {"mailbox_id": m["id"], "enabled": enabled, "account_disabled": state.AccountDisabled,
                "owa_enabled": state.OWAEnabled, "activesync_enabled": state.ActiveSyncEnabled,
                "mapi_enabled": state.MAPIEnabled}

    def disable_mailbox(self, m: dict, p: Payload) -> dict:
        return self._access(m, False)

    def enable_mailbox(self, m: dict, p: Payload) -> dict:
        return self._access(m, True)

    def delete_mailbox(self, m: dict, p: Payload) -> dict:
        script = "exchange/remove_mailbox"
        out = _one(RemovedMailbox, self.run(m, script, {"Identity": m["identity"],
                                                       "KeepADUser": p.flag("keep_ad_user", False),
                                                       "Confirm": False}), script)
        guid = str(out.ExchangeGuid) if out.ExchangeGuid else m["exchange_guid"]
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE exchange_mailboxes SET status = 'recycle_bin', previous_status = NULL, status_changed_at = %(at)s,"
                " last_error = NULL, deleted_at = coalesce(deleted_at, %(at)s), exchange_guid = %(guid)s::uuid,"
                " database = coalesce(%(db)s, database) WHERE id = %(id)s",
                {"at": self.at, "guid": guid, "db": out.Database, "id": m["id"]})
            self.conn.execute(_RECYCLE_BIN_ITEMS, {"ids": [m["id"]], "days": RECYCLE_DAYS})
        return {"mailbox_id": m["id"], "exchange_guid": guid, "removed": out.Removed, "already_absent": out.AlreadyAbsent}

    def convert_mailbox(self, m: dict, p: Payload) -> dict:
        script = "exchange/set_mailbox_type"
        kind = p.get("type")
        if kind not in PANEL_TYPE_TO_EXCHANGE:
            raise JobRejected(f"type {kind!r} is not one of {', '.join(PANEL_TYPE_TO_EXCHANGE)}")
        rows = self.run(m, script, {"Identity": m["identity"], "Type": PANEL_TYPE_TO_EXCHANGE[kind]})
        state = _one(MailboxState, rows, script)
        reported = RECIPIENT_TYPE_TO_PANEL.get(state.RecipientTypeDetails or "")
        if reported is None:
            raise JobRejected(f"{script}: Exchange reports the mailbox as {state.RecipientTypeDetails!r}")
        self.update(m["id"], mailbox_type=reported)
        return {"mailbox_id": m["id"], "type": reported, "recipient_type_details": state.RecipientTypeDetails}

    def set_owa_policy(self, m: dict, p: Payload) -> dict:
        script = "exchange/set_cas_mailbox_owa_policy"
        name = p.text("policy")
        policy = self.conn.execute("SELECT id, status FROM exchange_owa_policies WHERE exchange_server_id = %s"
                                   " AND name = %s", (m["server_id"], name)).fetchone()
        if policy is not None and policy[1] == "pending":
            raise JobDeferred(f"OWA policy {name} is not created on Exchange yet")
        if policy is not None and policy[1] == "failed":
            raise JobRejected(f"OWA policy {name} could not be created on Exchange")
        out = _one(OwaAssignment, self.run(m, script, {"Identity": [m["identity"]], "OwaMailboxPolicy": name}), script)
        if out.Error:
            raise JobRejected(f"{script}: {out.Error}")
        # the desired policy follows the job: assign_owa_policies must not put the old one back
        self.update(m["id"], owa_policy_id=policy[0] if policy else None, owa_policy_applied=out.OwaMailboxPolicy,
                    owa_policy_applied_at=self.at)
        return {"mailbox_id": m["id"], "owa_mailbox_policy": out.OwaMailboxPolicy}

    def add_email_address(self, m: dict, p: Payload) -> dict:
        script = "exchange/add_mailbox_email_address"
        address = p.text("address")
        if not EMAIL.match(address):
            raise JobRejected(f"address {address!r} is not an e-mail address")
        state = _one(AddressState, self.run(m, script, {"Identity": m["identity"], "Address": address,
                                                       "SetAsPrimary": p.flag("primary", False)}), script)
        addresses = _smtp_addresses(state.EmailAddresses)
        self.update(m["id"], email_addresses=addresses, primary_smtp_address=state.PrimarySmtpAddress)
        return {"mailbox_id": m["id"], "primary_smtp_address": state.PrimarySmtpAddress, "email_addresses": addresses,
                "added": state.Changed}


def process_exchange_group_actions(panel_db, interval, params, log) -> dict:
    """Process Exchange group actions."""
    params = params or {}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        jobs = _ExchangeJobs(conn, interval.end, params, log)
        try:
            return process_group_actions(panel_db, BACKEND, jobs.handle, interval, params, log, actions=ACTIONS)
        finally:
            jobs.close()


# -- 5. mailbox statuses from the jobs' outcomes ---------------------------------------------------------------

_CORRECT_STATUSES = """
WITH stuck AS (
    SELECT id::text AS key FROM exchange_mailboxes WHERE status = 'pending'
), latest AS (
    SELECT DISTINCT ON (j.payload ->> 'mailbox_id') j.payload ->> 'mailbox_id' AS key, j.id, j.action, j.status,
           j.error, j.finished_at
    FROM group_action_jobs j JOIN stuck ON stuck.key = j.payload ->> 'mailbox_id'
    WHERE j.backend = 'exchange'
    ORDER BY j.payload ->> 'mailbox_id', j.id DESC
), decided AS (
    SELECT m.id, l.id AS job_id, l.action, l.status AS job_status, l.error, l.finished_at,
        CASE WHEN l.status = 'succeeded' THEN
                 CASE l.action WHEN 'create_mailbox' THEN 'active' WHEN 'enable_mailbox' THEN 'active'
                               WHEN 'disable_mailbox' THEN 'disabled' WHEN 'delete_mailbox' THEN 'recycle_bin'
                               ELSE coalesce(m.previous_status, 'active') END
             WHEN l.action = 'create_mailbox' THEN coalesce(m.previous_status, 'failed')
             ELSE coalesce(m.previous_status, CASE WHEN m.exchange_guid IS NULL THEN 'failed' ELSE 'active' END)
        END AS new_status
    FROM exchange_mailboxes m JOIN latest l ON l.key = m.id::text
    WHERE m.status = 'pending' AND l.status IN ('succeeded', 'failed')
)
UPDATE exchange_mailboxes m SET status = d.new_status, previous_status = NULL, status_changed_at = %(at)s,
    deleted_at = CASE WHEN d.new_status = 'recycle_bin' THEN coalesce(m.deleted_at, d.finished_at, %(at)s)
                      ELSE m.deleted_at END,
    last_error = CASE WHEN d.job_status = 'failed' THEN d.error END
FROM decided d
WHERE m.id = d.id AND m.status = 'pending'
RETURNING m.id, d.job_id, d.action, d.job_status, d.new_status
"""
"""The rules. A mailbox is ``pending`` while the panel waits for a queued action; the step looks at the
latest ``exchange`` job naming it (``payload.mailbox_id``, highest id) and, once that job is finished:

- succeeded: create_mailbox / enable_mailbox → ``active``; disable_mailbox → ``disabled``;
  delete_mailbox → ``recycle_bin`` (``deleted_at`` = the job's finish when not set; its recycle-bin item
  written, :data:`_RECYCLE_BIN_ITEMS`, in the same transaction); any other action
  changed a setting, not the state → back to ``previous_status`` (else ``active``);
- failed: create_mailbox → ``previous_status`` (a retried creation of an existing mailbox), else
  ``failed``; any other action → ``previous_status``, else ``active`` when Exchange has the mailbox
  (a GUID is known) and ``failed`` when it never had it; the job's error goes to ``last_error``.

A mailbox whose latest job is still pending or running is left alone, as is one no job names (the
panel has not queued its action yet): both are counted. Normally the job's handler already set the
status; this corrects what it could not (a failed job, a worker killed between Exchange's answer
and the update, a job finished by an older processor)."""

_PENDING_LEFT = """
SELECT count(*) FILTER (WHERE l.status IN ('pending', 'running')), count(*) FILTER (WHERE l.status IS NULL)
FROM exchange_mailboxes m
LEFT JOIN LATERAL (SELECT j.status FROM group_action_jobs j WHERE j.backend = 'exchange'
                   AND j.payload ->> 'mailbox_id' = m.id::text ORDER BY j.id DESC LIMIT 1) l ON true
WHERE m.status = 'pending'
"""


def correct_mailbox_statuses(panel_db, interval, log) -> dict:
    """Auto corrects mailbox statuses on basis of group actions."""
    report = StepReport().zero("corrected", "waiting_for_job", "without_job")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # a mailbox corrected into the bin gets its item with its status
            changed = conn.execute(_CORRECT_STATUSES, {"at": interval.end}).fetchall()
            binned = [mailbox_id for mailbox_id, *_, new_status in changed if new_status == "recycle_bin"]
            if binned:
                conn.execute(_RECYCLE_BIN_ITEMS, {"ids": binned, "days": RECYCLE_DAYS})
        waiting, without = conn.execute(_PENDING_LEFT).fetchone()
    report.add("corrected", len(changed))
    report.add("waiting_for_job", waiting)
    report.add("without_job", without)
    for mailbox_id, job_id, action, job_status, new_status in changed:
        report.add(f"to_{new_status}")
        if log is not None:
            log.info("mailbox %s: %s after job %s (%s %s)", mailbox_id, new_status, job_id, action, job_status)
    return report.as_dict()


