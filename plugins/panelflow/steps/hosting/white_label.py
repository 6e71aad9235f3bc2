"""ProvisioningWork 35: HTTPS bindings of resellers' white-label URLs on the IIS web servers, once per URL.

A reseller brands the control panel with a URL of its own (``panel.reseller.example``): the panel
writes a ``white_label_urls`` row (host name, the IIS site that answers it, the certificate's
thumbprint and store) with ``applied_at`` NULL, and sets it NULL again when the certificate is
renewed. Each run binds the pending URLs on their web servers with ``iis/set_ssl_binding``
(``New-WebBinding -Protocol https -SslFlags 1`` + the certificate; SNI, so many URLs share port 443)
and sets ``applied_at`` to the run's clock: a URL is bound once, and the script itself leaves a
binding with that certificate alone, so a retry after a lost answer changes nothing.

A URL the server refuses (no such site, the certificate not in the store) keeps ``applied_at`` NULL
with the server's words in ``last_error`` and is tried again by later runs (the operator may import
the certificate meanwhile); a host name that is not a DNS name is never sent. A web server that
cannot be reached is named in the summary and its URLs wait for the next run; the step fails only
when every server tried failed. At most ``white_label_per_run`` URLs (200) are worked per run,
oldest attempt first.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from panelflow.hooks.powershell import PowerShellScriptError, powershell_session
from panelflow.step import StepReport, first_line
from panelflow.steps.hosting._backend import HostingServer, for_each_server, servers, valid_host_name, with_note

PER_RUN = 200

_PENDING = """
SELECT id, host_name, web_server_id, iis_site_name, certificate_thumbprint, certificate_store, ip_address, port
FROM white_label_urls WHERE applied_at IS NULL
ORDER BY attempted_at NULLS FIRST, id LIMIT %s
"""

_APPLIED = """
UPDATE white_label_urls SET applied_at = %(at)s, attempted_at = %(at)s, last_error = NULL
WHERE id = %(id)s AND applied_at IS NULL
"""

_REFUSED = "UPDATE white_label_urls SET attempted_at = %(at)s, last_error = %(error)s WHERE id = %(id)s"


def _bindable_ip(value: str) -> bool:
    if value == "*":
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def apply_white_label_bindings(panel_db, interval, params=None, log=None) -> dict:
    """Apply bindings for white label URLs (see the module's doc). Param: ``white_label_per_run``."""
    at = interval.end
    per_run = int((params or {}).get("white_label_per_run", PER_RUN))
    report = StepReport().zero("urls", "bound", "already_bound", "refused")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        pending: dict[int, list[tuple]] = defaultdict(list)
        for row in conn.execute(_PENDING, (per_run,)).fetchall():
            pending[row[2]].append(row)
        targets = [s for s in servers(conn, role="web", ids=sorted(pending)) if s.engine == "iis"]
        for server_id in sorted(set(pending) - {s.id for s in targets}):
            for row in pending[server_id]:
                report.skip("its web server is disabled or not an IIS server", f"white-label URL {row[1]}")

        def refuse(url_id: int, host: str, error: str) -> None:
            conn.execute(_REFUSED, {"at": at, "id": url_id, "error": error[:1000]})
            report.add("refused")
            report.skip(error.splitlines()[0][:300], f"white-label URL {host}")

        def work(server: HostingServer) -> None:
            with powershell_session(server.conn_id, log) as hook:
                for url_id, host, _, site, thumbprint, store, ip, port in pending[server.id]:
                    report.add("urls")
                    if not valid_host_name(host) or not _bindable_ip(ip):
                        refuse(url_id, host, "not a host name / IP address IIS can bind: not sent")
                        continue
                    try:
                        rows = hook.run_script("iis/set_ssl_binding", {
                            "SiteName": site, "HostName": host, "Thumbprint": thumbprint, "CertificateStore": store,
                            "IPAddress": ip, "Port": port})
                    except PowerShellScriptError as exc:      # this URL refused; the server answers the others
                        refuse(url_id, host, f"{server.name}: {first_line(exc)}")
                        continue
                    if len(rows) != 1 or not isinstance(rows[0], dict):
                        refuse(url_id, host, f"{server.name}: iis/set_ssl_binding answered {len(rows)} records")
                        continue
                    row = rows[0]
                    conn.execute(_APPLIED, {"at": at, "id": url_id})
                    changed = row.get("Created") or row.get("CertificateChanged")
                    report.add("bound" if changed else "already_bound")

        outcome = for_each_server(targets, work, report, log, what="web server")
        return with_note(report, conn, outcome)
