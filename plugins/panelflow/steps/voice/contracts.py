"""ProvisioningWork 31 'Execute today's SIP contracts': contracts started, renewed and ended on their day.

A SIP contract (``sip_contracts``, written by the panel) runs a company (platform, SIP domain,
channel limit) for its subscription from ``starts_on`` for ``term_months``; ``ends_on`` is the first
day after the current term. Its actions, due on a day of the thread's time zone:

- **start** (``starts_on``): queue ``create_company`` (the SIP job creates the company, or resumes it
  with the contract's channel limit), the subscription made active, the contract active;
- **renew** (``ends_on`` of an auto-renewing contract): the term extended — ``ends_on`` becomes
  ``starts_on`` + (renewals + 1) × ``term_months`` months, anchored on the first day so a term
  starting on the 31st never drifts to the 28th;
- **end** (``ends_on`` of one that does not renew): queue ``suspend_company``, the subscription
  cancelled, the contract ended.

"Today" is the day of the run's clock. Every action due on or before it that was not executed is
executed, and recorded under the day it was due (``sip_contract_actions``, unique per contract, day
and action) in the same transaction as the job it queues and the rows it changes: a rerun, a retry
or two runs at once execute it once, a backfilled day executes that day's actions once, and a day
the thread missed is caught up by the next run. A contract the panel puts back into a state
whose action was already executed for that day is left as it is (the key says it was done). A
contract years behind advances one term per
pass, at most ``contract_passes`` passes (default 50) of ``contract_batch`` contracts (500) per run.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from panelflow.step import StepReport
from panelflow.steps.voice._backend import nothing_configured, platforms

PASSES = 50
BATCH = 500
JOB_PRIORITY = 4

# The next action of each due contract, recorded; SKIP LOCKED: a concurrent run takes others.
_RECORD = """
WITH due AS (
    SELECT k.id, next.day, next.action
    FROM sip_contracts k
    CROSS JOIN LATERAL (
        SELECT CASE WHEN k.status = 'pending' THEN k.starts_on ELSE k.ends_on END AS day,
               CASE WHEN k.status = 'pending' THEN 'start' WHEN k.auto_renew THEN 'renew' ELSE 'end' END AS action
    ) next
    WHERE ((k.status = 'pending' AND k.starts_on <= %(today)s) OR (k.status = 'active' AND k.ends_on <= %(today)s))
      AND NOT EXISTS (SELECT 1 FROM sip_contract_actions a
                      WHERE a.contract_id = k.id AND a.day = next.day AND a.action = next.action)
    ORDER BY k.id
    LIMIT %(batch)s
    FOR UPDATE OF k SKIP LOCKED
)
INSERT INTO sip_contract_actions (contract_id, day, action, executed_at)
SELECT id, day, action, %(clock)s FROM due
ON CONFLICT DO NOTHING
RETURNING contract_id, day, action
"""

# What the recorded actions do, in the same transaction.
_EXECUTE = """
WITH fresh AS (
    SELECT f.contract_id, f.day, f.action, k.subscription_id, k.sip_domain, k.channel_limit, p.name AS platform,
           s.customer_id
    FROM unnest(%(ids)s::bigint[], %(days)s::date[], %(actions)s::text[]) AS f(contract_id, day, action)
    JOIN sip_contracts k ON k.id = f.contract_id
    JOIN sip_platforms p ON p.id = k.platform_id
    JOIN subscriptions s ON s.id = k.subscription_id
), jobs AS (
    INSERT INTO group_action_jobs (backend, action, payload, priority)
    SELECT 'sip', CASE f.action WHEN 'start' THEN 'create_company' ELSE 'suspend_company' END,
           jsonb_build_object('platform', f.platform, 'domain', f.sip_domain, 'contract_id', f.contract_id)
           || CASE WHEN f.action = 'start' THEN jsonb_build_object(
                  'customer_id', f.customer_id, 'subscription_id', f.subscription_id,
                  'channel_limit', f.channel_limit) ELSE '{}'::jsonb END,
           %(priority)s
    FROM fresh f WHERE f.action <> 'renew'
    RETURNING id, (payload->>'contract_id')::bigint AS contract_id
), linked AS (
    UPDATE sip_contract_actions a SET job_id = j.id
    FROM jobs j JOIN fresh f USING (contract_id)
    WHERE a.contract_id = f.contract_id AND a.day = f.day AND a.action = f.action
    RETURNING 1
), contracts AS (
    UPDATE sip_contracts k
    SET status = CASE f.action WHEN 'start' THEN 'active' WHEN 'end' THEN 'ended' ELSE k.status END,
        ends_on = CASE WHEN f.action <> 'renew' THEN k.ends_on
                       ELSE (k.starts_on + make_interval(months => k.term_months * (1 + (
                                SELECT count(*) FROM sip_contract_actions r
                                WHERE r.contract_id = k.id AND r.action = 'renew')::int)))::date END
    FROM fresh f WHERE k.id = f.contract_id
    RETURNING 1
), subscriptions_changed AS (
    UPDATE subscriptions s SET status = CASE f.action WHEN 'start' THEN 'active' ELSE 'cancelled' END
    FROM fresh f
    WHERE s.id = f.subscription_id AND f.action <> 'renew'
      AND s.status <> CASE f.action WHEN 'start' THEN 'active' ELSE 'cancelled' END
    RETURNING 1
)
SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM linked), (SELECT count(*) FROM subscriptions_changed)
"""


def execute_sip_contracts(panel_db, interval, params=None) -> dict:
    """Execute today's SIP contracts: starts, renewals and ends due, each once (see the module)."""
    params = params or {}
    today = interval.end.astimezone(ZoneInfo(interval.tz)).date()
    args = {"today": today, "clock": interval.end, "batch": int(params.get("contract_batch", BATCH)),
            "priority": JOB_PRIORITY}
    report = StepReport().zero("start", "renew", "end", "jobs_queued", "subscriptions_changed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each pass commits on its own
        for _ in range(int(params.get("contract_passes", PASSES))):
            with conn.transaction():
                recorded = conn.execute(_RECORD, args).fetchall()
                if not recorded:
                    break
                ids, days, actions = (list(column) for column in zip(*recorded))
                jobs, linked, subscriptions = conn.execute(
                    _EXECUTE, {**args, "ids": ids, "days": days, "actions": actions}).fetchone()
                if linked != jobs:   # every queued job belongs to exactly one recorded action
                    raise RuntimeError(f"SIP contracts: {jobs} jobs queued but {linked} linked; rolled back")
            for action in actions:
                report.add(action)
            report.add("jobs_queued", jobs)
            report.add("subscriptions_changed", subscriptions)
        else:
            report.add("contracts_left")
        configured = bool(platforms(conn))
    summary = report.as_dict() if configured else nothing_configured(report)
    summary["day"] = today.isoformat()
    return summary
