"""ProvisioningWork's panel-database housekeeping steps (tables: migration 0011).

Every step measures time from the run's clock (``interval.end``), never the wall clock; every one
can be rerun or retried for the same interval and changes nothing more; a bad record is counted
and named in the step's report (:class:`~panelflow.step.StepReport`) and skipped while the rest
is processed. What each step decides, precisely:

- ``update_contact_primary_emails`` (9): the customer's own address (``customers.email``) is the
  source; its primary contact carries it. A customer without a primary contact gets the earliest
  contact with that address (case-insensitive) as its primary. Reported: a customer with contacts
  but no usable address, or with contacts, none primary and none with its address. Closed
  customers are left alone.
- ``update_registrar_status`` (13): each panel domain takes its status, expiry and account from
  the ``registrar_domains`` row(s) DomainNameDataSyncThread keeps for it (linked by ``domain_id``
  or by name): the listed row, else the latest unlisted one (``registrar_listed = false``: the
  registrar no longer has it). Registrar columns of a domain no registrar row matches any more
  are cleared. Reported: a domain listed by two accounts at once, a listed row without a status.
- ``fill_blank_o365_subscription_names`` (19): a subscription with an ``o365_offer_id`` and a
  blank plan gets the offer's name from ``o365_price_lists`` as published by the run's day — the
  subscription's currency first, then the price effective on that day (else the next one).
  Reported: an offer the price list does not have.
- ``suspend_expired_csp_trials`` (24): a CSP trial (``csp_trials``) whose end is at or before the
  clock, not converted, is acted on once: an active subscription is suspended, an O365/CSP group
  action job is queued to suspend it at Microsoft, and the customer gets one notice; a subscription
  already suspended or cancelled is only recorded (``already_inactive``), so a later reactivation
  by staff is not undone. Reported: a customer without a usable address (suspended, no notice).
- ``merge_addons`` (28): the active add-ons of a subscription that is not cancelled, with the same
  name (compared trimmed, case-insensitively) and the same price, become one: the oldest (lowest
  id) carries the summed quantity, the others are cancelled with ``merged_into`` naming it and
  keep their own quantity as it was. The amount billed for the next period is unchanged
  (price × quantity is exact in cents). Reported: a sum above the quantity column's range.
- ``send_failure_notifications`` (29): failures found within ``FAILURE_LOOKBACK`` of the clock
  that no notice has covered yet, one e-mail per failure and operator (ProvisioningWork's
  ``alert_to`` in the catalog). A failed group-action job is one failure per attempt; a service-
  queue order's ``error`` log entries not in a notice yet are one failure (the notice names them;
  every entry is in at most one notice). Reported: no operator addresses (nothing is recorded,
  so the notices go once addresses are configured).
- ``delete_unverified_customers`` (34): self sign-ups (``signed_up_at``) never verified and older
  than ``UNVERIFIED_DAYS`` at the clock, with no subscriptions, invoices, credit notes, payment
  profiles or domains, are deleted (their contacts, credentials, recycle bin and recovery rows
  with them), oldest first, at most ``MAX_UNVERIFIED_DELETES`` per run however often it is
  retried (bookkept in ``retention_runs`` like the retention deletes); each deletion leaves an
  audit-log entry with the customer's id and sign-up time only. Reported: a customer still
  referenced by a row the step does not know of (the database refuses the delete).
- ``salt_passwords`` (38): legacy unsalted hex digests (md5, sha1, sha256) are replaced by
  scrypt of the digest with a random salt, scheme ``scrypt+<legacy>``, salt and parameters on the
  row (see migration 0011 and :func:`verify_password`). Batched, at most ``MAX_SALTED_PER_RUN``
  per run and within ``SALT_BUDGET_SECONDS``; a password changed meanwhile is not overwritten.
  Reported (never with the hash): a stored value that is not a digest of its scheme.
- ``sync_subscription_credit_limits`` (39): for a customer with a ``credit_limit``, each of its
  subscriptions that is not cancelled gets ``credit_limit = max(customer's limit − the unpaid
  invoice lines (amount + tax, invoices open or payment declined) of the customer's other
  subscriptions, 0)``: what is left of the customer's limit after the others' usage. The
  subscription's own unpaid lines are kept beside it (``own_usage``), so its headroom is
  ``credit_limit − own_usage``. Rows of subscriptions cancelled or of customers without a limit
  are removed. Reported: a customer with unpaid invoices in another currency than its own, a
  subscription in another currency than its customer (both keep their last row).
- ``send_recycle_bin_notifications`` (41) and ``send_recovery_notifications`` (42): an item in
  the recycle bin (``purge_at``) or a distribution list in recovery (purged ``RECOVERY_DAYS``
  after its deletion) gets a notice at each of its reminder days before the purge, once per item
  and reminder; a run late past several sends only the latest; nothing once the purge is due.
  Reported: a customer without a usable address (nothing recorded: sent once it is fixed).
- ``purge_expired_recovery_distribution_lists`` (43): distribution lists in recovery for longer
  than ``RECOVERY_DAYS`` are deleted for good, bounded per run (the retention engine).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from psycopg import errors
from psycopg.types.json import Jsonb

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue
from panelflow.services.retention import BOOKKEEPING_DAYS, delete_older_than

THREAD = "ProvisioningWork"
EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"
_MAILABLE = f"coalesce(btrim(c.email) ~ '{EMAIL_RE}', false)"


def _report_skips(report: StepReport, rows) -> None:
    """Rows of (reason, count, examples): every bad record counts, the first ``keep`` are named."""
    for reason, count, examples in rows:
        examples = list(examples or ())[: max(report.keep - len(report.examples), 0)]
        for example in examples:
            report.skip(reason, example)
        report.skipped[reason] += count - len(examples)


def _zeros(report: StepReport, *keys: str) -> None:
    for key in keys:
        report.counts.setdefault(key, 0)


def _local_date(moment, tz: str):
    return moment.astimezone(ZoneInfo(tz)).date()


# --- 9: primary e-mail of customer contacts ------------------------------------------------------

_PROMOTE_PRIMARY = f"""
UPDATE customer_contacts k SET is_primary = true, email_synced_at = %(at)s
FROM (
    SELECT DISTINCT ON (o.customer_id) o.id
    FROM customer_contacts o JOIN customers c ON c.id = o.customer_id
    WHERE c.status <> 'closed' AND {_MAILABLE}
      AND lower(btrim(o.email)) = lower(btrim(c.email))
      AND NOT EXISTS (SELECT 1 FROM customer_contacts p WHERE p.customer_id = o.customer_id AND p.is_primary)
    ORDER BY o.customer_id, o.id
) first
WHERE k.id = first.id
"""

_SYNC_PRIMARY_EMAIL = f"""
UPDATE customer_contacts k SET email = btrim(c.email), email_synced_at = %(at)s
FROM customers c
WHERE c.id = k.customer_id AND k.is_primary AND c.status <> 'closed' AND {_MAILABLE}
  AND k.email IS DISTINCT FROM btrim(c.email)
