"""ProvisioningWork's panel-database housekeeping steps (tables: migration 0011).

The thread's other steps live beside this module, one concept each: the operators' failure notices
(29) in :mod:`panelflow.steps.failure_notices`, salted password hashes (38) in
:mod:`panelflow.steps.passwords`, the recycle-bin and recovery notices and purge (41–43) in
:mod:`panelflow.steps.recycle_bin`; they share :data:`MAILABLE` and :func:`local_date` from here.

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
- ``suspend_expired_csp_trials`` (24): which subscriptions are CSP trials and when they end is
  Partner Center's, as ReconciliateO365SubsWork writes it: a panel subscription linked to an
  ``o365_subscriptions`` row with ``is_trial`` whose ``commitment_end_date`` (the trial's last
  day, UTC) has passed at the clock. Each is acted on once (the ``csp_trials`` row is the record):
  an active subscription is suspended, an O365/CSP group action job is queued to suspend it at
  Microsoft, and the customer gets one notice; a subscription already suspended or cancelled is
  only recorded (``already_inactive``), so a later reactivation by staff is not undone. A trial
  converted to a paid offer is no longer ``is_trial`` at Partner Center and is never due.
  Reported: a customer without a usable address (suspended, no notice).
- ``merge_addons`` (28): the active add-ons of a subscription that is not cancelled, with the same
  name (compared trimmed, case-insensitively) and the same price, become one: the oldest (lowest
  id) carries the summed quantity, the others are cancelled with ``merged_into`` naming it and
  keep their own quantity as it was. The amount billed for the next period is unchanged
  (price × quantity is exact in cents). Reported: a sum above the quantity column's range.
- ``delete_unverified_customers`` (34): self sign-ups (``signed_up_at``) never verified and older
  than ``UNVERIFIED_DAYS`` at the clock, with no subscriptions, invoices, credit notes, payment
  profiles or domains, are deleted (their contacts, credentials, recycle bin and recovery rows
  with them), oldest first, at most ``MAX_UNVERIFIED_DELETES`` per run however often it is
  retried (bookkept in ``retention_runs`` like the retention deletes); each deletion leaves an
  audit-log entry with the customer's id and sign-up time only. Reported: a customer still
  referenced by a row the step does not know of (the database refuses the delete).
- ``sync_subscription_credit_limits`` (39): for a customer with a ``credit_limit``, each of its
  subscriptions that is not cancelled gets ``credit_limit = max(customer's limit − the unpaid
  invoice lines (amount + tax, invoices open or payment declined) of the customer's other
  subscriptions, 0)``: what is left of the customer's limit after the others' usage. The
  subscription's own unpaid lines are kept beside it (``own_usage``), so its headroom is
  ``credit_limit − own_usage``. Rows of subscriptions cancelled or of customers without a limit
  are removed. Reported: a customer with unpaid invoices in another currency than its own, a
  subscription in another currency than its customer (both keep their last row).
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from zoneinfo import ZoneInfo

from psycopg import errors
from psycopg.types.json import Jsonb

from panelflow.step import StepReport, run_parts
from panelflow.services.outbox import enqueue
from panelflow.services.retention import BOOKKEEPING_DAYS

THREAD = "ProvisioningWork"
EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"
MAILABLE = f"coalesce(btrim(c.email) ~ '{EMAIL_RE}', false)"


@contextmanager
def _in_one_transaction(panel_db, state: str | None = None, args: dict | None = None):
    """A panel connection inside one transaction, with the step's temp ``state`` table (``ON COMMIT
    DROP``) built: every statement reading it sees one snapshot, and they commit together."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():
            if state is not None:
                conn.execute(state, args)
            yield conn


def local_date(moment, tz: str):
    """The calendar day of ``moment`` in the thread's time zone: what a notice calls "on"."""
    return moment.astimezone(ZoneInfo(tz)).date()


# --- 9: primary e-mail of customer contacts ------------------------------------------------------

