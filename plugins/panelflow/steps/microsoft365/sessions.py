"""Office365Work steps 2 and 3: the tenants' token sessions.

2. :func:`clear_powershell_runspaces` — there is no PowerShell here: the legacy step closed idle
   remote PowerShell sessions. What this service keeps per tenant is a token session
   (``m365_tenant_tokens``, 0014, and the hook's in-process token/adapter cache); a tenant not
   used for ``o365_session_idle_minutes`` is closed: its cached token and adapter are dropped and
   its token is no longer renewed until the tenant is used again.
3. :func:`renew_tenant_access_tokens` — every enabled tenant whose session is open (or that has
   none yet) gets a new token through its connection before the recorded one expires; the time,
   expiry, or the error, is recorded per tenant. A failing tenant is named; the others are renewed.
   The step fails only when every due tenant failed and no enabled tenant holds a valid token.

Step 1 (group actions) is in :mod:`.jobs`, which marks a tenant's session used; step 4
(``renew_direct_routing_tokens``, "Renew O365 tenant direct routing and tokens") in
:mod:`.teams_direct_routing`: Teams direct routing has no Graph API, so it runs the MicrosoftTeams
PowerShell module on a Windows host over PowerShell remoting; step 5 (subscription renewals) in
:mod:`.renewals`.

Clock: ``interval.end`` (session idleness, token expiry laid on it by the lifetime the token had
when it was obtained).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from panelflow.step import StepReport

IDLE_MINUTES = 60
RENEW_BEFORE_MINUTES = 15
TOKEN_CONCURRENCY = 4


# -- 2. idle sessions ("PowerShell runspaces") -------------------------------------------------------

_CLOSE_IDLE = """
UPDATE m365_tenant_tokens k SET closed_at = %(at)s, expires_at = NULL
FROM m365_tenants t
WHERE t.tenant_id = k.tenant_id AND k.closed_at IS NULL
  AND (NOT t.enabled OR coalesce(greatest(k.last_used_at, k.renewed_at), '-infinity') <= %(idle)s)
RETURNING k.tenant_id::text, t.conn_id, t.enabled
"""


def clear_powershell_runspaces(panel_db, interval, params) -> dict:
    """Handle/clear PowerShell runspaces — here: close idle tenant sessions and drop their tokens."""
    from panelflow.hooks.microsoft_graph import MicrosoftGraphHook, forget_cached_tokens

    params = params or {}
    at = interval.end
    idle = at - timedelta(minutes=int(params.get("o365_session_idle_minutes", IDLE_MINUTES)))
    report = StepReport().zero("sessions_closed", "disabled_tenants", "cached_tokens_dropped",
                               "cached_adapters_dropped")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        closed = conn.execute(_CLOSE_IDLE, {"at": at, "idle": idle}).fetchall()
    for tenant, conn_id, enabled in closed:
        report.add("sessions_closed")
        if not enabled:
            report.add("disabled_tenants")
        report.add("cached_tokens_dropped", forget_cached_tokens(tenant))
        if MicrosoftGraphHook.cached_request_adapters.pop(conn_id, None) is not None:
            report.add("cached_adapters_dropped")
    out = report.as_dict()
    out["closed_tenants"] = sorted(t for t, _, _ in closed)
    return out


# -- 3. token renewal -----------------------------------------------------------------------------

_DUE = """
SELECT t.tenant_id::text, t.conn_id
FROM m365_tenants t LEFT JOIN m365_tenant_tokens k ON k.tenant_id = t.tenant_id
WHERE t.enabled
  AND (k.tenant_id IS NULL
       OR (k.closed_at IS NULL AND (k.expires_at IS NULL OR k.expires_at <= %(renew_by)s)))
ORDER BY t.tenant_id
"""

_RENEWED = """
INSERT INTO m365_tenant_tokens (tenant_id, renewed_at, expires_at, renewals)
VALUES (%(tenant)s, %(at)s, %(expires)s, 1)
ON CONFLICT (tenant_id) DO UPDATE SET renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at,
    renewals = m365_tenant_tokens.renewals + 1, closed_at = NULL, last_error = NULL, last_error_at = NULL
"""

_RENEW_FAILED = """
INSERT INTO m365_tenant_tokens (tenant_id, last_error, last_error_at) VALUES (%(tenant)s, %(error)s, %(at)s)
ON CONFLICT (tenant_id) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at
"""


async def _renew_all(due: list[tuple[str, str]], concurrency: int) -> list[tuple[str, float | None, str | None]]:
    from panelflow.hooks.microsoft_graph import GraphError, MicrosoftGraphHook

    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(tenant: str, conn_id: str):
        async with gate:
            hook = MicrosoftGraphHook(conn_id)
            try:
                async with hook:
                    token = await hook.renew_token()
                return tenant, max(0.0, float(token.expires_on) - time.time()), None
            except GraphError as exc:
                return tenant, None, str(exc)
            except Exception as exc:  # a connection that does not exist or cannot be read
                return tenant, None, f"{conn_id}: {type(exc).__name__}: {exc}"

    return await asyncio.gather(*(one(t, c) for t, c in due))


def renew_tenant_access_tokens(panel_db, interval, params, log) -> dict:
    """Sync and renew tenant access token."""
    params = params or {}
    at = interval.end
    renew_by = at + timedelta(minutes=int(params.get("o365_token_renew_minutes", RENEW_BEFORE_MINUTES)))
    report = StepReport().zero("due", "renewed", "failed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = conn.execute(_DUE, {"renew_by": renew_by}).fetchall()
        report.add("due", len(due))
        results = asyncio.run(_renew_all(due, int(params.get("tenant_concurrency", TOKEN_CONCURRENCY)))) if due else []
        failed = []
        for tenant, lifetime, error in results:
            if error is None:
                conn.execute(_RENEWED, {"tenant": tenant, "at": at, "expires": at + timedelta(seconds=lifetime)})
                report.add("renewed")
            else:
                conn.execute(_RENEW_FAILED, {"tenant": tenant, "at": at, "error": error[:2000]})
                report.add("failed")
                report.skip(error.splitlines()[0][:300], f"tenant {tenant}")
                failed.append(tenant)
                if log is not None:
                    log.warning("tenant %s: token not renewed: %s", tenant, error)
        valid = conn.execute("SELECT count(*) FROM m365_tenant_tokens k JOIN m365_tenants t USING (tenant_id)"
                             " WHERE t.enabled AND k.expires_at > %s", (at,)).fetchone()[0]
    out = report.as_dict()
    out["failed_tenants"] = failed
    if due and len(failed) == len(due) and not valid:     # an outage, not one broken tenant: be seen
        raise RuntimeError(f"no tenant token could be renewed ({len(failed)} tenants): {out['skipped_examples'][:3]}")
    return out
