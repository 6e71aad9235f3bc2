"""ProvisioningWork 32–33: hosted voice contracts (start, renew, end) and their users' billing details.

A hosted voice contract (``hosted_voice_contracts``, written by the panel) sells Lync / Skype for
Business users with Enterprise Voice on one pool to one subscription, for ``term_months`` from
``starts_on``; ``ends_on`` is the end of the current term. Its users are the subscription's
``lync_users`` rows on that pool (written by the panel when the customer adds them).

32 — :func:`execute_hosted_voice_contracts`. "Today" is the run's clock (``interval.end``) in the
thread's time zone. Due actions, each keyed by (contract, the day it was due, action) in
``hosted_voice_contract_actions`` and committed in the same statement as its effects, so it runs
exactly once however often ProvisioningWork runs (every 10 minutes) and however late (a day the
scheduler missed is caught up with the day it was due):

- **start** (pending, ``starts_on`` ≤ today): an ``enable_user`` job per user (with their number and
  policies), the contract active, the subscription active;
- **renew** (active, auto-renewing, ``ends_on`` ≤ today): the next term — ``ends_on`` moves on by
  ``term_months``, anchored on ``starts_on`` so a 31 January start renews on the 31st (or the last
  day) of each month, never drifting;
- **end** (active, not renewing, ``ends_on`` ≤ today): a ``disable_user`` job per user (sign-in
  stops; the number and policies stay for a later restart), the contract ended, the subscription
  cancelled.

The jobs go to the ``lync`` group-action queue (GroupActionWorkLync 1), which applies them
idempotently. Each kind is bounded per run (``contracts_per_run``); what is left is due next run.

33 — :func:`insert_hosted_voice_billing_details`. For the month of today, every enabled user of an
active contract's subscription is a detail row (``hosted_voice_billing_details``, unique per
subscription, month and SIP address: a user enabled for part of the month is billed for the month,
once). The subscription's "Hosted voice users" add-on (created here once, remembered on the contract)
keeps ``quantity`` = the month's count and ``price`` = the contract's price per user, so BillingWork's
recurring invoice (``steps.billing``: a line per active add-on, ``price × quantity``) invoices them.
With no user yet (or the contract ended) the add-on is cancelled — its quantity cannot be 0 — and
billed nothing.
"""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from panelflow.step import StepReport

CONTRACTS_PER_RUN = 500
ADDON_NAME = "Hosted voice users"
JOB_PRIORITY = 3

_START = """
WITH due AS (
    SELECT c.id, c.subscription_id, c.pool_id, c.starts_on FROM hosted_voice_contracts c
    WHERE c.status = 'pending' AND c.starts_on <= %(today)s
    ORDER BY c.starts_on, c.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), users AS (
    SELECT d.id AS contract_id, p.name AS pool, u.* FROM due d
    JOIN lync_pools p ON p.id = d.pool_id
    JOIN lync_users u ON u.subscription_id = d.subscription_id AND u.pool_id = d.pool_id
), acted AS (
    INSERT INTO hosted_voice_contract_actions (contract_id, day, action, executed_at, jobs_queued)
    SELECT d.id, d.starts_on, 'start', %(at)s, (SELECT count(*) FROM users u WHERE u.contract_id = d.id) FROM due d
    ON CONFLICT DO NOTHING
    RETURNING contract_id
), started AS (
    UPDATE hosted_voice_contracts c SET status = 'active' FROM acted WHERE c.id = acted.contract_id
    RETURNING c.subscription_id
), subscriptions_on AS (
    UPDATE subscriptions s SET status = 'active' FROM started
    WHERE s.id = started.subscription_id AND s.status <> 'active'
    RETURNING 1
), jobs AS (
    INSERT INTO group_action_jobs (backend, action, payload, priority)
    SELECT 'lync', 'enable_user', jsonb_strip_nulls(jsonb_build_object(
               'pool', u.pool, 'ad_user', u.ad_user, 'sip_address', u.sip_address, 'line_uri', u.line_uri,
               'voice_policy', u.voice_policy, 'conferencing_policy', u.conferencing_policy,
               'subscription_id', u.subscription_id, 'customer_id', u.customer_id, 'contract_id', u.contract_id)),
           %(priority)s
    FROM users u JOIN acted a ON a.contract_id = u.contract_id
    ORDER BY u.contract_id, u.sip_address
    RETURNING 1
)
SELECT (SELECT count(*) FROM acted), (SELECT count(*) FROM subscriptions_on), (SELECT count(*) FROM jobs)
"""

