"""GroupActionWorkEx and GroupActionWorkMailBoxPermissions: hosted Exchange through PowerShell remoting.

Every Exchange operation is a script of ``include/powershell/exchange/`` run with
:meth:`PowerShellHook.run_script` — values only as PSRP parameters, never in script text — on the
server of an enabled ``exchange_servers`` row (0016; ``conn_id`` names its psrp connection). Each
server is one Exchange organisation's endpoint; a hosted tenant (``exchange_organizations``, 0017)
is an OU in it. A step opens one PowerShell context (one runspace pool) per server it needs; a server
that cannot be reached is reported and the other servers are still worked; the step fails only when
every server it needed failed.

GroupActionWorkEx
-----------------

1. :func:`process_exchange_group_actions` — the ``group_action_jobs`` queue of backend ``exchange``
   through :func:`panelflow.services.group_actions.process_group_actions` (one job at a time, by priority).
   Every job names the panel's mailbox (``exchange_mailboxes.id``); the mailbox's server runs it.
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
2. :func:`create_pending_owa_policies` — ``exchange_owa_policies`` rows ``pending`` → New-OwaMailboxPolicy
   (unless it exists) + Set-OwaMailboxPolicy with the row's ``settings`` → ``created``; settings
   outside :data:`OWA_POLICY_SETTINGS` or refused by Exchange → ``failed`` with the reason.
3. :func:`assign_owa_policies` — mailboxes whose desired policy (``owa_policy_id``, ``created``) is not
   the one last applied → Set-CASMailbox -OwaMailboxPolicy, one call per server and policy for a
   batch of mailboxes; the applied name and time are recorded per mailbox.
4. :func:`sync_smart_host_send_connectors` — two directions. Exchange → panel: every connector
   Get-SendConnector reports is recorded (smart hosts, address spaces, state); a connector the panel
   does not manage that is gone from Exchange is dropped. Panel → Exchange: only connectors the panel
   manages (``managed``, with desired smart hosts and address spaces) are created (New-SendConnector)
   when missing or set (Set-SendConnector) when different. Nothing is ever removed from Exchange.
5. :func:`correct_mailbox_statuses` — see :data:`_CORRECT_STATUSES` for the rules.
6. :func:`handle_oss_spam_filters` — an organisation's ``exchange_spam_filter_settings`` row ``pending``
   (or mailboxes of an ``applied`` one that have not had its thresholds yet) → its allowed/blocked
   senders and domains as transport rules scoped to its accepted domains, its SCL thresholds on its
   mailboxes (``set_organization_spam_filter``; Set-ContentFilterConfig is forest-wide, so it cannot
   hold one tenant's settings) → ``applied`` with the rules as Exchange reports them.
7. :func:`purge_recycle_bin_mailboxes` — mailboxes in the recycle bin since more than
   ``mailbox_recycle_days`` (30) before the interval's end → Remove-StoreMailbox (``Confirm=False``)
   on their database, at most ``recycle_purge_batch`` (50) a run → ``deleted`` (``purged_at``). One no
   longer among the database's disconnected mailboxes is already purged: marked so.
8. :func:`sync_external_remote_domains` — as step 4, for remote domains (Get-RemoteDomain; the panel's
   managed ones created with New-RemoteDomain or set with Set-RemoteDomain, settings from
   :data:`REMOTE_DOMAIN_SETTINGS`).

GroupActionWorkMailBoxPermissions
---------------------------------

1. :func:`sync_mailbox_permissions` — per organisation: full access (Get-MailboxPermission), send as
   (the AD "Send As" right — Get-RecipientPermission exists only in Exchange Online) and send on
   behalf (GrantSendOnBehalfTo), explicit entries only, without NT AUTHORITY\\SELF and other system
   accounts (:func:`_system_account`); the panel's permission rows of every mailbox Exchange reported
   are replaced by these in one statement (added, changed and removed counted).
2. :func:`sync_mailbox_forwarding` — ForwardingSmtpAddress / ForwardingAddress /
   DeliverToMailboxAndForward of every mailbox of each organisation → its mailbox row.

A mailbox reported by Exchange is matched to the panel's row by ExchangeGuid, else by primary
address (the GUID is then recorded). The clock is ``interval.end``.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from panelflow.step import StepReport
from panelflow.services.group_actions import JobDeferred, JobRejected, process_group_actions
from panelflow.hooks.powershell import (PowerShellError, PowerShellHook, PowerShellOutputError,
                                        PowerShellScriptError, PowerShellUnavailable, byte_count, close_powershell,
                                        open_powershell, parse_records, powershell_session)

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
OWA_POLICIES_PER_RUN = 100
OWA_ASSIGN_PER_RUN = 2000
OWA_ASSIGN_BATCH = 100
SPAM_ORGANIZATIONS_PER_RUN = 50
SPAM_MAILBOXES_PER_CALL = 500
RECYCLE_DAYS = 30
RECYCLE_PURGE_BATCH = 50
MAILBOXES_PER_ORGANIZATION = 5000

_BOOL = bool
OWA_POLICY_SETTINGS: dict[str, Any] = {
    **{name: _BOOL for name in (
        "ActiveSyncIntegrationEnabled", "AllAddressListsEnabled", "CalendarEnabled", "ChangePasswordEnabled",
        "ContactsEnabled", "DirectFileAccessOnPrivateComputersEnabled", "DirectFileAccessOnPublicComputersEnabled",
        "GlobalAddressListEnabled", "InstantMessagingEnabled", "JournalEnabled", "JunkEmailEnabled", "NotesEnabled",
        "OrganizationEnabled", "PremiumClientEnabled", "PublicFoldersEnabled", "RecoverDeletedItemsEnabled",
        "RemindersAndNotificationsEnabled", "RulesEnabled", "SearchFoldersEnabled", "SignaturesEnabled",
        "SMimeEnabled", "SpellCheckerEnabled", "TasksEnabled", "TextMessagingEnabled", "ThemeSelectionEnabled",
        "WacViewingOnPrivateComputersEnabled", "WacViewingOnPublicComputersEnabled")},
    "AllowOfflineOn": ("AllComputers", "PrivateComputersOnly", "NoComputers"),
    "ActionForUnknownFileAndMIMETypes": ("Allow", "ForceSave", "Block"),
    "DefaultTheme": str,
}
"""The Set-OwaMailboxPolicy parameters a panel policy may set (the script's ``param()`` block):
``bool``, one of the listed values, or any text."""

REMOTE_DOMAIN_SETTINGS: dict[str, Any] = {
    "AllowedOOFType": ("External", "ExternalLegacy", "InternalLegacy", "None"),
    **{name: _BOOL for name in ("AutoReplyEnabled", "AutoForwardEnabled", "DeliveryReportEnabled", "NDREnabled",
                                "MeetingForwardNotificationEnabled", "TNEFEnabled", "DisplaySenderName",
                                "TrustedMailOutboundEnabled", "TrustedMailInboundEnabled")},
    "ContentType": ("MimeHtmlText", "MimeText", "MimeHtml"),
    "CharacterSet": str,
}
"""The Set-RemoteDomain parameters a panel remote domain may set."""

SYSTEM_ACCOUNTS = frozenset(name.lower() for name in (
    "Exchange Servers", "Exchange Trusted Subsystem", "Exchange Windows Permissions", "Exchange Domain Servers",
    "Exchange Organization Administrators", "Exchange Enterprise Servers", "Organization Management",
    "Domain Admins", "Enterprise Admins", "Administrators", "Managed Availability Servers", "Public Folder Management",
    "Delegated Setup", "Exchange View-Only Administrators", "Exchange Recipient Administrators",
    "Exchange Public Folder Administrators"))


def _system_account(trustee: str) -> bool:
    """NT AUTHORITY\\… (SELF, SYSTEM, NETWORK SERVICE), a bare SID (a deleted account) or one of
    Exchange's and AD's own groups (:data:`SYSTEM_ACCOUNTS`, in any domain): Exchange sets these on
    every mailbox; they are not a customer's permissions."""
    text = trustee.strip()
    if text.upper().startswith("NT AUTHORITY\\") or re.fullmatch(r"S-1-\d+(-\d+)+", text, re.IGNORECASE):
        return True
    return text.rsplit("\\", 1)[-1].lower() in SYSTEM_ACCOUNTS


# -- servers and PowerShell contexts -----------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    id: int
    name: str
    fqdn: str
    conn_id: str


_SERVERS = "SELECT id, name, fqdn, conn_id FROM exchange_servers WHERE enabled ORDER BY id"


def _servers(conn, ids: Iterable[int] | None = None) -> list[Server]:
    rows = [Server(*r) for r in conn.execute(_SERVERS).fetchall()]
    if ids is not None:
        wanted = set(ids)
        rows = [s for s in rows if s.id in wanted]
    return rows


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]


