"""Lync / Skype for Business fixtures: two pools reached through recorded psrp connections, the
panel's customers and subscriptions they serve, and the Lync tables emptied before each test
(tests/conftest.py's ``panel_db`` does not know them)."""

from __future__ import annotations

import pytest

from steps.lync.records import FE01, FE02, POOL01_FQDN, POOL02_FQDN

LYNC_TABLES = ("hosted_voice_billing_details", "hosted_voice_contract_actions", "hosted_voice_contracts",
               "lync_workflow_audio_files", "lync_unmatched_call_records", "lync_spla_reports", "lync_users",
               "lync_pools")


@pytest.fixture(autouse=True)
def _clean(panel_db, sql):
    sql("TRUNCATE " + ", ".join(LYNC_TABLES) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def pools(recorded_powershell, monkeypatch, sql):
    """POOL01 (with its Monitoring CDR database) and POOL02, each through its Front End's psrp connection."""
    monkeypatch.setenv("AIRFLOW_CONN_LYNC_FE01", recorded_powershell.connection(FE01, auth="ntlm"))
    monkeypatch.setenv("AIRFLOW_CONN_LYNC_FE02", recorded_powershell.connection(FE02, auth="ntlm"))
    ids = {}
    for name, fqdn, conn_id, cdr in (("POOL01", POOL01_FQDN, "lync_fe01", r"SQLMON01\LYNCMON"),
                                     ("POOL02", POOL02_FQDN, "lync_fe02", None)):
        ids[name] = sql("INSERT INTO lync_pools (name, fqdn, conn_id, cdr_sql_instance) VALUES (%s, %s, %s, %s)"
                        " RETURNING id", (name, fqdn, conn_id, cdr))[0][0]
    return ids


@pytest.fixture
def billing(panel_db, sql):
    """The provider, its currency and VAT: what a customer and a subscription need."""
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test UC', 'billing@test.example', 'GBP')")
    sql("INSERT INTO tax_rates (provider_id, country, name, rate) VALUES (1, 'GB', 'VAT', 0.20)")
    return panel_db


@pytest.fixture(autouse=True)
def _parameters_declared(recorded_powershell):
    """After each test: every parameter our steps sent a Lync script is one its ``param()`` block
    declares (a misspelt one would be an error on a real server, never here)."""
    from steps.lync.records import declared_parameters

    yield
    for cmd in recorded_powershell.sent:
        if cmd.script and cmd.script.startswith("lync/"):
            assert set(cmd.parameters) <= declared_parameters(cmd.script), (cmd.script, cmd.parameters)