"""

_CONTACT_SKIPS = f"""
WITH bad AS (
    SELECT c.id, c.email,
           CASE WHEN NOT {_MAILABLE} THEN 'customer has no usable e-mail address'
                WHEN NOT EXISTS (SELECT 1 FROM customer_contacts p WHERE p.customer_id = c.id AND p.is_primary)
                    THEN 'no primary contact, and no contact with the customer''s address' END AS reason
    FROM customers c
    WHERE c.status <> 'closed' AND EXISTS (SELECT 1 FROM customer_contacts k WHERE k.customer_id = c.id)
)
SELECT reason, count(*), (array_agg('customer ' || id ORDER BY id))[1:%(keep)s]
FROM bad WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason
"""


def update_contact_primary_emails(panel_db, interval) -> dict:
    """Updates primary email in customer contacts."""
    report = StepReport()
    args = {"at": interval.end, "keep": report.keep}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():
            report.add("primary_contacts_set", conn.execute(_PROMOTE_PRIMARY, args).rowcount)
            report.add("emails_updated", conn.execute(_SYNC_PRIMARY_EMAIL, args).rowcount)
        _report_skips(report, conn.execute(_CONTACT_SKIPS, args).fetchall())
    return report.as_dict()


# --- 13: registrar status of the panel's domains ------------------------------------------------

# Per panel domain, the registrar row it goes by, and why it is skipped (if it is).
_REGISTRAR_STATE = """
CREATE TEMP TABLE registrar_state ON COMMIT DROP AS
WITH matched AS (
    SELECT d.id AS domain_id, r.id AS row_id, r.account_id, r.status, r.expires_at, r.listed, r.changed_at
    FROM domains d JOIN registrar_domains r ON r.domain_id = d.id
    UNION
    SELECT d.id, r.id, r.account_id, r.status, r.expires_at, r.listed, r.changed_at
    FROM domains d JOIN registrar_domains r ON r.name = lower(rtrim(d.name, '.'))
), ranked AS (
    SELECT m.*,
           array_agg(account_id) FILTER (WHERE listed) OVER (PARTITION BY domain_id) AS listed_by,
           row_number() OVER (PARTITION BY domain_id ORDER BY listed DESC, changed_at DESC, row_id DESC) AS rn
    FROM matched m
)
SELECT d.id AS domain_id, d.name, r.account_id, r.status, r.expires_at, r.listed, r.listed_by,
       CASE WHEN cardinality(r.listed_by) > 1 THEN 'listed by more than one registrar account'
            WHEN r.listed AND r.status IS NULL THEN 'the registrar gave no status' END AS skip
FROM domains d LEFT JOIN ranked r ON r.domain_id = d.id AND r.rn = 1
WHERE r.domain_id IS NOT NULL OR d.registrar_status_at IS NOT NULL
"""

_REGISTRAR_UPDATE = """
UPDATE domains d
SET registrar_account_id = s.account_id, registrar_status = s.status, registrar_expires_at = s.expires_at,
    registrar_listed = s.listed, registrar_status_at = %(at)s
FROM registrar_state s
WHERE s.domain_id = d.id AND s.skip IS NULL
  AND (d.registrar_account_id, d.registrar_status, d.registrar_expires_at, d.registrar_listed)
      IS DISTINCT FROM (s.account_id, s.status, s.expires_at, s.listed)
RETURNING s.account_id IS NULL AS cleared
"""

_REGISTRAR_TALLY = """
SELECT count(*) FILTER (WHERE account_id IS NOT NULL), count(*) FILTER (WHERE listed IS false AND skip IS NULL)
FROM registrar_state
"""

_REGISTRAR_SKIPS = """
SELECT skip, count(*), (array_agg(
        name || CASE WHEN cardinality(listed_by) > 1
                     THEN ' (accounts ' || (SELECT string_agg(a.name, ', ' ORDER BY a.name) FROM registrar_accounts a
                                            WHERE a.id = ANY(listed_by)) || ')' ELSE '' END
        ORDER BY name))[1:%(keep)s]
FROM registrar_state WHERE skip IS NOT NULL GROUP BY skip ORDER BY skip
"""


def update_registrar_status(panel_db, interval) -> dict:
    """Update domain name registrars status."""
    report = StepReport()
    args = {"at": interval.end, "keep": report.keep}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():
            conn.execute(_REGISTRAR_STATE)
            at_registrar, unlisted = conn.execute(_REGISTRAR_TALLY).fetchone()
            changed = [cleared for (cleared,) in conn.execute(_REGISTRAR_UPDATE, args).fetchall()]
            _report_skips(report, conn.execute(_REGISTRAR_SKIPS, args).fetchall())
    report.add("domains_at_registrar", at_registrar)
    report.add("domains_unlisted", unlisted)
    report.add("domains_updated", sum(1 for c in changed if not c))
    report.add("domains_cleared", sum(1 for c in changed if c))
    return report.as_dict()


# --- 19: blank O365 subscription names ------------------------------------------------------------

_BLANK_O365 = """
CREATE TEMP TABLE o365_blank_names ON COMMIT DROP AS
SELECT s.id, s.o365_offer_id, n.offer_name
FROM subscriptions s
LEFT JOIN LATERAL (
    SELECT btrim(p.offer_name) AS offer_name FROM o365_price_lists p
    WHERE p.offer_id = s.o365_offer_id AND btrim(p.offer_name) <> '' AND p.published_on <= %(day)s
    ORDER BY p.currency = s.currency DESC, p.effective_from <= %(day)s DESC, abs(p.effective_from - %(day)s::date),
             p.id DESC
    LIMIT 1) n ON true