def _each_server(servers: list[Server], report: StepReport, log, work: Callable[[Server, PowerShellHook], None]) -> None:
    """``work(server, hook)`` on each server in its own PowerShell context. A server that cannot be
    reached, times out, refuses a read or is misconfigured is reported and the next one is worked;
    raises at the end only when every server failed."""
    from airflow.exceptions import AirflowException

    failed: list[str] = []
    for server in servers:
        try:
            with powershell_session(server.conn_id, log) as hook:
                work(server, hook)
        except (PowerShellError, AirflowException) as exc:
            failed.append(server.name)
            report.add("servers_failed")
            report.skip(_first_line(exc), f"server {server.name}")
            if log is not None:
                log.warning("Exchange server %s: %s", server.name, exc)
        else:
            report.add("servers_done")
    if servers and len(failed) == len(servers):
        raise RuntimeError(f"every Exchange server failed ({', '.join(failed)}): {report.examples[-3:]}")


def _run_item(hook: PowerShellHook, script: str, parameters: dict) -> tuple[list | None, str | None]:
    """One per-item call inside a server's work: Exchange refusing the item → (None, its message);
    a transport failure propagates (the server is done for this step)."""
    try:
        return hook.run_script(script, parameters), None
    except (PowerShellScriptError, PowerShellOutputError) as exc:
        return None, str(exc)


def _apply_one(hook: PowerShellHook, model, script: str, parameters: dict):
    """:func:`_run_item` of a script that prints one ``model`` record → (record, None), or (None, why)
    when Exchange refused the item or the record is malformed."""
    rows, error = _run_item(hook, script, parameters)
    if error is not None:
        return None, error
    try:
        return _one(model, rows, script), None
    except JobRejected as exc:
        return None, str(exc)


# -- what the scripts print ----------------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _smtp_addresses(values: list[str]) -> list[str]:
    """EmailAddresses (``SMTP:primary``, ``smtp:secondary``, ``X500:…``) → SMTP addresses, primary first."""
    smtp = [v for v in values if v[:5].lower() == "smtp:"]
    return [v[5:] for v in sorted(smtp, key=lambda v: not v.startswith("SMTP:"))]


