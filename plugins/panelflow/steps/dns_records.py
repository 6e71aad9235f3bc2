"""SynchDNSRecordsWork: Hostmatic domains' DNS records from the DNS backend, and verification notices.

``sync_hostmatic_dns_records`` reads each hosted domain's records from the backend server that
serves its zone — the Airflow connection (type ``dns``) its ``hostmatic_domains`` row names, read
through :class:`~panelflow.hooks.dns.DnsResolverHook` — and makes ``hostmatic_dns_records`` equal
to what it read, logging every record added or removed in ``hostmatic_dns_record_changes`` once
per run. DNS has no "list the zone" query the backend must answer, so a domain's read is the
standard owner names (the apex, ``www``, ``mail``, Microsoft 365's and Skype's names, common
service records), the domain's ``extra_names``, and every name already stored for it (so a
removed record is seen as removed), each asked for the types that can live there.

A read is all or nothing: a domain whose server does not answer (timeout, refused, SERVFAIL), or
whose connection is missing, is reported with its error and its stored records stay as they
were; it is retried first on the next run. A read that comes back completely empty for a domain
that has records stored is reported and changes nothing either (a zone lost on the backend is an
operator's call, not a silent wipe). Domains are read concurrently by a bounded pool, each query
bounded by the connection's ``timeout``/``lifetime``, the run by a wall-clock budget: domains not
started within it are left for the next run, least recently tried first.

``send_domain_verification_notices`` mails the contact of each pending domain its TXT record,
once per reminder step (:data:`REMINDER_DAYS` after the domain was added, measured at the run's
interval end), never twice: the notice row and its outbox message are written together, keyed on
(domain, reminder). A run late past several steps sends only the latest one.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue
from panelflow.steps.domains import VERIFY_PREFIX

MAX_DOMAINS_PER_RUN = 2000
CONCURRENCY = 8                # domains read at once (each reads its names one query at a time)
RUN_BUDGET_SECONDS = 20 * 60   # the thread's timeout is 25 minutes: stop starting domains after 20
DOMAIN_BUDGET_SECONDS = 120    # one domain's read, all its queries together

TYPES = ("A", "AAAA", "MX", "CNAME", "TXT", "SRV", "NS")
APEX_TYPES = ("A", "AAAA", "MX", "NS", "TXT")
HOST_TYPES = ("CNAME", "A", "AAAA", "MX", "TXT")   # CNAME first: a name with a CNAME has nothing else
SERVICE_TYPES = ("SRV", "TXT")                      # names whose first label starts with "_"
STANDARD_NAMES = (
    "www", "mail", "webmail", "ftp", "autodiscover", "lyncdiscover", "sip", "enterpriseregistration",
    "enterpriseenrollment", "_dmarc", "_autodiscover._tcp", "_sip._tls", "_sipfederationtls._tcp",
)

REMINDER_DAYS = (0, 3, 7)       # notice 0 when added, then reminders; the table allows reminders 0..2
GIVE_UP_DAYS = 14               # a domain pending longer than this gets no more notices
MAX_NOTICES_PER_RUN = 1000
NOTICE_TEMPLATE = "domain_verification_notice"

# -- reading a zone ------------------------------------------------------------------------------


class _ReadFailed(Exception):
    """The domain's read did not complete: nothing is known about its records."""


class _Deferred(Exception):
    """The run's budget was spent before the domain's read started."""


def _owner_names(domain: str, extra: list[str], stored: list[str]) -> list[str]:
    """The apex first, then the standard, extra and stored names under ``domain`` (no duplicates)."""
    names = [domain]
    for label in (*STANDARD_NAMES, *extra):
        label = label.strip().lower().rstrip(".")
        if label and label != "@":
            names.append(label if label == domain or label.endswith("." + domain) else f"{label}.{domain}")
    names += [n for n in stored if n == domain or n.endswith("." + domain)]
    return list(dict.fromkeys(names))


