"""GroupActionWorkLync 1: the Lync / Skype for Business group actions, on the pools' Front Ends.

:func:`process_lync_group_actions` works the ``lync`` queue of ``group_action_jobs`` through
:func:`panelflow.services.group_actions.process_group_actions`. Payloads (queued by the panel, and by
ProvisioningWork 32 for hosted voice contracts)::

    enable_user     pool, ad_user, sip_address, line_uri?, voice_policy?, conferencing_policy?,
                    display_name?, customer_id?, subscription_id?
    disable_user    sip_address, pool?          (Set-CsUser -Enabled $false: no sign-in, all else kept)
    remove_user     sip_address, pool?          (Disable-CsUser: the Lync attributes are deleted)
    set_line_uri    sip_address, line_uri (tel:+E.164[;ext=N]) | null (number removed, no Enterprise Voice), pool?
    grant_voice_policy         sip_address, policy | null (back to the global/site policy), pool?
    grant_conferencing_policy  sip_address, policy | null, pool?

``pool`` is the panel's name or the FQDN of the pool; a job about a user the panel knows may leave it
out (the user's row says where it is homed). ``ad_user`` is the AD identity Enable-CsUser is given
(UPN, DOMAIN\\sam or display name). In enable_user, a policy key given as null or "" returns the user
to the global policy; a key left out is left alone.

Every action sets a state, so a retried job does its work once: enable_user reads the user first
(Get-CsUser) and enables, re-enables or changes only what differs; disable and remove of a user Lync
no longer knows succeed (nothing left to do); a grant of the policy the user holds grants nothing.
Values reach PowerShell only as parameters (:meth:`PowerShellHook.run_script`), never inside script
text. The pool's error (Lync refused) fails the job with its message; a pool that cannot be reached
puts the job back for a later run (and the run's other jobs for that pool too, untried).
Successful jobs write the server's answer into ``lync_users``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from panelflow.services.group_actions import JobRejected, Payload, PowerShellSessions, process_group_actions
from panelflow.steps.lync._backend import LINE_URI, SIP_ADDRESS, CsUser, Pool, pool_named, sip_address

BACKEND = "lync"
ACTIONS = ("enable_user", "disable_user", "remove_user", "set_line_uri", "grant_voice_policy",
           "grant_conferencing_policy")
ROW_ID = (1, 2**63 - 1)
POLICY_KEYS = {"voice_policy": "VoicePolicy", "conferencing_policy": "ConferencingPolicy"}

_HOME = "SELECT p.name FROM lync_users u JOIN lync_pools p ON p.id = u.pool_id WHERE u.sip_address = %s"

# What the server answered, kept as the panel's row of the user (created by enable_user when the
# panel had none; the panel's links to customer and subscription are never cleared by an answer).
_UPSERT = """
INSERT INTO lync_users AS u (pool_id, customer_id, subscription_id, sip_address, ad_user, display_name, line_uri,
                             enterprise_voice, voice_policy, conferencing_policy, enabled, changed_at)
VALUES (%(pool)s, %(customer)s, %(subscription)s, %(sip)s, %(ad_user)s, %(display)s, %(line_uri)s, %(voice)s,
        %(voice_policy)s, %(conf_policy)s, %(enabled)s, %(at)s)
ON CONFLICT (sip_address) DO UPDATE
SET pool_id = EXCLUDED.pool_id, customer_id = coalesce(EXCLUDED.customer_id, u.customer_id),
    subscription_id = coalesce(EXCLUDED.subscription_id, u.subscription_id), ad_user = EXCLUDED.ad_user,
    display_name = coalesce(EXCLUDED.display_name, u.display_name), line_uri = EXCLUDED.line_uri,
    enterprise_voice = EXCLUDED.enterprise_voice, voice_policy = EXCLUDED.voice_policy,
    conferencing_policy = EXCLUDED.conferencing_policy, enabled = EXCLUDED.enabled, removed_at = NULL,
    changed_at = EXCLUDED.changed_at
"""

_UPDATE = """
UPDATE lync_users SET line_uri = %(line_uri)s, enterprise_voice = %(voice)s, voice_policy = %(voice_policy)s,
       conferencing_policy = %(conf_policy)s, enabled = %(enabled)s, removed_at = NULL, changed_at = %(at)s