WHERE s.o365_offer_id IS NOT NULL AND btrim(s.plan) = ''
"""

# Rows BillingWork holds locked are left for the next run rather than waited for.
_FILL_O365 = """
UPDATE subscriptions s SET plan = t.offer_name
FROM (SELECT x.id, b.offer_name FROM subscriptions x JOIN o365_blank_names b ON b.id = x.id
      WHERE b.offer_name IS NOT NULL AND btrim(x.plan) = ''
      FOR UPDATE OF x SKIP LOCKED) t
WHERE s.id = t.id
"""

_O365_TALLY = """
SELECT count(*) FILTER (WHERE offer_name IS NOT NULL),
       count(*) FILTER (WHERE offer_name IS NULL),
       (array_agg('subscription ' || id || ' (offer ' || o365_offer_id || ')' ORDER BY id)
            FILTER (WHERE offer_name IS NULL))[1:%(keep)s]
FROM o365_blank_names
"""


def fill_blank_o365_subscription_names(panel_db, interval) -> dict:
    """Update blank subscription names in O365 subscription tables."""
    report = StepReport()
    args = {"day": _local_date(interval.end, interval.tz), "keep": report.keep}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():
            conn.execute(_BLANK_O365, args)
            named, unknown, examples = conn.execute(_O365_TALLY, args).fetchone()
            filled = conn.execute(_FILL_O365).rowcount
    _report_skips(report, [("offer not in the O365 price list", unknown, examples)] if unknown else [])
    report.add("blank_names", named + unknown)
    report.add("names_filled", filled)
    report.add("deferred_locked", named - filled)
    return report.as_dict()


# --- 24: expired CSP trials -----------------------------------------------------------------------

MAX_TRIALS_PER_RUN = 500
CSP_TRIAL_TEMPLATE = "csp_trial_suspended"
CSP_SUSPEND_BACKEND = "o365"  # Office365Work's O365/CSP group-action queue

_EXPIRE_TRIALS = f"""
WITH due AS (
    SELECT t.subscription_id, s.status AS was, s.customer_id, s.o365_offer_id, t.trial_ends_at,
           coalesce(nullif(btrim(s.plan), ''), 'subscription ' || s.id) AS plan
    FROM csp_trials t JOIN subscriptions s ON s.id = t.subscription_id
    WHERE t.handled_at IS NULL AND t.converted_at IS NULL AND t.trial_ends_at <= %(at)s
    ORDER BY t.trial_ends_at, t.subscription_id
    LIMIT %(limit)s
    FOR UPDATE OF t, s SKIP LOCKED
), suspended AS (
    UPDATE subscriptions s SET status = 'suspended' FROM due
    WHERE s.id = due.subscription_id AND due.was = 'active'
    RETURNING s.id
), handled AS (
    UPDATE csp_trials t SET handled_at = %(at)s,
           outcome = CASE WHEN due.was = 'active' THEN 'suspended' ELSE 'already_inactive' END
    FROM due WHERE t.subscription_id = due.subscription_id
    RETURNING t.subscription_id, t.outcome
)
SELECT h.subscription_id, h.outcome, d.plan, d.o365_offer_id, d.trial_ends_at, c.id, c.name, btrim(c.email),
       {_MAILABLE}, p.name, (SELECT count(*) FROM suspended)
FROM handled h JOIN due d USING (subscription_id) JOIN customers c ON c.id = d.customer_id
JOIN providers p ON p.id = c.provider_id
ORDER BY h.subscription_id
"""


def suspend_expired_csp_trials(panel_db, interval) -> dict:
    """Suspend expired CSP trail offers."""
    report = StepReport()
    _zeros(report, "suspended", "already_inactive", "backend_jobs", "notices_queued")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # the suspension, its backend job and its notice together, or none
            rows = conn.execute(_EXPIRE_TRIALS, {"at": at, "limit": MAX_TRIALS_PER_RUN}).fetchall()
            for (subscription_id, outcome, plan, offer_id, ends_at, customer_id, customer_name, email, mailable,
                 provider, _) in rows:
                report.add(outcome)
                if outcome != "suspended":
                    continue
                (job_id,) = conn.execute(
                    "INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES (%s, %s, %s, 3)"
                    " RETURNING id",
                    (CSP_SUSPEND_BACKEND, "suspend_subscription", Jsonb({
                        "subscription_id": subscription_id, "offer_id": offer_id, "reason": "csp_trial_expired",
                        "trial_ends_at": ends_at.isoformat()})),
                ).fetchone()
                report.add("backend_jobs")
                key = None
                if mailable:
                    key = f"csp-trial-suspended:{subscription_id}"
                    report.add("notices_queued", enqueue(
                        conn, dedupe_key=key, to=email, template=CSP_TRIAL_TEMPLATE, not_before=at, context={
                            "customer_name": customer_name, "provider": provider, "plan": plan,
                            "subscription_id": subscription_id,
                            "trial_ended_on": _local_date(ends_at, interval.tz).isoformat()}))
                else:
                    report.skip("suspended without a notice: customer has no usable e-mail address",
                                f"subscription {subscription_id} (customer {customer_id})")
                conn.execute("UPDATE csp_trials SET outbox_key = %s, backend_job_id = %s WHERE subscription_id = %s",
                             (key, job_id, subscription_id))
        (left,) = conn.execute("SELECT count(*) FROM csp_trials WHERE handled_at IS NULL AND converted_at IS NULL"
                               " AND trial_ends_at <= %s", (at,)).fetchone()
    report.add("deferred", left)  # locked by another transaction, or beyond this run's bound
    return report.as_dict()


# --- 28: merge add-ons --------------------------------------------------------------------------

MERGE_BATCH = 200                 # subscriptions per transaction
MAX_MERGE_SUBSCRIPTIONS = 5000    # per run
_INT_MAX = 2**31 - 1

_DUPLICATED = """
SELECT DISTINCT a.subscription_id
FROM subscription_addons a JOIN subscriptions s ON s.id = a.subscription_id
WHERE a.status = 'active' AND s.status <> 'cancelled'
GROUP BY a.subscription_id, lower(btrim(a.name)), a.price
HAVING count(*) > 1
ORDER BY a.subscription_id
LIMIT %(limit)s
"""

# Run after the subscriptions' active add-ons are locked: reads them as they are now.
_MERGE = f"""
WITH grp AS (
    SELECT subscription_id, lower(btrim(name)) AS key, price, min(id) AS keep_id, sum(quantity) AS total,
           count(*) AS n
    FROM subscription_addons
    WHERE subscription_id = ANY(%(subs)s::bigint[]) AND status = 'active'
    GROUP BY 1, 2, 3 HAVING count(*) > 1
), ok AS (
    SELECT * FROM grp WHERE total <= {_INT_MAX}
), kept AS (
    UPDATE subscription_addons a SET quantity = ok.total FROM ok WHERE a.id = ok.keep_id
    RETURNING a.id
), merged AS (
    UPDATE subscription_addons a SET status = 'cancelled', merged_into = ok.keep_id, merged_at = %(at)s
    FROM ok
    WHERE a.subscription_id = ok.subscription_id AND lower(btrim(a.name)) = ok.key AND a.price = ok.price
      AND a.status = 'active' AND a.id <> ok.keep_id
    RETURNING a.id
)
SELECT (SELECT count(*) FROM kept), (SELECT count(*) FROM merged),
       (SELECT count(*) FROM grp WHERE total > {_INT_MAX}),
       (SELECT array_agg('subscription ' || subscription_id || ': ' || n || ' add-ons "' || key || '" at ' || price
                         || ', quantity ' || total ORDER BY subscription_id, key)
        FROM grp WHERE total > {_INT_MAX})
