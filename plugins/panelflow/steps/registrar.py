"""DomainNameDataSyncThread: domains' registrar data and contacts, from each registrar account's API.

Per enabled ``registrar_accounts`` row (its Airflow connection holds the API's URL and key), one
:class:`~panelflow.hooks.registrar.RegistrarHook`:

1. the account's whole domain list (every page). A list that does not come back whole fails the
   account for this run and changes nothing; new domains are added, status and expiry taken from
   it, and — only when the list was complete — domains it no longer has are marked ``listed =
   false`` (transferred away, deleted), with their data kept;
2. the detail (name servers, lock, contacts) of each domain the registrar changed since it was
   last read (its ``updated_at`` moved), never read, last failed, or not read for a day: changed
   fields are written and stamped with the run's clock, unchanged rows are not touched, contact
   roles the registrar no longer reports are removed. A domain whose detail fails (after the
   hook's retries) is reported with its error on its row while the others sync; several failures
   in a row end the account's run (the registrar is down, not one domain).

Rows are matched to the panel's ``domains`` by name. A rerun finds nothing to change.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

from panelflow.step import StepReport

FULL_REFRESH = timedelta(days=1)     # a domain's detail is read at least this often
MAX_CONSECUTIVE_FAILURES = 3         # detail failures in a row that end an account's run
RUN_BUDGET_SECONDS = 100 * 60        # the thread's timeout is 120 minutes

_LISTED = """
CREATE TEMP TABLE registrar_listed ON COMMIT DROP AS
SELECT * FROM jsonb_to_recordset(%s::jsonb)
    AS l(name text, status text, expires_at timestamptz, remote_updated_at timestamptz)
"""

_ADD_NEW = """
INSERT INTO registrar_domains (account_id, name, status, expires_at, first_seen_at, changed_at)
SELECT %(account)s, name, status, expires_at, %(at)s, %(at)s FROM registrar_listed
ON CONFLICT (account_id, name) DO NOTHING
RETURNING name
"""

# status and expiry from the list; a domain listed again after being unlisted is listed again
_FROM_LIST = """
UPDATE registrar_domains r SET status = l.status, expires_at = l.expires_at, listed = true, changed_at = %(at)s
FROM registrar_listed l
WHERE r.account_id = %(account)s AND r.name = l.name
  AND (r.status, r.expires_at, r.listed) IS DISTINCT FROM (l.status, l.expires_at, true)
RETURNING r.name
"""

_UNLISTED = """
UPDATE registrar_domains r SET listed = false, changed_at = %(at)s
WHERE r.account_id = %(account)s AND r.listed AND NOT EXISTS (SELECT 1 FROM registrar_listed l WHERE l.name = r.name)
RETURNING r.name
"""

_DETAIL_DUE = """
SELECT r.id, r.name FROM registrar_domains r JOIN registrar_listed l ON l.name = r.name
WHERE r.account_id = %(account)s
  AND (r.synced_at IS NULL OR r.last_error IS NOT NULL OR l.remote_updated_at IS NULL
       OR r.remote_updated_at IS DISTINCT FROM l.remote_updated_at
       OR r.synced_at < %(at)s::timestamptz - %(refresh)s)
ORDER BY r.synced_at NULLS FIRST, r.id
"""

# The old row beside the new one (a self-join sees the row as it was), to tell a change.
_DETAIL = """
UPDATE registrar_domains r
SET status = %(status)s, expires_at = %(expires_at)s, nameservers = %(nameservers)s, locked = %(locked)s,
    auto_renew = %(auto_renew)s, remote_updated_at = %(remote_updated_at)s, synced_at = %(at)s, last_error = NULL,
    changed_at = CASE WHEN (o.status, o.expires_at, o.nameservers, o.locked, o.auto_renew)
                           IS DISTINCT FROM (%(status)s, %(expires_at)s::timestamptz, %(nameservers)s::text[],
                                             %(locked)s::boolean, %(auto_renew)s::boolean)
                      THEN %(at)s ELSE o.changed_at END
FROM registrar_domains o
WHERE r.id = %(id)s AND o.id = r.id
RETURNING (o.status, o.expires_at, o.nameservers, o.locked, o.auto_renew)
          IS DISTINCT FROM (r.status, r.expires_at, r.nameservers, r.locked, r.auto_renew)
"""

_CONTACT_FIELDS = ("handle", "name", "organization", "email", "phone", "street", "city", "postal_code", "state",
                   "country")
_COLUMNS = ", ".join(_CONTACT_FIELDS)
_OLD = ", ".join(f"c.{f}" for f in _CONTACT_FIELDS)
_NEW = ", ".join(f"EXCLUDED.{f}" for f in _CONTACT_FIELDS)
_CONTACTS = f"""
INSERT INTO registrar_domain_contacts AS c (registrar_domain_id, role, {_COLUMNS}, changed_at)
SELECT %(id)s, role, {_COLUMNS}, %(at)s
FROM jsonb_to_recordset(%(contacts)s::jsonb) AS x(role text, {", ".join(f + " text" for f in _CONTACT_FIELDS)})
ON CONFLICT (registrar_domain_id, role) DO UPDATE
    SET {", ".join(f"{f} = EXCLUDED.{f}" for f in _CONTACT_FIELDS)}, changed_at = EXCLUDED.changed_at
    WHERE ({_OLD}) IS DISTINCT FROM ({_NEW})
