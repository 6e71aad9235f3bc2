"""The Dynamics CRM backend: who the organisations are, how one is reached, and the loop over them.

An organisation that cannot be reached (its connection missing or incomplete, sign-in refused,
throttled through every retry, answering what the Web API does not document) fails alone: it is
named in the summary and its ``crm_organizations.last_error`` says why, the other organisations are
still done, and the step fails only when every organisation failed (:func:`panelflow.step.for_each`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from panelflow.hooks.dynamics import DynamicsError, DynamicsHook
from panelflow.step import EndpointsFailed, StepReport, first_line, for_each


# Microsoft's support users and delegated admins (access modes 3 and 5) are not the customer's users
CUSTOMER_USERS = "accessmode ne 3 and accessmode ne 5"


class CrmOrganizationsFailed(EndpointsFailed):
    """Every CRM organisation the step tried failed: the run fails, so Airflow retries it and alerts."""


class OrganizationMisconfigured(Exception):
    """The organisation's Airflow connection is missing or incomplete: fixable by an operator."""


@dataclass(frozen=True)
class Organization:
    id: int
    url: str
    conn_id: str

    @property
    def name(self) -> str:
        return self.url


_ORGANIZATIONS = """
SELECT id, url, conn_id FROM crm_organizations WHERE enabled {extra} ORDER BY id
"""

_TRIED = """
UPDATE crm_organizations SET tried_at = %(at)s, last_error = %(error)s,
       synced_at = CASE WHEN %(error)s::text IS NULL AND %(complete)s THEN %(at)s ELSE synced_at END
WHERE id = %(id)s
"""


def organizations(conn, ids: list[int] | None = None) -> list[Organization]:
    """The enabled organisations (``ids``: only those)."""
    if ids is None:
        rows = conn.execute(_ORGANIZATIONS.format(extra="")).fetchall()
    else:
        rows = conn.execute(_ORGANIZATIONS.format(extra="AND id = ANY(%s)"), (ids,)).fetchall()
    return [Organization(*row) for row in rows]


def open_hook(org: Organization) -> DynamicsHook:
    """The organisation's hook, its connection read now so a missing or incomplete one names itself."""
    from airflow.exceptions import AirflowNotFoundException

    hook = DynamicsHook(org.conn_id, org_url=org.url)
    try:
        hook.get_conn()
    except (AirflowNotFoundException, ValueError) as exc:
        raise OrganizationMisconfigured(f"connection {org.conn_id!r}: {first_line(exc)}") from None
    return hook


def record_try(conn, org: Organization, at, error: str | None, complete: bool = False) -> None:
    conn.execute(_TRIED, {"id": org.id, "at": at, "error": error, "complete": complete})


def each_organization(conn, at, report: StepReport, log, work: Callable[[Organization, DynamicsHook], Any], *,
                      what: str, record_success: bool = False) -> None:
    """``work(org, hook)`` for every enabled organisation under the one failure rule; each try is
    recorded on the organisation (``record_success``: a full pull also moves ``synced_at``)."""
    def attempt(org: Organization):
        hook = open_hook(org)
        try:
            result = work(org, hook)
        finally:
            hook.close()
        record_try(conn, org, at, None, complete=record_success)
        return result

    def failed(org: Organization, exc: BaseException, why: str) -> None:
        record_try(conn, org, at, why[:1000])

    for_each(organizations(conn), attempt, report=report, kind="organization", log=log,
             expected=(DynamicsError, OrganizationMisconfigured), on_failure=failed,
             everything_failed=CrmOrganizationsFailed, what=f"CRM organisation ({what})",
             reason=lambda exc: first_line(exc) if isinstance(exc, (DynamicsError, OrganizationMisconfigured))
             else None)