"""


def merge_addons(panel_db, interval) -> dict:
    """Merge Add-Ons."""
    report = StepReport()
    _zeros(report, "subscriptions", "addons_kept", "addons_merged")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        subs = [r[0] for r in conn.execute(_DUPLICATED, {"limit": MAX_MERGE_SUBSCRIPTIONS}).fetchall()]
        for i in range(0, len(subs), MERGE_BATCH):
            batch = subs[i:i + MERGE_BATCH]
            with conn.transaction():
                conn.execute("SELECT id FROM subscription_addons WHERE subscription_id = ANY(%s::bigint[])"
                             " AND status = 'active' ORDER BY id FOR UPDATE", (batch,))
                kept, merged, too_big, examples = conn.execute(_MERGE, {"subs": batch, "at": interval.end}).fetchone()
            report.add("subscriptions", len(batch))
            report.add("addons_kept", kept)
            report.add("addons_merged", merged)
            if too_big:
                _report_skips(report, [("summed quantity out of range", too_big, examples)])
    return report.as_dict()


# --- 29: service queue and job failure notifications ----------------------------------------------

FAILURE_LOOKBACK = timedelta(days=7)   # older failures are not noticed any more (a first run included)
MAX_FAILURE_NOTICES = 200              # per run; the rest on the next runs, oldest first
FAILURE_ENTRIES_SHOWN = 20
FAILURE_NOTICE_KEEP = timedelta(days=120)  # notices outlive the 90 days the logs are kept
FAILURE_TEMPLATE = "provisioning_failure"

# New error entries, per order: one notice each, its entries recorded with it.
_ORDER_FAILURES = """
WITH fresh AS (
    SELECT l.id, l.order_id, l.message, l.logged_at FROM service_queue_logs l
    WHERE l.level = 'error' AND l.logged_at > %(since)s AND l.logged_at <= %(at)s
      AND NOT EXISTS (SELECT 1 FROM failure_notice_entries e WHERE e.log_id = l.id)
), orders AS (
    SELECT order_id, min(id) AS first_id, min(logged_at) AS failed_at FROM fresh
    GROUP BY order_id ORDER BY min(logged_at), order_id LIMIT %(limit)s
), notices AS (
    INSERT INTO failure_notices (source, ref_id, occurrence, failed_at, error, recipients, noticed_at)
    SELECT 'service_queue', o.order_id, o.first_id, o.failed_at, f.message, %(to)s, %(at)s
    FROM orders o JOIN fresh f ON f.id = o.first_id
    ORDER BY o.failed_at, o.order_id
    ON CONFLICT (source, ref_id, occurrence) DO NOTHING
    RETURNING id, ref_id, occurrence, failed_at
), entries AS (
    INSERT INTO failure_notice_entries (log_id, notice_id)
    SELECT f.id, n.id FROM fresh f JOIN notices n ON n.ref_id = f.order_id
    ON CONFLICT (log_id) DO NOTHING
    RETURNING log_id, notice_id
)
SELECT n.id, n.ref_id, n.occurrence, n.failed_at,
       (SELECT jsonb_agg(jsonb_build_object('logged_at', f.logged_at, 'message', f.message) ORDER BY f.id)
        FROM entries e JOIN fresh f ON f.id = e.log_id WHERE e.notice_id = n.id)
FROM notices n ORDER BY n.failed_at, n.ref_id
"""

_JOB_FAILURES = """
WITH failed AS (
    SELECT j.id, j.attempts, j.error, coalesce(j.finished_at, j.created_at) AS failed_at
    FROM group_action_jobs j
    WHERE j.status = 'failed'
      AND coalesce(j.finished_at, j.created_at) > %(since)s AND coalesce(j.finished_at, j.created_at) <= %(at)s
      AND NOT EXISTS (SELECT 1 FROM failure_notices n
                      WHERE n.source = 'group_action_job' AND n.ref_id = j.id AND n.occurrence = j.attempts)
    ORDER BY coalesce(j.finished_at, j.created_at), j.id
    LIMIT %(limit)s
), notices AS (
    INSERT INTO failure_notices (source, ref_id, occurrence, failed_at, error, recipients, noticed_at)
    SELECT 'group_action_job', id, attempts, failed_at, error, %(to)s, %(at)s FROM failed
    ON CONFLICT (source, ref_id, occurrence) DO NOTHING
    RETURNING id, ref_id, occurrence, failed_at, error
)
SELECT n.id, n.ref_id, n.occurrence, n.failed_at, n.error, j.backend, j.action
FROM notices n JOIN group_action_jobs j ON j.id = n.ref_id ORDER BY n.failed_at, n.ref_id
"""

_PENDING_FAILURES = """
SELECT (SELECT count(DISTINCT l.order_id) FROM service_queue_logs l
        WHERE l.level = 'error' AND l.logged_at > %(since)s AND l.logged_at <= %(at)s
          AND NOT EXISTS (SELECT 1 FROM failure_notice_entries e WHERE e.log_id = l.id)),
       (SELECT count(*) FROM group_action_jobs j
        WHERE j.status = 'failed'
          AND coalesce(j.finished_at, j.created_at) > %(since)s AND coalesce(j.finished_at, j.created_at) <= %(at)s
          AND NOT EXISTS (SELECT 1 FROM failure_notices n
                          WHERE n.source = 'group_action_job' AND n.ref_id = j.id AND n.occurrence = j.attempts))
