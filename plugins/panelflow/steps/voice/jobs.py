"""GroupActionWorkSIP 1: the SIP group actions (companies, subscribers, numbers) on the SIP platforms.

:func:`process_sip_group_actions` — the ``sip`` queue of ``group_action_jobs`` through
:func:`panelflow.services.group_actions.process_group_actions`. The panel queues the jobs (and
ProvisioningWork's SIP contracts queue ``create_company``/``suspend_company``). Payloads::

    create_company      platform, domain, customer_id, subscription_id?, channel_limit? (unlimited)
    suspend_company     platform, domain
    resume_company      platform, domain
    delete_company      platform, domain
    set_channel_limit   platform, domain, channel_limit (a whole number ≥ 0, or null: unlimited)
    create_subscriber   platform, domain, username, password
    change_password     platform, domain, username, password
    suspend_subscriber  platform, domain, username
    resume_subscriber   platform, domain, username
    delete_subscriber   platform, domain, username
    assign_number       platform, domain, username, number (E.164 digits, a leading + is dropped)
    release_number      platform, number

Exactly once: every action sets a state on the platform, after checking the panel, then records
the outcome in the panel. A job retried after a crash between the two (or after a lost answer)
finds what the first try did — ``ensure_company``/``ensure_subscriber`` create nothing that exists,
suspend/resume set the flag, delete of what is gone succeeds — and records it. Creating what
exists means "make it as the job says": an existing company gets the job's channel limit and runs,
an existing subscriber the job's password. The password is only ever a parameter of the
platform call: never in a result, a log line or the panel's rows, and the queue removes it from
the payload when the job ends.

A job holds its platform's sync lock (shared) from reading the panel to writing its outcome, so
VoiceSyncWork never reads the platform before a job and writes the panel after it.

A platform that cannot be reached (or whose connection is missing) puts the job back for a later
run, and the rest of this run's jobs for that platform too, untried; a platform that refuses the
request fails the job with its message. A job naming an unknown or disabled platform, a company
the panel does not know, or a company of another customer is failed before anything is sent.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from panelflow.services.group_actions import JobDeferred, JobRejected, Payload, process_group_actions
from panelflow.step import first_line
from panelflow.steps.voice._backend import NO_PLATFORM, Platform, lock_platform, platform_named, platforms

BACKEND = "sip"
ACTIONS = ("create_company", "suspend_company", "resume_company", "delete_company", "set_channel_limit",
           "create_subscriber", "change_password", "suspend_subscriber", "resume_subscriber", "delete_subscriber",
           "assign_number", "release_number")
DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
NUMBER = re.compile(r"^\+?([0-9]{3,15})$")
ROW_ID = (1, 2**63 - 1)
CHANNELS = (0, 100_000)

_COMPANY = """
SELECT id, customer_id, subscription_id, status FROM voice_companies WHERE platform_id = %s AND sip_domain = %s
"""

_COMPANY_CREATED = """
INSERT INTO voice_companies AS c (platform_id, customer_id, subscription_id, sip_domain, channel_limit, status,
                                  created_at, synced_at)
VALUES (%(platform)s, %(customer)s, %(subscription)s, %(domain)s, %(limit)s, 'active', %(at)s, %(at)s)
ON CONFLICT (platform_id, sip_domain) DO UPDATE
SET subscription_id = coalesce(EXCLUDED.subscription_id, c.subscription_id), channel_limit = EXCLUDED.channel_limit,
    status = 'active', deleted_at = NULL, synced_at = EXCLUDED.synced_at
