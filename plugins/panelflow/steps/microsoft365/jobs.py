"""Office365Work step 1, "Process O365/CSP group actions": the ``o365`` group-action queue worked as
real Microsoft Graph calls (through the tenant's ``msgraph`` connection, ``m365_tenants.conn_id``)
or Partner Center calls (through the CSP profile's connection), each job's outcome recorded. A job
that reaches a tenant marks its token session used (``m365_tenant_tokens``, see :mod:`.sessions`).

Jobs (``group_action_jobs``, backend ``o365``). Payload keys per action::

    create_user          tenant_id, user_principal_name, display_name, password,
                         mail_nickname?, usage_location?, account_enabled? (true), force_change? (true)
    assign_licence       tenant_id, user (id or UPN), add? [skuId | {skuId, disabledPlans}], remove? [skuId]
    reset_password       tenant_id, user, password, force_change? (true)
    delete_user          tenant_id, user
    add_group_member     tenant_id, group_id, member (id or UPN)
    remove_group_member  tenant_id, group_id, member
    suspend_subscription subscription_id (the panel's subscriptions.id, as ProvisioningWork queues it)
                         or partner_subscription_id
    resume_subscription  same

Claiming is the shared queue's (:mod:`panelflow.services.group_actions`): one job at a time, up to
``o365_jobs_per_run`` (50) a run, by priority then id, ``FOR UPDATE SKIP LOCKED``, set ``running``
(``attempts`` + 1, ``started_at``) and committed before any call, so two workers never take the
same job. Each job's outcome is committed as soon as it is known:
``succeeded`` with ``result``, ``failed`` with ``error``, or — Graph/Partner Center unavailable or
credentials refused — back to ``pending`` with the error, retried next run until
``o365_job_max_attempts`` (5) attempts, then ``failed``. A password is removed from the payload
once the job is finished (it is kept only while the job may be retried).

Exactly once. A worker killed after its call but before recording leaves the job ``running``; a
later run takes it again once it has been running ``o365_job_stale_minutes`` (30, the thread's
timeout). Every action is therefore written so that doing it twice does it once:

- create_user: the userPrincipalName is the key. The user is looked up by UPN
  (``GET /users/{upn}``) before ``POST /users``; if it exists it is not created again (result
  ``created: false``). A POST whose answer was lost and is resent by the hook gets Graph's "Another
  object with the same value for property userPrincipalName already exists" — the user is then
  read by UPN and the job succeeds with it. (A user someone else created with that UPN is
  indistinguishable and is reported the same way.)
- assign_licence: ``assignLicense`` sets the user's licences to a state — repeating it changes nothing.
- reset_password: a PATCH of ``passwordProfile`` to the job's password — the same password twice.
- delete_user / remove_group_member: a 404 means it is already gone (``already_absent: true``).
- add_group_member: Graph's "One or more added object references already exist" means it is
  already a member (``already_member: true``).
- suspend/resume_subscription: a PATCH of the subscription's ``status`` — idempotent.

Clock: ``interval.end`` is the step's clock (``started_at``, ``finished_at``, staleness, token
expiry laid on it by the lifetime the token had when it was obtained).
"""

from __future__ import annotations


from __future__ import annotations

import asyncio
from urllib.parse import quote

from panelflow.services.group_actions import JobDeferred, JobRejected, Payload

BACKEND = "o365"
JOBS_PER_RUN = 50
MAX_ATTEMPTS = 5
STALE_MINUTES = 30
DIRECTORY_OBJECT = "https://graph.microsoft.com/v1.0/directoryObjects/{}"
GRAPH_ACTIONS = ("create_user", "assign_licence", "reset_password", "delete_user", "add_group_member",
                 "remove_group_member")
PARTNER_ACTIONS = {"suspend_subscription": "suspended", "resume_subscription": "active"}
SECRET_KEYS = ("password",)


_TOUCH_TENANT = """
INSERT INTO m365_tenant_tokens (tenant_id, last_used_at) VALUES (%(tenant)s, %(at)s)
ON CONFLICT (tenant_id) DO UPDATE SET last_used_at = greatest(m365_tenant_tokens.last_used_at, EXCLUDED.last_used_at),
                                      closed_at = NULL
"""

_SUBSCRIPTION = """
SELECT s.subscription_id, c.tenant_id, p.conn_id
FROM o365_subscriptions s JOIN csp_customers c ON c.id = s.csp_customer_id JOIN csp_profiles p ON p.id = c.profile_id
WHERE (%(panel)s::bigint IS NOT NULL AND s.panel_subscription_id = %(panel)s::bigint)
   OR (%(partner)s::text IS NOT NULL AND s.subscription_id = lower(%(partner)s::text))
"""


def _seg(value: str) -> str:
    return quote(value, safe="@")


