"""Domain threads: DomainVerification."""

from __future__ import annotations

from panelflow.services.outbox import enqueue

VERIFY_PREFIX = "panelflow-verification="
MAX_PER_RUN = 500  # DNS lookups are per domain: bounded, least recently checked first


def verify_domains(panel_db, interval) -> dict:
    """Verify domains in system using TXT records and sends email of successfully verified domains.

    A pending domain is verified when one of its TXT records is ``panelflow-verification=<its
    token>``; its owner then gets one e-mail (outbox key ``domain-verified:<id>``). A lookup the
    resolver does not answer is reported and the domain stays pending for the next run.
    """
    from panelflow.hooks.dns import DnsLookupError, DnsResolverHook

    dns = DnsResolverHook()
    summary = {"checked": 0, "verified": 0, "still_pending": 0, "lookup_errors": []}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        domains = conn.execute(
            "SELECT id, name, verification_token, contact_email FROM domains WHERE status = 'pending'"
            " ORDER BY last_checked_at NULLS FIRST, id LIMIT %s", (MAX_PER_RUN,)).fetchall()
        for domain_id, name, token, contact in domains:
            summary["checked"] += 1
            try:
                records = dns.txt_records(name)
            except DnsLookupError as exc:
                summary["lookup_errors"].append(str(exc))
                conn.execute("UPDATE domains SET last_checked_at = %s, last_error = %s WHERE id = %s",
                             (interval.end, str(exc)[:500], domain_id))
                continue
            if f"{VERIFY_PREFIX}{token}" not in records:
                summary["still_pending"] += 1
                conn.execute("UPDATE domains SET last_checked_at = %s, last_error = NULL WHERE id = %s",
                             (interval.end, domain_id))
                continue
            with conn.transaction():  # the status and its e-mail together, or neither
                conn.execute("UPDATE domains SET status = 'verified', verified_at = %s, last_checked_at = %s,"
                             " last_error = NULL WHERE id = %s", (interval.end, interval.end, domain_id))
                enqueue(conn, dedupe_key=f"domain-verified:{domain_id}", to=contact, template="domain_verified",
                        context={"domain": name}, not_before=interval.end)
            summary["verified"] += 1
    summary["lookup_errors"] = summary["lookup_errors"][:20]
    return summary
