"""Registrar accounts over EPP: DomainNameDataSyncThread's sync, and ProvisioningWork 36's iNET name servers.

**DomainNameDataSyncThread** (``sync_domain_contacts_and_registrars``). Per enabled
``registrar_accounts`` row (its Airflow connection holds the EPP server, clID, password and TLS
material), one EPP session (:class:`~panelflow.hooks.registrar.RegistrarHook`):

1. the poll queue, oldest first (at most ``MAX_POLL_MESSAGES``): a transfer approved to this
   client adds (or lists again) the domain, one approved away from it unlists it; a change
   message (RFC 8590) applies the domain's statuses, expiry and name servers as the message
   gives them, a deletion unlists the domain. Each message is recorded and applied in one
   transaction, keyed by its id, and acknowledged only after that commits: a crash in between
   re-reads it at the next run, finds its row and only acknowledges it. Rows older than
   ``POLL_MESSAGE_DAYS`` are deleted at the end of the run (bounded, :mod:`panelflow.services.retention`);
2. discovery, because EPP has no domain list: the panel's domains under the account's ``zones``
   that it has no listed row for (and did not probe in the last ``PROBE_AGAIN``) are asked with
   ``domain:info`` (at most ``MAX_PROBES``); those this client sponsors get a row;
3. the detail (``domain:info``, then ``contact:info`` of the registrant, admin, tech and billing
   handles) of each listed domain never read, last failed, or not read for ``FULL_REFRESH``:
   changed fields are written and stamped with the run's clock, unchanged rows are not touched,
   roles the registry no longer reports are removed. A domain the registry no longer has (2303)
   or another client sponsors (2201, or another clID) is unlisted, its data kept. A domain whose
   detail fails is reported with its error on its row while the others sync; several failures in
   a row end the account's run (the server is down, not one domain).

Rows are matched to the panel's ``domains`` by name; ProvisioningWork 13
(``provisioning.update_registrar_status``) copies status, expiry and listing from them. A rerun
finds nothing to change.

**ProvisioningWork 36** ("Set NSA registrar for iNET", ``enforce_inet_nameservers``): read as
*name-server assignment* on the domains registered through the iNET account (iNET Sdn Bhd, the
Malaysian registrar). Each enabled account with ``registrar = 'inet'`` and ``nameservers`` set has
those name servers (as a set) enforced on its listed domains: a domain whose stored name servers
differ is read afresh (``domain:info``); if it still differs, the missing host objects are created
(``host:check``/``host:create``) and one ``domain:update`` adds and removes ``hostObj`` entries.
Each difference (found → wanted) is sent once: the answer — done, or the registry's refusal with
its code — is kept in ``registrar_nameserver_updates``, and a refused difference is reported, not
resent, until the domain or the policy changes. An ``inet`` account without ``nameservers`` is
reported and left alone.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

from panelflow.services.retention import delete_older_than
from panelflow.step import StepReport, first_line, for_each

FULL_REFRESH = timedelta(days=1)     # a domain's detail is read at least this often
PROBE_AGAIN = timedelta(days=7)      # a panel domain the account did not sponsor is asked again after this
MAX_CONSECUTIVE_FAILURES = 3         # detail failures in a row that end an account's run
MAX_POLL_MESSAGES = 200              # poll messages applied per account and run
MAX_PROBES = 200                     # panel domains probed per account and run
MAX_NS_UPDATES = 100                 # name-server updates per account and run (ProvisioningWork 36)
POLL_MESSAGE_DAYS = 180              # applied poll messages are kept this long
MAX_PRUNED = 10_000                  # … and at most this many deleted per run
RUN_BUDGET_SECONDS = 100 * 60        # DomainNameDataSyncThread's timeout is 120 minutes
INET = "inet"


def _sorted_hosts(names) -> list[str]:
    return sorted({n.lower().rstrip(".") for n in names})


def _joined(statuses) -> str | None:
    return " ".join(sorted(statuses)) or None


def _locked(statuses) -> bool:
    return bool({"clientTransferProhibited", "serverTransferProhibited"}.intersection(statuses))


def _expected():
    from airflow.exceptions import AirflowNotFoundException

    from panelflow.hooks.registrar import RegistrarError

    return (RegistrarError, _AccountStopped, AirflowNotFoundException)


class _AccountStopped(Exception):
    """Too many domains failed in a row: the server, not one domain, is the problem."""


class _Failures:
    """Consecutive per-domain failures of an account's run (probes and details alike): one is the
    domain's, reported with it; ``MAX_CONSECUTIVE_FAILURES`` in a row stop the account."""

    def __init__(self, report: StepReport):
        self.report, self.in_a_row = report, 0

    def failed(self, reason: str, record: str, exc: Exception) -> None:
        from panelflow.hooks.registrar import RegistrarAuthenticationError, RegistrarConfigError

        if isinstance(exc, (RegistrarAuthenticationError, RegistrarConfigError)):
            raise exc  # the account's, not the domain's
        self.in_a_row += 1
        self.report.skip(reason, f"{record}: {first_line(exc)}")
        if self.in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise _AccountStopped(f"stopped after {self.in_a_row} domains in a row failed; last: {exc}") from exc

    def succeeded(self) -> None:
        self.in_a_row = 0


