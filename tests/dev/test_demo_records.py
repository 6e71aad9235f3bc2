"""make run's own panel records (``panelflow.dev.demo.load_sandbox_records``), written on every start.

Proves: a second start adds no row; a start on other ports moves the monitors and the Dataverse
organisation to them instead of adding rows beside the old ones; a database from before a sandbox
existed gets that sandbox's records on the next start.
"""

from __future__ import annotations

from datetime import date

import psycopg

from panelflow.dev.demo import load_billing_demo, load_sandbox_records

PORTS = {"api": 8080, "smtp": 8025, "pg": 54329, "gateway": 8771, "registrar": 8772, "microsoft": 8773,
         "dataverse": 8768, "blackberry": 8783, "ingram": 8782}
TENANTS = ["00000000-0000-4000-8000-000000000001"]
TABLES = ("servers", "monitors", "registrar_accounts", "csp_profiles", "m365_tenants", "crm_organizations",
          "bb_uem_servers", "ingram_subscriptions", "ingram_cancellations", "domains")


def _counts(sql) -> dict[str, int]:
    return {t: sql(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def test_every_start_keeps_one_row_each_follows_the_ports_and_adds_new_sandboxes(panel_db, migrated_panel_db, sql):
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        load_billing_demo(conn, 3, date(2026, 12, 7))
    older = {k: v for k, v in PORTS.items() if k not in ("blackberry", "ingram")}
    load_sandbox_records(migrated_panel_db, older, TENANTS)          # a .panelflow from before those two
    assert sql("SELECT count(*) FROM bb_uem_servers") == [(0,)]

    load_sandbox_records(migrated_panel_db, PORTS, TENANTS)          # the next start: they arrive
    first = _counts(sql)
    assert {t: first[t] for t in ("bb_uem_servers", "ingram_subscriptions", "ingram_cancellations",
                                  "crm_organizations", "m365_tenants")} == dict.fromkeys(
        ("bb_uem_servers", "ingram_subscriptions", "ingram_cancellations", "crm_organizations", "m365_tenants"), 1)
    assert first["monitors"] == 6 and first["domains"] == 25

    load_sandbox_records(migrated_panel_db, PORTS, TENANTS)
    assert _counts(sql) == first

    moved = {**PORTS, "api": 9080, "dataverse": 9768}
    load_sandbox_records(migrated_panel_db, moved, TENANTS)
    assert _counts(sql) == first
    assert sql("SELECT url FROM crm_organizations") == [("http://127.0.0.1:9768/demo",)]
    assert sql("SELECT params->>'url' FROM monitors WHERE name = 'Airflow API server'") == [
        ("http://127.0.0.1:9080/api/v2/monitor/health",)]