_PROMOTE_PRIMARY = f"""
UPDATE customer_contacts k SET is_primary = true, email_synced_at = %(at)s
FROM (
    SELECT DISTINCT ON (o.customer_id) o.id
    FROM customer_contacts o JOIN customers c ON c.id = o.customer_id
    WHERE c.status <> 'closed' AND {MAILABLE}
      AND lower(btrim(o.email)) = lower(btrim(c.email))
      AND NOT EXISTS (SELECT 1 FROM customer_contacts p WHERE p.customer_id = o.customer_id AND p.is_primary)
    ORDER BY o.customer_id, o.id
) first
WHERE k.id = first.id
"""

_SYNC_PRIMARY_EMAIL = f"""
UPDATE customer_contacts k SET email = btrim(c.email), email_synced_at = %(at)s
FROM customers c
WHERE c.id = k.customer_id AND k.is_primary AND c.status <> 'closed' AND {MAILABLE}
  AND k.email IS DISTINCT FROM btrim(c.email)
"""

_CONTACT_SKIPS = f"""
WITH bad AS (
    SELECT c.id, c.email,
           CASE WHEN NOT {MAILABLE} THEN 'customer has no usable e-mail address'
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
    with _in_one_transaction(panel_db) as conn:
        report.add("primary_contacts_set", conn.execute(_PROMOTE_PRIMARY, args).rowcount)
        report.add("emails_updated", conn.execute(_SYNC_PRIMARY_EMAIL, args).rowcount)
        report.skip_grouped(conn.execute(_CONTACT_SKIPS, args).fetchall())
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
    with _in_one_transaction(panel_db, _REGISTRAR_STATE) as conn:
        at_registrar, unlisted = conn.execute(_REGISTRAR_TALLY).fetchone()
        changed = [cleared for (cleared,) in conn.execute(_REGISTRAR_UPDATE, args).fetchall()]
        report.skip_grouped(conn.execute(_REGISTRAR_SKIPS, args).fetchall())
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
    args = {"day": local_date(interval.end, interval.tz), "keep": report.keep}
    with _in_one_transaction(panel_db, _BLANK_O365, args) as conn:
        named, unknown, examples = conn.execute(_O365_TALLY, args).fetchone()
        filled = conn.execute(_FILL_O365).rowcount
    report.skip_grouped([("offer not in the O365 price list", unknown, examples)] if unknown else [])
    report.add("blank_names", named + unknown)
    report.add("names_filled", filled)
    report.add("deferred_locked", named - filled)
    return report.as_dict()


# --- 24: expired CSP trials -----------------------------------------------------------------------

MAX_TRIALS_PER_RUN = 500
CSP_TRIAL_TEMPLATE = "csp_trial_suspended"
CSP_SUSPEND_BACKEND = "o365"  # Office365Work's O365/CSP group-action queue

# A trial ends when its last day (Partner Center's commitmentEndDate, UTC) is over. A row of csp_trials not
# yet handled (left from before 0038) is completed, not duplicated.
_TRIALS_DUE = """
    SELECT s.id AS subscription_id, s.status AS was, s.customer_id, s.o365_offer_id,
           ((o.commitment_end_date + 1)::timestamp AT TIME ZONE 'UTC') AS trial_ends_at,
           coalesce(nullif(btrim(s.plan), ''), 'subscription ' || s.id) AS plan
    FROM o365_subscriptions o JOIN subscriptions s ON s.id = o.panel_subscription_id
    WHERE o.is_trial AND o.commitment_end_date < (%(at)s AT TIME ZONE 'UTC')::date
      AND NOT EXISTS (SELECT 1 FROM csp_trials t WHERE t.subscription_id = s.id AND t.handled_at IS NOT NULL)"""

_EXPIRE_TRIALS = f"""
WITH due AS (
    SELECT * FROM ({_TRIALS_DUE}
    ) d
    ORDER BY trial_ends_at, subscription_id
    LIMIT %(limit)s
), locked AS (
    SELECT due.subscription_id, s.status AS was, due.customer_id, due.o365_offer_id, due.trial_ends_at, due.plan
    FROM due JOIN subscriptions s ON s.id = due.subscription_id
    FOR UPDATE OF s SKIP LOCKED
), suspended AS (
    UPDATE subscriptions s SET status = 'suspended' FROM locked
    WHERE s.id = locked.subscription_id AND locked.was = 'active'
    RETURNING s.id
), handled AS (
    INSERT INTO csp_trials AS t (subscription_id, trial_ends_at, handled_at, outcome)
    SELECT subscription_id, trial_ends_at, %(at)s, CASE WHEN was = 'active' THEN 'suspended' ELSE 'already_inactive' END
    FROM locked
    ON CONFLICT (subscription_id) DO UPDATE
    SET trial_ends_at = EXCLUDED.trial_ends_at, handled_at = EXCLUDED.handled_at, outcome = EXCLUDED.outcome
    WHERE t.handled_at IS NULL
    RETURNING t.subscription_id, t.outcome
)
SELECT h.subscription_id, h.outcome, d.plan, d.o365_offer_id, d.trial_ends_at, c.id, c.name, btrim(c.email),
       {MAILABLE}, p.name, (SELECT count(*) FROM suspended)
