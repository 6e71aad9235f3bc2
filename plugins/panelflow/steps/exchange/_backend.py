"""Who the Exchange servers are, what their scripts answer, and the loop over them.

**Servers.** Every Exchange operation is a script of ``include/powershell/exchange/`` run with
:meth:`PowerShellHook.run_script` — values only as PSRP parameters, never in script text — on the
server of an enabled ``exchange_servers`` row (0016; ``conn_id`` names its psrp connection). Each
server is one Exchange organisation's endpoint; a hosted tenant (``exchange_organizations``, 0017)
is an OU in it. A step opens one PowerShell context (one runspace pool) per server it needs, so a
step's scripts on one server share the pool instead of paying a WinRM logon each.

**Failures** follow :func:`panelflow.step.for_each`: a server that cannot be reached, times out,
refuses the credentials, whose connection is missing or whose script fails is named in the summary
(``skipped``) and the other servers are still worked; the step fails (:class:`ExchangeServersFailed`)
only when every server it needed failed. Each server's rows are written after its answers are in,
so no transaction stays open while PowerShell runs.

**Records.** Script output is validated into pydantic models
(:func:`~panelflow.hooks.powershell.parse_records`): a malformed record is reported and skipped,
the server's other records are used.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from panelflow.hooks.powershell import (PowerShellError, PowerShellHook, PowerShellOutputError, PowerShellScriptError,
                                        byte_count, powershell_session, ps_datetime)
from panelflow.services.group_actions import JobRejected
from panelflow.step import EndpointsFailed, StepReport, for_each

# -- the servers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExchangeServer:
    """An enabled ``exchange_servers`` row; ``server_id`` is its monitored ``servers`` row (0007)
    once linked."""

    id: int
    name: str
    fqdn: str
    conn_id: str
    server_id: int | None


_SERVERS = "SELECT id, name, fqdn, conn_id, server_id FROM exchange_servers WHERE enabled ORDER BY name, id"


def exchange_servers(conn, ids: Iterable[int] | None = None) -> list[ExchangeServer]:
    """The enabled servers; only those of ``ids`` when given (a step asks only servers it has work for)."""
    servers = [ExchangeServer(*row) for row in conn.execute(_SERVERS).fetchall()]
    if ids is not None:
        wanted = set(ids)
        servers = [s for s in servers if s.id in wanted]
    return servers


class ExchangeServersFailed(EndpointsFailed):
    """Every Exchange server a step needed failed: nothing was done (worth Airflow's retry)."""


def _unreachable(exc: BaseException) -> str | None:
    """Why a server's answer is missing, or None when ``exc`` is ours (a bug) and must propagate."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import _is_transport_error

    if isinstance(exc, PowerShellError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, AirflowException):   # the connection is missing or misconfigured
        return f"{type(exc).__name__}: {exc}"
    if _is_transport_error(exc):
        return f"unavailable: {type(exc).__name__}: {exc}"
    return None


def each_server(servers: list[ExchangeServer], report: StepReport, log,
                work: Callable[[ExchangeServer, PowerShellHook], Any], *, count_done: bool = False
                ) -> list[ExchangeServer]:
    """``work(server, hook)`` on each server in its own PowerShell context; the servers that answered.

    ``count_done`` keeps GroupActionWork's ``servers_done`` count in the summary."""
    def in_session(server: ExchangeServer) -> None:
        with powershell_session(server.conn_id, log) as hook:
            work(server, hook)

    answered = for_each(servers, in_session, report=report, kind="server", reason=_unreachable, log=log,
                        everything_failed=ExchangeServersFailed, what="Exchange server").answered
    if count_done:
        report.add("servers_done", len(answered))
    return answered


def run_item(hook: PowerShellHook, script: str, parameters: dict) -> tuple[list | None, str | None]:
    """One per-item call inside a server's work: Exchange refusing the item → (None, its message);
    a transport failure propagates (the server is done for this step)."""
    try:
        return hook.run_script(script, parameters), None
    except (PowerShellScriptError, PowerShellOutputError) as exc:
        return None, str(exc)


def apply_one(hook: PowerShellHook, model, script: str, parameters: dict):
    """:func:`run_item` of a script that prints one ``model`` record → (record, None), or (None, why)
    when Exchange refused the item or the record is malformed."""
    rows, error = run_item(hook, script, parameters)
    if error is not None:
        return None, error
    try:
        return one_record(model, rows, script), None
    except JobRejected as exc:
        return None, str(exc)


def one_record(model, rows: list, script: str):
    """The one record an action script prints (a malformed answer rejects the job: the script broke)."""
    from pydantic import ValidationError

    if len(rows) != 1:
        raise JobRejected(f"{script}: expected one record, got {len(rows)}")
    try:
        return model.model_validate(rows[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobRejected(f"{script}: unexpected output: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def refused(report: StepReport, error: str, record: str, n: int = 1) -> None:
    """An item Exchange refused (or the panel's settings for it were invalid): counted ``failed``, named."""
    report.add("failed", n)
    report.skip(error.splitlines()[0][:300] if error else "refused", record)


def validated_settings(settings: Any, allowed: dict[str, Any], what: str) -> dict:
    """A settings object against its whitelist: only known parameters, each of its type (``bool``,
    ``str`` for any non-empty text, or a tuple of the values allowed)."""
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


def utc_text(at: datetime | None) -> str:
    """A time as a script's ``[datetime]`` parameter takes it (pypsrp cannot send a DateTime), and as
    reports and dedupe keys write it; no time is ``""``."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if at else ""


def as_json(records) -> str:
    return json.dumps(records, default=str)


# -- what the scripts print ------------------------------------------------------------------------------

def _empty_if_none(value):
    return [] if value is None else value


UtcTime = Annotated[datetime | None, BeforeValidator(ps_datetime)]
ByteCount = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(byte_count)]
Texts = Annotated[list[str], BeforeValidator(_empty_if_none)]
"""A list a script may print as ``null`` when it is empty."""
Items = Annotated[list[Any], BeforeValidator(_empty_if_none)]


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ForwardingState(Record):
    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    ForwardingAddress: str | None = None
    ForwardingSmtpAddress: str | None = None
    DeliverToMailboxAndForward: bool = False

    @field_validator("ForwardingSmtpAddress")
    @classmethod
    def _strip_prefix(cls, value):
        return value[5:] if value and value[:5].lower() == "smtp:" else value


class OwaAssignment(Record):
    Identity: str
    OwaMailboxPolicy: str | None = None
    Error: str | None = None


def every_server(panel_db, report: StepReport, log, work: Callable[[Any, PowerShellHook, ExchangeServer], Any]) -> dict:
    """The statistics threads' shape: ``work(conn, hook, server)`` for every enabled server on one
    autocommit panel connection (each server's rows in their own transaction); the summary."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        each_server(exchange_servers(conn), report, log, lambda server, hook: work(conn, hook, server))
    return report.as_dict()


def due_by_server(conn, sql: str, args: tuple, report: StepReport, server_column: int,
                  key: str = "due") -> dict[int, list[tuple]]:
    """The rows of work a step has (``sql``), counted under ``key`` and grouped by the server
    (``server_column``) that must do them, so only those servers are opened."""
    by_server: dict[int, list[tuple]] = defaultdict(list)
    rows = conn.execute(sql, args).fetchall()
    report.add(key, len(rows))
    for row in rows:
        by_server[row[server_column]].append(row)
    return by_server


# -- hosted organisations: the completions' per-tenant loop ---------------------------------------------

class MailboxHome(Record):
    """Where a mailbox lives, as Get-Mailbox names it: what the location sync and the usage report share."""

    ExchangeGuid: UUID
    PrimarySmtpAddress: str
    Database: str | None = None
    DatabaseGuid: UUID | None = None


@dataclass(frozen=True)
class Organization:
    """An ``exchange_organizations`` row: a hosted tenant, its OU and the server its cmdlets run on."""

    exchange_server_id: int
    id: int
    name: str
    organizational_unit: str
    subscription_id: int | None


def each_organization(conn, sql: str, args: tuple, report: StepReport, log,
                      work: Callable[[PowerShellHook, Organization], None]) -> None:
    """``work(hook, organization)`` for the organisations ``sql`` selects (``Organization``'s columns,
    ordered), opening only their servers, one PowerShell session per server; a server that fails is
    skipped under :func:`each_server`'s rule with its organisations."""
    by_server = due_by_server(conn, sql, args, report, 0, key="organizations")

    def per_server(server: ExchangeServer, hook: PowerShellHook) -> None:
        for row in by_server[server.id]:
            work(hook, Organization(*row))

    each_server(exchange_servers(conn, by_server), report, log, per_server)