# months from starts_on to ends_on, whole: the terms served so far (× term_months)
_TERMS_SERVED = ("((12 * (date_part('year', c.ends_on) - date_part('year', c.starts_on))"
                 " + date_part('month', c.ends_on) - date_part('month', c.starts_on)) / c.term_months)")

_RENEW = f"""
WITH due AS (
    SELECT c.id, c.ends_on FROM hosted_voice_contracts c
    WHERE c.status = 'active' AND c.auto_renew AND c.ends_on <= %(today)s
    ORDER BY c.ends_on, c.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), acted AS (
    INSERT INTO hosted_voice_contract_actions (contract_id, day, action, executed_at)
    SELECT id, ends_on, 'renew', %(at)s FROM due
    ON CONFLICT DO NOTHING
    RETURNING contract_id
)
UPDATE hosted_voice_contracts c
SET ends_on = (c.starts_on + make_interval(months => (round({_TERMS_SERVED})::int + 1) * c.term_months))::date
FROM acted WHERE c.id = acted.contract_id
"""

_END = """
WITH due AS (
    SELECT c.id, c.subscription_id, c.pool_id, c.ends_on FROM hosted_voice_contracts c
    WHERE c.status = 'active' AND NOT c.auto_renew AND c.ends_on <= %(today)s
    ORDER BY c.ends_on, c.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), users AS (
    SELECT d.id AS contract_id, p.name AS pool, u.sip_address FROM due d
    JOIN lync_pools p ON p.id = d.pool_id
    JOIN lync_users u ON u.subscription_id = d.subscription_id AND u.pool_id = d.pool_id AND u.removed_at IS NULL
), acted AS (
    INSERT INTO hosted_voice_contract_actions (contract_id, day, action, executed_at, jobs_queued)
    SELECT d.id, d.ends_on, 'end', %(at)s, (SELECT count(*) FROM users u WHERE u.contract_id = d.id) FROM due d
    ON CONFLICT DO NOTHING
    RETURNING contract_id
), ended AS (
    UPDATE hosted_voice_contracts c SET status = 'ended' FROM acted WHERE c.id = acted.contract_id
    RETURNING c.subscription_id
), subscriptions_off AS (
    UPDATE subscriptions s SET status = 'cancelled' FROM ended
    WHERE s.id = ended.subscription_id AND s.status <> 'cancelled'
    RETURNING 1
), jobs AS (
    INSERT INTO group_action_jobs (backend, action, payload, priority)
    SELECT 'lync', 'disable_user', jsonb_build_object('pool', u.pool, 'sip_address', u.sip_address,
                                                      'contract_id', u.contract_id), %(priority)s
    FROM users u JOIN acted a ON a.contract_id = u.contract_id
    ORDER BY u.contract_id, u.sip_address
    RETURNING 1
)
SELECT (SELECT count(*) FROM acted), (SELECT count(*) FROM subscriptions_off), (SELECT count(*) FROM jobs)
"""


def _today(interval) -> date:
    return interval.end.astimezone(ZoneInfo(interval.tz)).date()


def execute_hosted_voice_contracts(panel_db, interval, params=None, log=None) -> dict:
    """Execute today's hosted voice contracts."""
    params = params or {}
    args = {"today": _today(interval), "at": interval.end, "priority": JOB_PRIORITY,
            "limit": int(params.get("contracts_per_run", CONTRACTS_PER_RUN))}
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():
            started, activated, enable_jobs = conn.execute(_START, args).fetchone()
        with conn.transaction():
            renewed = conn.execute(_RENEW, args).rowcount
        with conn.transaction():
            ended, cancelled, disable_jobs = conn.execute(_END, args).fetchone()
    for key, n in (("contracts_started", started), ("subscriptions_activated", activated),
                   ("enable_jobs_queued", enable_jobs), ("contracts_renewed", renewed), ("contracts_ended", ended),
                   ("subscriptions_cancelled", cancelled), ("disable_jobs_queued", disable_jobs)):
        report.add(key, n)
    summary = {"day": args["today"].isoformat(), **report.as_dict()}
    if log is not None:
        log.info("hosted voice contracts: %s", summary)
    return summary


