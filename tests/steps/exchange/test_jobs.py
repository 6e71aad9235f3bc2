"""GroupActionWorkEx and GroupActionWorkMailBoxPermissions (panelflow.steps.exchange) at the PSRP boundary:
the real PsrpHook/pypsrp build each CreatePipeline, the recorded endpoint decodes it (exact script and
parameters asserted) and answers with what the scripts print on Exchange 2019; results land in the real
panel DB."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from psycopg.types.json import Jsonb

from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
OWN_TABLES = ("exchange_remote_domains", "exchange_spam_filter_settings", "exchange_send_connectors",
              "exchange_mailbox_permissions", "exchange_mailboxes", "exchange_owa_policies", "exchange_organizations",
              "exchange_servers", "group_action_jobs")
INJECTION = "x'; Remove-Mailbox -Identity * -Confirm:$false; '"
CONTOSO_OU = "OU=Contoso,OU=Hosting,DC=hosting,DC=local"
FABRIKAM_OU = "OU=Fabrikam,OU=Hosting,DC=hosting,DC=local"
G = {n: f"{n:08x}-5a1e-4c3b-9d2e-7f6a5b4c3d2e" for n in range(1, 20)}   # ExchangeGuids
MIB = 1024 * 1024


def _at(end=T0):
    return Interval(end - timedelta(minutes=5), end)


def _bqs(mb: int) -> str:
    """A ByteQuantifiedSize as Exchange prints it."""
    n = mb * MIB
    return f"{mb / 1024:.3g} GB ({n:,} bytes)" if mb >= 1024 else f"{mb} MB ({n:,} bytes)"


@pytest.fixture
def ex(recorded_powershell, panel_db, sql, monkeypatch):
    """Two Exchange servers (EX01, EX02 as psrp connections exch_ex01/exch_ex02), an organisation on
    each (Contoso on EX01, Fabrikam on EX02); ``ex.mailbox(…)`` adds a panel mailbox."""
    from types import SimpleNamespace

    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    for name in ("ex01", "ex02"):
        monkeypatch.setenv(f"AIRFLOW_CONN_EXCH_{name.upper()}",
                           recorded_powershell.connection(f"{name}.hosting.test", auth="ntlm"))
    sql("INSERT INTO exchange_servers (name, fqdn, conn_id, roles) VALUES"
        " ('EX01', 'ex01.hosting.test', 'exch_ex01', '{Mailbox}'), ('EX02', 'ex02.hosting.test', 'exch_ex02', '{Mailbox}')")
    sql("INSERT INTO exchange_organizations (exchange_server_id, name, organizational_unit, accepted_domains,"
        " address_book_policy, global_address_list, offline_address_book) VALUES"
        " (1, 'Contoso', %s, '{contoso.example}', 'Contoso ABP', 'Contoso GAL', 'Contoso OAB'),"
        " (2, 'Fabrikam', %s, '{fabrikam.example}', 'Fabrikam ABP', 'Fabrikam GAL', 'Fabrikam OAB')",
        (CONTOSO_OU, FABRIKAM_OU))

    def mailbox(alias, org=1, *, status="active", guid=None, kind="user", display=None, database="DB01", **extra):
        domain = "contoso.example" if org == 1 else "fabrikam.example"
        columns = {"organization_id": org, "exchange_server_id": org, "alias": alias,
                   "display_name": display or alias.replace(".", " ").title(),
                   "primary_smtp_address": f"{alias}@{domain}", "user_principal_name": f"{alias}@{domain}",
                   "mailbox_type": kind, "status": status, "exchange_guid": guid, "database": database, **extra}
        names = ", ".join(columns)
        marks = ", ".join(["%s"] * len(columns))
        return sql(f"INSERT INTO exchange_mailboxes ({names}) VALUES ({marks}) RETURNING id", list(columns.values()))[0][0]

    def job(action, payload, priority=5):
        return sql("INSERT INTO group_action_jobs (backend, action, payload, priority) VALUES ('exchange', %s, %s, %s)"
                   " RETURNING id", (action, Jsonb(payload), priority))[0][0]

    def state(job_id):
        return sql("SELECT status, attempts, result, error, payload FROM group_action_jobs WHERE id = %s", (job_id,))[0]

    def sent():
        return [(c.script, c.parameters) for c in recorded_powershell.sent]

    return SimpleNamespace(ps=recorded_powershell, sql=sql, db=panel_db, mailbox=mailbox, job=job, state=state,
                           sent=sent)


# -- recordings: what the scripts print on Exchange 2019 -------------------------------------------------------

def _mailbox_record(p: dict, guid: str, *, created=True, kind="UserMailbox", name=None):
    address = p["PrimarySmtpAddress"]
    return [{"Name": name or p.get("Name") or p["Alias"], "Alias": p["Alias"], "DisplayName": p.get("DisplayName"),
             "PrimarySmtpAddress": address, "UserPrincipalName": p.get("UserPrincipalName", address),
             "ExchangeGuid": guid, "Database": p.get("Database") or "DB01", "RecipientTypeDetails": kind,
             "EmailAddresses": [f"SMTP:{address}",
                                f"X500:/o=Hosting/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn={guid[:8]}"],
             "Created": created}]


def _quota_record(p: dict, guid: str):
    def shown(value):
        return "Unlimited" if value == "Unlimited" else _bqs(int(value[:-2]))
    return [{"ExchangeGuid": guid, "PrimarySmtpAddress": "anna.ash@contoso.example",
             "UseDatabaseQuotaDefaults": p["UseDatabaseQuotaDefaults"],
             "IssueWarningQuota": shown(p["IssueWarningQuota"]), "ProhibitSendQuota": shown(p["ProhibitSendQuota"]),
             "ProhibitSendReceiveQuota": shown(p["ProhibitSendReceiveQuota"])}]


# -- 1. the group-action queue ------------------------------------------------------------------------------------

def test_every_action_runs_its_script_with_exact_parameters_and_records_results(ex):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions

    anna = ex.mailbox("anna.ash", status="pending", previous_status=None, guid=None, database=None)
    room = ex.mailbox("board.room", status="pending", kind="room", guid=None, database=None)
    bob = ex.mailbox("bob.brown", guid=G[2])
    carol = ex.mailbox("carol.clark", guid=G[3])
    dan = ex.mailbox("dan.dare", guid=G[4], status="pending", previous_status="active")
    eve = ex.mailbox("eve.evans", guid=G[5], status="pending", previous_status="active")
    fay = ex.mailbox("fay.fox", guid=G[6])
    ex.sql("INSERT INTO exchange_owa_policies (exchange_server_id, name, status) VALUES (1, 'Contoso OWA', 'created')")
    jobs = {
        "create": ex.job("create_mailbox", {"mailbox_id": anna, "password": "Str0ng-Pass!"}, priority=0),
        "room": ex.job("create_mailbox", {"mailbox_id": room}, priority=0),
        "quota": ex.job("set_mailbox_quota", {"mailbox_id": bob, "issue_warning_mb": 1843, "prohibit_send_mb": 2048,
                                              "prohibit_send_receive_mb": None}),
        "forward": ex.job("set_mailbox_forwarding", {"mailbox_id": bob, "forwarding_smtp_address": "bob@gmail.example",
                                                     "deliver_to_mailbox_and_forward": True}),
        "full": ex.job("add_mailbox_permission", {"mailbox_id": carol, "trustee": "bob.brown@contoso.example",
                                                  "permission": "FullAccess", "auto_mapping": False}),
        "sendas_off": ex.job("remove_mailbox_permission", {"mailbox_id": carol, "trustee": "dan.dare@contoso.example",
                                                           "permission": "SendAs"}),
        "disable": ex.job("disable_mailbox", {"mailbox_id": dan}),
        "delete": ex.job("delete_mailbox", {"mailbox_id": eve}),
        "convert": ex.job("convert_mailbox", {"mailbox_id": fay, "type": "shared"}),
        "owa": ex.job("set_owa_policy", {"mailbox_id": fay, "policy": "Contoso OWA"}),
        "address": ex.job("add_email_address", {"mailbox_id": fay, "address": "info@contoso.example"}),
    }
    ex.sql("INSERT INTO exchange_mailbox_permissions (mailbox_id, permission, trustee, access_rights)"
           " VALUES (%s, 'SendAs', 'HOSTING\\dan.dare', '{Send-As}')", (carol,))
    ps = ex.ps
    ps.answer("exchange/new_mailbox", lambda c: _mailbox_record(
        c.parameters, G[1] if c.parameters["Alias"] == "anna.ash" else G[7],
        kind="UserMailbox" if c.parameters["Type"] == "Regular" else "RoomMailbox"))
    ps.answer("exchange/set_mailbox_quota", lambda c: _quota_record(c.parameters, G[2]))
    ps.answer("exchange/set_mailbox_forwarding", [{
        "ExchangeGuid": G[2], "PrimarySmtpAddress": "bob.brown@contoso.example", "ForwardingAddress": None,
        "ForwardingSmtpAddress": "smtp:bob@gmail.example", "DeliverToMailboxAndForward": True}])
    ps.answer("exchange/add_mailbox_permission", [{
        "ExchangeGuid": G[3], "PrimarySmtpAddress": "carol.clark@contoso.example", "Permission": "FullAccess",
        "Trustee": "HOSTING\\bob.brown", "AccessRights": ["FullAccess"], "Changed": True}])
    ps.answer("exchange/remove_mailbox_permission", [{
        "ExchangeGuid": G[3], "PrimarySmtpAddress": "carol.clark@contoso.example", "Permission": "SendAs",
        "Trustee": "HOSTING\\dan.dare", "Changed": True}])
    ps.answer("exchange/set_mailbox_access", [{
        "ExchangeGuid": G[4], "PrimarySmtpAddress": "dan.dare@contoso.example", "RecipientTypeDetails": "UserMailbox",
        "AccountDisabled": True, "OWAEnabled": False, "ActiveSyncEnabled": False, "EwsEnabled": False,
        "MAPIEnabled": False, "PopEnabled": False, "ImapEnabled": False}])
    ps.answer("exchange/remove_mailbox", [{"Identity": G[5], "ExchangeGuid": G[5], "Database": "DB02",
                                           "Removed": True, "AlreadyAbsent": False}])
    ps.answer("exchange/set_mailbox_type", [{"ExchangeGuid": G[6], "PrimarySmtpAddress": "fay.fox@contoso.example",
                                             "RecipientTypeDetails": "SharedMailbox"}])
    ps.answer("exchange/set_cas_mailbox_owa_policy", [{"Identity": G[6], "OwaMailboxPolicy": "Contoso OWA", "Error": None}])
    ps.answer("exchange/add_mailbox_email_address", [{
        "ExchangeGuid": G[6], "PrimarySmtpAddress": "fay.fox@contoso.example",
        "EmailAddresses": ["smtp:info@contoso.example", "SMTP:fay.fox@contoso.example",
                           "X500:/o=Hosting/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=fay"],
        "Changed": True}])

    out = process_exchange_group_actions(ex.db, _at(), {}, None)
    assert (out["claimed"], out["succeeded"], out["failed"], out["retry_later"]) == (11, 11, 0, 0), out

    assert ex.sent() == [
        ("exchange/new_mailbox", {"Name": "Anna Ash", "DisplayName": "Anna Ash", "UserPrincipalName": "anna.ash@contoso.example",
                                  "OrganizationalUnit": CONTOSO_OU, "Password": "Str0ng-Pass!", "Alias": "anna.ash",
                                  "PrimarySmtpAddress": "anna.ash@contoso.example", "Type": "Regular",
                                  "AddressBookPolicy": "Contoso ABP"}),
        ("exchange/new_mailbox", {"Name": "Board Room", "DisplayName": "Board Room",
                                  "UserPrincipalName": "board.room@contoso.example", "OrganizationalUnit": CONTOSO_OU,
                                  "Alias": "board.room", "PrimarySmtpAddress": "board.room@contoso.example",
                                  "Type": "Room", "AddressBookPolicy": "Contoso ABP"}),
        ("exchange/set_mailbox_quota", {"Identity": G[2], "UseDatabaseQuotaDefaults": False, "IssueWarningQuota": "1843MB",
                                        "ProhibitSendQuota": "2048MB", "ProhibitSendReceiveQuota": "Unlimited"}),
        ("exchange/set_mailbox_forwarding", {"Identity": G[2], "ForwardingSmtpAddress": "bob@gmail.example",
                                             "DeliverToMailboxAndForward": True}),
        ("exchange/add_mailbox_permission", {"Identity": G[3], "Trustee": "bob.brown@contoso.example",
                                             "Permission": "FullAccess", "AutoMapping": False}),
        ("exchange/remove_mailbox_permission", {"Identity": G[3], "Trustee": "dan.dare@contoso.example",
                                                "Permission": "SendAs", "Confirm": False}),
        ("exchange/set_mailbox_access", {"Identity": G[4], "Enabled": False}),
        ("exchange/remove_mailbox", {"Identity": G[5], "KeepADUser": False, "Confirm": False}),
        ("exchange/set_mailbox_type", {"Identity": G[6], "Type": "Shared"}),
        ("exchange/set_cas_mailbox_owa_policy", {"Identity": [G[6]], "OwaMailboxPolicy": "Contoso OWA"}),
        ("exchange/add_mailbox_email_address", {"Identity": G[6], "Address": "info@contoso.example", "SetAsPrimary": False}),
    ]
    assert {c.conn_host for c in ps.sent} == {"ex01.hosting.test"}

    results = {k: ex.state(j) for k, j in jobs.items()}
    assert results["create"][2] == {"mailbox_id": anna, "exchange_guid": G[1], "primary_smtp_address": "anna.ash@contoso.example",
                                    "database": "DB01", "created": True}
    assert "password" not in results["create"][4]                       # the secret is gone with the job
    assert results["quota"][2] == {"mailbox_id": bob, "use_database_quota_defaults": False, "issue_warning_mb": 1843,
                                   "prohibit_send_mb": 2048, "prohibit_send_receive_mb": None}
    assert results["full"][2] == {"mailbox_id": carol, "permission": "FullAccess", "trustee": "HOSTING\\bob.brown",
                                  "granted": True, "already_granted": False}
    assert results["sendas_off"][2]["removed"] is True
    assert results["delete"][2] == {"mailbox_id": eve, "exchange_guid": G[5], "removed": True, "already_absent": False}
    assert results["convert"][2] == {"mailbox_id": fay, "type": "shared", "recipient_type_details": "SharedMailbox"}

    rows = {r[0]: r[1:] for r in ex.sql(
        "SELECT id, status, previous_status, exchange_guid::text, database, mailbox_type, email_addresses,"
        " issue_warning_quota_mb, prohibit_send_quota_mb, prohibit_send_receive_quota_mb, forwarding_smtp_address,"
        " deliver_to_mailbox_and_forward, owa_policy_applied, deleted_at FROM exchange_mailboxes")}
    assert rows[anna] == ("active", None, G[1], "DB01", "user", ["anna.ash@contoso.example"], None, None, None, None,
                          False, None, None)
    assert rows[room][:5] == ("active", None, G[7], "DB01", "room")
    assert rows[bob][6:11] == (1843, 2048, None, "bob@gmail.example", True)
    assert rows[dan][:2] == ("disabled", None)
    assert rows[eve][0] == "recycle_bin" and rows[eve][3] == "DB02" and rows[eve][12] == T0
    assert rows[fay][4:6] == ("shared", ["fay.fox@contoso.example", "info@contoso.example"])
    assert rows[fay][11] == "Contoso OWA"
    assert ex.sql("SELECT mailbox_id, permission, trustee, access_rights FROM exchange_mailbox_permissions") == [
        (carol, "FullAccess", "HOSTING\\bob.brown", ["FullAccess"])]

    # a rerun finds nothing to do and calls nothing
    ps.sent.clear()
    again = process_exchange_group_actions(ex.db, _at(T0 + timedelta(minutes=5)), {}, None)
    assert again["claimed"] == 0 and ps.sent == []


def test_a_hostile_mailbox_name_reaches_exchange_as_a_literal_parameter(ex):
    from panelflow.hooks.powershell import script_text
    from panelflow.steps.exchange.jobs import process_exchange_group_actions

    box = ex.mailbox("x.user", status="pending", guid=None, display=INJECTION)
    job = ex.job("create_mailbox", {"mailbox_id": box, "password": "P@ss'; whoami"})
    ex.ps.answer("exchange/new_mailbox", lambda c: _mailbox_record(c.parameters, G[9]))
    process_exchange_group_actions(ex.db, _at(), {}, None)
    (sent,) = ex.ps.sent
    assert sent.is_script and sent.command == script_text("exchange/new_mailbox")   # the file, unchanged
    assert sent.parameters["Name"] == INJECTION and sent.parameters["DisplayName"] == INJECTION
    assert sent.parameters["Password"] == "P@ss'; whoami"
    assert "Remove-Mailbox" not in sent.command
    assert sent.clixml.count("Remove-Mailbox") == 2          # only inside the two parameter values
    assert ex.state(job)[0] == "succeeded"


def test_a_timeout_defers_its_job_and_the_queue_goes_on(ex):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions

    bob = ex.mailbox("bob.brown", guid=G[2])
    carol = ex.mailbox("carol.clark", guid=G[3])
    zoe = ex.mailbox("zoe.zane", org=2, guid=G[8])
    first = ex.job("disable_mailbox", {"mailbox_id": bob}, priority=1)
    second = ex.job("convert_mailbox", {"mailbox_id": carol, "type": "equipment"}, priority=2)
    third = ex.job("enable_mailbox", {"mailbox_id": zoe}, priority=3)
    def access(cmd):
        on = cmd.parameters["Enabled"]
        return [{"ExchangeGuid": cmd.parameters["Identity"], "PrimarySmtpAddress": "x@y.example",
                 "RecipientTypeDetails": "UserMailbox", "AccountDisabled": not on,
                 **{k: on for k in ("OWAEnabled", "ActiveSyncEnabled", "EwsEnabled", "MAPIEnabled", "PopEnabled",
                                    "ImapEnabled")}}]
    ex.ps.answer("exchange/set_mailbox_access", access)
    ex.ps.answer("exchange/set_mailbox_access", timeout=True, times=1)
    ex.ps.answer("exchange/set_mailbox_type", [{"ExchangeGuid": G[3], "PrimarySmtpAddress": "carol.clark@contoso.example",
                                                "RecipientTypeDetails": "EquipmentMailbox"}])

    out = process_exchange_group_actions(ex.db, _at(), {}, None)
    assert (out["succeeded"], out["retry_later"], out["failed"]) == (2, 1, 0), out
    status, attempts, result, error, _ = ex.state(first)
    assert (status, attempts, result) == ("pending", 1, None)
    assert "Read timed out" in error and "exch_ex01" in error
    assert ex.state(second)[:3] == ("succeeded", 1, {"mailbox_id": carol, "type": "equipment",
                                                      "recipient_type_details": "EquipmentMailbox"})
    assert ex.state(third)[0] == "succeeded"
    # the job after the timeout, on the same server, went through a fresh runspace pool
    assert [(c.script, c.conn_host) for c in ex.ps.sent] == [
        ("exchange/set_mailbox_access", "ex01.hosting.test"), ("exchange/set_mailbox_type", "ex01.hosting.test"),
        ("exchange/set_mailbox_access", "ex02.hosting.test")]
    assert ex.sql("SELECT status FROM exchange_mailboxes WHERE id = %s", (bob,)) == [("active",)]

    out = process_exchange_group_actions(ex.db, _at(T0 + timedelta(minutes=5)), {}, None)
    assert out["succeeded"] == 1 and ex.state(first)[:2] == ("succeeded", 2)
    assert ex.sql("SELECT status FROM exchange_mailboxes WHERE id = %s", (bob,)) == [("disabled",)]


def test_a_server_timing_out_twice_is_not_called_again_in_the_run(ex):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions

    boxes = [ex.mailbox(f"user{i}", guid=G[10 + i]) for i in range(3)]
    zoe = ex.mailbox("zoe.zane", org=2, guid=G[8])
    jobs = [ex.job("disable_mailbox", {"mailbox_id": b}, priority=1) for b in boxes]
    other = ex.job("disable_mailbox", {"mailbox_id": zoe}, priority=2)
    ex.ps.answer("exchange/set_mailbox_access", [{
        "ExchangeGuid": G[8], "PrimarySmtpAddress": "zoe.zane@fabrikam.example", "AccountDisabled": True,
        "OWAEnabled": False, "ActiveSyncEnabled": False, "EwsEnabled": False, "MAPIEnabled": False,
        "PopEnabled": False, "ImapEnabled": False}])
    ex.ps.answer("exchange/set_mailbox_access", timeout=True, when=lambda c: c.conn_host == "ex01.hosting.test")

    out = process_exchange_group_actions(ex.db, _at(), {}, None)
    assert (out["retry_later"], out["succeeded"]) == (3, 1)
    assert [c.conn_host for c in ex.ps.sent] == ["ex01.hosting.test", "ex01.hosting.test", "ex02.hosting.test"]
    assert ex.state(jobs[2])[3].startswith("EX01 not tried: unreachable earlier in this run (2 transport failures,")
    assert ex.state(other)[0] == "succeeded"


def test_exchange_refusing_a_job_fails_it_with_exchanges_message_and_the_next_succeeds(ex):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions

    anna = ex.mailbox("anna.ash", status="pending", guid=None, database=None)
    bob = ex.mailbox("bob.brown", guid=G[2])
    refused = ex.job("create_mailbox", {"mailbox_id": anna, "password": "weak"}, priority=1)
    nxt = ex.job("add_mailbox_permission", {"mailbox_id": bob, "trustee": "carol.clark@contoso.example",
                                            "permission": "SendOnBehalf"}, priority=2)
    bad = ex.job("convert_mailbox", {"mailbox_id": bob, "type": "archive"}, priority=3)
    unknown = ex.job("create_mailbox", {"mailbox_id": 999999}, priority=3)
    message = ("The password does not comply with the password policy requirements. Check the minimum password "
               "length, password complexity and password history requirements.")
    ex.ps.answer("exchange/new_mailbox", error=message)
    ex.ps.answer("exchange/add_mailbox_permission", [{
        "ExchangeGuid": G[2], "PrimarySmtpAddress": "bob.brown@contoso.example", "Permission": "SendOnBehalf",
        "Trustee": "hosting.local/Hosting/Contoso/Carol Clark", "AccessRights": ["SendOnBehalf"], "Changed": True}])

    out = process_exchange_group_actions(ex.db, _at(), {}, None)
    assert (out["failed"], out["succeeded"]) == (3, 1)
    status, attempts, _, error, payload = ex.state(refused)
    assert (status, attempts, error) == ("failed", 1, f"EX01: {message}")
    assert "password" not in payload
    assert ex.state(nxt)[0] == "succeeded"
    assert ex.state(bad)[3] == "type 'archive' is not one of user, shared, room, equipment"
    assert ex.state(unknown)[3] == "no mailbox 999999 in the panel"
    assert [c.script for c in ex.ps.sent] == ["exchange/new_mailbox", "exchange/add_mailbox_permission"]
    assert ex.sql("SELECT permission, trustee, access_rights FROM exchange_mailbox_permissions") == [
        ("SendOnBehalf", "hosting.local/Hosting/Contoso/Carol Clark", ["SendOnBehalf"])]
    # the mailbox stays pending until step 5 reads the failed job
    assert ex.sql("SELECT status FROM exchange_mailboxes WHERE id = %s", (anna,)) == [("pending",)]


def test_jobs_run_by_priority_and_repeated_actions_do_nothing_twice(ex):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions

    bob = ex.mailbox("bob.brown", guid=G[2])
    anna = ex.mailbox("anna.ash", status="pending", guid=None, database=None)
    low = ex.job("delete_mailbox", {"mailbox_id": bob}, priority=9)
    high = ex.job("create_mailbox", {"mailbox_id": anna, "ad_user": "HOSTING\\anna.ash"}, priority=0)
    mid = ex.job("add_mailbox_permission", {"mailbox_id": bob, "trustee": "anna.ash@contoso.example",
                                            "permission": "FullAccess"}, priority=4)
    ex.ps.answer("exchange/enable_user_mailbox", lambda c: _mailbox_record(c.parameters, G[1], created=False))
    ex.ps.answer("exchange/add_mailbox_permission", [{
        "ExchangeGuid": G[2], "PrimarySmtpAddress": "bob.brown@contoso.example", "Permission": "FullAccess",
        "Trustee": "HOSTING\\anna.ash", "AccessRights": ["FullAccess"], "Changed": False}])
    ex.ps.answer("exchange/remove_mailbox", [{"Identity": G[2], "ExchangeGuid": None, "Database": None,
                                              "Removed": False, "AlreadyAbsent": True}])

    out = process_exchange_group_actions(ex.db, _at(), {}, None)
    assert out["succeeded"] == 3
    assert [c.script for c in ex.ps.sent] == ["exchange/enable_user_mailbox", "exchange/add_mailbox_permission",
                                               "exchange/remove_mailbox"]
    assert ex.ps.sent[0].parameters == {"Identity": "HOSTING\\anna.ash", "DisplayName": "Anna Ash", "Alias": "anna.ash",
                                        "PrimarySmtpAddress": "anna.ash@contoso.example", "Type": "Regular",
                                        "AddressBookPolicy": "Contoso ABP"}
    assert ex.state(high)[2]["created"] is False                 # it existed: found, not created again
    assert ex.state(mid)[2]["already_granted"] is True
    assert ex.state(low)[2] == {"mailbox_id": bob, "exchange_guid": G[2], "removed": False, "already_absent": True}
    assert ex.sql("SELECT status, exchange_guid::text, deleted_at FROM exchange_mailboxes WHERE id = %s", (bob,)) == [
        ("recycle_bin", G[2], T0)]


# -- 2./3. OWA policies -----------------------------------------------------------------------------------------

def test_pending_owa_policies_are_created_once_and_assigned_in_batches(ex):
    from panelflow.steps.exchange.owa_policies import assign_owa_policies, create_pending_owa_policies

    ex.sql("INSERT INTO exchange_owa_policies (exchange_server_id, name, settings) VALUES"
           " (1, 'Contoso OWA', %s), (1, 'Contoso Bad', %s), (2, 'Fabrikam OWA', '{}'), (1, 'Contoso Refused', '{}')",
           (Jsonb({"InstantMessagingEnabled": False, "AllowOfflineOn": "PrivateComputersOnly", "CalendarEnabled": True}),
            Jsonb({"OWALightEnabled": False})))

    def policy(c):
        if c.parameters["Name"] == "Contoso Refused":
            return None
        return [{"Name": c.parameters["Name"], "Guid": G[12] if c.parameters["Name"] == "Contoso OWA" else G[13],
                 "IsDefault": False, "WhenChanged": "2026-03-02T09:59:58.0000000Z",
                 "Created": c.parameters["Name"] == "Contoso OWA",
                 **{k: v for k, v in c.parameters.items() if k != "Name"}}]
    ex.ps.answer("exchange/new_owa_mailbox_policy", policy)
    ex.ps.answer("exchange/new_owa_mailbox_policy", error="The OWA mailbox policy name \"Contoso Refused\" is reserved.",
                 when=lambda c: c.parameters["Name"] == "Contoso Refused")

    out = create_pending_owa_policies(ex.db, _at(), {}, None)
    assert (out["pending"], out["created"], out["already_existed"], out["failed"]) == (4, 1, 1, 2), out
    assert ex.sent() == [
        ("exchange/new_owa_mailbox_policy", {"Name": "Contoso OWA", "InstantMessagingEnabled": False,
                                             "AllowOfflineOn": "PrivateComputersOnly", "CalendarEnabled": True}),
        ("exchange/new_owa_mailbox_policy", {"Name": "Contoso Refused"}),
        ("exchange/new_owa_mailbox_policy", {"Name": "Fabrikam OWA"})]
    assert ex.sql("SELECT name, status, exchange_guid::text, created_on_exchange_at, last_error FROM exchange_owa_policies"
                  " ORDER BY id") == [
        ("Contoso OWA", "created", G[12], T0, None),
        ("Contoso Bad", "failed", None, None, "OWA policy Contoso Bad setting 'OWALightEnabled' is not one the panel may set"),
        ("Fabrikam OWA", "created", G[13], T0, None),
        ("Contoso Refused", "failed", None, None,
         'exchange/new_owa_mailbox_policy: The OWA mailbox policy name "Contoso Refused" is reserved.')]
    ex.ps.sent.clear()
    assert create_pending_owa_policies(ex.db, _at(), {}, None)["pending"] == 0 and ex.ps.sent == []

    # 3. assignment: desired ≠ applied, batches of 2 per server and policy; one mailbox refused
    a, b, c = (ex.mailbox(n, guid=G[i], owa_policy_id=1) for n, i in (("anna.ash", 1), ("bob.brown", 2), ("carol.clark", 3)))
    done = ex.mailbox("dan.dare", guid=G[4], owa_policy_id=1, owa_policy_applied="Contoso OWA")
    waiting = ex.mailbox("eve.evans", guid=G[5], owa_policy_id=2)                       # its policy failed
    zoe = ex.mailbox("zoe.zane", org=2, guid=G[8], owa_policy_id=3, status="disabled")
    gone = ex.mailbox("old.one", guid=G[9], owa_policy_id=1, status="recycle_bin")
    ex.ps.answer("exchange/set_cas_mailbox_owa_policy", lambda cmd: [
        {"Identity": i, "OwaMailboxPolicy": None if i == G[2] else cmd.parameters["OwaMailboxPolicy"],
         "Error": f"The operation couldn't be performed because object '{i}' couldn't be found on "
                  "'DC01.hosting.local'." if i == G[2] else None} for i in cmd.parameters["Identity"]])
    out = assign_owa_policies(ex.db, _at(), {"owa_assign_batch": 2}, None)
    assert (out["due"], out["assigned"], out["failed"], out["waiting_for_policy"], out["calls"]) == (4, 3, 1, 1, 3), out
    assert ex.sent() == [
        ("exchange/set_cas_mailbox_owa_policy", {"Identity": [G[1], G[2]], "OwaMailboxPolicy": "Contoso OWA"}),
        ("exchange/set_cas_mailbox_owa_policy", {"Identity": [G[3]], "OwaMailboxPolicy": "Contoso OWA"}),
        ("exchange/set_cas_mailbox_owa_policy", {"Identity": [G[8]], "OwaMailboxPolicy": "Fabrikam OWA"})]
    applied = dict(ex.sql("SELECT id, owa_policy_applied FROM exchange_mailboxes"))
    assert applied == {a: "Contoso OWA", b: None, c: "Contoso OWA", done: "Contoso OWA", waiting: None,
                       zoe: "Fabrikam OWA", gone: None}
    ex.ps.sent.clear()
    again = assign_owa_policies(ex.db, _at(), {}, None)      # only the refused one is tried again
    assert again["due"] == 1 and [c.parameters["Identity"] for c in ex.ps.sent] == [[G[2]]]


# -- 4. send connectors -----------------------------------------------------------------------------------------

CONNECTORS = [
    {"Name": "Internet via relay", "Identity": "Internet via relay", "Guid": G[14], "Enabled": True,
     "SmartHosts": ["[10.20.0.25]"], "AddressSpaces": ["SMTP:*;1"], "Port": 25, "DNSRoutingEnabled": False,
     "SmartHostAuthMechanism": "None", "SourceTransportServers": ["EX01"], "WhenChanged": "2026-01-10T08:00:00.0000000Z"},
    {"Name": "Partner TLS", "Identity": "Partner TLS", "Guid": G[15], "Enabled": True, "SmartHosts": [],
     "AddressSpaces": ["SMTP:partner.example;1"], "Port": 25, "DNSRoutingEnabled": True,
     "SmartHostAuthMechanism": "None", "SourceTransportServers": ["EX01"], "WhenChanged": "2026-01-11T08:00:00.0000000Z"},
]


def test_send_connectors_recorded_from_exchange_and_the_panels_smart_hosts_pushed(ex):
    from panelflow.steps.exchange.transport import sync_smart_host_send_connectors

    ex.sql("INSERT INTO exchange_servers (name, fqdn, conn_id, enabled) VALUES ('EX03', 'ex03.hosting.test', 'exch_ex03', false)")
    ex.sql("INSERT INTO exchange_send_connectors (exchange_server_id, name, managed, desired_smart_hosts,"
           " desired_address_spaces, status) VALUES"
           " (1, 'Internet via relay', true, '{10.20.0.26, relay2.hosting.example}', '{*}', 'pending'),"
           " (1, 'Outbound spam filter', true, '{filter.hosting.example}', '{SMTP:*;2}', 'pending'),"
           " (1, 'Old unmanaged', false, NULL, NULL, 'observed')")
    ex.ps.answer("exchange/get_send_connectors", CONNECTORS, when=lambda c: c.conn_host == "ex01.hosting.test")
    ex.ps.answer("exchange/get_send_connectors", [], when=lambda c: c.conn_host == "ex02.hosting.test")

    def echoed(cmd, guid):
        p = cmd.parameters
        return [{"Name": p.get("Name", "Internet via relay"), "Identity": p.get("Name", "Internet via relay"), "Guid": guid,
                 "Enabled": p["Enabled"], "SmartHosts": p["SmartHosts"], "AddressSpaces": p["AddressSpaces"],
                 "Port": p["Port"], "DNSRoutingEnabled": False, "SmartHostAuthMechanism": "None",
                 "SourceTransportServers": p.get("SourceTransportServers", ["EX01"]),
                 "WhenChanged": "2026-03-02T09:59:00.0000000Z"}]
    ex.ps.answer("exchange/set_send_connector", lambda c: echoed(c, G[14]))
    ex.ps.answer("exchange/new_send_connector", lambda c: [{**echoed(c, G[16])[0], "Created": True}])

    out = sync_smart_host_send_connectors(ex.db, _at(), {}, None)
    assert (out["observed"], out["new_on_exchange"], out["dropped"], out["updated"], out["created"], out["in_sync"]) == \
        (2, 1, 1, 1, 1, 0), out
    assert ex.sent() == [
        ("exchange/get_send_connectors", {}),
        ("exchange/set_send_connector", {"Identity": G[14], "SmartHosts": ["[10.20.0.26]", "relay2.hosting.example"],
                                         "AddressSpaces": ["SMTP:*;1"], "Port": 25, "Enabled": True}),
        ("exchange/new_send_connector", {"Name": "Outbound spam filter", "SmartHosts": ["filter.hosting.example"],
                                         "AddressSpaces": ["SMTP:*;2"], "SourceTransportServers": ["EX01"], "Port": 25,
                                         "Enabled": True}),
        ("exchange/get_send_connectors", {})]
    rows = ex.sql("SELECT exchange_server_id, name, managed, present, status, exchange_guid::text, smart_hosts,"
                  " address_spaces, dns_routing_enabled, synced_at FROM exchange_send_connectors ORDER BY name")
    assert rows == [
        (1, "Internet via relay", True, True, "in_sync", G[14], ["[10.20.0.26]", "relay2.hosting.example"], ["SMTP:*;1"],
         False, T0),
        (1, "Outbound spam filter", True, True, "in_sync", G[16], ["filter.hosting.example"], ["SMTP:*;2"], False, T0),
        (1, "Partner TLS", False, True, "observed", G[15], [], ["SMTP:partner.example;1"], True, T0)]

    # Exchange now holds what the panel wants: a rerun only reads
    ex.ps.sent.clear()
    ex.ps.answer("exchange/get_send_connectors", [
        {**CONNECTORS[0], "SmartHosts": ["relay2.hosting.example", "[10.20.0.26]"]}, CONNECTORS[1],
        {**CONNECTORS[0], "Name": "Outbound spam filter", "Guid": G[16], "SmartHosts": ["filter.hosting.example"],
         "AddressSpaces": ["SMTP:*;2"]}], when=lambda c: c.conn_host == "ex01.hosting.test")
    again = sync_smart_host_send_connectors(ex.db, _at(T0 + timedelta(minutes=5)), {}, None)
    assert (again["in_sync"], again["updated"], again["created"]) == (2, 0, 0)
    assert [c.script for c in ex.ps.sent] == ["exchange/get_send_connectors"] * 2


def test_a_server_timing_out_is_reported_and_the_others_synced_all_failing_fails_the_step(ex):
    from panelflow.steps.exchange.transport import sync_smart_host_send_connectors

    ex.ps.answer("exchange/get_send_connectors", timeout=True, when=lambda c: c.conn_host == "ex01.hosting.test")
    ex.ps.answer("exchange/get_send_connectors", [CONNECTORS[1]], when=lambda c: c.conn_host == "ex02.hosting.test")
    out = sync_smart_host_send_connectors(ex.db, _at(), {}, None)
    assert (out["servers_failed"], out["servers_done"], out["observed"]) == (1, 1, 1)
    assert "Read timed out" in out["skipped_examples"][0] and out["skipped_examples"][0].startswith("server EX01")
    assert ex.sql("SELECT exchange_server_id, name FROM exchange_send_connectors") == [(2, "Partner TLS")]

    ex.ps.answer("exchange/get_send_connectors", timeout=True)
    with pytest.raises(RuntimeError, match="every Exchange server failed"):
        sync_smart_host_send_connectors(ex.db, _at(), {}, None)


def test_no_exchange_server_means_nothing_to_do(ex):
    from panelflow.steps.exchange.jobs import process_exchange_group_actions
    from panelflow.steps.exchange.transport import sync_external_remote_domains, sync_smart_host_send_connectors
    from panelflow.steps.exchange.mailbox_permissions import sync_mailbox_permissions

    ex.sql("UPDATE exchange_servers SET enabled = false")
    assert sync_smart_host_send_connectors(ex.db, _at(), {}, None)["observed"] == 0
    assert sync_external_remote_domains(ex.db, _at(), {}, None)["observed"] == 0
    assert sync_mailbox_permissions(ex.db, _at(), {}, None)["organizations"] == 0
    assert process_exchange_group_actions(ex.db, _at(), {}, None)["claimed"] == 0
    assert ex.ps.sent == []


# -- 5. statuses from the jobs' outcomes ------------------------------------------------------------------------

def test_mailbox_statuses_are_corrected_from_the_latest_finished_job(ex):
    from panelflow.steps.exchange.jobs import correct_mailbox_statuses

    def finished(action, mailbox, status, error=None, finished_at=T0 - timedelta(minutes=3)):
        ex.sql("INSERT INTO group_action_jobs (backend, action, payload, status, error, finished_at, attempts)"
               " VALUES ('exchange', %s, %s, %s, %s, %s, 1)",
               (action, Jsonb({"mailbox_id": mailbox}), status, error, finished_at))

    created = ex.mailbox("a.created", status="pending", guid=G[1])
    create_failed = ex.mailbox("b.failed", status="pending", guid=None)
    disabled = ex.mailbox("c.disabled", status="pending", previous_status="active", guid=G[3])
    deleted = ex.mailbox("d.deleted", status="pending", previous_status="disabled", guid=G[4])
    quota_ok = ex.mailbox("e.quota", status="pending", previous_status="disabled", guid=G[5])
    delete_failed = ex.mailbox("f.delfail", status="pending", previous_status="active", guid=G[6])
    still_running = ex.mailbox("g.running", status="pending", guid=G[7])
    no_job = ex.mailbox("h.nojob", status="pending", guid=G[8])
    untouched = ex.mailbox("i.active", status="active", guid=G[9])
    finished("create_mailbox", created, "succeeded")
    finished("create_mailbox", create_failed, "failed", "exchange/new_mailbox: The proxy address is already being used")
    finished("enable_mailbox", disabled, "succeeded", finished_at=T0 - timedelta(hours=2))
    finished("disable_mailbox", disabled, "succeeded")                           # the latest wins
    finished("delete_mailbox", deleted, "succeeded", finished_at=T0 - timedelta(minutes=4))
    finished("set_mailbox_quota", quota_ok, "succeeded")
    finished("delete_mailbox", delete_failed, "failed", "exchange/remove_mailbox: Active Directory operation failed")
    finished("disable_mailbox", still_running, "succeeded")
    ex.sql("INSERT INTO group_action_jobs (backend, action, payload, status) VALUES ('exchange', 'enable_mailbox', %s,"
           " 'running')", (Jsonb({"mailbox_id": still_running}),))
    finished("disable_mailbox", untouched, "succeeded")
    ex.sql("INSERT INTO group_action_jobs (backend, action, payload, status) VALUES ('o365', 'delete_user', %s, 'failed')",
           (Jsonb({"mailbox_id": no_job}),))                                     # another backend's job: not ours

    out = correct_mailbox_statuses(ex.db, _at(), None)
    assert (out["corrected"], out["waiting_for_job"], out["without_job"]) == (6, 1, 1), out
    rows = {r[0]: r[1:] for r in ex.sql("SELECT id, status, previous_status, deleted_at, last_error, status_changed_at"
                                         " FROM exchange_mailboxes")}
    assert rows[created] == ("active", None, None, None, T0)
    assert rows[create_failed] == ("failed", None, None, "exchange/new_mailbox: The proxy address is already being used", T0)
    assert rows[disabled][0] == "disabled"
    assert rows[deleted][:3] == ("recycle_bin", None, T0 - timedelta(minutes=4))
    assert rows[quota_ok][0] == "disabled"
    assert rows[delete_failed][::3] == ("active", "exchange/remove_mailbox: Active Directory operation failed")
    assert rows[still_running][0] == rows[no_job][0] == "pending"
    assert rows[untouched] == ("active", None, None, None, None)
    assert correct_mailbox_statuses(ex.db, _at(), None)["corrected"] == 0        # idempotent


# -- 6. spam filters ----------------------------------------------------------------------------------------------

def test_organisation_spam_settings_become_transport_rules_and_mailbox_thresholds(ex):
    from panelflow.steps.exchange.spam_filters import handle_oss_spam_filters

    a = ex.mailbox("anna.ash", guid=G[1])
    b = ex.mailbox("bob.brown", guid=G[2], status="disabled")
    ex.mailbox("old.one", guid=G[9], status="recycle_bin")
    ex.sql("INSERT INTO exchange_spam_filter_settings (organization_id, scl_delete_threshold, scl_junk_threshold,"
           " allowed_senders, blocked_domains) VALUES (1, 9, 4, '{news@partner.example}', '{spam.example, bulk.example}'),"
           " (2, NULL, NULL, '{}', '{}')")
    ex.sql("UPDATE exchange_organizations SET accepted_domains = '{}' WHERE id = 2")

    def applied(cmd):
        p = cmd.parameters
        rules = []
        if p["AllowedSenders"]:
            rules.append({"Name": f"{p['RuleNamePrefix']} - allowed senders", "State": "Enabled", "Mode": "Enforce",
                          "Priority": 0, "From": p["AllowedSenders"], "SenderDomainIs": [],
                          "RecipientDomainIs": p["RecipientDomains"], "SetSCL": -1, "DeleteMessage": False})
        if p["BlockedDomains"]:
            rules.append({"Name": f"{p['RuleNamePrefix']} - blocked domains", "State": "Enabled", "Mode": "Enforce",
                          "Priority": 1, "From": [], "SenderDomainIs": p["BlockedDomains"],
                          "RecipientDomainIs": p["RecipientDomains"], "SetSCL": None, "DeleteMessage": True})
        return [{"Rules": rules, "RemovedRules": [], "MailboxesUpdated": len(p["Mailboxes"])}]
    ex.ps.answer("exchange/set_organization_spam_filter", applied)

    out = handle_oss_spam_filters(ex.db, _at(), {}, None)
    assert (out["due"], out["applied"], out["failed"], out["mailboxes_updated"]) == (2, 1, 1, 2), out
    assert ex.sent() == [("exchange/set_organization_spam_filter", {
        "RuleNamePrefix": "panelflow spam Contoso", "RecipientDomains": ["contoso.example"],
        "AllowedSenders": ["news@partner.example"], "BlockedSenders": [], "AllowedDomains": [],
        "BlockedDomains": ["spam.example", "bulk.example"], "Mailboxes": [G[1], G[2]], "SCLDeleteThreshold": 9,
        "SCLRejectThreshold": -1, "SCLQuarantineThreshold": -1, "SCLJunkThreshold": 4, "Confirm": False})]
    (status, applied_at, rules, error), (status2, _, _, error2) = ex.sql(
        "SELECT status, applied_at, applied_rules, last_error FROM exchange_spam_filter_settings ORDER BY organization_id")
    assert (status, applied_at, error) == ("applied", T0, None)
    assert [r["Name"] for r in rules] == ["panelflow spam Contoso - allowed senders", "panelflow spam Contoso - blocked domains"]
    assert rules[1]["SenderDomainIs"] == ["spam.example", "bulk.example"] and rules[1]["DeleteMessage"] is True
    assert (status2, error2) == ("failed", "the organisation has no accepted domains to scope its spam rules to")
    assert dict(ex.sql("SELECT id, spam_settings_applied_at FROM exchange_mailboxes WHERE id IN (%s, %s)", (a, b))) == \
        {a: T0, b: T0}

    # nothing changed: nothing sent; a new mailbox gets the thresholds; changed settings re-apply to all
    ex.ps.sent.clear()
    assert handle_oss_spam_filters(ex.db, _at(), {}, None)["due"] == 0 and ex.ps.sent == []
    c = ex.mailbox("carol.clark", guid=G[3])
    handle_oss_spam_filters(ex.db, _at(T0 + timedelta(minutes=5)), {}, None)
    assert [cmd.parameters["Mailboxes"] for cmd in ex.ps.sent] == [[G[3]]]
    ex.sql("UPDATE exchange_spam_filter_settings SET status = 'pending', scl_junk_threshold = 5 WHERE organization_id = 1")
    ex.ps.sent.clear()
    handle_oss_spam_filters(ex.db, _at(T0 + timedelta(minutes=10)), {}, None)
    assert [(cmd.parameters["Mailboxes"], cmd.parameters["SCLJunkThreshold"]) for cmd in ex.ps.sent] == [([G[1], G[2], G[3]], 5)]
    assert ex.sql("SELECT spam_settings_applied_at FROM exchange_mailboxes WHERE id = %s", (c,)) == [
        (T0 + timedelta(minutes=10),)]


# -- 7. recycle bin -------------------------------------------------------------------------------------------------

def test_mailboxes_past_the_recycle_days_are_purged_from_their_database(ex):
    from panelflow.steps.exchange.recycle_bin import purge_recycle_bin_mailboxes

    due = ex.mailbox("a.due", guid=G[1], status="recycle_bin", deleted_at=T0 - timedelta(days=31), database="DB01")
    gone = ex.mailbox("b.gone", guid=G[2], status="recycle_bin", deleted_at=T0 - timedelta(days=40), database="DB01")
    never = ex.mailbox("c.never", guid=None, status="recycle_bin", deleted_at=T0 - timedelta(days=35), database=None)
    young = ex.mailbox("d.young", guid=G[4], status="recycle_bin", deleted_at=T0 - timedelta(days=29), database="DB01")
    refused = ex.mailbox("e.refused", guid=G[5], status="recycle_bin", deleted_at=T0 - timedelta(days=33), database="DB02")
    over_batch = ex.mailbox("f.later", guid=G[6], status="recycle_bin", deleted_at=T0 - timedelta(days=30, hours=1),
                            database="DB01")
    ex.ps.answer("exchange/get_recycle_bin_mailboxes", [
        {"DisplayName": "A Due", "MailboxGuid": G[1], "Database": "DB01", "DisconnectReason": "Disabled",
         "DisconnectDate": "2026-01-30T10:00:00.0000000Z", "TotalItemSize": "1.2 GB (1,288,490,188 bytes)"},
        {"DisplayName": "E Refused", "MailboxGuid": G[5], "Database": "DB02", "DisconnectReason": "Disabled",
         "DisconnectDate": "2026-01-28T10:00:00.0000000Z", "TotalItemSize": "12 MB (12,582,912 bytes)"},
        {"DisplayName": "Moved away", "MailboxGuid": G[18], "Database": "DB01", "DisconnectReason": "SoftDeleted",
         "DisconnectDate": "2026-02-20T10:00:00.0000000Z", "TotalItemSize": "0 B (0 bytes)"}])
    ex.ps.answer("exchange/remove_store_mailbox", lambda c: [{"MailboxGuid": c.parameters["Identity"],
                                                             "Database": c.parameters["Database"],
                                                             "MailboxState": c.parameters["MailboxState"], "Purged": True}])
    ex.ps.answer("exchange/remove_store_mailbox", error="The mailbox is locked by a move request.",
                 when=lambda c: c.parameters["Identity"] == G[5])

    out = purge_recycle_bin_mailboxes(ex.db, _at(), {"recycle_purge_batch": 4}, None)
    assert (out["due"], out["purged"], out["already_purged"], out["failed"]) == (4, 1, 2, 1), out
    assert ex.sent() == [
        ("exchange/get_recycle_bin_mailboxes", {"Database": ["DB01", "DB02"]}),
        ("exchange/remove_store_mailbox", {"Identity": G[5], "Database": "DB02", "MailboxState": "Disabled",
                                           "Confirm": False}),
        ("exchange/remove_store_mailbox", {"Identity": G[1], "Database": "DB01", "MailboxState": "Disabled",
                                           "Confirm": False})]
    rows = {r[0]: r[1:] for r in ex.sql("SELECT id, status, purged_at, last_error FROM exchange_mailboxes")}
    assert rows[due] == rows[gone] == rows[never] == ("deleted", T0, None)
    assert rows[refused] == ("recycle_bin", None, "exchange/remove_store_mailbox: The mailbox is locked by a move request.")
    assert rows[young][:2] == rows[over_batch][:2] == ("recycle_bin", None)
    ex.ps.sent.clear()
    again = purge_recycle_bin_mailboxes(ex.db, _at(), {"recycle_purge_batch": 4, "mailbox_recycle_days": 30}, None)
    # the refused one is tried again; the one left over by the batch is no longer on Exchange: already purged
    assert (again["due"], again["purged"], again["already_purged"], again["failed"]) == (2, 0, 1, 1)
    assert [c.parameters.get("Identity") for c in ex.ps.sent[1:]] == [G[5]]
    assert ex.sql("SELECT status FROM exchange_mailboxes WHERE id = %s", (over_batch,)) == [("deleted",)]


# -- 8. remote domains ----------------------------------------------------------------------------------------------

def _remote(name, domain, guid, **settings):
    base = {"Name": name, "DomainName": domain, "Guid": guid, "IsInternal": False, "AllowedOOFType": "External",
            "AutoReplyEnabled": False, "AutoForwardEnabled": False, "DeliveryReportEnabled": True, "NDREnabled": True,
            "MeetingForwardNotificationEnabled": False, "TNEFEnabled": None, "ContentType": "MimeHtmlText",
            "CharacterSet": None, "DisplaySenderName": True, "TrustedMailOutboundEnabled": False,
            "TrustedMailInboundEnabled": False}
    return {**base, **settings}


def test_remote_domains_recorded_and_the_panels_created_or_set(ex):
    from panelflow.steps.exchange.transport import sync_external_remote_domains

    ex.sql("INSERT INTO exchange_remote_domains (exchange_server_id, name, domain_name, managed, desired_settings, status)"
           " VALUES (1, 'Gmail', 'gmail.example', true, %s, 'pending'),"
           " (1, 'Default', '*', true, %s, 'pending'), (1, 'Broken', 'broken.example', true, %s, 'pending')",
           (Jsonb({"AutoForwardEnabled": True, "AllowedOOFType": "ExternalLegacy"}), Jsonb({"AutoForwardEnabled": False}),
            Jsonb({"AutoForwardEnabled": "yes"})))
    ex.ps.answer("exchange/get_remote_domains", [_remote("Default", "*", G[1]),
                                                 _remote("Partner", "partner.example", G[2], AutoReplyEnabled=True)],
                 when=lambda c: c.conn_host == "ex01.hosting.test")
    ex.ps.answer("exchange/get_remote_domains", [_remote("Default", "*", G[3])],
                 when=lambda c: c.conn_host == "ex02.hosting.test")
    ex.ps.answer("exchange/new_remote_domain", lambda c: [{**_remote(c.parameters["Name"], c.parameters["DomainName"], G[4],
                                                                     AutoForwardEnabled=True, AllowedOOFType="ExternalLegacy"),
                                                           "Created": True}])

    out = sync_external_remote_domains(ex.db, _at(), {}, None)
    assert (out["observed"], out["created"], out["updated"], out["in_sync"], out["failed"]) == (3, 1, 0, 1, 1), out
    assert ex.sent() == [
        ("exchange/get_remote_domains", {}),
        ("exchange/new_remote_domain", {"Name": "Gmail", "DomainName": "gmail.example", "AutoForwardEnabled": True,
                                        "AllowedOOFType": "ExternalLegacy"}),
        ("exchange/get_remote_domains", {})]
    rows = ex.sql("SELECT exchange_server_id, name, domain_name, managed, present, status, exchange_guid::text,"
                  " settings ->> 'AutoForwardEnabled', last_error FROM exchange_remote_domains ORDER BY exchange_server_id, id")
    assert rows == [
        (1, "Gmail", "gmail.example", True, True, "in_sync", G[4], "true", None),
        (1, "Default", "*", True, True, "in_sync", G[1], "false", None),
        (1, "Broken", "broken.example", True, False, "failed", None, None,
         "remote domain broken.example setting AutoForwardEnabled='yes' is not valid"),
        (1, "Partner", "partner.example", False, True, "observed", G[2], "false", None),
        (2, "Default", "*", False, True, "observed", G[3], "false", None)]

    # someone turned auto-forwarding on for "*" by hand: the panel's value is set again, by GUID
    ex.ps.sent.clear()
    ex.ps.answer("exchange/get_remote_domains", [
        _remote("Default", "*", G[1], AutoForwardEnabled=True), _remote("Partner", "partner.example", G[2]),
        _remote("Gmail", "gmail.example", G[4], AutoForwardEnabled=True, AllowedOOFType="ExternalLegacy")],
        when=lambda c: c.conn_host == "ex01.hosting.test")
    ex.ps.answer("exchange/set_remote_domain", [_remote("Default", "*", G[1])])
    again = sync_external_remote_domains(ex.db, _at(T0 + timedelta(minutes=5)), {}, None)
    assert (again["updated"], again["in_sync"], again["created"]) == (1, 1, 0)
    assert ex.ps.calls("exchange/set_remote_domain")[0].parameters == {"Identity": G[1], "AutoForwardEnabled": False}


# -- GroupActionWorkMailBoxPermissions ------------------------------------------------------------------------------

def _permissions(guid, address, full=(), send_as=(), behalf=()):
    return {"Identity": f"hosting.local/Hosting/Contoso/{address.split('@')[0]}", "ExchangeGuid": guid,
            "PrimarySmtpAddress": address,
            "MailboxPermissions": [{"User": "NT AUTHORITY\\SELF", "AccessRights": ["FullAccess", "ReadPermission"],
                                    "IsInherited": False, "Deny": False}, *full],
            "SendAs": [{"User": "NT AUTHORITY\\SELF", "ExtendedRights": ["Send-As"], "IsInherited": False, "Deny": False},
                       *send_as],
            "GrantSendOnBehalfTo": list(behalf)}


def test_permissions_on_exchange_replace_the_panels_rows(ex):
    from panelflow.steps.exchange.mailbox_permissions import sync_mailbox_permissions

    anna = ex.mailbox("anna.ash", guid=G[1])
    bob = ex.mailbox("bob.brown", guid=None)                      # matched by address, its GUID learnt
    carol = ex.mailbox("carol.clark", guid=G[3])
    ex.mailbox("zoe.zane", org=2, guid=G[8])
    ex.sql("INSERT INTO exchange_mailbox_permissions (mailbox_id, permission, trustee, access_rights) VALUES"
           " (%(a)s, 'FullAccess', 'hosting\\bob.brown', '{FullAccess,ReadPermission}'), (%(a)s, 'SendAs', 'HOSTING\\old.admin', '{Send-As}'),"
           " (%(c)s, 'SendOnBehalf', 'hosting.local/Hosting/Contoso/Anna Ash', '{SendOnBehalf}')", {"a": anna, "c": carol})
    contoso = [
        _permissions(G[1], "anna.ash@contoso.example",
                     full=[{"User": "HOSTING\\bob.brown", "AccessRights": ["FullAccess"], "IsInherited": False, "Deny": False},
                           {"User": "HOSTING\\carol.clark", "AccessRights": ["FullAccess"], "IsInherited": False, "Deny": True},
                           {"User": "S-1-5-21-3623811015-3361044348-30300820-1013", "AccessRights": ["FullAccess"],
                            "IsInherited": False, "Deny": False},
                           {"User": "HOSTING\\Organization Management", "AccessRights": ["ReadPermission"],
                            "IsInherited": False, "Deny": False}],
                     send_as=[{"User": "HOSTING\\carol.clark", "ExtendedRights": ["Send-As"], "IsInherited": False,
                               "Deny": False}],
                     behalf=["hosting.local/Hosting/Contoso/Dan Dare"]),
        _permissions(G[2], "Bob.Brown@contoso.example",
                     full=[{"User": "HOSTING\\helpdesk", "AccessRights": ["ReadPermission", "ChangePermission"],
                            "IsInherited": False, "Deny": False}]),
        _permissions(G[3], "carol.clark@contoso.example"),
        _permissions(G[17], "not.in.panel@contoso.example", behalf=["x"]),
        {"Identity": "broken", "ExchangeGuid": "not-a-guid", "PrimarySmtpAddress": "broken@contoso.example"},
    ]
    ex.ps.answer("exchange/get_mailbox_permissions", contoso, when=lambda c: c.parameters["OrganizationalUnit"] == CONTOSO_OU)
    ex.ps.answer("exchange/get_mailbox_permissions", [_permissions(G[8], "zoe.zane@fabrikam.example")],
                 when=lambda c: c.parameters["OrganizationalUnit"] == FABRIKAM_OU)

    out = sync_mailbox_permissions(ex.db, _at(), {}, None)
    assert (out["organizations"], out["reported"], out["matched"], out["not_in_panel"]) == (2, 5, 4, 1), out
    assert (out["added"], out["changed"], out["removed"]) == (4, 1, 2), out
    # SELF (full access and send as) on 4 mailboxes, an orphaned SID, a built-in group: not a customer's
    assert out["system_entries_ignored"] == 10
    assert out["skipped_examples"] == [
        "mailbox broken: mailbox broken: ExchangeGuid: Input should be a valid UUID, invalid character: found `n` at 0"]
    assert ex.sent() == [("exchange/get_mailbox_permissions", {"OrganizationalUnit": CONTOSO_OU, "ResultSize": 5000}),
                         ("exchange/get_mailbox_permissions", {"OrganizationalUnit": FABRIKAM_OU, "ResultSize": 5000})]
    rows = ex.sql("SELECT mailbox_id, permission, trustee, access_rights, deny, synced_at FROM exchange_mailbox_permissions"
                  " ORDER BY mailbox_id, permission, trustee, deny")
    assert rows == [
        (anna, "FullAccess", "HOSTING\\bob.brown", ["FullAccess"], False, T0),
        (anna, "FullAccess", "HOSTING\\carol.clark", ["FullAccess"], True, T0),
        (anna, "SendAs", "HOSTING\\carol.clark", ["Send-As"], False, T0),
        (anna, "SendOnBehalf", "hosting.local/Hosting/Contoso/Dan Dare", ["SendOnBehalf"], False, T0),
        (bob, "Other", "HOSTING\\helpdesk", ["ReadPermission", "ChangePermission"], False, T0)]
    assert ex.sql("SELECT exchange_guid::text, permissions_synced_at FROM exchange_mailboxes WHERE id = %s", (bob,)) == [
        (G[2], T0)]

    again = sync_mailbox_permissions(ex.db, _at(T0 + timedelta(minutes=30)), {}, None)
    assert (again["added"], again["removed"], again["changed"]) == (0, 0, 0)
    assert ex.sql("SELECT count(*), max(synced_at) FROM exchange_mailbox_permissions") == [(5, T0)]
    assert ex.sql("SELECT permissions_synced_at FROM exchange_mailboxes WHERE id = %s", (anna,)) == [
        (T0 + timedelta(minutes=30),)]


def test_forwarding_on_exchange_is_written_to_the_mailbox_rows(ex):
    from panelflow.steps.exchange.mailbox_permissions import sync_mailbox_forwarding

    anna = ex.mailbox("anna.ash", guid=G[1])
    bob = ex.mailbox("bob.brown", guid=G[2], forwarding_smtp_address="old@gmail.example")
    carol = ex.mailbox("carol.clark", guid=G[3])
    ex.ps.answer("exchange/get_mailbox_forwarding", [
        {"Identity": "hosting.local/Hosting/Contoso/Anna Ash", "ExchangeGuid": G[1],
         "PrimarySmtpAddress": "anna.ash@contoso.example", "ForwardingAddress": "hosting.local/Hosting/Contoso/Carol Clark",
         "ForwardingSmtpAddress": None, "DeliverToMailboxAndForward": True},
        {"Identity": "hosting.local/Hosting/Contoso/Bob Brown", "ExchangeGuid": G[2],
         "PrimarySmtpAddress": "bob.brown@contoso.example", "ForwardingAddress": None, "ForwardingSmtpAddress": None,
         "DeliverToMailboxAndForward": False},
        {"Identity": "hosting.local/Hosting/Contoso/Carol Clark", "ExchangeGuid": G[3],
         "PrimarySmtpAddress": "carol.clark@contoso.example", "ForwardingAddress": None,
         "ForwardingSmtpAddress": "smtp:carol@outlook.example", "DeliverToMailboxAndForward": False}],
        when=lambda c: c.parameters["OrganizationalUnit"] == CONTOSO_OU)
    ex.ps.answer("exchange/get_mailbox_forwarding", timeout=True, when=lambda c: c.conn_host == "ex02.hosting.test")

    out = sync_mailbox_forwarding(ex.db, _at(), {}, None)
    assert (out["matched"], out["changed"], out["servers_failed"]) == (3, 3, 1), out
    rows = {r[0]: r[1:] for r in ex.sql("SELECT id, forwarding_smtp_address, forwarding_address,"
                                         " deliver_to_mailbox_and_forward, forwarding_synced_at FROM exchange_mailboxes")}
    assert rows == {anna: (None, "hosting.local/Hosting/Contoso/Carol Clark", True, T0),
                    bob: (None, None, False, T0), carol: ("carol@outlook.example", None, False, T0)}
    assert sync_mailbox_forwarding(ex.db, _at(), {}, None)["changed"] == 0
