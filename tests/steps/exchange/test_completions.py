"""ProvisioningWork 10, 20 and 23 (panelflow.steps.exchange.signatures, .server_load, .database_locations).

10 and 23 at the PSRP boundary: the real PowerShellHook/pypsrp send our scripts with their
parameters to the recorded endpoint, which answers with what the scripts print (ConvertTo-Json of
Get-TransportRule / Get-Mailbox objects after their Select-Object; written from the cmdlets'
documented output — the scripts have not run on a real Exchange server). 20 reads the panel only."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 12, 3, 10, 10, tzinfo=timezone.utc)
HOSTS = {"exch01.corp.example": "EXCH01", "exch02.corp.example": "EXCH02"}
CONTOSO_OU = "OU=Contoso,OU=Hosting,DC=corp,DC=example"
FABRIKAM_OU = "OU=Fabrikam,OU=Hosting,DC=corp,DC=example"
JOHN, ANNA, LOST = ("3f2a1b0c-1111-4a2b-8c3d-000000000001", "3f2a1b0c-1111-4a2b-8c3d-000000000002",
                    "3f2a1b0c-1111-4a2b-8c3d-000000000009")
SAM = "5c6d7e8f-2222-4a2b-8c3d-000000000010"
DB01, DB02 = "9d1c6a55-7e2f-4f0b-a1c3-00000000db01", "9d1c6a55-7e2f-4f0b-a1c3-00000000db02"
OWN_TABLES = ("exchange_servers", "exchange_organizations", "exchange_mailboxes", "exchange_signature_usage",
              "exchange_server_load", "exchange_databases", "exchange_database_stats")


MY_SCRIPTS = ("get_organization_mailbox_usage", "get_mailbox_locations", "get_database_mailbox_sizes",
              "remove_expired_mailbox_export_requests", "get_signature_rules")


def test_scripts_take_parameters_stop_on_errors_load_exchange_and_print_one_json_array():
    """The completions' scripts follow the package's shape: values only as parameters, Exchange's snap-in
    loaded once, errors stop the script, one JSON array printed (parsed by the hook)."""
    import re

    from panelflow.hooks.powershell import script_text

    for name in MY_SCRIPTS:
        text = script_text(f"exchange/{name}")
        assert re.search(r"^param\(", text, re.M), name
        assert "$ErrorActionPreference = 'Stop'" in text, name
        assert "Add-PSSnapin -Name Microsoft.Exchange.Management.PowerShell.SnapIn" in text, name
        assert text.rstrip().splitlines()[-1] == "ConvertTo-Json -InputObject @($rows) -Depth 4 -Compress", name
        assert not re.search(r"Invoke-Expression|iex\b|\[scriptblock\]::Create", text, re.I), name


def run_at(end=T0):
    return Interval(end - timedelta(minutes=10), end)


@pytest.fixture
def world(panel_db, sql, recorded_powershell, monkeypatch):
    """EXCH01 hosting Contoso (two accepted domains, three panel mailboxes), EXCH02 hosting Fabrikam."""
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    servers, orgs = {}, {}
    for name in ("EXCH01", "EXCH02"):
        monkeypatch.setenv(f"AIRFLOW_CONN_EXCHANGE_{name}",
                           recorded_powershell.connection(f"{name.lower()}.corp.example", auth="ntlm"))
        servers[name] = sql("INSERT INTO exchange_servers (name, fqdn, conn_id) VALUES (%s, %s, %s) RETURNING id",
                            (name, f"{name.lower()}.corp.example", f"exchange_{name.lower()}"))[0][0]
    for name, ou, server, domains in (("Contoso", CONTOSO_OU, "EXCH01", ["contoso.example", "Contoso.co.uk"]),
                                      ("Fabrikam", FABRIKAM_OU, "EXCH02", ["fabrikam.example"])):
        orgs[name] = sql("INSERT INTO exchange_organizations (exchange_server_id, name, organizational_unit,"
                         " accepted_domains) VALUES (%s, %s, %s, %s) RETURNING id",
                         (servers[server], name, ou, domains))[0][0]
    for org, server, guid, address, database in (
            ("Contoso", "EXCH01", JOHN, "john@contoso.example", "DB01"),
            ("Contoso", "EXCH01", ANNA, "anna@contoso.example", None),
            ("Contoso", "EXCH01", LOST, "lost@contoso.example", "DB01"),
            ("Fabrikam", "EXCH02", SAM, "sam@fabrikam.example", "DB02")):
        sql("INSERT INTO exchange_mailboxes (organization_id, exchange_server_id, exchange_guid, primary_smtp_address,"
            " alias, display_name, status, database) VALUES (%s, %s, %s, %s, %s, %s, 'active', %s)",
            (orgs[org], servers[server], guid, address, address.split("@")[0], address, database))
    return {"servers": servers, "orgs": orgs, "ps": recorded_powershell}


# -- 23. mailbox database locations -------------------------------------------------------------------------

LOCATIONS = {
    CONTOSO_OU: [{"ExchangeGuid": JOHN, "PrimarySmtpAddress": "john@contoso.example", "Database": "DB02",
                  "DatabaseGuid": DB02, "ServerName": "exch02"},
                 {"ExchangeGuid": ANNA, "PrimarySmtpAddress": "anna@contoso.example", "Database": "DB01",
                  "DatabaseGuid": DB01, "ServerName": "exch01"}],
    FABRIKAM_OU: [{"ExchangeGuid": SAM, "PrimarySmtpAddress": "sam@fabrikam.example", "Database": "DB02",
                   "DatabaseGuid": DB02, "ServerName": "exch02"}],
}


def locations(sql):
    return sql("SELECT primary_smtp_address, database, database_guid::text, database_synced_at FROM exchange_mailboxes"
               " ORDER BY primary_smtp_address")


def test_database_locations_follow_moved_mailboxes(world, panel_db, sql):
    from panelflow.steps.exchange.database_locations import sync_mailbox_database_locations

    ps = world["ps"]
    ps.answer("exchange/get_mailbox_locations", lambda sent: LOCATIONS[sent.parameters["OrganizationalUnit"]])
    first = sync_mailbox_database_locations(panel_db, run_at(), None, None)
    assert locations(sql) == [("anna@contoso.example", "DB01", DB01, T0), ("john@contoso.example", "DB02", DB02, T0),
                              ("lost@contoso.example", "DB01", None, T0), ("sam@fabrikam.example", "DB02", DB02, T0)]
    assert first["mailboxes_checked"] == 4 and first["not_found"] == 1 and first["moved"] == 0
    assert sorted((HOSTS[c.conn_host], c.parameters) for c in ps.calls("exchange/get_mailbox_locations")) == [
        ("EXCH01", {"OrganizationalUnit": CONTOSO_OU}), ("EXCH02", {"OrganizationalUnit": FABRIKAM_OU})]

    # john is moved back to DB01 by a move request: counted as a move
    moved = [dict(LOCATIONS[CONTOSO_OU][0], Database="DB01", DatabaseGuid=DB01), LOCATIONS[CONTOSO_OU][1]]
    ps.answer("exchange/get_mailbox_locations", lambda sent: moved if sent.parameters["OrganizationalUnit"] == CONTOSO_OU
              else LOCATIONS[FABRIKAM_OU])
    later = T0 + timedelta(minutes=10)
    second = sync_mailbox_database_locations(panel_db, run_at(later), None, None)
    assert second["moved"] == 1
    assert ("john@contoso.example", "DB01", DB01, later) in locations(sql)
    # an older run retried afterwards does not move it back
    ps.answer("exchange/get_mailbox_locations", lambda sent: LOCATIONS[sent.parameters["OrganizationalUnit"]])
    sync_mailbox_database_locations(panel_db, run_at(), None, None)
    assert ("john@contoso.example", "DB01", DB01, later) in locations(sql)


def test_database_locations_bounded_to_the_organisations_checked_longest_ago(world, panel_db, sql):
    from panelflow.steps.exchange.database_locations import sync_mailbox_database_locations

    ps = world["ps"]
    ps.answer("exchange/get_mailbox_locations", lambda sent: LOCATIONS[sent.parameters["OrganizationalUnit"]])
    sql("UPDATE exchange_mailboxes SET database_synced_at = %s WHERE primary_smtp_address LIKE '%%@contoso.example'",
        (T0 - timedelta(hours=1),))
    summary = sync_mailbox_database_locations(panel_db, run_at(), {"locations_organizations_per_run": 1}, None)
    assert summary["organizations"] == 1
    assert [c.parameters["OrganizationalUnit"] for c in ps.calls("exchange/get_mailbox_locations")] == [FABRIKAM_OU]
    sync_mailbox_database_locations(panel_db, run_at(T0 + timedelta(minutes=10)),
                                    {"locations_organizations_per_run": 1}, None)
    assert [c.parameters["OrganizationalUnit"] for c in ps.calls("exchange/get_mailbox_locations")] == [
        FABRIKAM_OU, CONTOSO_OU]


# -- 10. signature usage --------------------------------------------------------------------------------------

RULES = {
    "EXCH01": [
        {"Guid": "a1b2c3d4-0000-4000-8000-000000000001", "Name": "Contoso signature", "State": "Enabled",
         "ApplyHtmlDisclaimerLocation": "Append", "SenderDomainIs": ["contoso.co.uk"], "From": None},
        {"Guid": "a1b2c3d4-0000-4000-8000-000000000002", "Name": "Contoso sales signature", "State": "Disabled",
         "ApplyHtmlDisclaimerLocation": "Prepend", "SenderDomainIs": None, "From": ["sales@CONTOSO.example"]},
        {"Guid": "a1b2c3d4-0000-4000-8000-000000000003", "Name": "Orphan signature", "State": "Enabled",
         "ApplyHtmlDisclaimerLocation": "Append", "SenderDomainIs": ["gone.example"], "From": []},
    ],
    "EXCH02": [{"Guid": "a1b2c3d4-0000-4000-8000-000000000004", "Name": "Fabrikam signature", "State": "Enabled",
                "ApplyHtmlDisclaimerLocation": "Append", "SenderDomainIs": ["fabrikam.example"], "From": []}],
}


def usage(sql):
    return sql("SELECT o.name, u.rule_name, u.enabled, u.location, u.first_seen_at, u.last_seen_at, u.removed_at"
               " FROM exchange_signature_usage u JOIN exchange_organizations o ON o.id = u.organization_id"
               " ORDER BY o.name, u.rule_name")


def test_signature_usage_per_organisation_kept_and_removed(world, panel_db, sql):
    from panelflow.steps.exchange.signatures import update_exchange_signature_usage

    ps = world["ps"]
    ps.answer("exchange/get_signature_rules", lambda sent: RULES[HOSTS[sent.conn_host]])
    summary = update_exchange_signature_usage(panel_db, run_at(), None)
    assert usage(sql) == [("Contoso", "Contoso sales signature", False, "Prepend", T0, T0, None),
                          ("Contoso", "Contoso signature", True, "Append", T0, T0, None),
                          ("Fabrikam", "Fabrikam signature", True, "Append", T0, T0, None)]
    assert summary["usages_new"] == 3 and summary["rules_unmatched"] == 1
    assert any("Orphan signature" in e for e in summary["skipped_examples"])
    assert update_exchange_signature_usage(panel_db, run_at(), None)["usages_new"] == 0

    # the sales rule is deleted on Exchange; EXCH02 times out: Fabrikam's rule is left as it was
    later = T0 + timedelta(minutes=10)
    ps.answer("exchange/get_signature_rules", lambda sent: [RULES["EXCH01"][0]])
    ps.answer("exchange/get_signature_rules", timeout=True, when=lambda sent: HOSTS[sent.conn_host] == "EXCH02")
    summary = update_exchange_signature_usage(panel_db, run_at(later), None)
    assert usage(sql) == [("Contoso", "Contoso sales signature", False, "Prepend", T0, T0, later),
                          ("Contoso", "Contoso signature", True, "Append", T0, later, None),
                          ("Fabrikam", "Fabrikam signature", True, "Append", T0, T0, None)]
    assert summary["servers_failed"] == 1 and summary["usages_removed"] == 1


# -- 20. mailbox load per server --------------------------------------------------------------------------------

def test_server_load_from_the_latest_fresh_database_samples(world, panel_db, sql):
    from panelflow.steps.exchange.server_load import update_mailbox_server_load

    servers = world["servers"]
    ids = {}
    for name, guid, server in (("DB01", DB01, "EXCH01"), ("DB02", DB02, "EXCH01"),
                               ("DB03", "9d1c6a55-7e2f-4f0b-a1c3-00000000db03", "EXCH02")):
        ids[name] = sql("INSERT INTO exchange_databases (guid, name, exchange_server_id, circular_logging, mounted,"
                        " first_seen_at, last_seen_at) VALUES (%s, %s, %s, false, true, %s, %s) RETURNING id",
                        (guid, name, servers[server], T0, T0))[0][0]

    def sample(db, age_hours, mailboxes, size, server="EXCH01", mounted=True):
        sql("INSERT INTO exchange_database_stats (database_id, sampled_at, exchange_server_id, mounted, size_bytes,"
            " available_new_mailbox_space_bytes, mailbox_count) VALUES (%s, %s, %s, %s, %s, 100, %s)",
            (ids[db], T0 - timedelta(hours=age_hours), servers[server], mounted, size, mailboxes))

    sample("DB01", 30, 999, 999)            # older than the latest: not counted
    sample("DB01", 1, 120, 5000)
    sample("DB02", 2, 80, 3000, mounted=False)
    sample("DB03", 30, 50, 1000, server="EXCH02")   # EXCH02's only sample is stale
    sql("INSERT INTO exchange_server_load VALUES (%s, 1, 1, 1, 1, 1, %s, %s)",
        (servers["EXCH02"], T0 - timedelta(days=2), T0 - timedelta(days=2)))
    summary = update_mailbox_server_load(panel_db, run_at(), None)
    rows = "SELECT exchange_server_id, databases, mounted_databases, mailboxes, database_size_bytes," \
           " available_new_mailbox_space_bytes, sampled_at, updated_at FROM exchange_server_load"
    assert sql(rows) == [(servers["EXCH01"], 2, 1, 200, 8000, 200, T0 - timedelta(hours=1), T0)]
    assert summary["stale_rows_removed"] == 1 and any("EXCH02" in e for e in summary["skipped_examples"])
    assert update_mailbox_server_load(panel_db, run_at(T0 + timedelta(minutes=10)), None)["servers_updated"] == 0
    assert sql(rows)[0][-1] == T0
