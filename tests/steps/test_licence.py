"""LicenseWork against the TLS licence sandbox and the real panel DB.

Proves: a licence is used only once its Ed25519 signature verified against the pinned key (a
tampered file, another signer, another installation are refused and the previous licence stays in
force); the vendor is reached over verified TLS only; units are counted from the panel's tables;
the 90 % and 100 % alerts go once per threshold and licence period, whatever the reruns.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval, PartsFailed
from panelflow.steps.licence import handle_license
from sandbox.licence_vendor import LicenceVendorSandbox

CLOCK = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
INSTALLATION = "inst-0001"
MARK = "lic-test-"


def _interval(clock=CLOCK):
    return Interval(clock - timedelta(hours=12), clock)


def _fields(licence_id="L-100", *, issued="2026-11-01T00:00:00Z", tenants=10, **more):
    return {"licence_id": licence_id, "issued_at": issued, "licensee": "Hostmatic Ltd", "installation_id": INSTALLATION,
            "valid_from": "2026-11-01T00:00:00Z", "valid_until": "2027-11-01T00:00:00Z",
            "units": {"mailboxes": 500, "users": 1000, "vms": 50, "tenants": tenants}, **more}


@pytest.fixture
def vendor():
    with LicenceVendorSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def licence(panel_db, sql, vendor, tmp_path, monkeypatch):
    """The licence_vendor connection (file + vendor over TLS), clean licence tables, no test tenants."""
    sql("TRUNCATE panel_licences, licence_alerts")
    sql("DELETE FROM m365_tenants WHERE conn_id LIKE %s", (MARK + "%",))
    path = tmp_path / "licence.json"

    def connect(host=None, **extra):
        conn = {"conn_type": "panelflow_licence_vendor", "host": host if host is not None else vendor.url,
                "password": vendor.licence_key,
                "extra": {"public_key": vendor.public_key_b64, "licence_file": str(path), "ca_file": vendor.ca_file,
                          "installation_id": INSTALLATION, "alert_to": "ops@hostmatic.example", "retries": 1,
                          **extra}}
        monkeypatch.setenv("AIRFLOW_CONN_LICENCE_VENDOR", json.dumps(conn))

    connect()
    yield type("Licence", (), {"path": path, "connect": staticmethod(connect),
                               "write": staticmethod(lambda env: path.write_text(json.dumps(env)))})
    sql("DELETE FROM m365_tenants WHERE conn_id LIKE %s", (MARK + "%",))
    sql("TRUNCATE panel_licences, licence_alerts")


def _tenants(sql, n):
    for _ in range(n):
        sql("INSERT INTO m365_tenants (tenant_id, conn_id) VALUES (%s, %s)",
            (str(uuid.uuid4()), MARK + uuid.uuid4().hex))


def _alerts(sql):
    return sql("SELECT unit, threshold, used, licensed FROM licence_alerts ORDER BY threshold")


def _outbox(sql):
    return sql("SELECT to_address, subject FROM email_outbox WHERE template = 'licence_usage_alert' ORDER BY id")


def test_verified_licence_counts_units_and_alerts_once_per_threshold(panel_db, sql, vendor, licence):
    base = sql("SELECT count(*) FROM m365_tenants WHERE enabled")[0][0]   # tenants other tests left
    licence.write(vendor.sign(_fields(tenants=base + 10)))
    vendor.set_current(INSTALLATION, vendor.sign(_fields(tenants=base + 10)))
    _tenants(sql, 9)

    first = handle_license(panel_db, _interval())
    assert first["licences"]["licences_stored"] == 1          # file and vendor carry the same document: one row
    assert first["licences"]["licences_refused"] == 0
    usage = first["usage"]
    assert usage["licence"] == "L-100" and usage["units"]["tenants"] == {"used": base + 9, "licensed": base + 10}
    for unit, table in (("mailboxes", "exchange_mailboxes WHERE status IN ('active', 'disabled')"),
                        ("users", "ad_users WHERE NOT deleted"), ("vms", "hyperv_vms WHERE deleted_at IS NULL")):
        assert usage["units"][unit]["used"] == sql(f"SELECT count(*) FROM {table}")[0][0]
    assert usage["alerts_queued"] == 1
    assert _alerts(sql) == [("tenants", 90, base + 9, base + 10)]
    assert _outbox(sql) == [("ops@hostmatic.example",
                             "Licence L-100: Microsoft 365 tenants at 90 % of the licensed number")]

    again = handle_license(panel_db, _interval(CLOCK + timedelta(hours=12)))   # the next run, and a rerun
    assert handle_license(panel_db, _interval())["usage"]["alerts_queued"] == 0
    assert again["usage"]["alerts_queued"] == 0 and len(_outbox(sql)) == 1

    _tenants(sql, 1)
    assert handle_license(panel_db, _interval(CLOCK + timedelta(days=1)))["usage"]["alerts_queued"] == 1
    assert handle_license(panel_db, _interval(CLOCK + timedelta(days=1)))["usage"]["alerts_queued"] == 0
    assert [a[1] for a in _alerts(sql)] == [90, 100]
    assert [s for _, s in _outbox(sql)][-1].endswith("at 100 % of the licensed number")
    assert len(_outbox(sql)) == 2

    # a renewed licence is a new period: its thresholds alert again, once
    renewed = _fields("L-101", issued="2026-12-08T00:00:00Z", valid_from="2026-12-08T00:00:00Z", tenants=base + 10)
    vendor.set_current(INSTALLATION, vendor.sign(renewed))
    later = _interval(CLOCK + timedelta(days=2))
    assert handle_license(panel_db, later)["usage"]["licence"] == "L-101"
    assert handle_license(panel_db, later)["usage"]["alerts_queued"] == 0
    assert len(_outbox(sql)) == 3 and _outbox(sql)[-1][1].startswith("Licence L-101:")


def test_usage_past_both_thresholds_sends_only_the_100_alert(panel_db, sql, vendor, licence):
    base = sql("SELECT count(*) FROM m365_tenants WHERE enabled")[0][0]
    licence.write(vendor.sign(_fields(tenants=base + 2)))
    licence.connect(host="")                                   # no vendor service: the file alone
    _tenants(sql, 3)
    result = handle_license(panel_db, _interval())
    assert result["usage"]["alerts_queued"] == 1
    assert [a[1] for a in _alerts(sql)] == [90, 100]
    assert len(_outbox(sql)) == 1 and "100 %" in _outbox(sql)[0][1]


def test_tampered_file_is_refused_and_the_previous_licence_stays(panel_db, sql, vendor, licence):
    licence.connect(host="")                                   # the file alone
    licence.write(vendor.sign(_fields()))
    assert handle_license(panel_db, _interval())["licences"]["licences_stored"] == 1

    signed = vendor.sign(_fields("L-200", issued="2026-12-01T00:00:00Z"))
    licence.write(vendor.tampered(signed, units={"tenants": 9999}))
    result = handle_license(panel_db, _interval(CLOCK + timedelta(hours=12)))
    assert result["licences"]["licences_refused"] == 1 and result["licences"]["licences_stored"] == 0
    assert "signature does not verify" in result["licences"]["skipped_examples"][0]
    assert result["usage"]["licence"] == "L-100" and result["usage"]["units"]["tenants"]["licensed"] == 10
    assert sql("SELECT licence_id FROM panel_licences") == [("L-100",)]


def test_another_signer_or_another_installation_is_refused(panel_db, sql, vendor, licence):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    licence.write(vendor.sign(_fields(), key=Ed25519PrivateKey.generate()))
    vendor.set_current(INSTALLATION, vendor.sign(_fields(installation_id="inst-9999")))
    result = handle_license(panel_db, _interval())
    assert result["licences"]["licences_refused"] == 2 and result["licences"]["licences_stored"] == 0
    reasons = " | ".join(result["licences"]["skipped_examples"])
    assert "pinned vendor key" in reasons and "installation 'inst-9999'" in reasons
    assert result["usage"]["licence"] is None
    assert sql("SELECT count(*) FROM panel_licences") == [(0,)]


def test_vendor_refresh_stores_a_newer_licence(panel_db, sql, vendor, licence):
    licence.write(vendor.sign(_fields()))
    vendor.set_current(INSTALLATION, vendor.sign(_fields("L-100", issued="2026-12-01T00:00:00Z", tenants=20)))
    result = handle_license(panel_db, _interval())
    assert result["licences"]["licences_stored"] == 2
    assert result["usage"]["units"]["tenants"]["licensed"] == 20   # the later issue is in force
    assert any(r["path"].startswith("/v1/licences/current?installation=inst-0001") for r in vendor.requests)


def test_vendor_certificate_not_trusted_fails_the_task_after_usage(panel_db, sql, vendor, licence, tmp_path):
    from sandbox.registrar_tls import certificates

    other_ca = certificates(tmp_path / "other-ca")[0]
    licence.write(vendor.sign(_fields()))
    vendor.set_current(INSTALLATION, vendor.sign(_fields()))
    licence.connect(ca_file=str(other_ca))
    with pytest.raises(PartsFailed, match="licences: LicenceVendorUnavailable"):
        handle_license(panel_db, _interval())
    assert sql("SELECT licence_id, source FROM panel_licences") == [("L-100", "file")]   # the file was still used
    assert vendor.requests == []                                                        # nothing got past TLS


def test_plain_http_vendor_is_refused(panel_db, sql, vendor, licence):
    licence.write(vendor.sign(_fields()))
    licence.connect(host=vendor.url.replace("https://", "http://"))
    with pytest.raises(PartsFailed, match="must be reached over HTTPS"):
        handle_license(panel_db, _interval())


def test_no_connection_means_nothing_configured(panel_db, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_LICENCE_VENDOR", raising=False)
    result = handle_license(panel_db, _interval())
    assert result["configured"] is False and "no licence" in result["message"]