# --- 1: the poll queue ---------------------------------------------------------------------------

_RECORD_MESSAGE = """
INSERT INTO registrar_poll_messages (account_id, msg_id, kind, domain, queued_at, message, detail, outcome, applied_at)
VALUES (%(account)s, %(id)s, %(kind)s, %(domain)s, %(queued_at)s, %(text)s, %(detail)s, 'recorded', %(at)s)
ON CONFLICT (account_id, msg_id) DO NOTHING
RETURNING msg_id
"""

_TRANSFERRED_IN = """
INSERT INTO registrar_domains AS r (account_id, name, sponsor, expires_at, transferred_at, first_seen_at, changed_at)
VALUES (%(account)s, %(domain)s, %(clid)s, %(expires_at)s, %(transferred_at)s, %(at)s, %(at)s)
ON CONFLICT (account_id, name) DO UPDATE
    SET listed = true, sponsor = EXCLUDED.sponsor, expires_at = coalesce(EXCLUDED.expires_at, r.expires_at),
        transferred_at = EXCLUDED.transferred_at, synced_at = NULL, changed_at = EXCLUDED.changed_at
"""

_UNLIST = """
UPDATE registrar_domains SET listed = false, sponsor = coalesce(%(sponsor)s, sponsor), changed_at = %(at)s
WHERE account_id = %(account)s AND name = %(domain)s AND listed
"""

# A domain's state as an EPP answer gives it, written beside the old row (a self-join sees the row
# as it was) to tell a change; the poll and the detail pass share it.
_STATE_COLUMNS = "(o.statuses, o.expires_at, o.nameservers, o.locked)"
_SET_STATE = f"""
statuses = %(statuses)s, status = %(status)s, expires_at = %(expires_at)s, nameservers = %(nameservers)s,
locked = %(locked)s, sponsor = %(sponsor)s, remote_updated_at = %(remote_updated_at)s,
changed_at = CASE WHEN {_STATE_COLUMNS}
                       IS DISTINCT FROM (%(statuses)s::text[], %(expires_at)s::timestamptz, %(nameservers)s::text[],
                                         %(locked)s::boolean)
                  THEN %(at)s ELSE o.changed_at END
"""
_CHANGED = f"{_STATE_COLUMNS} IS DISTINCT FROM (r.statuses, r.expires_at, r.nameservers, r.locked)"

_STATE = f"""
UPDATE registrar_domains r SET {_SET_STATE}
FROM registrar_domains o
WHERE r.account_id = %(account)s AND r.name = %(domain)s AND o.id = r.id
RETURNING r.id, {_CHANGED}
"""


def _state_args(info) -> dict:
    return {"statuses": list(info.statuses), "status": _joined(info.statuses), "expires_at": info.expires_at,
            "nameservers": list(info.nameservers), "locked": _locked(info.statuses), "sponsor": info.sponsor,
            "remote_updated_at": info.updated_at}


