"""ProvisioningWork: pending O365 subscriptions become Partner Center orders.

``process_pending_o365_subscriptions``: ``o365_orders`` rows the panel queued (one per panel
subscription to provision) become Partner Center orders, each with an ``MS-RequestId`` derived
from the panel subscription and the order's attempt and the offer/quantity the first try sent, so
a resend (a lost answer, a killed worker, the next run) is the same request and Partner Center
places it once; the order and its subscription are recorded in one transaction. Partner Center
unavailable leaves the order pending (resent next run); a refusal (unknown offer, quantity out of
range) fails it with the answer; a customer without a tenant yet waits; a subscription cancelled
before its order was confirmed is never sent again (the reconciliation reports anything a lost
try placed).
"""

from __future__ import annotations

import uuid

from panelflow.step import StepReport
from panelflow.steps.microsoft365._backend import CspProfile, Profiles, summary

MAX_ORDERS = 200                         # per run
ORDER_NAMESPACE = uuid.UUID("1b7a3f52-0d43-4f7e-8c1e-5a0b6f1d2c39")


def order_request_id(subscription_id: int, attempt: int) -> str:
    """The ``MS-RequestId`` of a panel subscription's order: the same for every try of one attempt."""
    return str(uuid.uuid5(ORDER_NAMESPACE, f"panel-subscription:{subscription_id}:order-attempt:{attempt}"))


# What a try of this attempt already sent is what is sent again, whatever the panel changed since.
_PENDING_ORDERS = """
SELECT o.subscription_id, o.attempt, o.tries, coalesce(o.ordered_offer_id, s.o365_offer_id),
       coalesce(o.ordered_quantity, s.quantity), coalesce(o.ordered_billing_cycle, s.billing_cycle), s.plan, s.status,
       s.customer_id, c.id, c.tenant_id, p.id, p.name, p.conn_id, p.enabled
FROM o365_orders o
JOIN subscriptions s ON s.id = o.subscription_id
LEFT JOIN csp_customers c ON c.customer_id = s.customer_id
LEFT JOIN csp_profiles p ON p.id = c.profile_id
WHERE o.status = 'pending' AND o.requested_at <= %(at)s
ORDER BY o.requested_at, o.subscription_id
LIMIT %(limit)s
"""

# The request as first sent for this attempt (kept, so every resend is the same request).
_TRYING = """
UPDATE o365_orders
SET tries = tries + 1, last_tried_at = %(at)s, request_id = %(request_id)s,
    ordered_offer_id = coalesce(ordered_offer_id, %(offer)s),
    ordered_quantity = coalesce(ordered_quantity, %(quantity)s),
    ordered_billing_cycle = coalesce(ordered_billing_cycle, %(cycle)s)
WHERE subscription_id = %(subscription)s AND status = 'pending' AND attempt = %(attempt)s
RETURNING ordered_offer_id, ordered_quantity, ordered_billing_cycle
"""

# Linked to the panel's subscription unless another Partner Center subscription already is (the
# reconciliation then reports both).
_RECORD_SUBSCRIPTION = """
INSERT INTO o365_subscriptions AS o (csp_customer_id, subscription_id, panel_subscription_id, offer_id, offer_name,
                                     friendly_name, quantity, status, billing_cycle, order_id, listed, first_seen_at,
                                     changed_at)
SELECT %(csp_customer)s, %(pc_subscription)s,
       CASE WHEN NOT EXISTS (SELECT 1 FROM o365_subscriptions l WHERE l.panel_subscription_id = %(subscription)s
                                                                AND l.subscription_id <> %(pc_subscription)s)
            THEN %(subscription)s::bigint END,
       %(offer)s, %(name)s, %(name)s, %(quantity)s, %(status)s, %(cycle)s, %(order)s, true, %(at)s, %(at)s
ON CONFLICT (subscription_id) DO UPDATE
SET panel_subscription_id = coalesce(o.panel_subscription_id, EXCLUDED.panel_subscription_id),
    order_id = coalesce(o.order_id, EXCLUDED.order_id)
"""

_PLACED = """
UPDATE o365_orders SET status = 'placed', order_id = %(order)s, o365_subscription_id = %(pc_subscription)s,
       placed_at = %(at)s, last_error = NULL
WHERE subscription_id = %(subscription)s AND status = 'pending'
RETURNING 1
"""

_ORDER_PROBLEM = """
UPDATE o365_orders SET status = %(status)s, last_error = %(error)s
WHERE subscription_id = %(subscription)s AND status = 'pending'
"""

# The panel's billing cycles as Partner Center's (it has no quarterly term); an ordered one is already one.
CYCLES = {"monthly": "monthly", "quarterly": "monthly", "yearly": "annual", "annual": "annual"}