"""


def _operators() -> list[str]:
    """ProvisioningWork's alert addresses from the catalog (its own, else its domain's)."""
    from panelflow.catalog.loader import load_catalog

    catalog = load_catalog()
    return list(catalog.alert_to(catalog.thread(THREAD)))


def send_failure_notifications(panel_db, interval, log) -> dict:
    """Send service queue and jobs failure notifications."""
    report = StepReport()
    _zeros(report, "order_failures", "job_failures", "emails_queued")
    at = interval.end
    args = {"at": at, "since": at - FAILURE_LOOKBACK}
    try:
        recipients = sorted({a.strip() for a in _operators() if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a.strip())})
    except Exception as exc:  # nothing is recorded: the failures are noticed once the catalog loads again
        log.warning("no failure notice recipients: %s", exc)
        recipients = []
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        if not recipients:
            orders, jobs = conn.execute(_PENDING_FAILURES, args).fetchone()
            if orders + jobs:
                _report_skips(report, [("no operator addresses for failure notices", orders + jobs,
                                        [f"{orders} order(s), {jobs} job(s) not noticed"])])
            return report.as_dict()
        args["to"] = recipients
        context_base = {"noticed_at": at.isoformat(), "more": 0, "entries": [], "error": None, "backend": None,
                        "action": None, "attempt": None}
        with conn.transaction():  # notices and their e-mails together, or neither
            orders = conn.execute(_ORDER_FAILURES, {**args, "limit": MAX_FAILURE_NOTICES}).fetchall()
            jobs = conn.execute(_JOB_FAILURES, {**args, "limit": MAX_FAILURE_NOTICES - len(orders)}).fetchall()
            queued = 0
            for _, order_id, first_id, failed_at, entries in orders:
                entries = entries or []
                context = {**context_base, "source": "service_queue", "ref_id": order_id,
                           "failed_at": failed_at.isoformat(), "entries": entries[:FAILURE_ENTRIES_SHOWN],
                           "more": max(len(entries) - FAILURE_ENTRIES_SHOWN, 0)}
                for address in recipients:
                    queued += enqueue(conn, dedupe_key=f"failure:service_queue:{order_id}:{first_id}:{address}",
                                      to=address, template=FAILURE_TEMPLATE, context=context, not_before=at,
                                      priority=2)
            for _, job_id, attempt, failed_at, error, backend, action in jobs:
                context = {**context_base, "source": "group_action_job", "ref_id": job_id, "attempt": attempt,
                           "failed_at": failed_at.isoformat(), "error": error or "(no error recorded)",
                           "backend": backend, "action": action}
                for address in recipients:
                    queued += enqueue(conn, dedupe_key=f"failure:group_action_job:{job_id}:{attempt}:{address}",
                                      to=address, template=FAILURE_TEMPLATE, context=context, not_before=at,
                                      priority=2)
        left_orders, left_jobs = conn.execute(_PENDING_FAILURES, args).fetchone()
        pruned = delete_older_than(conn, task="prune_failure_notices", table="failure_notices", column="noticed_at",
                                   cutoff=at - FAILURE_NOTICE_KEEP, interval_end=at, max_rows=10_000, batch_size=5000)
    report.add("order_failures", len(orders))
    report.add("job_failures", len(jobs))
    report.add("emails_queued", queued)
    report.add("deferred", left_orders + left_jobs)
    report.add("notices_pruned", pruned["deleted"])
    return report.as_dict()


# --- 34: unverified customers ---------------------------------------------------------------------

UNVERIFIED_DAYS = 30
MAX_UNVERIFIED_DELETES = 1000   # per run, whatever retries
UNVERIFIED_BATCH = 200
_UNVERIFIED_TASK = "delete_unverified_customers"

_UNVERIFIED = """
SELECT c.id FROM customers c
WHERE c.signed_up_at IS NOT NULL AND c.email_verified_at IS NULL AND c.signed_up_at < %(cutoff)s
  AND c.id <> ALL(%(refused)s::bigint[])
  AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.customer_id = c.id)
  AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = c.id)
  AND NOT EXISTS (SELECT 1 FROM credit_notes n WHERE n.customer_id = c.id)
  AND NOT EXISTS (SELECT 1 FROM payment_profiles p WHERE p.customer_id = c.id)
  AND NOT EXISTS (SELECT 1 FROM domains d WHERE d.customer_id = c.id)
ORDER BY c.signed_up_at, c.id
LIMIT %(limit)s
FOR UPDATE OF c SKIP LOCKED
"""

# The audit entry names the customer by id and sign-up time only: its personal data goes.
_DELETE_UNVERIFIED = """
WITH gone AS (
    DELETE FROM customers c
    WHERE c.id = ANY(%(ids)s::bigint[]) AND c.signed_up_at IS NOT NULL AND c.email_verified_at IS NULL
      AND c.signed_up_at < %(cutoff)s
    RETURNING c.id, c.signed_up_at
)
INSERT INTO audit_logs (occurred_at, actor, action, target, details)
SELECT %(at)s, 'panelflow', 'customer.deleted_unverified', 'customer:' || id,
       jsonb_build_object('signed_up_at', signed_up_at, 'unverified_days', %(days)s::int)
