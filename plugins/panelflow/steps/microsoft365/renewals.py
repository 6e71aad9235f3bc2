"""Office365Work step 5, "Handle subscription renewal as per backend": O365 terms that ended.

``handle_subscription_renewals``: subscriptions whose term has ended (by the run's clock) are
asked about, each at most hourly: a later end date is a renewal, an expired or deleted one (or a
suspended one that was not to renew) an expiry that cancels the panel's subscription; either is
recorded once per term end. One that Partner Center has not acted on yet is asked again later.
"""

from __future__ import annotations

from datetime import timedelta, timezone

from panelflow.step import StepReport
from panelflow.steps.microsoft365._backend import Profiles, group_by_profile, summary

RENEWAL_RECHECK = timedelta(hours=1)     # a term's end Partner Center has not acted on yet is asked about again after
MAX_RENEWAL_CHECKS = 500                 # per run
ENDED = ("expired", "deleted", "disabled")


_RENEWALS_DUE = """
SELECT p.id, p.name, p.conn_id, p.country, o.id, o.subscription_id, o.commitment_end_date, o.auto_renew,
       o.panel_subscription_id, c.tenant_id
FROM o365_subscriptions o
JOIN csp_customers c ON c.id = o.csp_customer_id
JOIN csp_profiles p ON p.id = c.profile_id AND p.enabled
WHERE o.listed AND o.status = 'active' AND o.commitment_end_date <= %(today)s
  AND (o.renewal_checked_at IS NULL OR o.renewal_checked_at <= %(at)s::timestamptz - %(recheck)s)
ORDER BY p.id, o.commitment_end_date, o.id
LIMIT %(limit)s
"""

# A term's outcome, noted once per term end, and the subscription as Partner Center has it now: a
# renewal brings the new term (end, quantity, duration); an expiry its status and whether it is listed.
_TERM_ENDED = """
WITH noted AS (
    INSERT INTO o365_subscription_renewals (o365_subscription_id, term_end, outcome, new_term_end, status,
                                            panel_subscription_id, panel_cancelled, noted_at)
    VALUES (%(id)s, %(term_end)s, %(outcome)s, %(new_end)s::date, %(status)s, %(panel)s, %(cancelled)s, %(at)s)
    ON CONFLICT DO NOTHING RETURNING 1)
UPDATE o365_subscriptions
SET status = %(status)s, auto_renew = %(auto_renew)s, renewal_checked_at = %(at)s, changed_at = %(at)s,
    commitment_end_date = coalesce(%(new_end)s::date, commitment_end_date),
    quantity = CASE WHEN %(outcome)s = 'renewed' THEN %(quantity)s::integer ELSE quantity END,
    term_duration = CASE WHEN %(outcome)s = 'renewed' THEN %(term)s::text ELSE term_duration END,
    listed = coalesce(%(listed)s::boolean, listed)
WHERE id = %(id)s AND commitment_end_date = %(term_end)s
RETURNING (SELECT count(*) FROM noted)
"""

_CANCEL_PANEL = """
UPDATE subscriptions SET status = 'cancelled' WHERE id = %(panel)s AND status <> 'cancelled' RETURNING id
"""

_CHECKED = """
UPDATE o365_subscriptions SET renewal_checked_at = %(at)s
WHERE id = %(id)s AND (renewal_checked_at IS NULL OR renewal_checked_at < %(at)s)
"""


def handle_subscription_renewals(panel_db, interval, log) -> dict:
    """Handle subscription renewal as per backend."""
    from panelflow.hooks.partner_center import PartnerCenterNotFound

    report = StepReport().zero("due", "renewed", "expired", "not_yet_renewed", "panel_subscriptions_cancelled")
    at = interval.end
    today = at.astimezone(timezone.utc).date()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = conn.execute(_RENEWALS_DUE, {"today": today, "at": at, "recheck": RENEWAL_RECHECK,
                                           "limit": MAX_RENEWAL_CHECKS}).fetchall()
        report.add("due", len(due))
        by_profile = group_by_profile(due)
        profiles = Profiles(conn, "renewals", at, report, log)

        def work(hook, profile):
            for (*_, o_id, sub_id, term_end, auto_renew, panel_id, tenant) in by_profile[profile]:
                if profiles.spent():
                    report.add("deferred")
                    continue
                try:
                    sub = hook.subscription(tenant, sub_id)
                except PartnerCenterNotFound:
                    sub = None  # Partner Center no longer has it: the term ended without renewal
                args = {"id": o_id, "term_end": term_end, "panel": panel_id, "at": at}
                if sub is not None and sub.commitment_end_date is not None and sub.commitment_end_date > term_end:
                    with conn.transaction():
                        (noted,) = conn.execute(_TERM_ENDED, {
                            **args, "outcome": "renewed", "new_end": sub.commitment_end_date, "status": sub.status,
                            "auto_renew": sub.auto_renew, "quantity": sub.quantity, "term": sub.term_duration,
                            "listed": None, "cancelled": False}).fetchone() or (0,)
                    report.add("renewed", noted)
                elif sub is None or sub.status in ENDED or (sub.status == "suspended" and sub.auto_renew is False):
                    with conn.transaction():  # the term's outcome and the panel's subscription together
                        cancelled = bool(panel_id) and bool(conn.execute(_CANCEL_PANEL, args).fetchall())
                        (noted,) = conn.execute(_TERM_ENDED, {
                            **args, "outcome": "expired", "new_end": None, "status": sub.status if sub else "deleted",
                            "auto_renew": sub.auto_renew if sub else auto_renew, "quantity": None, "term": None,
                            "listed": sub is not None, "cancelled": cancelled}).fetchone() or (0,)
                    report.add("expired", noted)
                    report.add("panel_subscriptions_cancelled", int(cancelled))
                else:
                    conn.execute(_CHECKED, args)
                    report.add("not_yet_renewed")

        profiles.each(by_profile, work)
    return summary(report, log, "O365 subscription renewals")