_DETAILS = """
INSERT INTO hosted_voice_billing_details (subscription_id, month, sip_address, lync_user_id, edition, unit_price,
                                          recorded_at)
SELECT c.subscription_id, %(month)s, u.sip_address, u.id, u.edition, c.user_price, %(at)s
FROM hosted_voice_contracts c
JOIN lync_users u ON u.subscription_id = c.subscription_id AND u.pool_id = c.pool_id AND u.enabled
WHERE c.status = 'active'
ON CONFLICT DO NOTHING
"""

# The add-on a contract bills through: the one it remembers (or the add-on MergeAddOns folded it
# into), created for an active contract with users that has none yet; quantity = the month's count.
_ADDONS = """
WITH counts AS (
    SELECT c.id, c.subscription_id, c.user_price, c.status, coalesce(a.merged_into, a.id) AS addon_id,
           (SELECT count(*) FROM hosted_voice_billing_details d
            WHERE d.subscription_id = c.subscription_id AND d.month = %(month)s) AS users
    FROM hosted_voice_contracts c LEFT JOIN subscription_addons a ON a.id = c.addon_id
    WHERE c.status = 'active' OR (c.status = 'ended' AND a.status = 'active')
), created AS (
    INSERT INTO subscription_addons (subscription_id, name, price, quantity)
    SELECT subscription_id, %(addon_name)s, user_price, users FROM counts
    WHERE addon_id IS NULL AND status = 'active' AND users > 0
    RETURNING id, subscription_id
), linked AS (
    UPDATE hosted_voice_contracts c SET addon_id = coalesce(created.id, k.addon_id)
    FROM counts k LEFT JOIN created ON created.subscription_id = k.subscription_id AND k.addon_id IS NULL
    WHERE c.id = k.id AND c.addon_id IS DISTINCT FROM coalesce(created.id, k.addon_id)
    RETURNING 1
), updated AS (
    UPDATE subscription_addons a
    SET quantity = CASE WHEN k.status = 'active' AND k.users > 0 THEN k.users ELSE a.quantity END,
        price = k.user_price,
        status = CASE WHEN k.status = 'active' AND k.users > 0 THEN 'active' ELSE 'cancelled' END
    FROM counts k
    WHERE a.id = k.addon_id
      AND (a.quantity, a.price, a.status) IS DISTINCT FROM
          (CASE WHEN k.status = 'active' AND k.users > 0 THEN k.users ELSE a.quantity END, k.user_price,
           CASE WHEN k.status = 'active' AND k.users > 0 THEN 'active' ELSE 'cancelled' END)
    RETURNING a.status
)
SELECT (SELECT count(*) FROM counts WHERE status = 'active'), (SELECT coalesce(sum(users), 0) FROM counts
        WHERE status = 'active'), (SELECT count(*) FROM created),
       (SELECT count(*) FROM updated WHERE status = 'active'), (SELECT count(*) FROM updated WHERE status = 'cancelled')
"""


def insert_hosted_voice_billing_details(panel_db, interval, log=None) -> dict:
    """Insert hosted voice user billing details."""
    today = _today(interval)
    month = today.replace(day=1)
    args = {"month": month, "at": interval.end, "addon_name": ADDON_NAME}
    report = StepReport()
    with panel_db.get_conn() as conn:
        with conn.transaction():
            added = conn.execute(_DETAILS, args).rowcount
            contracts, users, created, updated, cancelled = conn.execute(_ADDONS, args).fetchone()
    for key, n in (("details_added", added), ("contracts", contracts), ("billed_users", users),
                   ("addons_created", created), ("addons_updated", updated), ("addons_cancelled", cancelled)):
        report.add(key, n)
    summary = {"month": month.isoformat(), **report.as_dict()}
    if log is not None:
        log.info("hosted voice billing details: %s", summary)
    return summary