class _GraphJobs:
    """The Graph side of the queue: one hook per tenant connection, all on one event loop."""

    def __init__(self, conn):
        self.conn = conn
        self.loop = asyncio.new_event_loop()
        self.hooks: dict[str, object] = {}
        self.tenant_used: str | None = None     # the tenant the last job reached (for its session's activity)

    def close(self) -> None:
        async def _close():
            for hook in self.hooks.values():
                await hook.aclose()

        try:
            self.loop.run_until_complete(_close())
        finally:
            self.loop.close()

    def tenant(self, payload: Payload) -> tuple[str, str]:
        tenant = payload.text("tenant_id").lower()
        row = self.conn.execute("SELECT tenant_id::text, conn_id, enabled FROM m365_tenants WHERE tenant_id::text = %s",
                                (tenant,)).fetchone()
        if row is None:
            raise JobRejected(f"tenant {tenant} is not linked (no m365_tenants row)")
        if not row[2]:
            raise JobRejected(f"tenant {tenant} is disabled")
        return row[0], row[1]

    def _hook(self, conn_id: str):
        from panelflow.hooks.microsoft_graph import MicrosoftGraphHook

        hook = self.hooks.get(conn_id)
        if hook is None:
            hook = self.hooks[conn_id] = MicrosoftGraphHook(conn_id)
        return hook

    def run(self, action: str, payload: dict) -> tuple[str, dict]:
        self.tenant_used = None
        payload = Payload(payload)
        tenant, conn_id = self.tenant(payload)
        fresh = conn_id not in self.hooks
        hook = self._hook(conn_id)
        self.tenant_used = tenant

        async def go():
            if fresh:
                await hook.__aenter__()    # forgets an adapter another (ended) loop left cached
            return await getattr(self, action)(hook, payload)

        return tenant, self.loop.run_until_complete(go())

    # each action: idempotent (see the module's doc) → the job's result

    @staticmethod
    async def _user(hook, key: str) -> dict | None:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        try:
            return (await hook.send("GET", f"users/{_seg(key)}?$select=id,userPrincipalName")).body
        except GraphRequestRejected as exc:
            if exc.status == 404:
                return None
            raise

    async def create_user(self, hook, p: Payload) -> dict:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        upn = p.text("user_principal_name")
        if "@" not in upn:
            raise JobRejected(f"user_principal_name {upn!r} has no domain")
        existing = await self._user(hook, upn)
        if existing is not None:
            return {"user_id": existing["id"], "user_principal_name": upn, "created": False}
        body = {"accountEnabled": bool(p.get("account_enabled", True)), "displayName": p.text("display_name"),
                "mailNickname": p.text("mail_nickname", required=False) or upn.split("@", 1)[0],
                "userPrincipalName": upn,
                "passwordProfile": {"password": p.text("password"),
                                    "forceChangePasswordNextSignIn": bool(p.get("force_change", True))}}
        if p.get("usage_location"):
            body["usageLocation"] = p.text("usage_location")
        try:
            created = (await hook.send("POST", "users", body=body)).body or {}
        except GraphRequestRejected as exc:
            if exc.status == 400 and "already exists" in str(exc):
                # our own earlier POST, its answer lost: the user is there, by its UPN
                existing = await self._user(hook, upn)
                if existing is not None:
                    return {"user_id": existing["id"], "user_principal_name": upn, "created": False}
            raise
        if not isinstance(created.get("id"), str):
            raise JobDeferred(f"POST users for {upn}: the answer has no id")
        return {"user_id": created["id"], "user_principal_name": upn, "created": True}

    async def assign_licence(self, hook, p: Payload) -> dict:
        user = p.text("user")
        add = []
        for item in p.get("add") or []:
            if isinstance(item, str):
                add.append({"skuId": item, "disabledPlans": []})
            elif isinstance(item, dict) and isinstance(item.get("skuId"), str):
                add.append({"skuId": item["skuId"], "disabledPlans": list(item.get("disabledPlans") or [])})
            else:
                raise JobRejected(f"add: {item!r} is not a skuId")
        remove = p.get("remove") or []
        if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
            raise JobRejected("remove must be a list of skuIds")
        if not add and not remove:
            raise JobRejected("nothing to add or remove")
        answer = await hook.send("POST", f"users/{_seg(user)}/assignLicense",
                                 body={"addLicenses": add, "removeLicenses": remove})
        body = answer.body or {}
        return {"user_id": body.get("id"), "licences": [lic.get("skuId") for lic in body.get("assignedLicenses") or []]}

    async def reset_password(self, hook, p: Payload) -> dict:
        user = p.text("user")
        await hook.send("PATCH", f"users/{_seg(user)}", body={"passwordProfile": {
            "password": p.text("password"), "forceChangePasswordNextSignIn": bool(p.get("force_change", True))}})
        return {"user": user, "password_reset": True}

    async def delete_user(self, hook, p: Payload) -> dict:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        user = p.text("user")
        try:
            await hook.send("DELETE", f"users/{_seg(user)}")
        except GraphRequestRejected as exc:
            if exc.status == 404:
                return {"user": user, "deleted": False, "already_absent": True}
            raise
        return {"user": user, "deleted": True}

    async def _member_id(self, hook, member: str) -> str:
        if "@" not in member:
            return member
        found = await self._user(hook, member)
        if found is None:
            raise JobRejected(f"no user {member} in the tenant")
        return found["id"]

    async def add_group_member(self, hook, p: Payload) -> dict:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        group = p.text("group_id")
        member = await self._member_id(hook, p.text("member"))
        try:
            await hook.send("POST", f"groups/{_seg(group)}/members/$ref",
                            body={"@odata.id": DIRECTORY_OBJECT.format(member)})
        except GraphRequestRejected as exc:
            if exc.status == 400 and "already exist" in str(exc):
                return {"group_id": group, "member_id": member, "added": False, "already_member": True}
            raise
        return {"group_id": group, "member_id": member, "added": True}

    async def remove_group_member(self, hook, p: Payload) -> dict:
        from panelflow.hooks.microsoft_graph import GraphRequestRejected

        group = p.text("group_id")
        member = await self._member_id(hook, p.text("member"))
        try:
            await hook.send("DELETE", f"groups/{_seg(group)}/members/{_seg(member)}/$ref")
        except GraphRequestRejected as exc:
            if exc.status == 404:
                return {"group_id": group, "member_id": member, "removed": False, "already_absent": True}
            raise
        return {"group_id": group, "member_id": member, "removed": True}