class MailboxState(_Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    Database: str | None = None
    RecipientTypeDetails: str | None = None
    EmailAddresses: list[str] = []
    Created: bool | None = None


class QuotaState(_Record):
    ExchangeGuid: UUID
    UseDatabaseQuotaDefaults: bool
    IssueWarningQuota: str
    ProhibitSendQuota: str
    ProhibitSendReceiveQuota: str

    def mb(self, field: str) -> int | None:
        value = getattr(self, field)
        return None if value.strip().lower() == "unlimited" else byte_count(value) // MIB


class ForwardingState(_Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    ForwardingAddress: str | None = None
    ForwardingSmtpAddress: str | None = None
    DeliverToMailboxAndForward: bool = False

    @field_validator("ForwardingSmtpAddress")
    @classmethod
    def _strip_prefix(cls, value):
        return value[5:] if value and value[:5].lower() == "smtp:" else value


class PermissionChange(_Record):
    Trustee: str
    AccessRights: list[str] = []
    Changed: bool


class AccessState(_Record):
    ExchangeGuid: UUID
    AccountDisabled: bool | None = None
    OWAEnabled: bool
    ActiveSyncEnabled: bool
    EwsEnabled: bool
    MAPIEnabled: bool
    PopEnabled: bool
    ImapEnabled: bool


class RemovedMailbox(_Record):
    ExchangeGuid: UUID | None = None
    Database: str | None = None
    Removed: bool
    AlreadyAbsent: bool


class OwaAssignment(_Record):
    Identity: str
    OwaMailboxPolicy: str | None = None
    Error: str | None = None


class AddressState(_Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    EmailAddresses: list[str]
    Changed: bool


class OwaPolicyState(_Record):
    Name: str
    Guid: UUID
    Created: bool


class SendConnectorState(_Record):
    Name: str
    Guid: UUID
    Enabled: bool
    SmartHosts: list[str] = []
    AddressSpaces: list[str] = []
    Port: int
    DNSRoutingEnabled: bool
    SmartHostAuthMechanism: str | None = None


class RemoteDomainState(_Record):
    model_config = ConfigDict(extra="allow")
    Name: str
    DomainName: str
    Guid: UUID
    IsInternal: bool = False

    def settings(self) -> dict:
        extra = self.model_extra or {}
        return {k: extra[k] for k in REMOTE_DOMAIN_SETTINGS if k in extra}


class DisconnectedMailbox(_Record):
    MailboxGuid: UUID
    Database: str
    DisconnectReason: str


class _MailboxPermissionEntry(_Record):
    User: str
    AccessRights: list[str] = []
    IsInherited: bool = False
    Deny: bool = False


class _SendAsEntry(_Record):
    User: str
    ExtendedRights: list[str] = []
    IsInherited: bool = False
    Deny: bool = False


class MailboxPermissions(_Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    MailboxPermissions: list[_MailboxPermissionEntry] = []
    SendAs: list[_SendAsEntry] = []
    GrantSendOnBehalfTo: list[str] = []


class MailboxForwarding(ForwardingState):
    pass


class SpamRule(_Record):
    Name: str
    State: str | None = None
    Priority: int | None = None
    From: list[str] = []
    SenderDomainIs: list[str] = []
    RecipientDomainIs: list[str] = []
    SetSCL: int | None = None
    DeleteMessage: bool | None = None


class SpamFilterState(_Record):
    Rules: list[SpamRule] = []
    RemovedRules: list[str] = []
    MailboxesUpdated: int = Field(ge=0)


def _one(model, rows: list, script: str):
    """The one record an action script prints (a malformed answer rejects the job: the script broke)."""
    from pydantic import ValidationError

    if len(rows) != 1:
        raise JobRejected(f"{script}: expected one record, got {len(rows)}")
    try:
        return model.model_validate(rows[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobRejected(f"{script}: unexpected output: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


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


def _text(payload: dict, key: str, required: bool = True) -> str | None:
    value = payload.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise JobRejected(f"payload has no {key!r}")
        return None
    if not isinstance(value, str):
        raise JobRejected(f"payload {key!r} is not text")
    return value.strip()


def _flag(payload: dict, key: str, default: bool) -> bool:
    value = payload.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise JobRejected(f"payload {key!r} is not true or false")
    return value


def _quota(value: int | None) -> str:
    return "Unlimited" if value is None else f"{value}MB"


class _ExchangeJobs:
    """The handler of the ``exchange`` queue: one PowerShell context per server, opened on first use."""

    def __init__(self, conn, at, params: dict, log):
        self.conn, self.at, self.log = conn, at, log
        self.hooks: dict[int, PowerShellHook] = {}
        self.transport_failures: Counter = Counter()
        self.max_failures = int(params.get("exchange_server_failures_per_run", SERVER_FAILURES_PER_RUN))

    def close(self) -> None:
        for hook in self.hooks.values():
            close_powershell(hook, self.log)
        self.hooks.clear()

    # plumbing
    def handle(self, action: str, payload: dict) -> dict:
        mailbox = self._mailbox(payload)
        return getattr(self, action)(mailbox, payload)

    def _mailbox(self, payload: dict) -> dict:
        from psycopg.rows import dict_row

        raw = payload.get("mailbox_id")
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not str(raw).isdigit():
            raise JobRejected(f"payload mailbox_id {raw!r} is not a mailbox id")
        row = self.conn.cursor(row_factory=dict_row).execute(_MAILBOX, (int(raw),)).fetchone()
        if row is None:
            raise JobRejected(f"no mailbox {raw} in the panel")
        if not row["server_enabled"]:
            raise JobRejected(f"Exchange server {row['server_name']} of mailbox {row['primary_smtp_address']} is disabled")
        if row["status"] == "deleted":
            raise JobRejected(f"mailbox {row['primary_smtp_address']} was purged")
        row["identity"] = row["exchange_guid"] or row["primary_smtp_address"]
        return row

    def run(self, mailbox: dict, script: str, parameters: dict) -> list:
        from airflow.exceptions import AirflowException

        server = mailbox["server_id"]
        if self.transport_failures[server] >= self.max_failures:
            raise JobDeferred(f"Exchange server {mailbox['server_name']} not called again in this run after "
                              f"{self.transport_failures[server]} transport failures")
        try:
            hook = self.hooks.get(server)
            if hook is None:
                hook = self.hooks[server] = open_powershell(mailbox["conn_id"])
            return hook.run_script(script, parameters)
        except PowerShellUnavailable as exc:
            self.transport_failures[server] += 1
            dropped = self.hooks.pop(server, None)     # a pool that timed out is not reused
            if dropped is not None:
                close_powershell(dropped, self.log)
            raise JobDeferred(str(exc)) from None
        except (PowerShellScriptError, PowerShellOutputError) as exc:
            raise JobRejected(str(exc)) from None
        except AirflowException as exc:                # the server's connection is missing or invalid
            raise JobDeferred(f"{mailbox['conn_id']}: {exc}") from None

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
    def create_mailbox(self, m: dict, p: dict) -> dict:
        kind = m["mailbox_type"]
        common = {"Alias": m["alias"], "PrimarySmtpAddress": m["primary_smtp_address"],
                  "Type": PANEL_TYPE_TO_EXCHANGE[kind], "Database": _text(p, "database", False) or m["database"],
                  "AddressBookPolicy": m["address_book_policy"]}
        ad_user = _text(p, "ad_user", False)
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

    def set_mailbox_quota(self, m: dict, p: dict) -> dict:
        script = "exchange/set_mailbox_quota"
        if _flag(p, "use_database_defaults", False):
            parameters = {"Identity": m["identity"], "UseDatabaseQuotaDefaults": True}
        else:
            values = {}
            for key, column in (("issue_warning_mb", "issue_warning_quota_mb"), ("prohibit_send_mb", "prohibit_send_quota_mb"),
                                ("prohibit_send_receive_mb", "prohibit_send_receive_quota_mb")):
                value = p[key] if key in p else m[column]
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                    raise JobRejected(f"payload {key!r} is not a positive number of MB")
                values[key] = value
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

    def set_mailbox_forwarding(self, m: dict, p: dict) -> dict:
        script = "exchange/set_mailbox_forwarding"
        smtp, recipient = _text(p, "forwarding_smtp_address", False), _text(p, "forwarding_address", False)
        if smtp and recipient:
            raise JobRejected("forward either to forwarding_smtp_address or to forwarding_address, not both")
        if smtp and not EMAIL.match(smtp):
            raise JobRejected(f"forwarding_smtp_address {smtp!r} is not an e-mail address")
        keep = _flag(p, "deliver_to_mailbox_and_forward", False)
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
    def _permission(p: dict) -> tuple[str, str]:
        permission = p.get("permission")
        if permission not in PERMISSIONS:
            raise JobRejected(f"permission {permission!r} is not one of {', '.join(PERMISSIONS)}")
        return _text(p, "trustee"), permission

    def add_mailbox_permission(self, m: dict, p: dict) -> dict:
        script = "exchange/add_mailbox_permission"
        trustee, permission = self._permission(p)
        auto_mapping = _flag(p, "auto_mapping", True) if permission == "FullAccess" else None
        out = _one(PermissionChange, self.run(m, script, {"Identity": m["identity"], "Trustee": trustee,
                                                         "Permission": permission, "AutoMapping": auto_mapping}), script)
        self.conn.execute(
            "INSERT INTO exchange_mailbox_permissions (mailbox_id, permission, trustee, access_rights, synced_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (mailbox_id, permission, lower(trustee), deny)"
            " DO UPDATE SET access_rights = EXCLUDED.access_rights, synced_at = EXCLUDED.synced_at",
            (m["id"], permission, out.Trustee, out.AccessRights, self.at))
        return {"mailbox_id": m["id"], "permission": permission, "trustee": out.Trustee, "granted": out.Changed,
                "already_granted": not out.Changed}

    def remove_mailbox_permission(self, m: dict, p: dict) -> dict:
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

    def disable_mailbox(self, m: dict, p: dict) -> dict:
        return self._access(m, False)

    def enable_mailbox(self, m: dict, p: dict) -> dict:
        return self._access(m, True)

    def delete_mailbox(self, m: dict, p: dict) -> dict:
        script = "exchange/remove_mailbox"
        out = _one(RemovedMailbox, self.run(m, script, {"Identity": m["identity"],
                                                       "KeepADUser": _flag(p, "keep_ad_user", False),
                                                       "Confirm": False}), script)
        guid = str(out.ExchangeGuid) if out.ExchangeGuid else m["exchange_guid"]
        self.conn.execute(
            "UPDATE exchange_mailboxes SET status = 'recycle_bin', previous_status = NULL, status_changed_at = %(at)s,"
            " last_error = NULL, deleted_at = coalesce(deleted_at, %(at)s), exchange_guid = %(guid)s::uuid,"
            " database = coalesce(%(db)s, database) WHERE id = %(id)s",
            {"at": self.at, "guid": guid, "db": out.Database, "id": m["id"]})
        return {"mailbox_id": m["id"], "exchange_guid": guid, "removed": out.Removed, "already_absent": out.AlreadyAbsent}

    def convert_mailbox(self, m: dict, p: dict) -> dict:
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

    def set_owa_policy(self, m: dict, p: dict) -> dict:
        script = "exchange/set_cas_mailbox_owa_policy"
        name = _text(p, "policy")
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

    def add_email_address(self, m: dict, p: dict) -> dict:
        script = "exchange/add_mailbox_email_address"
        address = _text(p, "address")
        if not EMAIL.match(address):
            raise JobRejected(f"address {address!r} is not an e-mail address")
        state = _one(AddressState, self.run(m, script, {"Identity": m["identity"], "Address": address,
                                                       "SetAsPrimary": _flag(p, "primary", False)}), script)
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


# -- 2. pending OWA policies ---------------------------------------------------------------------------------

def _validated(settings: Any, allowed: dict[str, Any], what: str) -> dict:
    """A settings object against its whitelist: only known parameters, each of its type."""
    if not isinstance(settings, dict):
        raise ValueError(f"{what} settings are not an object")
    out = {}
    for key, value in settings.items():
        kind = allowed.get(key)
        if kind is None:
            raise ValueError(f"{what} setting {key!r} is not one the panel may set")
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is str:
            ok = isinstance(value, str) and value != ""
        else:
            ok = value in kind
        if not ok:
            raise ValueError(f"{what} setting {key}={value!r} is not valid")
        out[key] = value
    return out


_OWA_PENDING = """
SELECT p.id, p.name, p.settings, p.exchange_server_id FROM exchange_owa_policies p
JOIN exchange_servers s ON s.id = p.exchange_server_id AND s.enabled
WHERE p.status = 'pending' ORDER BY p.exchange_server_id, p.id LIMIT %s
"""

_OWA_OUTCOMES = """
UPDATE exchange_owa_policies p SET status = u.status, exchange_guid = coalesce(u.guid, p.exchange_guid),
       created_on_exchange_at = CASE WHEN u.status = 'created' THEN %(at)s ELSE p.created_on_exchange_at END,
       last_error = u.error
FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(guids)s::uuid[], %(errors)s::text[]) AS u(id, status, guid, error)
WHERE p.id = u.id AND p.status = 'pending'
"""


def _write_owa_outcomes(conn, outcomes: list[tuple], at) -> None:
    if outcomes:
        ids, statuses, guids, errors = map(list, zip(*outcomes))
        conn.execute(_OWA_OUTCOMES, {"at": at, "ids": ids, "statuses": statuses, "guids": guids, "errors": errors})


def create_pending_owa_policies(panel_db, interval, params, log) -> dict:
    """Creates pending OWA policies."""
    params = params or {}
    report = StepReport()
    for key in ("pending", "created", "already_existed", "failed"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        pending = conn.execute(_OWA_PENDING, (int(params.get("owa_policies_per_run", OWA_POLICIES_PER_RUN)),)).fetchall()
        report.add("pending", len(pending))
        by_server = defaultdict(list)
        for row in pending:
            by_server[row[3]].append(row)

        def work(server: Server, hook: PowerShellHook) -> None:
            outcomes: list[tuple] = []
            try:
                for policy_id, name, settings, _ in by_server[server.id]:
                    try:
                        values = _validated(settings, OWA_POLICY_SETTINGS, f"OWA policy {name}")
                    except ValueError as exc:
                        outcomes.append((policy_id, "failed", None, str(exc)))
                        report.add("failed")
                        report.skip(str(exc), f"OWA policy {name}")
                        continue
                    state, error = _apply_one(hook, OwaPolicyState, "exchange/new_owa_mailbox_policy",
                                              {"Name": name, **values})
                    if error is not None:
                        outcomes.append((policy_id, "failed", None, error))
                        report.add("failed")
                        report.skip(error.splitlines()[0][:300], f"OWA policy {name}")
                        continue
                    outcomes.append((policy_id, "created", state.Guid, None))
                    report.add("created" if state.Created else "already_existed")
            finally:   # what was done before a timeout is kept
                _write_owa_outcomes(conn, outcomes, interval.end)

        _each_server(_servers(conn, by_server), report, log, work)
    return report.as_dict()


# -- 3. OWA policy assignment ----------------------------------------------------------------------------------

_OWA_DUE = """
SELECT m.exchange_server_id, p.name, m.id, coalesce(m.exchange_guid::text, m.primary_smtp_address)
FROM exchange_mailboxes m
JOIN exchange_owa_policies p ON p.id = m.owa_policy_id AND p.status = 'created'
                              AND p.exchange_server_id = m.exchange_server_id
JOIN exchange_servers s ON s.id = m.exchange_server_id AND s.enabled
WHERE m.status IN ('active', 'disabled') AND m.owa_policy_applied IS DISTINCT FROM p.name
ORDER BY m.exchange_server_id, p.name, m.id
LIMIT %s
"""

_OWA_WAITING = """
SELECT count(*) FROM exchange_mailboxes m JOIN exchange_owa_policies p ON p.id = m.owa_policy_id
WHERE m.status IN ('active', 'disabled') AND m.owa_policy_applied IS DISTINCT FROM p.name
  AND (p.status <> 'created' OR p.exchange_server_id <> m.exchange_server_id)
"""

_OWA_APPLIED = """
UPDATE exchange_mailboxes m SET owa_policy_applied = u.policy, owa_policy_applied_at = %(at)s
FROM unnest(%(ids)s::bigint[], %(policies)s::text[]) AS u(id, policy) WHERE m.id = u.id
"""


def assign_owa_policies(panel_db, interval, params, log) -> dict:
    """Assigns OWA policies to mailboxes."""
    params = params or {}
    batch = max(1, int(params.get("owa_assign_batch", OWA_ASSIGN_BATCH)))
    report = StepReport()
    for key in ("due", "assigned", "failed", "waiting_for_policy", "calls"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = conn.execute(_OWA_DUE, (int(params.get("owa_assign_per_run", OWA_ASSIGN_PER_RUN)),)).fetchall()
        report.add("due", len(due))
        report.add("waiting_for_policy", conn.execute(_OWA_WAITING).fetchone()[0])
        work_by_server: dict[int, dict[str, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
        for server_id, policy, mailbox_id, identity in due:
            work_by_server[server_id][policy].append((mailbox_id, identity))

        def work(server: Server, hook: PowerShellHook) -> None:
            for policy, mailboxes in work_by_server[server.id].items():
                for start in range(0, len(mailboxes), batch):
                    chunk = mailboxes[start:start + batch]
                    report.add("calls")
                    rows, error = _run_item(hook, "exchange/set_cas_mailbox_owa_policy",
                                            {"Identity": [identity for _, identity in chunk], "OwaMailboxPolicy": policy})
                    if error is not None:      # the policy itself was refused: the whole batch waits
                        report.add("failed", len(chunk))
                        report.skip(error.splitlines()[0][:300], f"OWA policy {policy} on {server.name}")
                        continue
                    by_identity = {identity.lower(): mailbox_id for mailbox_id, identity in chunk}
                    applied_ids, applied_names = [], []
                    for item in parse_records(OwaAssignment, rows, report, "OWA assignment"):
                        mailbox_id = by_identity.get(item.Identity.lower())
                        if mailbox_id is None:
                            report.skip("Exchange answered for a mailbox not asked for", f"mailbox {item.Identity}")
                        elif item.Error or not item.OwaMailboxPolicy:
                            report.add("failed")
                            report.skip((item.Error or "no policy reported").splitlines()[0][:300], f"mailbox {item.Identity}")
                        else:
                            applied_ids.append(mailbox_id)
                            applied_names.append(item.OwaMailboxPolicy)
                    if applied_ids:
                        conn.execute(_OWA_APPLIED, {"at": interval.end, "ids": applied_ids, "policies": applied_names})
                        report.add("assigned", len(applied_ids))

        _each_server(_servers(conn, work_by_server), report, log, work)
    return report.as_dict()


# -- 4. smart-host send connectors -----------------------------------------------------------------------------

def _smart_host(value: str) -> str:
    """Exchange writes an IP smart host in brackets (``[10.0.0.25]``) and a name as is."""
    text = value.strip().strip("[]")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text.lower()
    return f"[{text}]"


def _address_space(value: str) -> str:
    """``*`` / ``contoso.com`` / ``SMTP:*`` → Exchange's ``SMTP:*;1`` (type, space, cost)."""
    text = value.strip()
    kind, _, rest = text.rpartition(":") if ":" in text else ("SMTP", "", text)
    space, _, cost = rest.partition(";")
    return f"{kind.upper()}:{space.lower()};{cost or '1'}"


_CONNECTORS_OBSERVED = """
WITH seen AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(name text, guid uuid, enabled boolean, smart_hosts text[],
        address_spaces text[], port integer, dns_routing_enabled boolean, auth text)
), upserted AS (
    INSERT INTO exchange_send_connectors AS c (exchange_server_id, name, present, exchange_guid, smart_hosts,
        address_spaces, enabled, port, dns_routing_enabled, smart_host_auth_mechanism, synced_at)
    SELECT %(server)s, name, true, guid, smart_hosts, address_spaces, enabled, port, dns_routing_enabled, auth, %(at)s
    FROM seen
    ON CONFLICT (exchange_server_id, name) DO UPDATE SET present = true, exchange_guid = EXCLUDED.exchange_guid,
        smart_hosts = EXCLUDED.smart_hosts, address_spaces = EXCLUDED.address_spaces, enabled = EXCLUDED.enabled,
        port = EXCLUDED.port, dns_routing_enabled = EXCLUDED.dns_routing_enabled,
        smart_host_auth_mechanism = EXCLUDED.smart_host_auth_mechanism, synced_at = EXCLUDED.synced_at
    RETURNING (xmax = 0) AS inserted
), gone AS (
    UPDATE exchange_send_connectors c SET present = false, synced_at = %(at)s
    WHERE c.exchange_server_id = %(server)s AND c.managed AND c.present
      AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.name = c.name)
    RETURNING 1
), dropped AS (
    DELETE FROM exchange_send_connectors c
    WHERE c.exchange_server_id = %(server)s AND NOT c.managed AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.name = c.name)
    RETURNING 1
)
SELECT (SELECT count(*) FILTER (WHERE inserted) FROM upserted), (SELECT count(*) FROM upserted),
       (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)
"""

_CONNECTORS_MANAGED = """
SELECT id, name, desired_smart_hosts, desired_address_spaces, desired_enabled, desired_port, source_transport_servers,
       present, exchange_guid::text, smart_hosts, address_spaces, enabled, port
FROM exchange_send_connectors WHERE exchange_server_id = %s AND managed ORDER BY id
"""

_CONNECTOR_OUTCOMES = """
UPDATE exchange_send_connectors c SET status = r.status, last_error = r.error, synced_at = %(at)s,
    present = coalesce(r.present, c.present), exchange_guid = coalesce(r.guid, c.exchange_guid),
    smart_hosts = coalesce(r.smart_hosts, c.smart_hosts), address_spaces = coalesce(r.address_spaces, c.address_spaces),
    enabled = coalesce(r.enabled, c.enabled), port = coalesce(r.port, c.port),
    dns_routing_enabled = coalesce(r.dns_routing_enabled, c.dns_routing_enabled),
    smart_host_auth_mechanism = coalesce(r.auth, c.smart_host_auth_mechanism)
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id bigint, status text, error text, present boolean, guid uuid,
    smart_hosts text[], address_spaces text[], enabled boolean, port integer, dns_routing_enabled boolean, auth text)
WHERE c.id = r.id
"""


def _connector_row(state: SendConnectorState) -> dict:
    return {"name": state.Name, "guid": str(state.Guid), "enabled": state.Enabled, "smart_hosts": state.SmartHosts,
            "address_spaces": state.AddressSpaces, "port": state.Port, "dns_routing_enabled": state.DNSRoutingEnabled,
            "auth": state.SmartHostAuthMechanism}


def sync_smart_host_send_connectors(panel_db, interval, params, log) -> dict:
    """Sync smart host send connectors."""
    from psycopg.types.json import Jsonb

    report = StepReport()
    for key in ("observed", "new_on_exchange", "gone_from_exchange", "dropped", "created", "updated", "in_sync", "failed"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(server: Server, hook: PowerShellHook) -> None:
            observed = parse_records(SendConnectorState, hook.run_script("exchange/get_send_connectors"), report,
                                     "send connector")
            new, seen, gone, dropped = conn.execute(_CONNECTORS_OBSERVED, {
                "server": server.id, "at": interval.end, "rows": Jsonb([_connector_row(c) for c in observed])}).fetchone()
            report.add("observed", seen)
            report.add("new_on_exchange", new)
            report.add("gone_from_exchange", gone)
            report.add("dropped", dropped)
            outcomes: list[dict] = []
            try:
                for (cid, name, hosts, spaces, want_enabled, want_port, sources, present, guid, have_hosts,
                     have_spaces, have_enabled, have_port) in conn.execute(_CONNECTORS_MANAGED, (server.id,)).fetchall():
                    want_hosts = sorted({_smart_host(h) for h in hosts or []})
                    want_spaces = sorted({_address_space(s) for s in spaces or []})
                    same = (present and want_enabled == have_enabled and want_port == have_port
                            and want_hosts == sorted({_smart_host(h) for h in have_hosts or []})
                            and want_spaces == sorted({_address_space(s) for s in have_spaces or []}))
                    if same:
                        outcomes.append({"id": cid, "status": "in_sync", "error": None})
                        report.add("in_sync")
                        continue
                    if present:
                        script, parameters = "exchange/set_send_connector", {
                            "Identity": guid or name, "SmartHosts": want_hosts, "AddressSpaces": want_spaces,
                            "Port": want_port, "Enabled": want_enabled}
                    else:
                        script, parameters = "exchange/new_send_connector", {
                            "Name": name, "SmartHosts": want_hosts, "AddressSpaces": want_spaces,
                            "SourceTransportServers": list(sources or [server.name]), "Port": want_port,
                            "Enabled": want_enabled}
                    state, error = _apply_one(hook, SendConnectorState, script, parameters)
                    if error is not None:
                        outcomes.append({"id": cid, "status": "failed", "error": error})
                        report.add("failed")
                        report.skip(error.splitlines()[0][:300], f"send connector {name}")
                        continue
                    outcomes.append({"id": cid, "status": "in_sync", "error": None, "present": True,
                                     **_connector_row(state)})
                    report.add("updated" if present else "created")
            finally:
                if outcomes:
                    conn.execute(_CONNECTOR_OUTCOMES, {"at": interval.end, "rows": Jsonb(outcomes)})

        _each_server(_servers(conn), report, log, work)
    return report.as_dict()


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
  delete_mailbox → ``recycle_bin`` (``deleted_at`` = the job's finish when not set); any other action
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
    report = StepReport()
    for key in ("corrected", "waiting_for_job", "without_job"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        changed = conn.execute(_CORRECT_STATUSES, {"at": interval.end}).fetchall()
        waiting, without = conn.execute(_PENDING_LEFT).fetchone()
    report.add("corrected", len(changed))
    report.add("waiting_for_job", waiting)
    report.add("without_job", without)
    for mailbox_id, job_id, action, job_status, new_status in changed:
        report.add(f"to_{new_status}")
        if log is not None:
            log.info("mailbox %s: %s after job %s (%s %s)", mailbox_id, new_status, job_id, action, job_status)
    return report.as_dict()


# -- 6. per-organisation spam filtering ------------------------------------------------------------------------

_SPAM_DUE = """
SELECT f.organization_id, o.name, o.accepted_domains, o.exchange_server_id, f.status,
       f.scl_delete_threshold, f.scl_reject_threshold, f.scl_quarantine_threshold, f.scl_junk_threshold,
       f.allowed_senders, f.blocked_senders, f.allowed_domains, f.blocked_domains
FROM exchange_spam_filter_settings f
JOIN exchange_organizations o ON o.id = f.organization_id
JOIN exchange_servers s ON s.id = o.exchange_server_id AND s.enabled
WHERE f.status = 'pending'
   OR (f.status = 'applied' AND EXISTS (SELECT 1 FROM exchange_mailboxes m WHERE m.organization_id = f.organization_id
                                        AND m.status IN ('active', 'disabled') AND m.spam_settings_applied_at IS NULL))
ORDER BY o.exchange_server_id, f.organization_id
LIMIT %s
"""

# settings changed: every mailbox of the organisation needs the new thresholds
_SPAM_RESET = """
UPDATE exchange_mailboxes SET spam_settings_applied_at = NULL
WHERE organization_id = ANY(%s::bigint[]) AND spam_settings_applied_at IS NOT NULL
"""

_SPAM_MAILBOXES = """
SELECT id, coalesce(exchange_guid::text, primary_smtp_address) FROM exchange_mailboxes
WHERE organization_id = %s AND status IN ('active', 'disabled') AND spam_settings_applied_at IS NULL
ORDER BY id LIMIT %s
"""

_SPAM_APPLIED = """
WITH settings AS (
    UPDATE exchange_spam_filter_settings SET status = 'applied', applied_at = %(at)s, applied_rules = %(rules)s,
           last_error = NULL
    WHERE organization_id = %(org)s
)
UPDATE exchange_mailboxes SET spam_settings_applied_at = %(at)s WHERE id = ANY(%(mailboxes)s::bigint[])
"""


def _threshold(value: int | None) -> int:
    return -1 if value is None else int(value)


def handle_oss_spam_filters(panel_db, interval, params, log) -> dict:
    """OSS Spam filters handling."""
    from psycopg.types.json import Jsonb

    params = params or {}
    per_call = max(1, int(params.get("spam_mailboxes_per_call", SPAM_MAILBOXES_PER_CALL)))
    report = StepReport()
    for key in ("due", "applied", "failed", "mailboxes_updated", "rules_removed"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = conn.execute(_SPAM_DUE, (int(params.get("spam_organizations_per_run", SPAM_ORGANIZATIONS_PER_RUN)),)).fetchall()
        report.add("due", len(due))
        conn.execute(_SPAM_RESET, ([row[0] for row in due if row[4] == "pending"],))
        by_server = defaultdict(list)
        for row in due:
            by_server[row[3]].append(row)

        def fail(org_id: int, name: str, error: str) -> None:
            conn.execute("UPDATE exchange_spam_filter_settings SET status = 'failed', last_error = %s"
                         " WHERE organization_id = %s", (error, org_id))
            report.add("failed")
            report.skip(error.splitlines()[0][:300], f"organisation {name}")

        def work(server: Server, hook: PowerShellHook) -> None:
            for (org_id, name, domains, _, _, delete, reject, quarantine, junk,
                 allowed_senders, blocked_senders, allowed_domains, blocked_domains) in by_server[server.id]:
                if not domains:
                    fail(org_id, name, "the organisation has no accepted domains to scope its spam rules to")
                    continue
                mailboxes = conn.execute(_SPAM_MAILBOXES, (org_id, per_call)).fetchall()
                state, error = _apply_one(hook, SpamFilterState, "exchange/set_organization_spam_filter", {
                    "RuleNamePrefix": f"panelflow spam {name}", "RecipientDomains": list(domains),
                    "AllowedSenders": list(allowed_senders), "BlockedSenders": list(blocked_senders),
                    "AllowedDomains": list(allowed_domains), "BlockedDomains": list(blocked_domains),
                    "Mailboxes": [identity for _, identity in mailboxes],
                    "SCLDeleteThreshold": _threshold(delete), "SCLRejectThreshold": _threshold(reject),
                    "SCLQuarantineThreshold": _threshold(quarantine), "SCLJunkThreshold": _threshold(junk),
                    "Confirm": False})
                if error is not None:
                    fail(org_id, name, error)
                    continue
                conn.execute(_SPAM_APPLIED, {"at": interval.end, "org": org_id,
                                             "rules": Jsonb([r.model_dump() for r in state.Rules]),
                                             "mailboxes": [mailbox_id for mailbox_id, _ in mailboxes]})
                report.add("applied")
                report.add("mailboxes_updated", state.MailboxesUpdated)
                report.add("rules_removed", len(state.RemovedRules))

        _each_server(_servers(conn, by_server), report, log, work)
    return report.as_dict()


# -- 7. the recycle bin ----------------------------------------------------------------------------------------

_RECYCLE_DUE = """
SELECT m.exchange_server_id, m.id, m.exchange_guid::text, m.database, m.primary_smtp_address
FROM exchange_mailboxes m JOIN exchange_servers s ON s.id = m.exchange_server_id AND s.enabled
WHERE m.status = 'recycle_bin' AND m.deleted_at <= %s
ORDER BY m.deleted_at, m.id
LIMIT %s
"""

_PURGED = """
UPDATE exchange_mailboxes SET status = 'deleted', purged_at = %(at)s, status_changed_at = %(at)s, last_error = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'recycle_bin'
"""


def purge_recycle_bin_mailboxes(panel_db, interval, params, log) -> dict:
    """Delete Mailbox permanent from recycle bin."""
    params = params or {}
    cutoff = interval.end - timedelta(days=int(params.get("mailbox_recycle_days", RECYCLE_DAYS)))
    report = StepReport()
    for key in ("due", "purged", "already_purged", "failed"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = conn.execute(_RECYCLE_DUE, (cutoff, int(params.get("recycle_purge_batch", RECYCLE_PURGE_BATCH)))).fetchall()
        report.add("due", len(due))
        by_server = defaultdict(list)
        for row in due:
            by_server[row[0]].append(row)

        def work(server: Server, hook: PowerShellHook) -> None:
            mailboxes = by_server[server.id]
            databases = sorted({db for _, _, _, db, _ in mailboxes if db})
            all_databases = any(db is None for _, _, guid, db, _ in mailboxes if guid)
            disconnected = {d.MailboxGuid: d for d in parse_records(
                DisconnectedMailbox, hook.run_script("exchange/get_recycle_bin_mailboxes",
                                                     {"Database": [] if all_databases else databases}),
                report, "disconnected mailbox")}
            purged: list[int] = []
            try:
                for _, mailbox_id, guid, _, address in mailboxes:
                    found = disconnected.get(UUID(guid)) if guid else None
                    if found is None:      # never created, purged by hand, or the database's retention ended
                        purged.append(mailbox_id)
                        report.add("already_purged")
                        continue
                    _, error = _run_item(hook, "exchange/remove_store_mailbox", {
                        "Identity": str(found.MailboxGuid), "Database": found.Database,
                        "MailboxState": found.DisconnectReason, "Confirm": False})
                    if error is not None:
                        conn.execute("UPDATE exchange_mailboxes SET last_error = %s WHERE id = %s", (error, mailbox_id))
                        report.add("failed")
                        report.skip(error.splitlines()[0][:300], f"mailbox {address}")
                        continue
                    purged.append(mailbox_id)
                    report.add("purged")
            finally:
                if purged:
                    conn.execute(_PURGED, {"at": interval.end, "ids": purged})

        _each_server(_servers(conn, by_server), report, log, work)
    return report.as_dict()


# -- 8. remote domains -----------------------------------------------------------------------------------------

_DOMAINS_OBSERVED = """
WITH seen AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(name text, domain_name text, guid uuid, is_internal boolean,
                                                          settings jsonb)
), upserted AS (
    INSERT INTO exchange_remote_domains AS d (exchange_server_id, name, domain_name, present, exchange_guid, is_internal,
                                              settings, synced_at)
    SELECT %(server)s, name, domain_name, true, guid, is_internal, settings, %(at)s FROM seen
    ON CONFLICT (exchange_server_id, lower(domain_name)) DO UPDATE SET present = true,
        name = CASE WHEN d.managed THEN d.name ELSE EXCLUDED.name END, exchange_guid = EXCLUDED.exchange_guid,
        is_internal = EXCLUDED.is_internal, settings = EXCLUDED.settings, synced_at = EXCLUDED.synced_at
    RETURNING (xmax = 0) AS inserted
), gone AS (
    UPDATE exchange_remote_domains d SET present = false, synced_at = %(at)s
    WHERE d.exchange_server_id = %(server)s AND d.managed AND d.present
      AND NOT EXISTS (SELECT 1 FROM seen WHERE lower(seen.domain_name) = lower(d.domain_name))
    RETURNING 1
), dropped AS (
    DELETE FROM exchange_remote_domains d
    WHERE d.exchange_server_id = %(server)s AND NOT d.managed
      AND NOT EXISTS (SELECT 1 FROM seen WHERE lower(seen.domain_name) = lower(d.domain_name))
    RETURNING 1
)
SELECT (SELECT count(*) FILTER (WHERE inserted) FROM upserted), (SELECT count(*) FROM upserted),
       (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)
"""

_DOMAINS_MANAGED = """
SELECT id, name, domain_name, desired_settings, present, exchange_guid::text, settings
FROM exchange_remote_domains WHERE exchange_server_id = %s AND managed ORDER BY id
"""

_DOMAIN_OUTCOMES = """
UPDATE exchange_remote_domains d SET status = r.status, last_error = r.error, synced_at = %(at)s,
    present = coalesce(r.present, d.present), exchange_guid = coalesce(r.guid, d.exchange_guid),
    is_internal = coalesce(r.is_internal, d.is_internal), settings = coalesce(r.settings, d.settings)
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id bigint, status text, error text, present boolean, guid uuid,
                                             is_internal boolean, settings jsonb)
WHERE d.id = r.id
"""


def _same_setting(want: Any, have: Any) -> bool:
    if isinstance(want, str) and isinstance(have, str):
        return want.lower() == have.lower()
    return want == have


def sync_external_remote_domains(panel_db, interval, params, log) -> dict:
    """Sync external remote domains."""
    from psycopg.types.json import Jsonb

    report = StepReport()
    for key in ("observed", "new_on_exchange", "gone_from_exchange", "dropped", "created", "updated", "in_sync", "failed"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def row_of(state: RemoteDomainState) -> dict:
            return {"name": state.Name, "domain_name": state.DomainName, "guid": str(state.Guid),
                    "is_internal": state.IsInternal, "settings": state.settings()}

        def work(server: Server, hook: PowerShellHook) -> None:
            observed = parse_records(RemoteDomainState, hook.run_script("exchange/get_remote_domains"), report,
                                     "remote domain")
            new, seen, gone, dropped = conn.execute(_DOMAINS_OBSERVED, {
                "server": server.id, "at": interval.end, "rows": Jsonb([row_of(d) for d in observed])}).fetchone()
            report.add("observed", seen)
            report.add("new_on_exchange", new)
            report.add("gone_from_exchange", gone)
            report.add("dropped", dropped)
            outcomes: list[dict] = []
            try:
                for cid, name, domain, desired, present, guid, have in conn.execute(_DOMAINS_MANAGED, (server.id,)).fetchall():
                    try:
                        want = _validated(desired, REMOTE_DOMAIN_SETTINGS, f"remote domain {domain}")
                    except ValueError as exc:
                        outcomes.append({"id": cid, "status": "failed", "error": str(exc)})
                        report.add("failed")
                        report.skip(str(exc), f"remote domain {domain}")
                        continue
                    have = have or {}
                    if present and all(_same_setting(v, have.get(k)) for k, v in want.items()):
                        outcomes.append({"id": cid, "status": "in_sync", "error": None})
                        report.add("in_sync")
                        continue
                    if present:
                        script, parameters = "exchange/set_remote_domain", {"Identity": guid, **want}
                    else:
                        script, parameters = "exchange/new_remote_domain", {"Name": name, "DomainName": domain, **want}
                    state, error = _apply_one(hook, RemoteDomainState, script, parameters)
                    if error is not None:
                        outcomes.append({"id": cid, "status": "failed", "error": error})
                        report.add("failed")
                        report.skip(error.splitlines()[0][:300], f"remote domain {domain}")
                        continue
                    outcomes.append({"id": cid, "status": "in_sync", "error": None, "present": True,
                                     "guid": str(state.Guid), "is_internal": state.IsInternal,
                                     "settings": state.settings()})
                    report.add("updated" if present else "created")
            finally:
                if outcomes:
                    conn.execute(_DOMAIN_OUTCOMES, {"at": interval.end, "rows": Jsonb(outcomes)})

        _each_server(_servers(conn), report, log, work)
    return report.as_dict()


# -- GroupActionWorkMailBoxPermissions ----------------------------------------------------------------------------

_ORGANIZATIONS = """
SELECT o.id, o.name, o.organizational_unit, o.exchange_server_id FROM exchange_organizations o
JOIN exchange_servers s ON s.id = o.exchange_server_id AND s.enabled ORDER BY o.exchange_server_id, o.id
"""

_ORG_MAILBOXES = """
SELECT id, exchange_guid, lower(primary_smtp_address) FROM exchange_mailboxes
WHERE organization_id = %s AND status IN ('active', 'disabled')
"""

_LEARN_GUIDS = """
UPDATE exchange_mailboxes m SET exchange_guid = u.guid
FROM unnest(%s::bigint[], %s::uuid[]) AS u(id, guid) WHERE m.id = u.id AND m.exchange_guid IS NULL
"""


def _per_organization(panel_db, interval, params, log, report: StepReport, script: str, model,
                      apply: Callable[[Any, list[tuple[int, Any]]], None]) -> None:
    """For each organisation of each enabled server: ``script`` for its OU, its rows matched to the
    panel's mailboxes (by GUID, else primary address), then ``apply(conn, [(mailbox_id, record)])``."""
    params = params or {}
    limit = int(params.get("mailboxes_per_organization", MAILBOXES_PER_ORGANIZATION))
    for key in ("organizations", "reported", "matched", "not_in_panel"):
        report.add(key, 0)
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        organizations = defaultdict(list)
        for org_id, name, ou, server_id in conn.execute(_ORGANIZATIONS).fetchall():
            organizations[server_id].append((org_id, name, ou))

        def work(server: Server, hook: PowerShellHook) -> None:
            for org_id, name, ou in organizations[server.id]:
                records = parse_records(model, hook.run_script(script, {"OrganizationalUnit": ou, "ResultSize": limit}),
                                        report, "mailbox")
                report.add("organizations")
                report.add("reported", len(records))
                by_guid, by_address, without_guid = {}, {}, set()
                for mailbox_id, guid, address in conn.execute(_ORG_MAILBOXES, (org_id,)).fetchall():
                    if guid is None:
                        without_guid.add(mailbox_id)
                    else:
                        by_guid[guid] = mailbox_id
                    by_address[address] = mailbox_id
                matched, learned = [], []
                for record in records:
                    mailbox_id = by_guid.get(record.ExchangeGuid)
                    if mailbox_id is None:
                        mailbox_id = by_address.get(record.PrimarySmtpAddress.lower())
                        if mailbox_id in without_guid:
                            learned.append((mailbox_id, record.ExchangeGuid))
                    if mailbox_id is None:
                        report.add("not_in_panel")
                        continue
                    matched.append((mailbox_id, record))
                with conn.transaction():
                    if learned:
                        conn.execute(_LEARN_GUIDS, ([m for m, _ in learned], [g for _, g in learned]))
                    apply(conn, matched)
                report.add("matched", len(matched))

        _each_server(_servers(conn, organizations), report, log, work)


_PERMISSIONS_REPLACE = """
WITH wanted AS (
    SELECT DISTINCT ON (mailbox_id, permission, lower(trustee), deny) *
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(mailbox_id bigint, permission text, trustee text,
                                                 access_rights text[], is_inherited boolean, deny boolean)
    ORDER BY mailbox_id, permission, lower(trustee), deny
), removed AS (
    DELETE FROM exchange_mailbox_permissions p
    WHERE p.mailbox_id = ANY(%(mailboxes)s::bigint[])
      AND NOT EXISTS (SELECT 1 FROM wanted w WHERE w.mailbox_id = p.mailbox_id AND w.permission = p.permission
                      AND lower(w.trustee) = lower(p.trustee) AND w.deny = p.deny)
    RETURNING 1
), written AS (
    INSERT INTO exchange_mailbox_permissions AS p (mailbox_id, permission, trustee, access_rights, is_inherited, deny,
                                                   synced_at)
    SELECT mailbox_id, permission, trustee, access_rights, is_inherited, deny, %(at)s FROM wanted
    ON CONFLICT (mailbox_id, permission, lower(trustee), deny) DO UPDATE SET trustee = EXCLUDED.trustee,
        access_rights = EXCLUDED.access_rights, is_inherited = EXCLUDED.is_inherited, synced_at = EXCLUDED.synced_at
    WHERE (p.trustee, p.access_rights, p.is_inherited) IS DISTINCT FROM
          (EXCLUDED.trustee, EXCLUDED.access_rights, EXCLUDED.is_inherited)
    RETURNING (xmax = 0) AS inserted
), synced AS (
    UPDATE exchange_mailboxes SET permissions_synced_at = %(at)s WHERE id = ANY(%(mailboxes)s::bigint[])
)
SELECT (SELECT count(*) FILTER (WHERE inserted) FROM written), (SELECT count(*) FROM written),
       (SELECT count(*) FROM removed)
"""


def _permission_rows(mailbox_id: int, record: MailboxPermissions, report: StepReport) -> list[dict]:
    rows = []
    for entry in record.MailboxPermissions:
        if entry.IsInherited or _system_account(entry.User):
            report.add("system_entries_ignored")
            continue
        rows.append({"mailbox_id": mailbox_id, "trustee": entry.User, "access_rights": entry.AccessRights,
                     "permission": "FullAccess" if "FullAccess" in entry.AccessRights else "Other",
                     "is_inherited": False, "deny": entry.Deny})
    for entry in record.SendAs:
        if entry.IsInherited or _system_account(entry.User):
            report.add("system_entries_ignored")
            continue
        rows.append({"mailbox_id": mailbox_id, "permission": "SendAs", "trustee": entry.User,
                     "access_rights": entry.ExtendedRights, "is_inherited": False, "deny": entry.Deny})
    for trustee in record.GrantSendOnBehalfTo:
        rows.append({"mailbox_id": mailbox_id, "permission": "SendOnBehalf", "trustee": trustee,
                     "access_rights": ["SendOnBehalf"], "is_inherited": False, "deny": False})
    return rows


def sync_mailbox_permissions(panel_db, interval, params, log) -> dict:
    """Sync mailbox permissions in database."""
    from psycopg.types.json import Jsonb

    report = StepReport()
    for key in ("added", "changed", "removed", "system_entries_ignored"):
        report.add(key, 0)

    def apply(conn, matched: list[tuple[int, MailboxPermissions]]) -> None:
        if not matched:
            return
        rows = [row for mailbox_id, record in matched for row in _permission_rows(mailbox_id, record, report)]
        added, written, removed = conn.execute(_PERMISSIONS_REPLACE, {
            "rows": Jsonb(rows), "mailboxes": [m for m, _ in matched], "at": interval.end}).fetchone()
        report.add("added", added)
        report.add("changed", written - added)
        report.add("removed", removed)

    _per_organization(panel_db, interval, params, log, report, "exchange/get_mailbox_permissions", MailboxPermissions,
                      apply)
    return report.as_dict()


_FORWARDING = """
WITH reported AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id bigint, smtp text, recipient text, keep boolean)
), before AS (
    SELECT m.id, (m.forwarding_smtp_address IS DISTINCT FROM r.smtp OR m.forwarding_address IS DISTINCT FROM r.recipient
                  OR m.deliver_to_mailbox_and_forward IS DISTINCT FROM r.keep) AS differs
    FROM exchange_mailboxes m JOIN reported r ON r.id = m.id
)
UPDATE exchange_mailboxes m SET forwarding_smtp_address = r.smtp, forwarding_address = r.recipient,
       deliver_to_mailbox_and_forward = r.keep, forwarding_synced_at = %(at)s
FROM reported r JOIN before b ON b.id = r.id
WHERE m.id = r.id
RETURNING b.differs
"""


def sync_mailbox_forwarding(panel_db, interval, params, log) -> dict:
    """Sync mailbox forwarding in database."""
    from psycopg.types.json import Jsonb

    report = StepReport()
    report.add("changed", 0)

    def apply(conn, matched: list[tuple[int, MailboxForwarding]]) -> None:
        if not matched:
            return
        rows = [{"id": mailbox_id, "smtp": r.ForwardingSmtpAddress, "recipient": r.ForwardingAddress,
                 "keep": r.DeliverToMailboxAndForward} for mailbox_id, r in matched]
        differs = conn.execute(_FORWARDING, {"rows": Jsonb(rows), "at": interval.end}).fetchall()
        report.add("changed", sum(1 for (d,) in differs if d))

    _per_organization(panel_db, interval, params, log, report, "exchange/get_mailbox_forwarding", MailboxForwarding,
                      apply)
    return report.as_dict()
