"""The Sectigo reseller hook against the loopback CollectSSL (include/sandbox/sectigo.py): the
form Sectigo documents, URL-encoded answers with errorCode, Base64 DER certificates turned into
PEM, Sectigo's order states and refusals, outages retried. Real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging

import pytest
from cryptography import x509

from panelflow.hooks.sectigo import SectigoAuthenticationError, SectigoHook, SectigoRequestError, SectigoUnavailable
from sandbox.sectigo import SectigoSandbox
from sandbox.test_ca import csr_for

LOGIN, PASSWORD = "reseller_hook", "sectigo_hook_pw_41c7"


@pytest.fixture
def sectigo(monkeypatch):
    from panelflow.dev.postgres import free_port

    server = SectigoSandbox(port=free_port(), login_name=LOGIN, password=PASSWORD).start()
    monkeypatch.setenv("AIRFLOW_CONN_SECTIGO_HOOK", json.dumps({
        "conn_type": "panelflow_sectigo", "host": f"{server.url}/products", "login": LOGIN, "password": PASSWORD,
        "extra": {"retries": 3, "backoff": 0.01}}))
    yield server
    server.stop()


def hook() -> SectigoHook:
    return SectigoHook("sectigo_hook", sleep=lambda s: None)


def test_status_then_the_collected_certificate(sectigo, caplog):
    caplog.set_level(logging.DEBUG)
    _, csr = csr_for("shop.example.test")
    number = sectigo.add_order(csr, "shop.example.test", days=90)
    with hook() as h:
        pending = h.order_status(number)
        assert (pending.state, pending.vendor_status, pending.fqdn, pending.leaf_pem) == (
            "pending", "Awaiting Validation", "shop.example.test", None)
        assert h.poll_minutes == 180.0   # Sectigo's advice: no more than every three hours
        sectigo.issue(number)
        issued = h.order_status(number)
    leaf = x509.load_pem_x509_certificate(issued.leaf_pem.encode())
    assert (issued.state, issued.vendor_status) == ("issued", "Issued")
    assert (issued.not_before, issued.not_after) == (leaf.not_valid_before_utc, leaf.not_valid_after_utc)
    assert [x509.load_pem_x509_certificate(p.encode()).subject for p in issued.chain_pems] == [
        sectigo.ca.intermediate.subject, sectigo.ca.root.subject]
    assert [(r["method"], r["queryType"], r["errorCode"]) for r in sectigo.requests] == [
        ("POST", "1", 0), ("POST", "1", 2)]
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("state", ["rejected", "revoked"])
def test_rejected_and_revoked_are_states_not_errors(sectigo, state):
    _, csr = csr_for("a.example.test")
    number = sectigo.add_order(csr, "a.example.test")
    sectigo.set_state(number, state)
    with hook() as h:
        assert h.order_status(number).state == state


def test_sectigos_negative_codes_are_refusals(sectigo):
    with hook() as h, pytest.raises(SectigoRequestError, match="errorCode -4: The value of the 'orderNumber'"
                                                                " argument is invalid!") as refused:
        h.order_status("1")
    assert refused.value.code == -4
    sectigo.password = "changed"
    with hook() as h, pytest.raises(SectigoAuthenticationError, match="errorCode -16: Permission denied!"):
        h.order_status("1")
    assert len(sectigo.requests) == 2   # neither retried


def test_an_outage_is_retried_then_unavailable(sectigo):
    _, csr = csr_for("a.example.test")
    number = sectigo.add_order(csr, "a.example.test")
    sectigo.fail(2)
    with hook() as h:
        assert h.order_status(number).state == "pending"
    sectigo.fail(3)
    with hook() as h, pytest.raises(SectigoUnavailable, match="HTTP 503.*gave up after 3 attempts"):
        h.order_status(number)


def test_credentials_are_required(sectigo, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SECTIGO_HOOK", json.dumps({
        "conn_type": "panelflow_sectigo", "host": f"{sectigo.url}/products", "password": PASSWORD}))
    with hook() as h, pytest.raises(ValueError, match="needs login"):
        h.order_status("1")
    assert sectigo.requests == []