"""

_COMPANY_STATE = "UPDATE voice_companies SET status = %(status)s, synced_at = %(at)s WHERE id = %(id)s"

_COMPANY_LIMIT = "UPDATE voice_companies SET channel_limit = %(limit)s, synced_at = %(at)s WHERE id = %(id)s"

# A company gone takes its subscribers and numbers with it (the rows stay, marked, for late records).
_COMPANY_DELETED = """
WITH company AS (
    UPDATE voice_companies SET status = 'deleted', deleted_at = coalesce(deleted_at, %(at)s), synced_at = %(at)s
    WHERE id = %(id)s RETURNING id
), subscribers AS (
    UPDATE voice_subscribers SET status = 'deleted', deleted_at = %(at)s, synced_at = %(at)s
    WHERE company_id IN (SELECT id FROM company) AND status <> 'deleted' RETURNING id
)
DELETE FROM voice_numbers WHERE subscriber_id IN (SELECT id FROM voice_subscribers WHERE company_id = %(id)s)
"""

_SUBSCRIBER = "SELECT id, status FROM voice_subscribers WHERE company_id = %s AND username = %s"

_SUBSCRIBER_CREATED = """
INSERT INTO voice_subscribers AS s (company_id, username, external_ref, status, created_at, synced_at)
VALUES (%(company)s, %(username)s, %(ref)s, 'active', %(at)s, %(at)s)
ON CONFLICT (company_id, username) DO UPDATE
SET external_ref = coalesce(EXCLUDED.external_ref, s.external_ref), status = 'active', deleted_at = NULL,
    synced_at = EXCLUDED.synced_at
"""

_SUBSCRIBER_STATE = """
UPDATE voice_subscribers SET status = %(status)s, synced_at = %(at)s,
       deleted_at = CASE WHEN %(status)s = 'deleted' THEN coalesce(deleted_at, %(at)s) END
WHERE id = %(id)s
"""

_NUMBER_ASSIGNED = """
INSERT INTO voice_numbers (platform_id, number, subscriber_id, assigned_at, synced_at)
VALUES (%(platform)s, %(number)s, %(subscriber)s, %(at)s, %(at)s)
ON CONFLICT (platform_id, number) DO UPDATE
SET subscriber_id = EXCLUDED.subscriber_id, synced_at = EXCLUDED.synced_at,
    assigned_at = CASE WHEN voice_numbers.subscriber_id = EXCLUDED.subscriber_id THEN voice_numbers.assigned_at
                       ELSE EXCLUDED.assigned_at END