RETURNING (c.xmax = 0) AS inserted
"""

_LINK = """
UPDATE registrar_domains r SET domain_id = d.id
FROM domains d
WHERE r.account_id = %s AND d.name = r.name AND r.domain_id IS DISTINCT FROM d.id
"""


def _iso(moment):
    return moment.isoformat() if moment is not None else None


class _AccountStopped(Exception):
    pass


def _sync_account(conn, hook, account_id: int, account: str, at, report: StepReport, deadline: float) -> None:
    from panelflow.hooks.registrar import (
        RegistrarAuthenticationError,
        RegistrarError,
    )

    listing = hook.list_domains()  # raises: the account fails for this run, nothing changed
    args = {"account": account_id, "at": at, "refresh": FULL_REFRESH}
    changed: set[str] = set()
    with conn.transaction():
        conn.execute(_LISTED, (json.dumps([
            {"name": d.name, "status": d.status, "expires_at": _iso(d.expires_at),
             "remote_updated_at": _iso(d.updated_at)} for d in listing.domains]),))
        added = [r[0] for r in conn.execute(_ADD_NEW, args).fetchall()]
        changed.update(r[0] for r in conn.execute(_FROM_LIST, args).fetchall())
        unlisted = [r[0] for r in conn.execute(_UNLISTED, args).fetchall()] if listing.complete else []
        due = conn.execute(_DETAIL_DUE, args).fetchall()
    report.add("domains_listed", len(listing.domains))
    report.add("domains_added", len(added))
    report.add("domains_unlisted", len(unlisted))
    if not listing.complete:
        report.skip("domain list changed while it was read; unlisted domains not marked", account)
    changed.update(unlisted)

    failures = 0
    for registrar_domain_id, name in due:
        if time.monotonic() > deadline:
            report.add("details_deferred", 1)
            continue
        try:
            detail = hook.get_domain(name)
        except RegistrarAuthenticationError:
            raise
        except RegistrarError as exc:
            failures += 1
            report.skip("domain detail not read", f"{account}/{name}: {exc}")
            conn.execute("UPDATE registrar_domains SET last_error = %s WHERE id = %s",
                         (str(exc)[:500], registrar_domain_id))
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise _AccountStopped(f"stopped after {failures} domain details in a row failed; last: {exc}")
            continue
        failures = 0
        contacts = [{"role": role, **{f: getattr(c, f) for f in _CONTACT_FIELDS}}
                    for role, c in sorted(detail.contacts.items())]
        with conn.transaction():
            (domain_changed,) = conn.execute(_DETAIL, {
                "id": registrar_domain_id, "at": at, "status": detail.status, "expires_at": detail.expires_at,
                "nameservers": list(detail.nameservers), "locked": detail.locked, "auto_renew": detail.auto_renew,
                "remote_updated_at": detail.updated_at}).fetchone()
            written = conn.execute(_CONTACTS, {"id": registrar_domain_id, "at": at,
                                               "contacts": json.dumps(contacts)}).fetchall()
            removed = conn.execute("DELETE FROM registrar_domain_contacts WHERE registrar_domain_id = %s"
                                   " AND NOT (role = ANY(%s)) RETURNING role",
                                   (registrar_domain_id, [c["role"] for c in contacts])).fetchall()
            if written or removed:  # a contact's change is the domain's change
                conn.execute("UPDATE registrar_domains SET changed_at = %s WHERE id = %s", (at, registrar_domain_id))
        inserted = sum(1 for (i,) in written if i)
        report.add("details_read")
        report.add("contacts_added", inserted)
        report.add("contacts_changed", len(written) - inserted)
        report.add("contacts_removed", len(removed))
        if domain_changed or written or removed:
            changed.add(name)
    conn.execute(_LINK, (account_id,))
    report.add("domains_changed", len(changed - set(added)))


def sync_domain_contacts_and_registrars(panel_db, interval, log) -> dict:
    """Sync Domain contacts and registrar data into database."""
    from airflow.exceptions import AirflowNotFoundException

    from panelflow.hooks.registrar import RegistrarError, RegistrarHook

    report = StepReport().zero("accounts", "accounts_synced", "domains_listed", "domains_added", "domains_unlisted",
                               "details_read", "domains_changed", "contacts_added", "contacts_changed",
                               "contacts_removed")
    at = interval.end
    deadline = time.monotonic() + RUN_BUDGET_SECONDS
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        accounts = conn.execute("SELECT id, name, conn_id FROM registrar_accounts WHERE enabled"
                                " ORDER BY last_attempt_at NULLS FIRST, id").fetchall()
        for account_id, account, conn_id in accounts:
            report.add("accounts")
            if time.monotonic() > deadline:
                report.add("accounts_deferred")
                continue
            try:
                with RegistrarHook(conn_id) as hook:
                    _sync_account(conn, hook, account_id, account, at, report, deadline)
            except (RegistrarError, _AccountStopped, AirflowNotFoundException, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}" if isinstance(exc, AirflowNotFoundException) else str(exc)
                report.skip("registrar account not synced", f"{account}: {error}")
                conn.execute("UPDATE registrar_accounts SET last_attempt_at = %s, last_error = %s WHERE id = %s",
                             (at, error[:500], account_id))
                continue
            conn.execute("UPDATE registrar_accounts SET last_attempt_at = %s, last_synced_at = %s, last_error = NULL"
                         " WHERE id = %s", (at, at, account_id))
            report.add("accounts_synced")
    summary = report.as_dict()
    if log is not None and summary["skipped"]:
        log.warning("registrar sync: %s", summary["skipped"])
    return summary