def _apply_message(conn, message, args: dict) -> str:
    """What one poll message does to ``registrar_domains``; returns the outcome recorded with it."""
    if message.domain is None:
        return "recorded"
    args = {**args, "domain": message.domain}
    if message.kind == "transfer":
        transfer = message.transfer
        if transfer["status"] not in ("clientApproved", "serverApproved"):
            return "recorded"  # pending, rejected or cancelled: the sponsor has not changed
        if transfer["requested_by"] == args["clid"]:
            conn.execute(_TRANSFERRED_IN, {**args, "expires_at": transfer["expiry_date"],
                                           "transferred_at": transfer["act_by"] or transfer["requested_at"]})
            return "transferred_in"
        if transfer["acting_client"] == args["clid"]:
            return "transferred_away" if conn.execute(_UNLIST, {**args, "sponsor": transfer["requested_by"]}).rowcount \
                else "unknown_domain"
        return "recorded"
    if message.kind == "change":
        operation = message.change["operation"]
        if operation in ("delete", "autoDelete", "autoPurge"):
            return "deleted" if conn.execute(_UNLIST, {**args, "sponsor": None}).rowcount else "unknown_domain"
        info = message.info
        if info is None or message.change["state"] != "after":
            return "recorded"
        if info.sponsor and info.sponsor != args["clid"]:
            return "transferred_away" if conn.execute(_UNLIST, {**args, "sponsor": info.sponsor}).rowcount \
                else "unknown_domain"
        row = conn.execute(_STATE, {**args, **_state_args(info)}).fetchone()
        return "unknown_domain" if row is None else "updated" if row[1] else "unchanged"
    return "recorded"


def _drain_poll_queue(conn, hook, account_id: int, at, report: StepReport) -> set[str]:
    """Apply and acknowledge up to ``MAX_POLL_MESSAGES`` messages; returns the domains they changed."""
    changed: set[str] = set()
    args = {"account": account_id, "at": at, "clid": hook.clid}
    for _ in range(MAX_POLL_MESSAGES):
        message = hook.poll_request()
        if message is None:
            break
        report.add("poll_messages")
        detail = {"transfer": message.transfer, "change": message.change}
        with conn.transaction():
            new = conn.execute(_RECORD_MESSAGE, {
                **args, "id": message.id, "kind": message.kind, "domain": message.domain,
                "queued_at": message.queued_at, "text": message.text,
                "detail": json.dumps(detail, default=str)}).fetchone()
            if new is not None:
                outcome = _apply_message(conn, message, args)
                conn.execute("UPDATE registrar_poll_messages SET outcome = %s WHERE account_id = %s AND msg_id = %s",
                             (outcome, account_id, message.id))
                report.add("poll_messages_applied")
                if outcome in ("transferred_in", "transferred_away", "deleted", "updated"):
                    changed.add(message.domain)
        hook.poll_ack(message.id)  # only now: the message's effect is committed
        conn.execute("UPDATE registrar_poll_messages SET acked_at = %s WHERE account_id = %s AND msg_id = %s",
                     (at, account_id, message.id))
        report.add("poll_messages_acked")
    else:
        report.skip("poll queue not emptied (per-run limit)", f"account {account_id}")
    return changed


# --- 2: discovery ------------------------------------------------------------------------------

_PROBE_DUE = """
SELECT lower(rtrim(d.name, '.')) AS name
FROM domains d JOIN registrar_accounts a ON a.id = %(account)s
WHERE EXISTS (SELECT 1 FROM unnest(a.zones) z WHERE right(lower(rtrim(d.name, '.')), length(z) + 1) = '.' || z)
  AND NOT EXISTS (SELECT 1 FROM registrar_domains r WHERE r.account_id = a.id
                  AND r.name = lower(rtrim(d.name, '.')) AND r.listed)
  AND NOT EXISTS (SELECT 1 FROM registrar_probes p WHERE p.account_id = a.id
                  AND p.name = lower(rtrim(d.name, '.')) AND p.probed_at > %(at)s::timestamptz - %(again)s)
ORDER BY d.id
LIMIT %(limit)s
"""

_FOUND = """
INSERT INTO registrar_domains AS r (account_id, name, sponsor, first_seen_at, changed_at)
VALUES (%(account)s, %(domain)s, %(clid)s, %(at)s, %(at)s)
ON CONFLICT (account_id, name) DO UPDATE SET listed = true, synced_at = NULL, changed_at = EXCLUDED.changed_at
RETURNING (r.xmax = 0) AS inserted
"""

_PROBED = """
INSERT INTO registrar_probes (account_id, name, probed_at, outcome) VALUES (%(account)s, %(domain)s, %(at)s, %(outcome)s)
ON CONFLICT (account_id, name) DO UPDATE SET probed_at = EXCLUDED.probed_at, outcome = EXCLUDED.outcome
"""


