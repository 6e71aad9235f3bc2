"""The Dataverse sandbox with two organisations, and the panel rows that name them."""

from __future__ import annotations

import logging

import pendulum
import psycopg
import pytest

from panelflow.step import Interval

from sandbox.dataverse import DataverseSandbox  # noqa: E402

NOW = pendulum.datetime(2026, 11, 20, 5, 10, tz="UTC")
LOG = logging.getLogger("test_crm")
CLIENT, SECRET = "panelflow-crm", "crm-secret-for-tests"
OWN_TABLES = ("crm_organizations", "crm_business_units", "crm_roles", "crm_users")


def at(end=NOW) -> Interval:
    return Interval(end.subtract(minutes=10), end)


@pytest.fixture
def db(panel_db, migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    return panel_db


def panel_customers(sql, names) -> dict[str, int]:
    """One panel customer per name (``it@<name>.example``) of one provider, in GBP: each name's id."""
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
    provider = sql("INSERT INTO providers (name, billing_email, currency)"
                   " VALUES ('Host Ltd', 'billing@host.example', 'GBP') RETURNING id")[0][0]
    return {name: sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                      " VALUES (%s, %s, %s, 'GB', 'GBP') RETURNING id",
                      (provider, name.title(), f"it@{name}.example"))[0][0] for name in names}


@pytest.fixture
def crm(db, sql, monkeypatch):
    """Organisations ``contoso`` (a root and a Sales unit, roles Salesperson and Manager in each, users
    alice, bob — Salesperson — and a Microsoft support user) and ``fabrikam`` (one unit, user carol),
    each in its own tenant, wired as connections ``crm_contoso``/``crm_fabrikam`` (pages of 2), and
    their ``crm_organizations`` rows: ``crm.orgs[name]`` → (sandbox org, panel id)."""
    sandbox = DataverseSandbox().start()
    customers = panel_customers(sql, ("contoso", "fabrikam"))
    sandbox.orgs, sandbox.ids = {}, {}
    for name in ("contoso", "fabrikam"):
        sandbox.issuer.register(f"{name}-tenant", CLIENT, SECRET)
        org = sandbox.api.add_org(name, f"{name}-tenant")
        monkeypatch.setenv(f"AIRFLOW_CONN_CRM_{name.upper()}",
                           sandbox.connection(f"{name}-tenant", CLIENT, SECRET, page_size=2, max_retry_wait=0.05))
        org_id = sql("INSERT INTO crm_organizations (customer_id, url, conn_id) VALUES (%s, %s, %s) RETURNING id",
                     (customers[name], sandbox.org_url(name), f"crm_{name}"))[0][0]
        sandbox.orgs[name], sandbox.ids[name] = org, org_id
    contoso = sandbox.orgs["contoso"]
    root = contoso.add_business_unit("Contoso")
    sales = contoso.add_business_unit("Sales", root)
    sandbox.roles = {(bu, role): contoso.add_role(role, bu)
                     for bu in (root, sales) for role in ("Salesperson", "Manager")}
    sandbox.root, sandbox.sales = root, sales
    sandbox.alice = contoso.add_user("alice@contoso.example", "Alice", "Archer", sales,
                                     roles=(sandbox.roles[(sales, "Salesperson")],))
    sandbox.bob = contoso.add_user("bob@contoso.example", "Bob", "Baker", root,
                                   roles=(sandbox.roles[(root, "Salesperson")],), caltype=2)
    contoso.add_user("support@microsoft.example", "Microsoft", "Support", root, accessmode=3)
    fabrikam = sandbox.orgs["fabrikam"]
    sandbox.carol = fabrikam.add_user("carol@fabrikam.example", "Carol", "Cole", fabrikam.add_business_unit("Fabrikam"))
    yield sandbox
    sandbox.stop()