FROM gone
"""

_BUDGET = """
INSERT INTO retention_runs (task, interval_end) VALUES (%s, %s)
ON CONFLICT (task, interval_end) DO UPDATE SET task = EXCLUDED.task RETURNING deleted
"""


def delete_unverified_customers(panel_db, interval) -> dict:
    """Delete unverified customers."""
    report = StepReport()
    at = interval.end
    cutoff = at - timedelta(days=UNVERIFIED_DAYS)
    args = {"at": at, "cutoff": cutoff, "days": UNVERIFIED_DAYS}
    refused: list[int] = []
    deleted = batches = 0
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        for _ in range(-(-MAX_UNVERIFIED_DELETES // UNVERIFIED_BATCH) + 1):
            with conn.transaction():
                (done,) = conn.execute(_BUDGET, (_UNVERIFIED_TASK, at)).fetchone()  # locks: reruns take turns
                want = min(UNVERIFIED_BATCH, MAX_UNVERIFIED_DELETES - done)
                if want <= 0:
                    break
                ids = [r[0] for r in conn.execute(_UNVERIFIED, {**args, "refused": refused, "limit": want})]
                n = 0
                if ids:
                    try:
                        with conn.transaction():
                            n = conn.execute(_DELETE_UNVERIFIED, {**args, "ids": ids}).rowcount
                    except errors.IntegrityError:  # someone's row still refers to one of them: one at a time
                        for customer_id in ids:
                            try:
                                with conn.transaction():
                                    n += conn.execute(_DELETE_UNVERIFIED, {**args, "ids": [customer_id]}).rowcount
                            except errors.IntegrityError as exc:
                                refused.append(customer_id)
                                report.skip("still referenced; not deleted",
                                            f"customer {customer_id} ({exc.diag.constraint_name or exc.sqlstate})")
                    conn.execute("UPDATE retention_runs SET deleted = deleted + %s"
                                 " WHERE task = %s AND interval_end = %s", (n, _UNVERIFIED_TASK, at))
            deleted += n
            batches += 1
            if len(ids) < want:
                break
        conn.execute("DELETE FROM retention_runs WHERE task = %s AND interval_end < %s::timestamptz"
                     " - make_interval(days => %s)", (_UNVERIFIED_TASK, at, BOOKKEEPING_DAYS))
        (left,) = conn.execute(
            "SELECT count(*) FROM customers WHERE signed_up_at IS NOT NULL AND email_verified_at IS NULL"
            " AND signed_up_at < %s", (cutoff,)).fetchone()
    report.add("deleted", deleted)
    report.add("batches", batches)
    report.add("unverified_left", left)  # kept: they have subscriptions, invoices … or wait for the next run
    return {**report.as_dict(), "cutoff": cutoff.isoformat()}


# --- 38: salted password hashes -------------------------------------------------------------------

LEGACY_HEX_DIGITS = {"md5": 32, "sha1": 40, "sha256": 64}
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
SALT_BYTES = 16
SALT_BATCH = 100
MAX_SALTED_PER_RUN = 2000
SALT_BUDGET_SECONDS = 5 * 60


def _scrypt(secret: bytes, salt: bytes, params: dict) -> bytes:
    n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=int(params["dklen"]),
                          maxmem=128 * r * (n + p + 2) + 1024 * 1024)


def wrap_legacy_hash(scheme: str, legacy_hex: str, salt: bytes | None = None,
                     params: dict | None = None) -> tuple[str, str, bytes, dict]:
    """(scheme, hash hex, salt, params) of a legacy unsalted digest wrapped in scrypt."""
    digest = legacy_hex.strip().lower()
    if scheme not in LEGACY_HEX_DIGITS or not re.fullmatch(f"[0-9a-f]{{{LEGACY_HEX_DIGITS[scheme]}}}", digest):
        raise ValueError(f"not a {scheme} hex digest")
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    params = dict(params or SCRYPT)
    return f"scrypt+{scheme}", _scrypt(digest.encode("ascii"), salt, params).hex(), salt, params


def verify_password(password: str, hash_scheme: str, password_hash: str, salt: bytes | None,
                    kdf_params: dict | None) -> bool:
    """Whether ``password`` matches a credentials row, whatever its scheme (what login does)."""
    if hash_scheme in LEGACY_HEX_DIGITS:
        candidate = hashlib.new(hash_scheme, password.encode()).hexdigest()
        return hmac.compare_digest(candidate, password_hash.strip().lower())
    if hash_scheme == "scrypt":
        secret = password.encode()
    elif hash_scheme.startswith("scrypt+") and hash_scheme[7:] in LEGACY_HEX_DIGITS:
        secret = hashlib.new(hash_scheme[7:], password.encode()).hexdigest().encode("ascii")
    else:
        raise ValueError(f"unknown hash scheme {hash_scheme!r}")
    return hmac.compare_digest(_scrypt(secret, bytes(salt), kdf_params).hex(), password_hash)


# Compare-and-set: a password changed since it was read keeps its new hash.
_SALT_UPDATE = """
UPDATE credentials c
SET hash_scheme = u.scheme, password_hash = u.hash, salt = u.salt, kdf_params = u.params, salted_at = %(at)s
FROM unnest(%(ids)s::bigint[], %(schemes)s::text[], %(hashes)s::text[], %(salts)s::bytea[], %(params)s::jsonb[],
            %(old_schemes)s::text[], %(old_hashes)s::text[]) AS u(id, scheme, hash, salt, params, old_scheme, old_hash)