WHERE sip_address = %(sip)s
  AND (line_uri, enterprise_voice, voice_policy, conferencing_policy, enabled, removed_at) IS DISTINCT FROM
      (%(line_uri)s, %(voice)s, %(voice_policy)s, %(conf_policy)s, %(enabled)s, NULL)
"""

_REMOVED = """
UPDATE lync_users SET enabled = false, enterprise_voice = false, line_uri = NULL, voice_policy = NULL,
       conferencing_policy = NULL, removed_at = coalesce(removed_at, %(at)s), changed_at = %(at)s
WHERE sip_address = %(sip)s
"""


def _line_uri(value: str | None) -> str | None:
    if value is None:
        return None
    uri = value.strip()
    uri = "tel:" + uri[4:] if uri.lower().startswith("tel:") else uri
    if not LINE_URI.match(uri):
        raise JobRejected(f"line URI {value!r} is not tel:+E.164 (with an optional ;ext=)")
    return uri


def _sip(p: Payload) -> str:
    value = sip_address(p.text("sip_address", limit=254))
    if not SIP_ADDRESS.match(value):
        raise JobRejected(f"sip_address {value!r} is not a SIP address (sip:user@domain)")
    return value


class _LyncJobs:
    """The handler of the ``lync`` queue: one PowerShell session per Front End for the whole run."""

    def __init__(self, conn, at: datetime, log):
        self.conn, self.at, self.log = conn, at, log
        self.sessions = PowerShellSessions(log)

    def close(self) -> None:
        self.sessions.close()

    def handle(self, action: str, payload: dict) -> dict:
        return getattr(self, action)(Payload(payload))

    # -- reaching the pool
    def _pool(self, name: str) -> Pool:
        found = pool_named(self.conn, name)
        if found is None:
            raise JobRejected(f"no Lync pool {name!r}")
        if not found[1]:
            raise JobRejected(f"Lync pool {found[0].name} is disabled")
        return found[0]

    def _target(self, p: Payload) -> tuple[Pool, str]:
        """The pool (the payload's, else the one the panel's row of the user names) and the SIP address."""
        sip = _sip(p)
        home = self.conn.execute(_HOME, (sip,)).fetchone()
        return self._pool(p.text("pool", required=home is None, limit=255) or home[0]), sip

    def run(self, pool: Pool, script: str, parameters: dict) -> dict:
        rows = self.sessions.run(pool.name, pool.conn_id, f"lync/{script}", parameters)
        if not rows or not isinstance(rows[0], dict):
            raise JobRejected(f"{pool.name}: {script} returned nothing")
        return rows[0]

    def _user(self, pool: Pool, script: str, parameters: dict) -> CsUser:
        return self._validated(pool, script, self.run(pool, script, parameters))

    def _number_free(self, line_uri: str | None, sip: str) -> None:
        """Lync lets two users hold one number (it only warns); the panel never does."""
        if line_uri is None:
            return
        holder = self.conn.execute("SELECT sip_address FROM lync_users WHERE line_uri = %s AND sip_address <> %s",
                                   (line_uri, sip)).fetchone()
        if holder is not None:
            raise JobRejected(f"{line_uri} is already assigned to {holder[0]}")

    def _record(self, user: CsUser, **panel) -> None:
        row = {"sip": user.SipAddress, "line_uri": user.LineURI, "voice": user.EnterpriseVoiceEnabled,
               "voice_policy": user.VoicePolicy, "conf_policy": user.ConferencingPolicy, "enabled": user.Enabled,
               "at": self.at}
        if panel:
            self.conn.execute(_UPSERT, {**row, **panel})
        else:
            self.conn.execute(_UPDATE, row)

    @staticmethod
    def _result(pool: Pool, user: CsUser) -> dict:
        return {"pool": pool.name, "sip_address": user.SipAddress, "enabled": user.Enabled,
                "enterprise_voice": user.EnterpriseVoiceEnabled, "line_uri": user.LineURI,
                "voice_policy": user.VoicePolicy, "conferencing_policy": user.ConferencingPolicy,
                "changed": user.Changed}

    # -- the actions
    def enable_user(self, p: Payload) -> dict:
        pool = self._pool(p.text("pool"))
        sip = _sip(p)
        ad_user = p.text("ad_user", limit=256)
        line_uri = _line_uri(p.text("line_uri", required=False, limit=64))
        customer = p.integer("customer_id", *ROW_ID)
        subscription = p.integer("subscription_id", *ROW_ID)
        if subscription is not None:
            owner = self.conn.execute("SELECT customer_id FROM subscriptions WHERE id = %s", (subscription,)).fetchone()
            if owner is None:
                raise JobRejected(f"no subscription {subscription}")
            if customer is not None and owner[0] != customer:
                raise JobRejected(f"subscription {subscription} is not customer {customer}'s")
            customer = owner[0]
        elif customer is not None and not self.conn.execute("SELECT 1 FROM customers WHERE id = %s",
                                                            (customer,)).fetchone():
            raise JobRejected(f"no customer {customer}")
        self._number_free(line_uri, sip)
        params: dict[str, Any] = {"Identity": ad_user, "SipAddress": sip, "RegistrarPool": pool.fqdn,
                                  "LineUri": line_uri}
        for key, name in POLICY_KEYS.items():
            if key in p.data:   # present: that policy, or "" for the global one; absent: left alone
                params[name] = p.text(key, required=False, limit=128) or ""
        user = self._user(pool, "enable_user", params)
        if user.SipAddress != sip:
            raise JobRejected(f"{pool.name}: enabled {ad_user!r} answers as {user.SipAddress}, not {sip}")
        self._record(user, pool=pool.id, customer=customer, subscription=subscription, ad_user=ad_user,
                     display=p.text("display_name", required=False) or user.DisplayName)
        return self._result(pool, user)

    def _set_state(self, p: Payload, enabled: bool) -> dict:
        pool, sip = self._target(p)
        raw = self.run(pool, "set_user_state", {"Identity": sip, "Enabled": enabled})
        if not raw.get("Found"):
            self.conn.execute("UPDATE lync_users SET enabled = false, changed_at = %(at)s"
                              " WHERE sip_address = %(sip)s AND enabled", {"sip": sip, "at": self.at})
            return {"pool": pool.name, "sip_address": sip, "enabled": False, "already_absent": True}
        user = self._validated(pool, "set_user_state", raw)
        self._record(user)
        return self._result(pool, user)

    def _validated(self, pool: Pool, script: str, raw: dict) -> CsUser:
        from pydantic import ValidationError

        try:
            user = CsUser.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise JobRejected(f"{pool.name}: {script} returned a malformed user: "
                              f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
        if user.LineURI is not None:
            user.LineURI = _line_uri(user.LineURI)
        return user

    def disable_user(self, p: Payload) -> dict:
        return self._set_state(p, False)

    def remove_user(self, p: Payload) -> dict:
        pool, sip = self._target(p)
        raw = self.run(pool, "remove_user", {"Identity": sip})
        self.conn.execute(_REMOVED, {"sip": sip, "at": self.at})
        return {"pool": pool.name, "sip_address": sip, "removed": bool(raw.get("Found")),
                **({} if raw.get("Found") else {"already_absent": True})}

    def set_line_uri(self, p: Payload) -> dict:
        pool, sip = self._target(p)
        line_uri = _line_uri(p.text("line_uri", required=False, limit=64))
        self._number_free(line_uri, sip)
        user = self._user(pool, "set_line_uri", {"Identity": sip, "LineUri": line_uri})
        self._record(user)
        return self._result(pool, user)

    def _grant(self, p: Payload, policy_type: str) -> dict:
        pool, sip = self._target(p)
        user = self._user(pool, "grant_user_policy", {"Identity": sip, "PolicyType": policy_type,
                                                      "PolicyName": p.text("policy", required=False, limit=128)})
        self._record(user)
        return self._result(pool, user)

    def grant_voice_policy(self, p: Payload) -> dict:
        return self._grant(p, "Voice")

    def grant_conferencing_policy(self, p: Payload) -> dict:
        return self._grant(p, "Conferencing")


def process_lync_group_actions(panel_db, interval, params=None, log=None) -> dict:
    """Process Lync/OCS group actions."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        jobs = _LyncJobs(conn, interval.end, log)
        try:
            return process_group_actions(panel_db, BACKEND, jobs.handle, interval, params, log, actions=ACTIONS,
                                         conn=conn)
        finally:
            jobs.close()