def _types_for(name: str, domain: str) -> tuple[str, ...]:
    if name == domain:
        return APEX_TYPES
    return SERVICE_TYPES if name.startswith("_") else HOST_TYPES


def _value(rdtype: str, rdata) -> str:
    def host(n) -> str:
        return n.to_text(omit_final_dot=True).lower()

    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return f"{rdata.preference} {host(rdata.exchange)}"
    if rdtype in ("CNAME", "NS"):
        return host(rdata.target)
    if rdtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype == "SRV":
        return f"{rdata.priority} {rdata.weight} {rdata.port} {host(rdata.target)}"
    return rdata.to_text()


def read_zone(resolver, domain: str, names: list[str], budget: float = DOMAIN_BUDGET_SECONDS) -> set[tuple]:
    """Every ``(name, type, value, ttl)`` of ``names`` on the resolver's server; raises
    :class:`_ReadFailed` at the first query it does not answer (or past ``budget`` seconds)."""
    import dns.exception
    import dns.name
    import dns.resolver

    deadline = time.monotonic() + budget
    records: set[tuple] = set()
    for name in names:
        qname = dns.name.from_text(name)
        for rdtype in _types_for(name, domain):
            if time.monotonic() > deadline:
                raise _ReadFailed(f"{domain}: not read within {budget:.0f}s")
            try:
                answer = resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                break  # the name does not exist: no type to ask for
            except dns.exception.DNSException as exc:  # timeout, SERVFAIL/REFUSED (NoNameservers), bad name
                raise _ReadFailed(f"{domain}: {name} {rdtype}: {type(exc).__name__}: {exc}") from exc
            if answer.rrset is None or answer.canonical_name != qname:
                continue  # no data, or data of the name a CNAME points to (not this name's)
            records.update((name, rdtype, _value(rdtype, r), answer.rrset.ttl) for r in answer.rrset)
            if rdtype == "CNAME":
                break
    # one row per (name, type, value): the same record seen twice keeps its lowest TTL
    best: dict[tuple, tuple] = {}
    for record in sorted(records, key=lambda r: r[3]):
        best.setdefault(record[:3], record)
    return set(best.values())


def _resolvers(conn_ids: set[str]) -> tuple[dict, dict]:
    """({conn id: dnspython resolver}, {conn id: why not}) — built here, in the task's thread:
    connections are looked up before the pool starts."""
    from airflow.exceptions import AirflowNotFoundException

    from panelflow.hooks.dns import DnsResolverHook

    resolvers, missing = {}, {}
    for conn_id in sorted(conn_ids):
        hook = DnsResolverHook(dns_conn_id=conn_id)
        try:
            hook.get_connection(conn_id)  # the hook would fall back to the system resolver: not the backend
        except AirflowNotFoundException:
            missing[conn_id] = f"connection {conn_id!r} (the DNS backend server) is not defined"
            continue
        resolver = hook.get_conn()
        if not resolver.nameservers:
            missing[conn_id] = f"connection {conn_id!r} names no server (host)"
            continue
        resolvers[conn_id] = resolver
    return resolvers, missing


# -- storing a read ------------------------------------------------------------------------------

_DOMAINS = """
SELECT h.domain_id, rtrim(lower(d.name), '.'), h.dns_conn_id, h.extra_names,
       coalesce((SELECT array_agg(DISTINCT r.name) FROM hostmatic_dns_records r WHERE r.domain_id = h.domain_id),
                '{}') AS stored_names
FROM hostmatic_domains h JOIN domains d ON d.id = h.domain_id
WHERE h.enabled
ORDER BY h.last_attempt_at NULLS FIRST, h.id
LIMIT %s
"""

