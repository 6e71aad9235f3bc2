"""Fixtures of the SSL steps' tests: the panel's customers and SSL orders, and the DigiCert and
Sectigo sandboxes (include/sandbox/) wired as the ``digicert`` and ``sectigo`` connections, each
trusting its own sandbox root (the ``ca_bundle`` extra)."""

from __future__ import annotations

import json
import logging

import pendulum
import psycopg
import pytest

from panelflow.step import Interval

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")
OWN_TABLES = ("ssl_estimated_bills", "ssl_certificates", "ssl_orders")


@pytest.fixture
def run(db):
    """``run(step, at=NOW)``: the step as its ProvisioningWork task runs it (every 10 minutes, ending at ``at``)."""
    log = logging.getLogger("test_ssl")

    def run_step(step, at=NOW):
        return step(panel_db=db, interval=Interval(at.subtract(minutes=10), at, "UTC"), log=log)

    return run_step


@pytest.fixture
def db(panel_db, migrated_panel_db, sql):
    """The panel DB emptied (ours too), with a provider, a reseller-less GB customer (20% VAT) and
    a US customer (no tax), each with an SSL subscription."""
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling'), ('USD', 'US dollar')")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Hostmatic', 'billing@host.example', 'GBP')")
    sql("INSERT INTO tax_rates (provider_id, country, name, rate) VALUES (1, 'GB', 'VAT', 0.20)")
    sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES"
        " (1, 'Shop Ltd', 'ops@shop.example.test', 'GB', 'GBP'), (1, 'Acme Inc', 'it@acme.example.test', 'US', 'USD')")
    for customer, currency in ((1, "GBP"), (2, "USD")):
        for _ in range(3):
            sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                " started_on) VALUES (%s, 'SSL certificate', 0, %s, 'yearly', '2027-11-20', '2026-11-01')",
                (customer, currency))
    return panel_db


@pytest.fixture
def add_order(db, sql):
    """``add_order(vendor, vendor_order_id, csr, common_name, sans, …)``: what the panel's order
    form writes after placing the order at the vendor; the row's id."""
    return lambda *args, **kwargs: _add_order(sql, *args, **kwargs)


def _add_order(sql, vendor: str, vendor_order_id, csr: str, common_name: str, sans=(), *, customer=1,
               subscription=None, price="120.00", currency="GBP", cost=None, cost_currency=None, years=1,
               ordered_at=NOW.subtract(days=1)) -> int:
    subscription = subscription or (1 if customer == 1 else 4)
    return sql("INSERT INTO ssl_orders (customer_id, subscription_id, vendor, vendor_order_id, product, common_name,"
               " sans, validity_years, currency, price, cost, cost_currency, csr, key_source, ordered_at)"
               " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'customer', %s) RETURNING id",
               (customer, subscription, vendor, str(vendor_order_id), "ssl_basic" if vendor == "digicert" else "287",
                common_name, list(sans), years, currency, price, cost, cost_currency, csr, ordered_at))[0][0]


@pytest.fixture
def digicert(monkeypatch, tmp_path):
    """The CertCentral sandbox as the ``digicert`` connection; ``.connect(**extra)`` rewires it."""
    from panelflow.dev.postgres import free_port
    from sandbox.digicert import DigiCertSandbox

    server = DigiCertSandbox(port=free_port(), api_key="dc_test_panelflow").start()
    roots = tmp_path / "digicert-roots.pem"
    roots.write_text(server.ca.root_pem)

    def connect(**extra):
        monkeypatch.setenv("AIRFLOW_CONN_DIGICERT", json.dumps({
            "conn_type": "panelflow_digicert", "host": f"{server.url}/services/v2", "password": server.api_key,
            "extra": {"ca_bundle": str(roots), "timeout": 2, "retries": 3, "backoff": 0.01, "max_retry_wait": 2,
                      **extra}}))

    connect()
    server.connect = connect
    yield server
    server.stop()


@pytest.fixture
def sectigo(monkeypatch, tmp_path):
    """The Sectigo reseller sandbox as the ``sectigo`` connection; ``.connect(**extra)`` rewires it."""
    from panelflow.dev.postgres import free_port
    from sandbox.sectigo import SectigoSandbox

    server = SectigoSandbox(port=free_port(), login_name="reseller_tests", password="sectigo_test_panelflow").start()
    roots = tmp_path / "sectigo-roots.pem"
    roots.write_text(server.ca.root_pem)

    def connect(**extra):
        monkeypatch.setenv("AIRFLOW_CONN_SECTIGO", json.dumps({
            "conn_type": "panelflow_sectigo", "host": f"{server.url}/products", "login": server.login_name,
            "password": server.password,
            "extra": {"ca_bundle": str(roots), "timeout": 2, "retries": 3, "backoff": 0.01, "max_retry_wait": 2,
                      **extra}}))

    connect()
    server.connect = connect
    yield server
    server.stop()
