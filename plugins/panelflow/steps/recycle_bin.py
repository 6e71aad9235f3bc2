"""ProvisioningWork's steps 41–43: the recycle bin and distribution lists in recovery.

``send_recycle_bin_notifications`` (41) and ``send_recovery_notifications`` (42): an item in
the recycle bin (``purge_at``) or a distribution list in recovery (purged ``RECOVERY_DAYS``
after its deletion) gets a notice at each of its reminder days before the purge, once per item
and reminder; a run late past several sends only the latest; nothing once the purge is due.
Reported: a customer without a usable address (nothing recorded: sent once it is fixed).

``purge_expired_recovery_distribution_lists`` (43): distribution lists in recovery for longer
than ``RECOVERY_DAYS`` are deleted for good, bounded per run (the retention engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue
from panelflow.services.retention import delete_older_than
from panelflow.steps.provisioning import MAILABLE, local_date

# --- 41, 42: notices before the purge ------------------------------------------------------------

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
           {n.extra} AS extra, c.name AS customer_name, btrim(c.email) AS email, {MAILABLE} AS mailable,
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
    report = StepReport().zero("notices", "emails_queued")
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
                    "last": reminder == last, "deleted_on": local_date(deleted_at, interval.tz).isoformat(),
                    "purge_on": local_date(purge_at, interval.tz).isoformat(),
                    "days_left": max(math.ceil((purge_at - at).total_seconds() / 86400), 1)}))
                report.add(f"reminder_{reminder}")
        count, examples = conn.execute(unmailable, args).fetchone()
    if count:
        report.skip_grouped([("customer has no usable e-mail address", count, examples)])
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