def _probe(conn, hook, account_id: int, at, report: StepReport, failures: _Failures) -> dict:
    """Ask for the panel's domains under the account's zones; returns ``{name: DomainInfo}`` of those
    it sponsors (now listed rows, whose detail is written from that answer)."""
    from panelflow.hooks.registrar import RegistrarError, RegistrarNotFound, RegistrarNotSponsored

    args = {"account": account_id, "at": at, "again": PROBE_AGAIN, "limit": MAX_PROBES, "clid": hook.clid}
    found = {}
    for (name,) in conn.execute(_PROBE_DUE, args).fetchall():
        report.add("domains_probed")
        try:
            info = hook.domain_info(name)
            outcome = None if info.sponsor == hook.clid else "not_sponsored"
        except RegistrarNotFound:
            outcome = "not_found"
        except RegistrarNotSponsored:
            outcome = "not_sponsored"
        except RegistrarError as exc:
            failures.failed("domain not probed", name, exc)
            continue
        failures.succeeded()
        with conn.transaction():
            if outcome is None:
                (inserted,) = conn.execute(_FOUND, {**args, "domain": name}).fetchone()
                conn.execute("DELETE FROM registrar_probes WHERE account_id = %s AND name = %s", (account_id, name))
                report.add("domains_added" if inserted else "domains_listed_again")
                found[name] = info
            else:
                conn.execute(_PROBED, {**args, "domain": name, "outcome": outcome})
                report.add(f"domains_{outcome}")
    return found


# --- 3: details --------------------------------------------------------------------------------

_DETAIL_DUE = """
SELECT id, name FROM registrar_domains
WHERE account_id = %(account)s AND listed
  AND (synced_at IS NULL OR last_error IS NOT NULL OR synced_at <= %(at)s::timestamptz - %(refresh)s)
ORDER BY synced_at NULLS FIRST, id
"""

_DETAIL = f"""
UPDATE registrar_domains r
SET {_SET_STATE}, roid = %(roid)s, registered_at = %(registered_at)s, transferred_at = %(transferred_at)s,
    synced_at = %(at)s, last_error = NULL
FROM registrar_domains o
WHERE r.id = %(id)s AND o.id = r.id
RETURNING {_CHANGED}
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
WHERE r.account_id = %s AND lower(rtrim(d.name, '.')) = r.name AND r.domain_id IS DISTINCT FROM d.id
"""


def _contacts(hook, info, cache: dict, report: StepReport, record: str) -> list[dict]:
    """The domain's role contacts read with ``contact:info`` (each handle once per account run)."""
    from panelflow.hooks.registrar import RegistrarNotFound, RegistrarNotSponsored

    rows = []
    for role, handle in sorted(info.contacts.items()):
        if handle not in cache:
            try:
                cache[handle] = hook.contact_info(handle)
            except (RegistrarNotFound, RegistrarNotSponsored) as exc:
                cache[handle] = None
                report.skip("contact not readable", f"{record} {role} {handle}: {first_line(exc)}")
        if cache[handle] is not None:
            rows.append({"role": role, **{f: getattr(cache[handle], f) for f in _CONTACT_FIELDS}})
    return rows


def _read_detail(conn, hook, row_id: int, name: str, at, report: StepReport, cache: dict, info=None) -> bool:
    """One domain's detail (``info`` when the probe just read it) and contacts written; returns
    whether anything changed, unlisting included."""
    from panelflow.hooks.registrar import RegistrarNotFound, RegistrarNotSponsored

    try:
        info = info or hook.domain_info(name)
    except (RegistrarNotFound, RegistrarNotSponsored):
        info = None
    if info is None or info.sponsor != hook.clid:
        conn.execute("UPDATE registrar_domains SET listed = false, sponsor = coalesce(%s, sponsor), changed_at = %s,"
                     " synced_at = %s, last_error = NULL WHERE id = %s",
                     (info.sponsor if info else None, at, at, row_id))
        report.add("domains_unlisted")
        return True
    contacts = _contacts(hook, info, cache, report, name)
    with conn.transaction():
        (domain_changed,) = conn.execute(_DETAIL, {
            "id": row_id, "at": at, **_state_args(info), "roid": info.roid, "registered_at": info.created_at,
            "transferred_at": info.transferred_at}).fetchone()
        written = conn.execute(_CONTACTS, {"id": row_id, "at": at, "contacts": json.dumps(contacts)}).fetchall()
        removed = conn.execute("DELETE FROM registrar_domain_contacts WHERE registrar_domain_id = %s"
                               " AND NOT (role = ANY(%s)) RETURNING role",
                               (row_id, [c["role"] for c in contacts])).fetchall()
        if written or removed:  # a contact's change is the domain's change
            conn.execute("UPDATE registrar_domains SET changed_at = %s WHERE id = %s", (at, row_id))
    inserted = sum(1 for (i,) in written if i)
    report.add("details_read")
    report.add("contacts_added", inserted)
    report.add("contacts_changed", len(written) - inserted)
    report.add("contacts_removed", len(removed))
    return bool(domain_changed or written or removed)


