"""The SIP platform backend: who the platforms are, how one is reached, and the loop over them.

Every platform is a ``sip_platforms`` row (0022) naming the Airflow connection of
:class:`panelflow.hooks.sip_platform.SipPlatformHook`. A platform that cannot be reached, refuses,
or whose connection is missing fails alone (:func:`panelflow.step.for_each`): it is named in the
summary and the other platforms are still done; the step fails only when every platform failed.
No platform at all is not a failure — a panel without SIP (``make run``'s demo data) gets a summary
saying so, so the voice threads stay green there.

The bundle period is the calendar month in the thread's time zone; :data:`PERIODS` is the SQL
both bundle counters (GroupActionWorkLync 2, ProvisioningWork 15) share, so they agree on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from panelflow.step import EndpointsFailed, Outcome, StepReport, for_each

NO_PLATFORM = "no SIP platform configured"
# Calls of a period's last hours arrive (are imported) after it ended: for this long into a new
# period, the previous one is counted again so they still count for it.
LATE_RECORDS = timedelta(days=1)


class ImplausibleAnswer(Exception):
    """A platform answered something the panel will not act on (no companies at all while the panel
    has some there): that platform fails this run, nothing is changed from its answer."""


class SipPlatformsFailed(EndpointsFailed):
    """Every SIP platform the step tried failed: the run fails, so Airflow retries it and alerts."""


@dataclass(frozen=True)
class Platform:
    id: int
    name: str
    conn_id: str

    def hook(self):
        from panelflow.hooks.sip_platform import SipPlatformHook

        return SipPlatformHook(sip_platform_conn_id=self.conn_id)


_PLATFORM = "SELECT id, name, conn_id"


def platforms(conn) -> list[Platform]:
    """The enabled platforms, by id."""
    return [Platform(*r) for r in conn.execute(_PLATFORM + " FROM sip_platforms WHERE enabled ORDER BY id")]


def platform_named(conn, name: str) -> tuple[Platform, bool] | None:
    """The platform called ``name`` and whether it is enabled; None when there is none."""
    row = conn.execute(_PLATFORM + ", enabled FROM sip_platforms WHERE name = %s", (name,)).fetchone()
    return None if row is None else (Platform(*row[:3]), row[3])


# VoiceSyncWork reads a platform and then writes what it read; a SIP job writes the platform and
# then the panel. A job between the two would be undone by the sync (a subscriber just created,
# marked gone), so a job holds this lock shared and the sync exclusively, per platform, each for its
# transaction: jobs run side by side, the sync waits for those in flight and they wait for it.
_PLATFORM_LOCK = "SELECT pg_advisory_xact_lock{mode}(%s, %s::integer)"
_LOCK_NAMESPACE = 0x5349_5000   # "SIP\0": no other advisory lock of the panel uses this first key


def lock_platform(conn, platform: Platform, *, shared: bool) -> None:
    """Hold ``platform``'s sync lock until the caller's transaction ends (see above)."""
    conn.execute(_PLATFORM_LOCK.format(mode="_shared" if shared else ""), (_LOCK_NAMESPACE, platform.id))


def platform_error(exc: BaseException) -> str | None:
    """Why a platform's answer is missing, or None when ``exc`` is ours (a bug) and must propagate."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.sip_platform import SipPlatformError

    if isinstance(exc, (SipPlatformError, ImplausibleAnswer)):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AirflowException):   # the connection is missing or misconfigured
        return f"connection: {type(exc).__name__}: {exc}"
    return None


def nothing_configured(report: StepReport) -> dict:
    summary = report.as_dict()
    summary["note"] = NO_PLATFORM
    return summary


def for_each_platform(conn, report: StepReport, log, work: Callable[[Platform], Any]) -> Outcome | None:
    """``work(platform)`` on each enabled platform under the one failure rule; None when there is none."""
    targets = platforms(conn)
    if not targets:
        return None
    outcome = for_each(targets, work, report=report, kind="platform", reason=platform_error, log=log,
                       everything_failed=SipPlatformsFailed, what="SIP platform")
    report.add("platforms_done", len(outcome.answered))
    return outcome


def summary(report: StepReport, outcome: Outcome | None) -> dict:
    """The step's summary: the report, the failed platforms, or the note that there is none."""
    if outcome is None:
        return nothing_configured(report)
    result = report.as_dict()
    result["failed_platforms"] = outcome.failed
    return result


def clock_params(interval, **extra) -> dict:
    """The parameters every period query takes: the run's clock, its time zone, the late margin."""
    return {"clock": interval.end, "tz": interval.tz, "late": LATE_RECORDS, **extra}


# The bundle periods a run counts: the calendar month of its clock, and the month before while
# its late records may still arrive. A period is counted up to the clock (a rerun counts the same).
PERIODS = """
periods AS (
    SELECT DISTINCT date_trunc('month', t AT TIME ZONE %(tz)s)::date AS period_start
    FROM unnest(ARRAY[%(clock)s::timestamptz, %(clock)s::timestamptz - %(late)s::interval]) t
), spans AS (
    SELECT period_start, (period_start + interval '1 month')::date AS period_end,
           period_start::timestamp AT TIME ZONE %(tz)s AS start_ts,
           least((period_start + interval '1 month')::timestamp AT TIME ZONE %(tz)s, %(clock)s::timestamptz) AS end_ts
    FROM periods
)"""

# The current period only (the month of the clock, up to the clock): live usage.
CURRENT_PERIOD_START = "date_trunc('month', %(clock)s::timestamptz AT TIME ZONE %(tz)s) AT TIME ZONE %(tz)s"

# Minutes as BillingWork rates them: per started minute, unanswered calls (0 s) not counted.
MINUTES = "coalesce(sum(ceil(duration_seconds / 60.0)) FILTER (WHERE duration_seconds > 0), 0)::bigint"
CALLS = "count(*) FILTER (WHERE duration_seconds > 0)"