WHERE c.id = u.id AND c.hash_scheme = u.old_scheme AND c.password_hash = u.old_hash
"""


def salt_passwords(panel_db, interval) -> dict:
    """Update employee, customer and contact password with salt."""
    report = StepReport()
    _zeros(report, "salted", "changed_meanwhile")
    deadline = time.monotonic() + SALT_BUDGET_SECONDS
    last_id = 0
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        while report.counts["salted"] < MAX_SALTED_PER_RUN and time.monotonic() < deadline:
            want = min(SALT_BATCH, MAX_SALTED_PER_RUN - report.counts["salted"])
            rows = conn.execute(
                "SELECT id, principal_kind, hash_scheme, password_hash FROM credentials"
                " WHERE hash_scheme = ANY(%s) AND id > %s ORDER BY id LIMIT %s",
                (list(LEGACY_HEX_DIGITS), last_id, want)).fetchall()
            if not rows:
                break
            last_id = rows[-1][0]
            batch = {k: [] for k in ("ids", "schemes", "hashes", "salts", "params", "old_schemes", "old_hashes")}
            for credential_id, kind, scheme, old_hash in rows:
                try:
                    new_scheme, new_hash, salt, params = wrap_legacy_hash(scheme, old_hash)
                except ValueError as exc:  # the message names the scheme, never the value
                    report.skip(str(exc), f"{kind} credential {credential_id}")
                    continue
                for key, value in zip(batch, (credential_id, new_scheme, new_hash, salt, json.dumps(params), scheme,
                                              old_hash)):
                    batch[key].append(value)
            if batch["ids"]:
                n = conn.execute(_SALT_UPDATE, {**batch, "at": interval.end}).rowcount
                report.add("salted", n)
                report.add("changed_meanwhile", len(batch["ids"]) - n)
        (left,) = conn.execute("SELECT count(*) FROM credentials WHERE hash_scheme = ANY(%s) AND id > %s",
                               (list(LEGACY_HEX_DIGITS), last_id)).fetchone()
    report.add("left_for_next_run", left)
    return report.as_dict()


# --- 39: subscription credit limits ---------------------------------------------------------------

_CREDIT_STATE = """
CREATE TEMP TABLE credit_state ON COMMIT DROP AS
WITH limited AS (
    SELECT id, credit_limit, currency FROM customers WHERE credit_limit IS NOT NULL AND status <> 'closed'
), unpaid AS (
    SELECT i.customer_id, l.subscription_id, i.currency, sum(l.amount + l.tax_amount) AS amount
    FROM limited c JOIN invoices i ON i.customer_id = c.id AND i.status IN ('open', 'payment_declined')
    JOIN invoice_lines l ON l.invoice_id = i.id
    GROUP BY 1, 2, 3
), per_customer AS (
    SELECT c.id AS customer_id,
           coalesce(sum(u.amount) FILTER (WHERE u.currency = c.currency), 0) AS total,
           string_agg(DISTINCT u.currency::text, ', ') FILTER (WHERE u.currency <> c.currency) AS foreign_currencies
    FROM limited c LEFT JOIN unpaid u ON u.customer_id = c.id
    GROUP BY c.id
)
SELECT s.id AS subscription_id, c.id AS customer_id, c.currency, c.credit_limit AS customer_credit_limit,
       coalesce(own.amount, 0) AS own_usage, t.total - coalesce(own.amount, 0) AS other_usage,
       greatest(c.credit_limit - (t.total - coalesce(own.amount, 0)), 0) AS credit_limit,
       CASE WHEN t.foreign_currencies IS NOT NULL THEN 'customer has unpaid invoices in ' || t.foreign_currencies
            WHEN s.currency <> c.currency
                THEN 'subscription currency ' || s.currency || ' differs from the customer''s ' || c.currency
       END AS skip
FROM limited c
JOIN per_customer t ON t.customer_id = c.id
JOIN subscriptions s ON s.customer_id = c.id AND s.status <> 'cancelled'
LEFT JOIN unpaid own ON own.subscription_id = s.id AND own.customer_id = c.id AND own.currency = c.currency
"""

_CREDIT_UPSERT = """
INSERT INTO subscription_credit_limits AS l (subscription_id, customer_id, currency, customer_credit_limit, own_usage,
                                             other_usage, credit_limit, synced_at)
SELECT subscription_id, customer_id, currency, customer_credit_limit, own_usage, other_usage, credit_limit, %(at)s
FROM credit_state WHERE skip IS NULL
ORDER BY subscription_id
ON CONFLICT (subscription_id) DO UPDATE
    SET customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,
        customer_credit_limit = EXCLUDED.customer_credit_limit, own_usage = EXCLUDED.own_usage,
        other_usage = EXCLUDED.other_usage, credit_limit = EXCLUDED.credit_limit, synced_at = EXCLUDED.synced_at
    WHERE (l.customer_id, l.currency, l.customer_credit_limit, l.own_usage, l.other_usage, l.credit_limit)
          IS DISTINCT FROM (EXCLUDED.customer_id, EXCLUDED.currency, EXCLUDED.customer_credit_limit,
                            EXCLUDED.own_usage, EXCLUDED.other_usage, EXCLUDED.credit_limit)
RETURNING (l.xmax = 0) AS inserted
"""

# No limit applies any more: the subscription is cancelled or its customer has no limit (or is closed).
_CREDIT_REMOVE = """
DELETE FROM subscription_credit_limits l
WHERE NOT EXISTS (SELECT 1 FROM credit_state s WHERE s.subscription_id = l.subscription_id)
"""

_CREDIT_SKIPS = """
SELECT skip, count(*), (array_agg('subscription ' || subscription_id || ' (customer ' || customer_id || ')'
                                  ORDER BY subscription_id))[1:%(keep)s]
FROM credit_state WHERE skip IS NOT NULL GROUP BY skip ORDER BY skip
"""


def sync_subscription_credit_limits(panel_db, interval) -> dict:
    """Sync subscription credit limit."""
    report = StepReport()
    args = {"at": interval.end, "keep": report.keep}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():
            conn.execute(_CREDIT_STATE)
            written = [i for (i,) in conn.execute(_CREDIT_UPSERT, args).fetchall()]
            removed = conn.execute(_CREDIT_REMOVE).rowcount
            (subscriptions,) = conn.execute("SELECT count(*) FROM credit_state").fetchone()
            _report_skips(report, conn.execute(_CREDIT_SKIPS, args).fetchall())
    report.add("subscriptions", subscriptions)
    report.add("limits_added", sum(written))
    report.add("limits_changed", len(written) - sum(written))
    report.add("limits_removed", removed)
    return report.as_dict()


# --- 41, 42: recycle bin and recovery notices -----------------------------------------------------

RECYCLE_BIN_REMINDER_DAYS = (7, 1)     # days before the purge; reminder 0 is the first
RECOVERY_DAYS = 30                     # a distribution list stays recoverable this long
RECOVERY_REMINDER_DAYS = (RECOVERY_DAYS, 3)  # when it is deleted, then 3 days before it goes for good
MAX_PURGE_NOTICES = 1000               # per run and kind
KIND_LABELS = {"mailbox": "Mailbox", "user": "User", "site": "Site", "distribution_list": "Distribution list"}


@dataclass(frozen=True)
class _PurgeNotices:
    items: str          # the table of items awaiting a purge
    notices: str        # its notice table, keyed (item, reminder)
    item_column: str    # the notice table's item column
    purge_at: str       # SQL: when item ``i`` is purged
    kind: str           # SQL: the item's kind
    extra: str          # SQL: the template's extra field (recovery: the list's address)
    reminder_days: tuple[int, ...]
    key: str
    template: str


_RECYCLE_BIN = _PurgeNotices("recycle_bin_items", "recycle_bin_notices", "item_id", "i.purge_at", "i.kind", "NULL",
                             RECYCLE_BIN_REMINDER_DAYS, "recycle-bin", "recycle_bin_notice")
_RECOVERY = _PurgeNotices("recovery_distribution_lists", "recovery_notices", "distribution_list_id",
                          f"i.deleted_at + interval '{RECOVERY_DAYS} days'", "'distribution_list'", "i.email_address",
                          RECOVERY_REMINDER_DAYS, "recovery", "recovery_notice")


def _notice_sql(n: _PurgeNotices) -> tuple[str, str]:
    """(insert the due notices returning what to send, tally the items whose customer has no address)."""
    due = f"""
    SELECT i.id, i.customer_id, i.name, i.deleted_at, {n.purge_at} AS purge_at, {n.kind} AS kind,
           {n.extra} AS extra, c.name AS customer_name, btrim(c.email) AS email, {_MAILABLE} AS mailable,
           c.provider_id,
           (SELECT max(step.n) - 1 FROM unnest(%(days)s::int[]) WITH ORDINALITY AS step(days, n)
            WHERE {n.purge_at} - make_interval(days => step.days) <= %(at)s) AS reminder
    FROM {n.items} i JOIN customers c ON c.id = i.customer_id
    WHERE i.deleted_at <= %(at)s AND {n.purge_at} > %(at)s"""
    insert = f"""
