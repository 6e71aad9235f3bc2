"""GroupActionWorkEx step 7: the recycle bin emptied.

:func:`purge_recycle_bin_mailboxes` — mailboxes in the recycle bin since more than
``mailbox_recycle_days`` (30) before the interval's end → Remove-StoreMailbox (``Confirm=False``)
on their database, at most ``recycle_purge_batch`` (50) a run → ``deleted`` (``purged_at``), its item
gone from the customer's recycle bin (``recycle_bin_items``). One no longer among the database's
disconnected mailboxes is already purged: marked so.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from panelflow.hooks.powershell import PowerShellHook, parse_records
from panelflow.step import StepReport

from ._backend import ExchangeServer, Record, due_by_server, each_server, exchange_servers, refused, run_item

RECYCLE_DAYS = 30
RECYCLE_PURGE_BATCH = 50


class DisconnectedMailbox(Record):
    MailboxGuid: UUID
    Database: str
    DisconnectReason: str



_RECYCLE_DUE = """
SELECT m.exchange_server_id, m.id, m.exchange_guid::text, m.database, m.primary_smtp_address
FROM exchange_mailboxes m JOIN exchange_servers s ON s.id = m.exchange_server_id AND s.enabled
WHERE m.status = 'recycle_bin' AND m.deleted_at <= %s
ORDER BY m.deleted_at, m.id
LIMIT %s
"""

# A purged mailbox leaves the customer's recycle bin (migration 0011: items leave the bin when
# purged) in the statement that marks it deleted, so the bin never lists a mailbox that is gone.
_PURGED = """
WITH purged AS (
    UPDATE exchange_mailboxes SET status = 'deleted', purged_at = %(at)s, status_changed_at = %(at)s, last_error = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND status = 'recycle_bin'
    RETURNING id
)
DELETE FROM recycle_bin_items WHERE exchange_mailbox_id IN (SELECT id FROM purged)
"""


def purge_recycle_bin_mailboxes(panel_db, interval, params, log) -> dict:
    """Delete Mailbox permanent from recycle bin."""
    params = params or {}
    cutoff = interval.end - timedelta(days=int(params.get("mailbox_recycle_days", RECYCLE_DAYS)))
    report = StepReport().zero("due", "purged", "already_purged", "failed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        by_server = due_by_server(conn, _RECYCLE_DUE, (cutoff, int(params.get("recycle_purge_batch", RECYCLE_PURGE_BATCH))),
                                  report, 0)

        def work(server: ExchangeServer, hook: PowerShellHook) -> None:
            mailboxes = by_server[server.id]
            databases = sorted({db for _, _, _, db, _ in mailboxes if db})
            all_databases = any(db is None for _, _, guid, db, _ in mailboxes if guid)
            disconnected = {d.MailboxGuid: d for d in parse_records(
                DisconnectedMailbox, hook.run_script("exchange/get_recycle_bin_mailboxes",
                                                     {"Database": [] if all_databases else databases}),
                report, "disconnected mailbox")}
            purged: list[int] = []
            try:
                for _, mailbox_id, guid, _, address in mailboxes:
                    found = disconnected.get(UUID(guid)) if guid else None
                    if found is None:      # never created, purged by hand, or the database's retention ended
                        purged.append(mailbox_id)
                        report.add("already_purged")
                        continue
                    _, error = run_item(hook, "exchange/remove_store_mailbox", {
                        "Identity": str(found.MailboxGuid), "Database": found.Database,
                        "MailboxState": found.DisconnectReason, "Confirm": False})
                    if error is not None:
                        conn.execute("UPDATE exchange_mailboxes SET last_error = %s WHERE id = %s", (error, mailbox_id))
                        refused(report, error, f"mailbox {address}")
                        continue
                    purged.append(mailbox_id)
                    report.add("purged")
            finally:
                if purged:
                    conn.execute(_PURGED, {"at": interval.end, "ids": purged})

        each_server(exchange_servers(conn, by_server), report, log, work, count_done=True)
    return report.as_dict()

