"""ProvisioningWork 35: white-label URLs bound on IIS at the PSRP boundary (the real PsrpHook/pypsrp build
each CreatePipeline; the recorded endpoint decodes script and parameters and answers as
``iis/set_ssl_binding`` prints on a real server).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from panelflow.steps.hosting.white_label import apply_white_label_bindings

from .conftest import CLOCK, interval

THUMB = "3F2A9C1B7E5D4A8F0B6C2E1D9A7F5B3C8E4D2A10"
HOSTILE_SITE = "Panel'; Remove-Website -Name *; '"


@pytest.fixture
def urls(hosting, recorded_powershell, sql):
    web1 = hosting.server("WEB01", "web", "iis", recorded_powershell.connection("web01.hosting.example"))
    web2 = hosting.server("WEB02", "web", "iis", recorded_powershell.connection("web02.hosting.example"))
    ids = {}
    for key, host, server, site, store in (
            ("brand", "panel.brand.example", web1, "MachPanel", "WebHosting"),
            ("hostile", "cp.hostile.example", web1, HOSTILE_SITE, "My"),
            ("bad_host", "cp.example'; remove-website *; '", web1, "MachPanel", "My"),
            ("no_cert", "cp.nocert.example", web1, "MachPanel", "My"),
            ("down", "cp.down.example", web2, "MachPanel", "My")):
        ids[key] = sql("INSERT INTO white_label_urls (host_name, web_server_id, iis_site_name, certificate_thumbprint,"
                       " certificate_store) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                       (host, server, site, THUMB, store))[0][0]

    def binding(sent):
        p = sent.parameters
        return [{"SiteName": p["SiteName"], "HostName": p["HostName"], "Binding": f"*:443:{p['HostName']}",
                 "Thumbprint": p["Thumbprint"], "CertificateStore": p["CertificateStore"], "Created": True,
                 "CertificateChanged": True}]
    recorded_powershell.answer("iis/set_ssl_binding", binding)
    recorded_powershell.answer("iis/set_ssl_binding", error=f"No certificate {THUMB} in LocalMachine\\My on WEB01",
                               when=lambda sent: sent.parameters["HostName"] == "cp.nocert.example")
    recorded_powershell.answer("iis/set_ssl_binding", timeout=True,
                               when=lambda sent: sent.conn_host == "web02.hosting.example")
    return ids


def state(sql):
    return {r[0]: r[1:] for r in sql("SELECT host_name, applied_at, last_error FROM white_label_urls")}


def test_urls_are_bound_once_with_their_values_as_parameters(hosting, urls, recorded_powershell, sql):
    summary = apply_white_label_bindings(hosting.db, interval())

    assert [(c.conn_host, c.parameters) for c in recorded_powershell.calls("iis/set_ssl_binding")] == [
        ("web01.hosting.example", {"SiteName": "MachPanel", "HostName": "panel.brand.example", "Thumbprint": THUMB,
                                   "CertificateStore": "WebHosting", "IPAddress": "*", "Port": 443}),
        ("web01.hosting.example", {"SiteName": HOSTILE_SITE, "HostName": "cp.hostile.example", "Thumbprint": THUMB,
                                   "CertificateStore": "My", "IPAddress": "*", "Port": 443}),
        ("web01.hosting.example", {"SiteName": "MachPanel", "HostName": "cp.nocert.example", "Thumbprint": THUMB,
                                   "CertificateStore": "My", "IPAddress": "*", "Port": 443}),
        ("web02.hosting.example", {"SiteName": "MachPanel", "HostName": "cp.down.example", "Thumbprint": THUMB,
                                   "CertificateStore": "My", "IPAddress": "*", "Port": 443}),
    ]
    hostile = recorded_powershell.calls("iis/set_ssl_binding")[1]
    assert hostile.is_script and "Remove-Website -Name *" not in hostile.command
    assert hostile.clixml.count("Remove-Website -Name *") == 1         # only as the SiteName parameter

    now = state(sql)
    assert now["panel.brand.example"] == (CLOCK, None) and now["cp.hostile.example"] == (CLOCK, None)
    assert now["cp.example'; remove-website *; '"] == (None, "not a host name / IP address IIS can bind: not sent")
    assert now["cp.nocert.example"] == (None, f"WEB01: iis/set_ssl_binding: No certificate {THUMB} in LocalMachine\\My"
                                              " on WEB01")
    assert now["cp.down.example"] == (None, None)
    assert summary["failed_servers"] == ["WEB02"]
    assert {k: summary[k] for k in ("urls", "bound", "refused", "servers", "servers_failed")} == {
        "urls": 5, "bound": 2, "refused": 2, "servers": 2, "servers_failed": 1}

    recorded_powershell.sent.clear()
    again = apply_white_label_bindings(hosting.db, interval(CLOCK + timedelta(minutes=10)))
    assert sorted(c.parameters["HostName"] for c in recorded_powershell.sent) == ["cp.down.example",
                                                                                  "cp.nocert.example"]
    assert again["bound"] == 0 and state(sql)["panel.brand.example"] == (CLOCK, None)   # bound once


def test_nothing_configured_is_a_summary_not_a_failure(hosting):
    summary = apply_white_label_bindings(hosting.db, interval())
    assert summary["note"] == "no hosting servers configured" and summary["urls"] == 0