# The read (arrays, one element per record) against the stored rows, in one statement: rows not
# read are deleted, rows read and not stored inserted, both logged once for the run.
_APPLY = """
WITH seen AS (
    SELECT * FROM unnest(%(names)s::text[], %(types)s::text[], %(values)s::text[], %(ttls)s::int[])
        AS s(name, type, value, ttl)
), removed AS (
    DELETE FROM hostmatic_dns_records r
    WHERE r.domain_id = %(domain_id)s
      AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.name = r.name AND s.type = r.type AND s.value = r.value)
    RETURNING r.name, r.type, r.value, r.ttl
), upserted AS (
    INSERT INTO hostmatic_dns_records AS r (domain_id, name, type, value, ttl, first_seen_at)
    SELECT %(domain_id)s, name, type, value, ttl, %(at)s FROM seen
    ON CONFLICT (domain_id, name, type, md5(value)) DO UPDATE SET ttl = EXCLUDED.ttl
        WHERE r.ttl IS DISTINCT FROM EXCLUDED.ttl
    RETURNING r.name, r.type, r.value, r.ttl, (r.xmax = 0) AS inserted
), logged AS (
    INSERT INTO hostmatic_dns_record_changes (domain_id, run_at, change, name, type, value, ttl)
    SELECT %(domain_id)s, %(at)s, 'removed', name, type, value, ttl FROM removed
    UNION ALL
    SELECT %(domain_id)s, %(at)s, 'added', name, type, value, ttl FROM upserted WHERE inserted
    ON CONFLICT (domain_id, run_at, change, name, type, md5(value)) DO NOTHING
    RETURNING change
)
SELECT (SELECT count(*) FROM upserted WHERE inserted), (SELECT count(*) FROM removed),
       (SELECT count(*) FROM logged)
"""


def _attempted(conn, domain_id: int, at, error: str | None) -> None:
    conn.execute("UPDATE hostmatic_domains SET last_attempt_at = %s, last_error = %s WHERE domain_id = %s",
                 (at, error[:500] if error else None, domain_id))


def sync_hostmatic_dns_records(panel_db, interval, log) -> dict:
    """Read Hostmatic domains and sync its DNS data from backend."""
    report = StepReport()
    at = interval.end
    started = time.monotonic()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        domains = conn.execute(_DOMAINS, (MAX_DOMAINS_PER_RUN,)).fetchall()
        resolvers, missing = _resolvers({row[2] for row in domains})
        report.add("domains", len(domains))

        def read(resolver, name, names):
            if time.monotonic() - started > RUN_BUDGET_SECONDS:
                raise _Deferred()
            return read_zone(resolver, name, names)

        with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="dns-read") as pool:
            futures = {}
            for domain_id, name, conn_id, extra, stored in domains:
                if conn_id in missing:
                    report.skip("DNS backend not configured", f"{name}: {missing[conn_id]}")
                    _attempted(conn, domain_id, at, missing[conn_id])
                    continue
                future = pool.submit(read, resolvers[conn_id], name, _owner_names(name, extra, stored))
                futures[future] = (domain_id, name, bool(stored))
            for future in as_completed(futures):
                domain_id, name, had_records = futures[future]
                try:
                    records = future.result()
                except _Deferred:
                    report.add("deferred")
                    continue
                except _ReadFailed as exc:
                    report.skip("DNS backend did not answer; stored records kept", str(exc))
                    _attempted(conn, domain_id, at, str(exc))
                    continue
                if not records and had_records:
                    problem = f"{name}: the backend returned no records at all; stored records kept"
                    report.skip("empty answer; stored records kept", problem)
                    _attempted(conn, domain_id, at, problem)
                    continue
                rows = sorted(records)
                with conn.transaction():
                    added, removed, _ = conn.execute(_APPLY, {
                        "domain_id": domain_id, "at": at,
                        "names": [r[0] for r in rows], "types": [r[1] for r in rows],
                        "values": [r[2] for r in rows], "ttls": [r[3] for r in rows]}).fetchone()
                    conn.execute("UPDATE hostmatic_domains SET last_attempt_at = %s, last_synced_at = %s,"
                                 " last_error = NULL WHERE domain_id = %s", (at, at, domain_id))
                report.add("synced")
                report.add("records_read", len(rows))
                report.add("records_added", added)
                report.add("records_removed", removed)
                if added or removed:
                    report.add("domains_changed")
    report.zero("synced", "records_read", "records_added", "records_removed", "domains_changed", "deferred")
    summary = report.as_dict()
    if log is not None and summary["skipped"]:
        log.warning("DNS sync: %s", summary["skipped"])
    return summary


