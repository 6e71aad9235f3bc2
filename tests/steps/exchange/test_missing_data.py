"""SyncMissingDataWork step 2 (panelflow.steps.exchange.missing_data) at the PSRP boundary: the real
PowerShellHook/pypsrp send the backup scripts with their parameters to the recorded endpoint, which
answers what Get-Mailbox / Get-DistributionGroup (+ Get-DistributionGroupMember) / Get-MailContact
print through those scripts; the backups and the recovery rows land in the real panel DB."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.step import Interval

T0 = datetime(2026, 3, 3, 2, 10, tzinfo=timezone.utc)
OWN_TABLES = ("exchange_backups", "recovery_distribution_lists", "exchange_organizations", "exchange_servers",
              "customers", "providers", "currencies")
HOSTILE_OU = "OU=O'Brien\\, Ltd; $(Remove-Mailbox *),OU=Hosting,DC=hosting,DC=local"
PLAIN_OU = "OU=Fabrikam,OU=Hosting,DC=hosting,DC=local"
G = {n: f"{n:08x}-5a1e-4c3b-9d2e-7f6a5b4c3d2e" for n in range(1, 20)}


def _at(end=T0):
    return Interval(end - timedelta(days=1), end)


def _mailbox(guid, alias, domain="obrien.example", **extra):
    return {"Guid": guid, "Name": alias, "Alias": alias, "DisplayName": alias.title(),
            "PrimarySmtpAddress": f"{alias}@{domain}", "EmailAddresses": [f"SMTP:{alias}@{domain}"],
            "UserPrincipalName": f"{alias}@{domain}", "RecipientTypeDetails": "UserMailbox", "Database": "DB01",
            "IssueWarningQuota": "Unlimited", "ProhibitSendQuota": "Unlimited",
            "ProhibitSendReceiveQuota": "Unlimited", "HiddenFromAddressListsEnabled": False, **extra}


def _group(guid, name, members, domain="obrien.example"):
    return {"Guid": guid, "Name": name, "Alias": name.lower().replace(" ", ""), "DisplayName": name,
            "PrimarySmtpAddress": f"{name.lower().replace(' ', '')}@{domain}",
            "EmailAddresses": [f"SMTP:{name.lower().replace(' ', '')}@{domain}"], "GroupType": "Universal",
            "ManagedBy": ["hosting.local/Hosting/O'Brien, Ltd/ann"], "MemberJoinRestriction": "Closed",
            "MemberDepartRestriction": "Closed", "RequireSenderAuthenticationEnabled": True,
            "HiddenFromAddressListsEnabled": False, "MembersTruncated": False,
            "Members": [{"Name": m, "PrimarySmtpAddress": f"{m}@{domain}", "RecipientType": "UserMailbox"}
                        for m in members]}


def _contact(guid, name):
    return {"Guid": guid, "Name": name, "Alias": name.replace(" ", ""), "DisplayName": name,
            "ExternalEmailAddress": f"SMTP:{name.replace(' ', '.').lower()}@partner.test",
            "PrimarySmtpAddress": f"{name.replace(' ', '.').lower()}@partner.test",
            "EmailAddresses": [], "HiddenFromAddressListsEnabled": False}


@pytest.fixture
def ex(recorded_powershell, panel_db, sql, monkeypatch):
    """One Exchange server (psrp connection exch_ex01) with two organisations: O'Brien (hostile OU,
    a customer) and Fabrikam (no customer). ``ex.serve(script, {ou: rows})`` answers per OU."""
    from types import SimpleNamespace

    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    monkeypatch.setenv("AIRFLOW_CONN_EXCH_EX01", recorded_powershell.connection("ex01.hosting.test", auth="ntlm"))
    sql("INSERT INTO exchange_servers (name, fqdn, conn_id, roles) VALUES ('EX01', 'ex01.hosting.test', 'exch_ex01',"
        " '{Mailbox}')")
    sql("INSERT INTO currencies (code, name, minor_units) VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Provider', 'billing@provider.test', 'GBP')")
    (customer,), = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                       " VALUES (1, 'OBrien', 'it@obrien.example', 'GB', 'GBP') RETURNING id")
    sql("INSERT INTO exchange_organizations (exchange_server_id, customer_id, name, organizational_unit) VALUES"
        " (1, %s, 'OBrien', %s), (1, NULL, 'Fabrikam', %s)", (customer, HOSTILE_OU, PLAIN_OU))

    def serve(script, by_ou):
        recorded_powershell.answer(f"exchange/{script}", lambda c: by_ou.get(c.parameters["OrganizationalUnit"], []))

    yield SimpleNamespace(ps=recorded_powershell, sql=sql, db=panel_db, serve=serve, customer=customer)
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")


def _run(ex, end=T0, **params):
    from panelflow.steps.exchange.missing_data import sync_missing_exchange_data

    return sync_missing_exchange_data(ex.db, _at(end), params, None)


def test_backup_full_compare_recovers_deleted_lists_once_and_marks_nothing_gone_on_partial_listings(ex):
    from panelflow.hooks.powershell import script_text

    mailboxes = {HOSTILE_OU: [_mailbox(G[1], "ann"), _mailbox(G[2], "bob")], PLAIN_OU: [_mailbox(G[3], "fay")]}
    groups = {HOSTILE_OU: [_group(G[4], "Sales", ["ann", "bob"]), _group(G[5], "All Staff", ["ann"])],
              PLAIN_OU: [_group(G[6], "Fab List", ["fay"], domain="fabrikam.example")]}
    contacts = {HOSTILE_OU: [_contact(G[7], "Pat Partner")]}
    ex.serve("backup_get_mailboxes", mailboxes)
    ex.serve("backup_get_distribution_groups", groups)
    ex.serve("backup_get_mail_contacts", contacts)

    first = _run(ex)
    assert (first["organizations"], first["listed"], first["written"], first["gone"]) == (2, 7, 7, 0)
    sent = [(c.script, c.parameters) for c in ex.ps.sent]
    assert ("exchange/backup_get_distribution_groups",
            {"OrganizationalUnit": HOSTILE_OU, "ResultSize": 5000, "MemberLimit": 5000}) in sent
    assert all(c.is_script and c.command == script_text(c.script) for c in ex.ps.sent)   # the OU only as a parameter
    (definition,), = ex.sql("SELECT definition FROM exchange_backups WHERE guid = %s", (G[4],))
    assert [m["PrimarySmtpAddress"] for m in definition["Members"]] == ["ann@obrien.example", "bob@obrien.example"]
    assert definition["RequireSenderAuthenticationEnabled"] is True

    assert _run(ex, T0 + timedelta(hours=1))["written"] == 0            # a rerun writes nothing

    # next night: Sales and Fab List deleted, bob renamed, the contacts listing refused by Exchange
    day2 = T0 + timedelta(days=1)
    mailboxes[HOSTILE_OU][1] = _mailbox(G[2], "bob", DisplayName="Bob B.")
    groups[HOSTILE_OU].pop(0)
    groups[PLAIN_OU] = []
    ex.ps.answer("exchange/backup_get_mail_contacts", error="Active Directory operation failed on dc01.hosting.local.")
    second = _run(ex, day2)
    assert (second["written"], second["gone"], second["recovery_added"], second["failed"]) == (1, 2, 1, 2)
    assert ex.sql("SELECT customer_id, name, email_address, deleted_at, exchange_guid::text,"
                  " jsonb_array_length(definition -> 'Members') FROM recovery_distribution_lists") == [
        (ex.customer, "Sales", "sales@obrien.example", day2, G[4], 2)]
    assert second["skipped"]["deleted distribution list without a customer or address: not put in recovery"] == 1
    assert ex.sql("SELECT count(*) FROM exchange_backups WHERE kind = 'contact' AND gone_at IS NULL") == [(1,)]

    rerun = _run(ex, day2)                                                # the same run again
    assert (rerun["written"], rerun["gone"], rerun["recovery_added"]) == (0, 0, 0)
    assert ex.sql("SELECT count(*) FROM recovery_distribution_lists") == [(1,)]
    assert ex.sql("SELECT count(*) FROM exchange_backups") == [(7,)]

    # a listing as long as the bound may be cut short: nothing of that kind is marked gone
    mailboxes[HOSTILE_OU] = [_mailbox(G[1], "ann")]
    bounded = _run(ex, day2 + timedelta(days=1), backup_result_size=1)
    assert bounded["listings_truncated"] >= 1
    assert ex.sql("SELECT gone_at FROM exchange_backups WHERE guid = %s", (G[2],)) == [(None,)]


def test_a_malformed_record_is_reported_and_blocks_gone_marking_and_a_silent_server_fails_the_step(ex):
    from panelflow.steps.exchange._backend import ExchangeServersFailed

    groups = {HOSTILE_OU: [_group(G[4], "Sales", ["ann"]), _group(G[5], "All Staff", ["ann"])]}
    ex.serve("backup_get_mailboxes", {})
    ex.serve("backup_get_distribution_groups", groups)
    ex.serve("backup_get_mail_contacts", {})
    assert _run(ex)["written"] == 2

    broken = {k: v for k, v in _group(G[5], "All Staff", ["ann"]).items() if k != "Guid"}
    groups[HOSTILE_OU] = [broken]                     # Sales gone, All Staff unreadable
    out = _run(ex, T0 + timedelta(days=1))
    assert out["gone"] == 0 and out["recovery_added"] == 0
    assert out["skipped"] == {"organization OBrien distribution_list All Staff: Guid: Field required": 1}
    assert ex.sql("SELECT count(*) FROM exchange_backups WHERE gone_at IS NULL") == [(2,)]

    ex.ps.answer("exchange/backup_get_mailboxes", timeout=True)
    with pytest.raises(ExchangeServersFailed):
        _run(ex, T0 + timedelta(days=2))