def _sync_account(conn, hook, account_id: int, at, report: StepReport, deadline: float) -> None:
    from panelflow.hooks.registrar import RegistrarError

    failures = _Failures(report)
    changed = _drain_poll_queue(conn, hook, account_id, at, report)
    found = _probe(conn, hook, account_id, at, report, failures)
    cache: dict = {}
    for row_id, name in conn.execute(_DETAIL_DUE, {"account": account_id, "at": at,
                                                   "refresh": FULL_REFRESH}).fetchall():
        if time.monotonic() > deadline:
            report.add("details_deferred")
            continue
        try:
            if _read_detail(conn, hook, row_id, name, at, report, cache, found.get(name)) and name not in found:
                changed.add(name)
        except RegistrarError as exc:
            conn.execute("UPDATE registrar_domains SET last_error = %s WHERE id = %s", (str(exc)[:500], row_id))
            failures.failed("domain detail not read", name, exc)
            continue
        failures.succeeded()
    conn.execute(_LINK, (account_id,))
    report.add("domains_changed", len(changed))


def sync_domain_contacts_and_registrars(panel_db, interval, log) -> dict:
    """Sync Domain contacts and registrar data into database."""
    from panelflow.hooks.registrar import RegistrarHook

    report = StepReport().zero("poll_messages", "poll_messages_applied", "poll_messages_acked", "domains_probed",
                               "domains_added", "domains_unlisted", "details_read", "domains_changed",
                               "contacts_added", "contacts_changed", "contacts_removed", "accounts_synced")
    at = interval.end
    deadline = time.monotonic() + RUN_BUDGET_SECONDS
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        accounts = conn.execute("SELECT id, name, conn_id FROM registrar_accounts WHERE enabled"
                                " ORDER BY last_attempt_at NULLS FIRST, id").fetchall()

        def work(account) -> None:
            account_id, _, conn_id = account
            with RegistrarHook(conn_id) as hook:
                _sync_account(conn, hook, account_id, at, report, deadline)
            conn.execute("UPDATE registrar_accounts SET last_attempt_at = %s, last_synced_at = %s, last_error = NULL"
                         " WHERE id = %s", (at, at, account_id))
            report.add("accounts_synced")

        def failed(account, exc, why) -> None:
            conn.execute("UPDATE registrar_accounts SET last_attempt_at = %s, last_error = %s WHERE id = %s",
                         (at, why[:500], account[0]))

        for_each(accounts, work, report=report, kind="account", name=lambda a: a[1], expected=_expected(), log=log,
                 what="registrar account", on_failure=failed,
                 skip_as=lambda who, why: ("registrar account not synced", f"{who}: {why}"),
                 stop=lambda: time.monotonic() > deadline)
        pruned = delete_older_than(conn, task="registrar_poll_messages", table="registrar_poll_messages",
                                   column="applied_at", cutoff=at - timedelta(days=POLL_MESSAGE_DAYS),
                                   interval_end=at, max_rows=MAX_PRUNED, batch_size=1000)
    report.add("poll_messages_pruned", pruned["deleted"])
    return report.as_dict()


# --- ProvisioningWork 36: the iNET account's name servers -----------------------------------------

_NS_DIFFERENT = """
SELECT r.id, r.name, u.result_code, u.result
FROM registrar_domains r
LEFT JOIN registrar_nameserver_updates u
       ON u.registrar_domain_id = r.id AND u.wanted = %(wanted)s::text[]
      AND u.found = ARRAY(SELECT DISTINCT n FROM unnest(r.nameservers) n ORDER BY n)
WHERE r.account_id = %(account)s AND r.listed
  AND ARRAY(SELECT DISTINCT n FROM unnest(r.nameservers) n ORDER BY n) <> %(wanted)s::text[]
ORDER BY r.id
"""

