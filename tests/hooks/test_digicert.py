"""The DigiCert CertCentral hook against the loopback Services API (include/sandbox/digicert.py):
Order info and the pem_all download as DigiCert documents them, the key in ``X-DC-DEVKEY`` only,
429 retried after ``Retry-After``, refusals sorted into the hook's errors. Real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest
from cryptography import x509

from panelflow.hooks.digicert import DigiCertAuthenticationError, DigiCertHook, DigiCertNotFound, DigiCertUnavailable
from sandbox.digicert import DigiCertSandbox
from sandbox.test_ca import csr_for

KEY = "dc_test_hook_key_9f3a"


@pytest.fixture
def digicert(monkeypatch):
    from panelflow.dev.postgres import free_port

    server = DigiCertSandbox(port=free_port(), api_key=KEY).start()
    monkeypatch.setenv("AIRFLOW_CONN_DIGICERT_HOOK", json.dumps({
        "conn_type": "panelflow_digicert", "host": f"{server.url}/services/v2", "password": KEY,
        "extra": {"retries": 3, "backoff": 0.01, "max_retry_wait": 5, "poll_minutes": 30, "ca_bundle": "/x.pem"}}))
    yield server
    server.stop()


def hook(sleeps=None) -> DigiCertHook:
    return DigiCertHook("digicert_hook", sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_order_info_and_the_issued_chain(digicert, caplog):
    caplog.set_level(logging.DEBUG)
    _, csr = csr_for("shop.example.test", ["www.shop.example.test"])
    order_id = digicert.add_order(csr, "shop.example.test", ["www.shop.example.test"], product="ssl_basic",
                                  price=218, currency="USD")
    with hook() as h:
        pending = h.get_order(str(order_id))
        assert (pending.id, pending.status, pending.product, pending.certificate_id) == (
            str(order_id), "pending", "ssl_basic", None)
        assert pending.dns_names == ("shop.example.test", "www.shop.example.test")
        assert (pending.price, pending.currency) == (Decimal("218.00"), "USD")
        assert (h.poll_minutes, h.ca_bundle) == (30.0, "/x.pem")
        cert_id = digicert.issue(order_id)
        issued = h.get_order(str(order_id))
        assert (issued.status, issued.certificate_id) == ("issued", str(cert_id))
        certificates = h.download(issued.certificate_id)
    leaf = x509.load_pem_x509_certificate(certificates.leaf_pem.encode())
    assert leaf.subject.rfc4514_string() == "CN=shop.example.test"
    assert [x509.load_pem_x509_certificate(p.encode()).subject for p in certificates.chain_pems] == [
        digicert.ca.intermediate.subject, digicert.ca.root.subject]
    assert KEY not in caplog.text


def test_a_429_is_retried_after_retry_after(digicert):
    _, csr = csr_for("a.example.test")
    order_id = digicert.add_order(csr, "a.example.test")
    digicert.throttle(2, retry_after=3)
    sleeps: list[float] = []
    with hook(sleeps) as h:
        assert h.get_order(str(order_id)).status == "pending"
    assert sleeps == [3, 3]
    assert [r["status"] for r in digicert.requests] == [429, 429, 200]


def test_throttled_through_every_attempt_is_unavailable(digicert):
    digicert.throttle(5)
    with hook() as h, pytest.raises(DigiCertUnavailable, match="HTTP 429 .*gave up after 3 attempts"):
        h.get_order("1001")


def test_refusals_are_not_retried(digicert):
    with hook() as h, pytest.raises(DigiCertNotFound, match="not_found\\|order") as missing:
        h.get_order("424242")
    assert missing.value.http_status == 404 and missing.value.code == "not_found|order"
    digicert.api_key = "rotated"
    with hook() as h, pytest.raises(DigiCertAuthenticationError, match="HTTP 401 invalid_api_key"):
        h.get_order("1001")
    assert [r["status"] for r in digicert.requests] == [404, 401]


def test_a_connection_without_a_key_is_refused_before_any_request(digicert, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DIGICERT_HOOK", json.dumps({
        "conn_type": "panelflow_digicert", "host": f"{digicert.url}/services/v2"}))
    with hook() as h, pytest.raises(ValueError, match="has no password"):
        h.get_order("1001")
    assert digicert.requests == []