WITH due AS ({due}
), todo AS (
    SELECT * FROM due
    WHERE reminder IS NOT NULL AND mailable
      AND NOT EXISTS (SELECT 1 FROM {n.notices} x WHERE x.{n.item_column} = due.id AND x.reminder >= due.reminder)
    ORDER BY purge_at, id
    LIMIT %(limit)s
), written AS (
    INSERT INTO {n.notices} ({n.item_column}, reminder, sent_at, outbox_key)
    SELECT id, reminder, %(at)s, '{n.key}:' || id || ':' || reminder FROM todo
    ON CONFLICT DO NOTHING
    RETURNING {n.item_column} AS id, reminder, outbox_key
)
SELECT w.outbox_key, w.reminder, t.id, t.name, t.kind, t.extra, t.deleted_at, t.purge_at, t.customer_name, t.email,
       p.name
FROM written w JOIN todo t USING (id) JOIN providers p ON p.id = t.provider_id
ORDER BY t.purge_at, t.id
"""
    unmailable = f"""
WITH due AS ({due}
)
SELECT count(*), (array_agg('{n.key} item ' || id || ' (customer ' || customer_id || ', '
                            || coalesce(nullif(email, ''), 'no address') || ')' ORDER BY id))[1:%(keep)s]
FROM due
WHERE reminder IS NOT NULL AND NOT mailable
  AND NOT EXISTS (SELECT 1 FROM {n.notices} x WHERE x.{n.item_column} = due.id AND x.reminder >= due.reminder)
"""
    return insert, unmailable


def _send_purge_notices(panel_db, interval, n: _PurgeNotices) -> dict:
    report = StepReport()
    _zeros(report, "notices", "emails_queued")
    at = interval.end
    insert, unmailable = _notice_sql(n)
    args = {"at": at, "days": list(n.reminder_days), "limit": MAX_PURGE_NOTICES, "keep": report.keep}
    last = len(n.reminder_days) - 1
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # the notice rows and their e-mails together, or neither
            written = conn.execute(insert, args).fetchall()
            for (key, reminder, item_id, name, kind, extra, deleted_at, purge_at, customer_name, email,
                 provider) in written:
                report.add("emails_queued", enqueue(conn, dedupe_key=key, to=email, template=n.template, not_before=at,
                                                    context={
                    "customer_name": customer_name, "provider": provider, "name": name, "kind": kind,
                    "kind_label": KIND_LABELS.get(kind, kind), "email_address": extra, "reminder": reminder,
                    "last": reminder == last, "deleted_on": _local_date(deleted_at, interval.tz).isoformat(),
                    "purge_on": _local_date(purge_at, interval.tz).isoformat(),
                    "days_left": max(math.ceil((purge_at - at).total_seconds() / 86400), 1)}))
                report.add(f"reminder_{reminder}")
        count, examples = conn.execute(unmailable, args).fetchone()
    if count:
        _report_skips(report, [("customer has no usable e-mail address", count, examples)])
    report.add("notices", len(written))
    return report.as_dict()


def send_recycle_bin_notifications(panel_db, interval) -> dict:
    """Send recycle bin notification emails."""
    return _send_purge_notices(panel_db, interval, _RECYCLE_BIN)


def send_recovery_notifications(panel_db, interval) -> dict:
    """Send recovery notification emails."""
    return _send_purge_notices(panel_db, interval, _RECOVERY)


# --- 43: distribution lists leave recovery ------------------------------------------------------

MAX_RECOVERY_PURGE = 1000
RECOVERY_PURGE_BATCH = 500


def purge_expired_recovery_distribution_lists(panel_db, interval) -> dict:
    """Auto delete distribution lists from recovery after certain period."""
    with panel_db.get_conn() as conn:
        return delete_older_than(conn, task="purge_expired_recovery_distribution_lists",
                                 table="recovery_distribution_lists", column="deleted_at",
                                 cutoff=interval.end - timedelta(days=RECOVERY_DAYS), interval_end=interval.end,
                                 max_rows=MAX_RECOVERY_PURGE, batch_size=RECOVERY_PURGE_BATCH)


def generate_threshold_alerts(panel_db, interval, params, log) -> dict:
    """Generate O365/CSP and VPS threshold alerts: the two halves live with their backends
    (:func:`panelflow.steps.partner_center.generate_threshold_alerts` reads licence usage from
    Partner Center, :func:`panelflow.steps.hyperv.generate_vps_threshold_alerts` the Hyper-V samples);
    one failing does not stop the other, and the step fails afterwards naming the half that failed."""
    from panelflow.steps.hyperv import generate_vps_threshold_alerts
    from panelflow.steps.partner_center import generate_threshold_alerts as licence_threshold_alerts

    summary: dict = {}
    failures = []
    for name, run in (("o365_csp", lambda: licence_threshold_alerts(panel_db, interval, log)),
                      ("vps", lambda: generate_vps_threshold_alerts(panel_db, interval, params, log))):
        try:
            summary[name] = run()
        except Exception as exc:  # noqa: BLE001 - the other half still runs; re-raised below
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            summary[name] = {"error": str(exc)[:500]}
            if log is not None:
                log.exception("%s threshold alerts failed", name)
    if failures:
        raise RuntimeError("threshold alerts failed — " + "; ".join(failures))
    return summary