_NS_SENT = """
INSERT INTO registrar_nameserver_updates (registrar_domain_id, found, wanted, requested_at, result_code, result,
                                          server_transaction)
VALUES (%(id)s, %(found)s, %(wanted)s, %(at)s, %(code)s, %(result)s, %(trid)s)
ON CONFLICT (registrar_domain_id, found, wanted) DO NOTHING
"""


def _enforce_account(conn, hook, account: tuple, at, report: StepReport) -> None:
    from panelflow.hooks.registrar import RegistrarNotFound, RegistrarNotSponsored, RegistrarRefused

    account_id, name, _, nameservers = account
    wanted = _sorted_hosts(nameservers)
    rows = conn.execute(_NS_DIFFERENT, {"account": account_id, "wanted": wanted}).fetchall()
    pending = [(row_id, domain) for row_id, domain, code, _ in rows if code is None]
    for _, domain, code, result in rows:
        if code == 1000:
            report.skip("name servers changed back after they were set; not sent again", f"{name}/{domain}")
        elif code is not None:
            report.skip("name servers refused earlier", f"{name}/{domain}: EPP {code} {result or ''}".rstrip())
    for row_id, domain in pending[:MAX_NS_UPDATES]:
        report.add("domains_checked")
        try:
            info = hook.domain_info(domain)
        except (RegistrarNotFound, RegistrarNotSponsored) as exc:
            report.skip("domain no longer at this account", f"{name}/{domain}: {first_line(exc)}")
            continue
        if info.sponsor != hook.clid:
            report.skip("domain no longer at this account", f"{name}/{domain}: sponsored by {info.sponsor}")
            continue
        found = _sorted_hosts(info.nameservers)
        args = {"id": row_id, "at": at, "found": found, "wanted": wanted}
        if found == wanted:  # set already (by hand, or a run that died before it wrote)
            conn.execute("UPDATE registrar_domains SET nameservers = %s, changed_at = %s WHERE id = %s",
                         (list(info.nameservers), at, row_id))
            report.add("already_enforced")
            continue
        try:
            hook.ensure_hosts([h for h in wanted if h not in found])
            answer = hook.update_nameservers(domain, add=[h for h in nameservers if h not in found],
                                             remove=[h for h in info.nameservers if h not in wanted])
        except RegistrarRefused as exc:
            with conn.transaction():
                conn.execute(_NS_SENT, {**args, "code": exc.code, "result": first_line(exc, 500), "trid": None})
                conn.execute("UPDATE registrar_domains SET nameservers = %s WHERE id = %s",
                             (list(info.nameservers), row_id))
            report.skip("registrar refused the name servers", f"{name}/{domain}: {first_line(exc)}")
            continue
        with conn.transaction():
            conn.execute(_NS_SENT, {**args, "code": answer.code, "result": answer.message,
                                    "trid": answer.server_transaction})
            conn.execute("UPDATE registrar_domains SET nameservers = %s, changed_at = %s WHERE id = %s",
                         (list(nameservers), at, row_id))
        report.add("nameservers_updated")
    if len(pending) > MAX_NS_UPDATES:
        report.add("domains_deferred", len(pending) - MAX_NS_UPDATES)


def enforce_inet_nameservers(panel_db, interval, log) -> dict:
    """Set NSA registrar for iNET."""
    from panelflow.hooks.registrar import RegistrarHook

    report = StepReport().zero("domains_checked", "nameservers_updated", "already_enforced")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        accounts = conn.execute("SELECT id, name, conn_id, nameservers FROM registrar_accounts"
                                " WHERE enabled AND registrar = %s ORDER BY id", (INET,)).fetchall()
        for account in accounts:
            if account[3] is None:
                report.skip("no name servers configured for the account", account[1])

        def work(account) -> None:
            with RegistrarHook(account[2]) as hook:  # the session opens only if a domain differs
                _enforce_account(conn, hook, account, at, report)

        for_each([a for a in accounts if a[3] is not None], work, report=report, kind="account",
                 name=lambda a: a[1], expected=_expected(), log=log, what="iNET registrar account")
    return report.as_dict()
