"""The Lync / Skype for Business backend: who the pools are, what their scripts print, the loop.

A pool (``lync_pools``, migration 0023) is reached through the psrp connection of one of its Front End
servers; every cmdlet and the CDR query run there (``include/powershell/lync``). Its file store's
share is reached through an Airflow ``samba`` connection. A pool that cannot be reached, refuses the
credentials or whose script fails is named in the summary; the other pools are still worked, and
the step fails only when every pool it tried failed (:func:`panelflow.step.for_each`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from panelflow.step import EndpointsFailed, Outcome, StepReport, for_each

SIP_ADDRESS = re.compile(r"^sip:[^@\s]+@[^@\s]+\.[^@\s]+$")
LINE_URI = re.compile(r"^tel:\+[0-9]{3,15}(;ext=[0-9]+)?$")
EDITIONS = ("Standard", "Enterprise", "Plus")


class LyncPoolsFailed(EndpointsFailed):
    """Every Lync pool the step tried failed: the run fails, so Airflow retries it and alerts."""


@dataclass(frozen=True)
class Pool:
    id: int
    name: str
    fqdn: str
    conn_id: str
    cdr_sql_instance: str | None
    cdr_database: str
    audio_conn_id: str | None
    audio_folder: str | None


_POOL = ("SELECT id, name, fqdn, conn_id, cdr_sql_instance, cdr_database, audio_conn_id, audio_folder"
         " FROM lync_pools")


def pools(conn) -> list[Pool]:
    """The enabled pools, by id."""
    return [Pool(*r) for r in conn.execute(_POOL + " WHERE enabled ORDER BY id").fetchall()]


def pool_named(conn, name: str) -> tuple[Pool, bool] | None:
    """The pool called ``name`` (its panel name or FQDN, in any case) and whether it is enabled."""
    row = conn.execute(_POOL.replace(" FROM", ", enabled FROM")
                       + " WHERE lower(name) = lower(%(n)s) OR lower(fqdn) = lower(%(n)s)", {"n": name}).fetchone()
    return None if row is None else (Pool(*row[:8]), row[8])


def sip_address(value: str) -> str:
    """A SIP address as Lync and the panel key it: ``sip:`` + the address, lower case."""
    text = value.strip()
    if not text.lower().startswith("sip:"):
        text = "sip:" + text
    return text.lower()


def pool_report(*keys: str) -> StepReport:
    return StepReport().zero("pools", "pools_failed", *keys)


def powershell_failure(exc: BaseException) -> str | None:
    """Why a pool failed, when the error is one a pool can give (unreachable, refused, its script
    failed, its connection missing): None for anything else, which is a bug and propagates."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellError

    if isinstance(exc, (PowerShellError, AirflowException)):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return None


def for_each_pool(targets: list, work: Callable[[Any], Any], report: StepReport, log, *,
                  reason: Callable[[BaseException], str | None] = powershell_failure, kind: str = "pool",
                  what: str = "Lync pool") -> Outcome:
    """``work(target)`` per pool (or per ``kind`` of endpoint a pool serves) under :func:`for_each`'s
    one rule; ``reason`` says which errors are the endpoint's (PowerShell and Airflow connection
    errors unless told otherwise)."""
    return for_each(targets, work, report=report, kind=kind, reason=reason, log=log,
                    everything_failed=LyncPoolsFailed, what=what)


# -- records: what the scripts print --------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


class CsUser(_Record):
    """A user as every ``lync`` user script prints it (Get-CsUser after the script's Select-Object)."""

    Identity: str | None = None
    SipAddress: str = Field(min_length=5)
    DisplayName: str | None = None
    Enabled: bool
    EnterpriseVoiceEnabled: bool = False
    LineURI: str | None = None
    VoicePolicy: str | None = None
    ConferencingPolicy: str | None = None
    RegistrarPool: str | None = None
    Changed: list[str] = []

    _blanks = field_validator("Identity", "DisplayName", "LineURI", "VoicePolicy", "ConferencingPolicy",
                              "RegistrarPool", mode="before")(_blank_is_none)

    @field_validator("SipAddress")
    @classmethod
    def _sip(cls, value: str) -> str:
        return sip_address(value)

    @field_validator("Changed", mode="before")
    @classmethod
    def _changed(cls, value: Any) -> Any:   # ConvertTo-Json prints an empty array as {} or null in 5.1
        return [] if value in (None, {}, "") else ([value] if isinstance(value, str) else value)


class PoolUser(_Record):
    """One row of ``get_pool_users``: what decides the user's SPLA edition."""

    SipAddress: str = Field(min_length=5)
    Enabled: bool
    EnterpriseVoiceEnabled: bool = False
    ConferencingPolicy: str | None = None

    _blanks = field_validator("ConferencingPolicy", mode="before")(_blank_is_none)

    @field_validator("SipAddress")
    @classmethod
    def _sip(cls, value: str) -> str:
        return sip_address(value)


def _cdr_time(value: Any) -> Any:
    """LcsCDR's UTC text ('2026-03-02T09:58:12.347') as an aware UTC datetime."""
    if value in (None, ""):
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", ""))
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


class CdrCall(_Record):
    """One row of ``get_cdr_calls``: an outbound PSTN call of LcsCDR (SessionDetails + VoIPDetails)."""

    SessionIdTime: datetime
    SessionIdSeq: int
    CallerUri: str = Field(min_length=3)
    CalleeNumber: str | None = None
    InviteTime: datetime
    ResponseTime: datetime | None = None
    SessionEndTime: datetime
    ResponseCode: int | None = None

    _times = field_validator("SessionIdTime", "InviteTime", "ResponseTime", "SessionEndTime",
                             mode="before")(_cdr_time)
    _blanks = field_validator("CalleeNumber", mode="before")(_blank_is_none)

    @property
    def answered(self) -> bool:
        return self.ResponseCode == 200 and self.ResponseTime is not None

    @property
    def started_at(self) -> datetime:
        return self.ResponseTime if self.answered else self.InviteTime

    @property
    def duration_seconds(self) -> int:
        """Connected seconds (SessionEndTime − ResponseTime) rounded up, so a call that began its next
        minute by a fraction of a second is billed for it (per started minute); 0 when unanswered."""
        if not self.answered:
            return 0
        return max(math.ceil((self.SessionEndTime - self.ResponseTime).total_seconds()), 0)

    @property
    def destination(self) -> str:
        """The E.164 digits of the number called (``tel:`` and ``;ext=`` dropped), "" when none."""
        number = (self.CalleeNumber or "").strip()
        number = number[4:] if number.lower().startswith("tel:") else number
        return re.sub(r"\D", "", number.split(";", 1)[0])