def process_pending_o365_subscriptions(panel_db, interval, log) -> dict:
    """Process pending O365 subscriptions."""
    from panelflow.hooks.partner_center import (
        PartnerCenterAuthenticationError,
        PartnerCenterRequestError,
        PartnerCenterResponseError,
        PartnerCenterUnavailable,
    )

    report = StepReport().zero("pending", "orders_placed", "orders_replayed", "orders_failed", "orders_waiting")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        pending = conn.execute(_PENDING_ORDERS, {"at": at, "limit": MAX_ORDERS}).fetchall()
        report.add("pending", len(pending))
        orderable: dict[CspProfile, list] = {}
        for row in pending:
            (sub, _, tries, offer, _, _, plan, status, customer, _, tenant, profile_id, profile_name, conn_id,
             enabled) = row
            record = f"subscription {sub} ({plan}) of customer {customer}"
            if offer is None:
                conn.execute(_ORDER_PROBLEM, {"status": "failed", "subscription": sub,
                                              "error": "not an O365 subscription (no o365_offer_id)"})
                report.add("orders_failed")
                report.skip("not an O365 subscription", record)
            elif status == "cancelled":  # never (re)sent: a resend could place it now; a try that did is
                # a subscription at Partner Center the panel does not have, which the reconciliation reports
                error = "the subscription was cancelled before it was ordered" + (
                    f" (after {tries} unconfirmed tr{'ies' if tries > 1 else 'y'}: see the reconciliation)"
                    if tries else "")
                conn.execute(_ORDER_PROBLEM, {"status": "failed", "subscription": sub, "error": error})
                report.add("orders_failed")
                report.skip("subscription cancelled before it was ordered", record)
            elif tenant is None:
                report.add("orders_waiting")
                report.skip("customer has no Partner Center tenant yet", record)
            elif not enabled:
                report.add("orders_waiting")
                report.skip("the customer's CSP profile is disabled", f"{record}: profile {profile_name}")
            else:
                orderable.setdefault(CspProfile(profile_id, profile_name, conn_id, None), []).append(row)
        profiles = Profiles(conn, "orders", at, report, log)

        def work(hook, profile):
            for row in orderable[profile]:
                (sub, attempt, _, offer, quantity, cycle, plan, _, customer, csp_customer, tenant, *_) = row
                record = f"subscription {sub} ({plan}) of customer {customer}"
                if profiles.spent():
                    report.add("orders_waiting")
                    continue
                request_id = order_request_id(sub, attempt)
                sent = conn.execute(_TRYING, {"at": at, "request_id": request_id, "offer": offer,
                                              "quantity": quantity, "cycle": CYCLES.get(cycle, "monthly"),
                                              "subscription": sub, "attempt": attempt}).fetchone()
                if sent is None:  # another run finished it meanwhile
                    continue
                offer_sent, quantity_sent, cycle_sent = sent
                try:
                    order = hook.place_order(tenant, request_id=request_id, offer_id=offer_sent,
                                             quantity=quantity_sent, billing_cycle=cycle_sent)
                except PartnerCenterAuthenticationError:
                    raise  # the profile's credentials: every order of it would fail the same way
                except (PartnerCenterUnavailable, PartnerCenterResponseError) as exc:
                    # placed or not is unknown: the next run resends the same request, which Partner Center dedupes
                    conn.execute(_ORDER_PROBLEM, {"status": "pending", "subscription": sub, "error": str(exc)[:1000]})
                    report.add("orders_waiting")
                    report.skip("order not confirmed yet; resent next run", f"{record}: {exc}")
                    if isinstance(exc, PartnerCenterUnavailable):
                        raise
                    continue
                except PartnerCenterRequestError as exc:
                    conn.execute(_ORDER_PROBLEM, {"status": "failed", "subscription": sub, "error": str(exc)[:1000]})
                    report.add("orders_failed")
                    report.skip("Partner Center refused the order", f"{record}: {exc}")
                    continue
                line = next((li for li in order.lines if li.subscription_id), None)
                with conn.transaction():  # the order and its subscription together
                    if line is not None:
                        conn.execute(_RECORD_SUBSCRIPTION, {
                            "csp_customer": csp_customer, "pc_subscription": line.subscription_id.lower(),
                            "subscription": sub, "offer": line.offer_id, "name": line.friendly_name or plan,
                            "quantity": line.quantity if line.quantity is not None else quantity_sent,
                            "status": "active" if (order.status or "").lower() == "completed" else "pending",
                            "cycle": cycle_sent, "order": order.id, "at": at})
                    placed = conn.execute(_PLACED, {"order": order.id, "subscription": sub, "at": at,
                                                    "pc_subscription": line.subscription_id.lower() if line else None
                                                    }).fetchone()
                if placed:
                    report.add("orders_placed")
                    report.add("orders_replayed", int(order.replayed))

        profiles.each(orderable, work)
    return summary(report, log, "pending O365 subscriptions")