# -- verification notices ------------------------------------------------------------------------

# Each pending domain's latest due reminder (the highest step whose day has come at the clock),
# when not sent yet: notice rows first, then their messages, in one transaction.
_NOTICES = """
WITH due AS (
    SELECT d.id, d.created_at,
           (SELECT max(step.n) - 1 FROM unnest(%(days)s::int[]) WITH ORDINALITY AS step(day, n)
            WHERE d.created_at + make_interval(days => step.day) <= %(at)s) AS reminder
    FROM domains d
    WHERE d.status = 'pending'
      AND d.created_at <= %(at)s
      AND d.created_at > %(at)s::timestamptz - make_interval(days => %(give_up)s)
      AND coalesce(d.contact_email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$', false)
      -- a hosted zone that already carries the token: DomainVerification verifies it on its next run
      AND NOT EXISTS (SELECT 1 FROM hostmatic_dns_records r
                      WHERE r.domain_id = d.id AND r.name = rtrim(lower(d.name), '.') AND r.type = 'TXT'
                        AND r.value = %(prefix)s || d.verification_token)
), todo AS (
    SELECT id, reminder, created_at FROM due
    WHERE reminder IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM domain_verification_notices n WHERE n.domain_id = due.id
                      AND n.reminder >= due.reminder)
    ORDER BY created_at, id
    LIMIT %(limit)s
)
INSERT INTO domain_verification_notices (domain_id, reminder, sent_at, outbox_key)
SELECT id, reminder, %(at)s, 'domain-verification-notice:' || id || ':' || reminder FROM todo
ON CONFLICT DO NOTHING
RETURNING domain_id, reminder, outbox_key
"""

_UNMAILABLE = """
SELECT count(*), (array_agg(name || ' (' || coalesce(nullif(contact_email, ''), 'no address') || ')'
                            ORDER BY id))[1:%(keep)s]
FROM domains
WHERE status = 'pending' AND created_at <= %(at)s
  AND created_at > %(at)s::timestamptz - make_interval(days => %(give_up)s)
  AND NOT coalesce(contact_email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$', false)
"""


def send_domain_verification_notices(panel_db, interval) -> dict:
    """Send domain verification notices."""
    report = StepReport()
    at = interval.end
    args = {"at": at, "days": list(REMINDER_DAYS), "give_up": GIVE_UP_DAYS, "prefix": VERIFY_PREFIX,
            "limit": MAX_NOTICES_PER_RUN, "keep": report.keep}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # the notices and their e-mails together, or neither
            written = conn.execute(_NOTICES, args).fetchall()
            details = {}
            if written:
                details = {row[0]: row[1:] for row in conn.execute(
                    "SELECT id, name, contact_email, verification_token, created_at FROM domains"
                    " WHERE id = ANY(%s)", ([w[0] for w in written],))}
            queued = 0
            for domain_id, reminder, outbox_key in sorted(written):
                name, email, token, created_at = details[domain_id]
                queued += enqueue(conn, dedupe_key=outbox_key, to=email, template=NOTICE_TEMPLATE, context={
                    "domain": name, "record_name": name, "record_value": f"{VERIFY_PREFIX}{token}",
                    "reminder": reminder, "reminders": len(REMINDER_DAYS), "last": reminder == len(REMINDER_DAYS) - 1,
                    "days_pending": (at - created_at).days, "added_on": created_at.date().isoformat(),
                }, not_before=at)
                report.add(f"reminder_{reminder}")
        unmailable, examples = conn.execute(_UNMAILABLE, args).fetchone()
    if unmailable:
        report.skip_grouped([("domain contact has no usable e-mail address", unmailable, examples)])
    report.add("notices", len(written))
    report.add("emails_queued", queued)
    return report.as_dict()