"""


class _SipJobs:
    """The handler of the ``sip`` queue: one hook per platform for the whole run."""

    def __init__(self, conn, at: datetime):
        self.conn, self.at = conn, at
        self.hooks: dict[int, Any] = {}
        self.down: dict[int, str] = {}

    # -- reaching the platform
    def _platform(self, p: Payload) -> Platform:
        name = p.text("platform", limit=100)
        found = platform_named(self.conn, name)
        if found is None:
            raise JobRejected(f"no SIP platform {name!r}")
        if not found[1]:
            raise JobRejected(f"SIP platform {name} is disabled")
        lock_platform(self.conn, found[0], shared=True)
        return found[0]

    def call(self, platform: Platform, method: str, *args) -> Any:
        from airflow.exceptions import AirflowException

        from panelflow.hooks.sip_platform import SipPlatformError, SipPlatformRefused

        if platform.id in self.down:
            raise JobDeferred(f"{platform.name} not tried: unreachable earlier in this run ({self.down[platform.id]})")
        try:
            hook = self.hooks.get(platform.id)
            if hook is None:
                hook = self.hooks[platform.id] = platform.hook()
            return getattr(hook, method)(*args)
        except SipPlatformRefused as exc:
            raise JobRejected(f"{platform.name}: {first_line(exc)}") from None
        except (SipPlatformError, AirflowException) as exc:   # unreachable, or its connection is missing: retried
            self.down[platform.id] = first_line(exc)
            raise JobDeferred(f"{platform.name}: {type(exc).__name__}: {first_line(exc)}") from None

    # -- what the jobs name
    @staticmethod
    def _domain(p: Payload) -> str:
        domain = p.text("domain", limit=64).lower()
        if not DOMAIN.match(domain):
            raise JobRejected(f"payload 'domain' is not a SIP domain name: {domain!r}")
        return domain

    @staticmethod
    def _username(p: Payload) -> str:
        username = p.text("username", limit=64)
        if not USERNAME.match(username):
            raise JobRejected(f"payload 'username' is not a SIP user name (letters, digits, . _ -): {username!r}")
        return username

    def _company(self, p: Payload, *, live: bool = True) -> tuple[Platform, str, tuple]:
        """The platform, the domain and the panel's row of the company; ``live``: refused when deleted."""
        platform, domain = self._platform(p), self._domain(p)
        row = self.conn.execute(_COMPANY, (platform.id, domain)).fetchone()
        if row is None:
            raise JobRejected(f"no voice company {domain} on {platform.name} in the panel")
        if live and row[3] == "deleted":
            raise JobRejected(f"voice company {domain} on {platform.name} is deleted")
        return platform, domain, row

    def _subscriber(self, p: Payload) -> tuple[Platform, str, str, tuple, tuple | None]:
        platform, domain, company = self._company(p)
        username = self._username(p)
        return platform, domain, username, company, self.conn.execute(_SUBSCRIBER, (company[0], username)).fetchone()

    def handle(self, action: str, payload: dict) -> dict:
        with self.conn.transaction():   # the platform's sync lock is held until the job's panel rows are written
            return getattr(self, action)(Payload(payload))

    # -- companies
    def create_company(self, p: Payload) -> dict:
        platform, domain = self._platform(p), self._domain(p)
        customer = p.integer("customer_id", *ROW_ID, required=True)
        subscription = p.integer("subscription_id", *ROW_ID)
        limit = p.integer("channel_limit", *CHANNELS)
        if not self.conn.execute("SELECT 1 FROM customers WHERE id = %s", (customer,)).fetchone():
            raise JobRejected(f"no customer {customer}")
        if subscription is not None and not self.conn.execute(
                "SELECT 1 FROM subscriptions WHERE id = %s AND customer_id = %s", (subscription, customer)).fetchone():
            raise JobRejected(f"no subscription {subscription} of customer {customer}")
        row = self.conn.execute(_COMPANY, (platform.id, domain)).fetchone()
        if row is not None and row[1] != customer:
            raise JobRejected(f"SIP domain {domain} on {platform.name} belongs to customer {row[1]}")
        changed = self.call(platform, "ensure_company", domain, limit)   # exists, with this limit
        resumed = self.call(platform, "set_company_suspended", domain, False)
        self.conn.execute(_COMPANY_CREATED, {"platform": platform.id, "customer": customer, "domain": domain,
                                             "subscription": subscription, "limit": limit, "at": self.at})
        return {"platform": platform.name, "domain": domain, "changed": bool(changed or resumed),
                "channel_limit": limit}

    def _company_suspended(self, p: Payload, suspended: bool) -> dict:
        platform, domain, row = self._company(p)
        changed = self.call(platform, "set_company_suspended", domain, suspended)
        self.conn.execute(_COMPANY_STATE, {"id": row[0], "status": "suspended" if suspended else "active",
                                           "at": self.at})
        return {"platform": platform.name, "domain": domain, "suspended": suspended, "changed": bool(changed)}

    def suspend_company(self, p: Payload) -> dict:
        return self._company_suspended(p, True)

    def resume_company(self, p: Payload) -> dict:
        return self._company_suspended(p, False)

    def delete_company(self, p: Payload) -> dict:
        platform, domain, row = self._company(p, live=False)
        found = self.call(platform, "delete_company", domain)
        self.conn.execute(_COMPANY_DELETED, {"id": row[0], "at": self.at})
        return {"platform": platform.name, "domain": domain, "deleted": bool(found)}

    def set_channel_limit(self, p: Payload) -> dict:
        if "channel_limit" not in p.data:
            raise JobRejected("payload has no 'channel_limit' (a whole number, or null for unlimited)")
        limit = p.integer("channel_limit", *CHANNELS)
        platform, domain, row = self._company(p)
        changed = self.call(platform, "set_channel_limit", domain, limit)
        self.conn.execute(_COMPANY_LIMIT, {"id": row[0], "limit": limit, "at": self.at})
        return {"platform": platform.name, "domain": domain, "channel_limit": limit, "changed": bool(changed)}

    # -- subscribers
    def _external_ref(self, platform: Platform, domain: str, username: str) -> str | None:
        for subscriber in self.call(platform, "subscribers", domain):
            if subscriber.username == username:
                return subscriber.ref
        raise JobRejected(f"{platform.name}: {username}@{domain} is not on the platform after it was created")

    def create_subscriber(self, p: Payload) -> dict:
        platform, domain, username, company, _ = self._subscriber(p)
        password = p.text("password", limit=128)
        created = self.call(platform, "ensure_subscriber", domain, username, password)
        if not created:   # it was there: it gets the job's password and runs
            self.call(platform, "set_password", domain, username, password)
            self.call(platform, "set_subscriber_suspended", domain, username, False)
        ref = self._external_ref(platform, domain, username)
        self.conn.execute(_SUBSCRIBER_CREATED, {"company": company[0], "username": username, "ref": ref,
                                                "at": self.at})
        return {"platform": platform.name, "domain": domain, "username": username, "created": bool(created),
                "external_ref": ref}

    def change_password(self, p: Payload) -> dict:
        platform, domain, username, _, row = self._subscriber(p)
        password = p.text("password", limit=128)
        if row is None or row[1] == "deleted":
            raise JobRejected(f"no subscriber {username}@{domain} in the panel")
        if not self.call(platform, "set_password", domain, username, password):
            raise JobRejected(f"{platform.name}: no subscriber {username}@{domain} on the platform")
        return {"platform": platform.name, "domain": domain, "username": username, "password_changed": True}

    def _subscriber_suspended(self, p: Payload, suspended: bool) -> dict:
        platform, domain, username, _, row = self._subscriber(p)
        if row is None or row[1] == "deleted":
            raise JobRejected(f"no subscriber {username}@{domain} in the panel")
        changed = self.call(platform, "set_subscriber_suspended", domain, username, suspended)
        self.conn.execute(_SUBSCRIBER_STATE, {"id": row[0], "status": "suspended" if suspended else "active",
                                              "at": self.at})
        return {"platform": platform.name, "domain": domain, "username": username, "suspended": suspended,
                "changed": bool(changed)}

    def suspend_subscriber(self, p: Payload) -> dict:
        return self._subscriber_suspended(p, True)

    def resume_subscriber(self, p: Payload) -> dict:
        return self._subscriber_suspended(p, False)

    def delete_subscriber(self, p: Payload) -> dict:
        platform, domain, username, _, row = self._subscriber(p)
        released = []
        if row is not None:   # its numbers first, so none is left pointing at an account that is gone
            for (number,) in self.conn.execute("SELECT number FROM voice_numbers WHERE subscriber_id = %s"
                                               " ORDER BY number", (row[0],)).fetchall():
                self.call(platform, "release_number", number)
                self.conn.execute("DELETE FROM voice_numbers WHERE platform_id = %s AND number = %s",
                                  (platform.id, number))
                released.append(number)
        found = self.call(platform, "delete_subscriber", domain, username)
        if row is not None:
            self.conn.execute(_SUBSCRIBER_STATE, {"id": row[0], "status": "deleted", "at": self.at})
        return {"platform": platform.name, "domain": domain, "username": username, "deleted": bool(found),
                "numbers_released": released}

    # -- numbers
    @staticmethod
    def _number(p: Payload) -> str:
        number = p.text("number", limit=16)
        match = NUMBER.match(number)
        if not match:
            raise JobRejected(f"payload 'number' is not an E.164 number: {number!r}")
        return match.group(1)

    def assign_number(self, p: Payload) -> dict:
        number = self._number(p)
        platform, domain, username, _, row = self._subscriber(p)
        if row is None or row[1] == "deleted":
            raise JobRejected(f"no subscriber {username}@{domain} in the panel")
        changed = self.call(platform, "assign_number", domain, username, number)
        self.conn.execute(_NUMBER_ASSIGNED, {"platform": platform.id, "number": number, "subscriber": row[0],
                                             "at": self.at})
        return {"platform": platform.name, "number": number, "domain": domain, "username": username,
                "changed": bool(changed)}

    def release_number(self, p: Payload) -> dict:
        number = self._number(p)
        platform = self._platform(p)
        found = self.call(platform, "release_number", number)
        self.conn.execute("DELETE FROM voice_numbers WHERE platform_id = %s AND number = %s", (platform.id, number))
        return {"platform": platform.name, "number": number, "released": bool(found)}


def process_sip_group_actions(panel_db, interval, params=None, log=None) -> dict:
    """Process SIP group actions."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        jobs = _SipJobs(conn, interval.end)
        summary = process_group_actions(panel_db, BACKEND, jobs.handle, interval, params, log, actions=ACTIONS,
                                        conn=conn)
        if not platforms(conn):
            summary["note"] = NO_PLATFORM
        return summary