FROM handled h JOIN locked d USING (subscription_id) JOIN customers c ON c.id = d.customer_id
JOIN providers p ON p.id = c.provider_id
ORDER BY h.subscription_id
"""


def suspend_expired_csp_trials(panel_db, interval) -> dict:
    """Suspend expired CSP trail offers."""
    report = StepReport().zero("suspended", "already_inactive", "backend_jobs", "notices_queued")
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
                            "trial_ended_on": local_date(ends_at, interval.tz).isoformat()}))
                else:
                    report.skip("suspended without a notice: customer has no usable e-mail address",
                                f"subscription {subscription_id} (customer {customer_id})")
                conn.execute("UPDATE csp_trials SET outbox_key = %s, backend_job_id = %s WHERE subscription_id = %s",
                             (key, job_id, subscription_id))
        (left,) = conn.execute(f"SELECT count(*) FROM ({_TRIALS_DUE}) d", {"at": at}).fetchone()
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
    report = StepReport().zero("subscriptions", "addons_kept", "addons_merged")
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
                report.skip_grouped([("summed quantity out of range", too_big, examples)])
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
    with _in_one_transaction(panel_db, _CREDIT_STATE) as conn:
        written = [i for (i,) in conn.execute(_CREDIT_UPSERT, args).fetchall()]
        removed = conn.execute(_CREDIT_REMOVE).rowcount
        (subscriptions,) = conn.execute("SELECT count(*) FROM credit_state").fetchone()
        report.skip_grouped(conn.execute(_CREDIT_SKIPS, args).fetchall())
    report.add("subscriptions", subscriptions)
    report.add("limits_added", sum(written))
    report.add("limits_changed", len(written) - sum(written))
    report.add("limits_removed", removed)
    return report.as_dict()


def generate_threshold_alerts(panel_db, interval, params, log) -> dict:
    """Generate O365/CSP and VPS threshold alerts: the two halves live with their backends
    (:func:`panelflow.steps.microsoft365.licence_alerts.generate_threshold_alerts` reads licence usage from
    Partner Center, :func:`panelflow.steps.hyperv.thresholds.generate_vps_threshold_alerts` the Hyper-V samples);
    one failing does not stop the other, and the step fails afterwards naming the half that failed."""
    from panelflow.steps.hyperv.thresholds import generate_vps_threshold_alerts
    from panelflow.steps.microsoft365.licence_alerts import generate_threshold_alerts as licence_threshold_alerts

    return run_parts((("o365_csp", lambda: licence_threshold_alerts(panel_db, interval, log)),
                      ("vps", lambda: generate_vps_threshold_alerts(panel_db, interval, params, log))),
                     what="threshold alerts", log=log)