def _partner_job(conn, hooks: dict, action: str, p: dict) -> dict:
    from panelflow.hooks.partner_center import PartnerCenterHook

    panel = p.get("subscription_id")
    partner = p.get("partner_subscription_id")
    if panel is None and partner is None:
        raise JobRejected("payload has neither subscription_id nor partner_subscription_id")
    try:
        panel = int(panel) if panel is not None else None
    except (TypeError, ValueError):
        raise JobRejected(f"subscription_id {panel!r} is not a panel subscription id") from None
    rows = conn.execute(_SUBSCRIPTION, {"panel": panel, "partner": partner}).fetchall()
    if len(rows) != 1:
        raise JobRejected(f"no Partner Center subscription is linked to "
                          f"{'panel subscription ' + str(panel) if panel is not None else partner}"
                          if not rows else f"{len(rows)} Partner Center subscriptions match")
    sid, customer, conn_id = rows[0]
    hook = hooks.get(conn_id)
    if hook is None:
        hook = hooks[conn_id] = PartnerCenterHook(conn_id)
    status = PARTNER_ACTIONS[action]
    response = hook.request("PATCH", f"/v1/customers/{quote(customer, safe='')}/subscriptions/{quote(sid, safe='')}",
                            what=f"{action} of subscription {sid}", body={"status": status})
    try:
        answered = (response.json() or {}).get("status")
    except ValueError:
        answered = None
    return {"partner_subscription_id": sid, "customer_tenant_id": customer, "status": answered or status}


def process_o365_group_actions(panel_db, interval, params, log) -> dict:
    """Process O365/CSP group actions."""
    from panelflow.services.group_actions import process_group_actions
    from panelflow.hooks.microsoft_graph import GraphAuthenticationError, GraphError, GraphUnavailable
    from panelflow.hooks.partner_center import (PartnerCenterAuthenticationError, PartnerCenterError,
                                                PartnerCenterUnavailable)

    params = params or {}
    queue_params = {"jobs_per_run": params.get("o365_jobs_per_run", JOBS_PER_RUN),
                    "job_max_attempts": params.get("o365_job_max_attempts", MAX_ATTEMPTS),
                    "job_stale_minutes": params.get("o365_job_stale_minutes", STALE_MINUTES)}
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        graph = _GraphJobs(conn)
        partner_hooks: dict = {}

        def handler(action: str, payload: dict) -> dict:
            graph.tenant_used = None
            try:
                if action in GRAPH_ACTIONS:
                    return graph.run(action, payload)[1]
                return _partner_job(conn, partner_hooks, action, payload)
            except (GraphUnavailable, GraphAuthenticationError, PartnerCenterUnavailable,
                    PartnerCenterAuthenticationError) as exc:
                raise JobDeferred(str(exc)) from exc
            except (GraphError, PartnerCenterError) as exc:   # rejected (4xx) or malformed: not retried
                raise JobRejected(str(exc)) from exc
            finally:
                if graph.tenant_used is not None:
                    conn.execute(_TOUCH_TENANT, {"tenant": graph.tenant_used, "at": at})

        try:
            return process_group_actions(panel_db, BACKEND, handler, interval, queue_params, log, conn=conn,
                                         actions=(*GRAPH_ACTIONS, *PARTNER_ACTIONS), secret_keys=SECRET_KEYS)
        finally:
            graph.close()
            for hook in partner_hooks.values():
                hook.close()

