"""SharePoint fixtures: two farms reached through recorded psrp connections, SharePoint Online tenants
on the loopback Microsoft sandbox (Graph directory + ``graph_sites``), a customer with subscriptions,
and the SharePoint tables emptied before each test (tests/conftest.py's ``panel_db`` does not know
them)."""

from __future__ import annotations

import json

import pytest

from steps.sharepoint.records import FARM1, FARM2, declared_parameters

SHAREPOINT_TABLES = ("sharepoint_usage_reports", "sharepoint_site_collections", "sharepoint_online_tenants",
                     "sharepoint_farms", "m365_tenants", "group_action_jobs")


@pytest.fixture(autouse=True)
def _clean(panel_db, sql):
    sql("TRUNCATE " + ", ".join(SHAREPOINT_TABLES) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def farms(recorded_powershell, monkeypatch, sql):
    """SP2019 and SPSE, each through one farm server's psrp connection → {name: id}."""
    monkeypatch.setenv("AIRFLOW_CONN_SP_FARM1", recorded_powershell.connection(FARM1, auth="ntlm"))
    monkeypatch.setenv("AIRFLOW_CONN_SP_FARM2", recorded_powershell.connection(FARM2, auth="ntlm"))
    return {name: sql("INSERT INTO sharepoint_farms (name, conn_id) VALUES (%s, %s) RETURNING id", (name, conn))[0][0]
            for name, conn in (("SP2019", "sp_farm1"), ("SPSE", "sp_farm2"))}


@pytest.fixture
def customer(panel_db, sql):
    """A customer with two subscriptions → {"customer": id, "sub1": id, "sub2": id}."""
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling') ON CONFLICT DO NOTHING")
    (provider,) = sql("INSERT INTO providers (name, billing_email, currency)"
                      " VALUES ('Sandbox hosting', 'billing@host.example', 'GBP') RETURNING id")[0]
    (cust,) = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                  " VALUES (%s, 'Contoso Ltd', 'it@contoso.example', 'GB', 'GBP') RETURNING id", (provider,))[0]
    subs = [sql("INSERT INTO subscriptions (customer_id, plan, currency, billing_cycle, next_bill_date, started_on)"
                " VALUES (%s, %s, 'GBP', 'monthly', '2026-04-01', '2025-01-01') RETURNING id", (cust, plan))[0][0]
            for plan in ("SharePoint Standard", "SharePoint Online Plan 1")]
    return {"customer": cust, "sub1": subs[0], "sub2": subs[1]}


@pytest.fixture
def online(panel_db, sql, monkeypatch, customer):
    """``online(tenants=…)`` → the sandbox's ``SharePointSites`` (``.graph`` its GraphApi): tenants wired as
    connections ``m365_tenant_<i>``, ``m365_tenants`` rows (tenant 0 the customer's) and opted in."""
    from sandbox import microsoft as ms

    mg, gs = ms.load("microsoft_graph"), ms.load("graph_sites")
    started = []

    def start(tenants=2, page_size=100, **extra):
        issuer = ms.TokenIssuer()
        graph = mg.GraphApi(issuer, tenants=tenants, users_per_tenant=3, groups_per_tenant=1, contacts_per_tenant=0,
                            members_per_group=1)
        sites = gs.SharePointSites(graph, page_size=page_size)
        sandbox = ms.MicrosoftSandbox([issuer, sites, graph]).start()
        started.append(sandbox)
        sites.url = sandbox.url
        for i in range(tenants):
            conn = graph.connection(i, sandbox.url, backoff=0.01, backoff_max=0.05, max_retries=2, timeout=10,
                                    **extra)
            monkeypatch.setenv(f"AIRFLOW_CONN_M365_TENANT_{i}", json.dumps(conn))
            sql("INSERT INTO m365_tenants (tenant_id, conn_id, customer_id) VALUES (%s, %s, %s)",
                (graph.tenant_id(i), f"m365_tenant_{i}", customer["customer"] if i == 0 else None))
            sql("INSERT INTO sharepoint_online_tenants (tenant_id) VALUES (%s)", (graph.tenant_id(i),))
        return sites

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture(autouse=True)
def _parameters_declared(recorded_powershell):
    """After each test: every parameter a SharePoint script was sent is one its ``param()`` declares
    (a misspelt one would be an error on a real farm, never here)."""
    yield
    for cmd in recorded_powershell.sent:
        if cmd.script and cmd.script.startswith("sharepoint/"):
            assert set(cmd.parameters) <= declared_parameters(cmd.script), (cmd.script, cmd.parameters)
