r"""WorkfolderSyncWork at the PSRP boundary, on the real panel DB.

The real PowerShellHook/pypsrp build each CreatePipeline; the recorded endpoint decodes it (script
text, parameters) and answers with what our scripts print (``ConvertTo-Json`` of their
``Select-Object``) — written from the SyncShare cmdlets' documented objects, not yet captured on a
real Windows Server with the Work Folders role.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from panelflow.hooks.powershell import script_text
from panelflow.step import EndpointsFailed, Interval
from panelflow.steps.quotas import sync_quota_overuse
from panelflow.steps.workfolders import sync_workfolder_usage, user_folder

CLOCK = datetime(2026, 12, 6, 11, 37, tzinfo=timezone.utc)
MIB = 1024 * 1024
INJECTION = r"CORP\x'; Remove-SyncShare -Name Finance; '"    # a legal folder name, too
TABLES = ("workfolder_usage", "workfolder_shares", "workfolder_users", "hosting_servers", "subscription_quotas",
          "resource_usage_samples", "quota_overuse", "subscription_quota_rechecks")

SHARES = [{"Name": "Finance", "Path": r"D:\SyncShares\Finance", "UserFolderName": "%username%", "Enabled": True},
          {"Name": "Sales", "Path": r"D:\SyncShares\Sales", "UserFolderName": "[user]@[domain]", "Enabled": True}]
USED = {"CORP\\alice": (700 * MIB, 1200, 2, "2026-12-06T11:02:51.0000000Z"), "CORP\\bob": (0, 0, 0, None),
        INJECTION: (1 * MIB, 3, 1, "/Date(1765018800000)/"), "CORP\\carol": (5 * MIB, 40, 1, None)}


def usage_answer(sent):
    """get_user_usage.ps1's output for the users asked (bob never synced: no folder, no device)."""
    return [{"User": user, "Folder": folder, "FolderFound": USED[user][0] > 0, "UsedBytes": USED[user][0],
             "FileCount": USED[user][1], "Devices": USED[user][2], "LastSuccessfulSync": USED[user][3]}
            for user, folder in zip(sent.parameters["User"], sent.parameters["Folder"])]


def on(host):
    return lambda sent: sent.conn_host == host


@pytest.fixture
def world(panel_db, sql, recorded_powershell, monkeypatch):
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    monkeypatch.setenv("AIRFLOW_CONN_FS01", recorded_powershell.connection("fs01.corp.example", auth="ntlm"))
    monkeypatch.setenv("AIRFLOW_CONN_FS02", recorded_powershell.connection("fs02.corp.example", auth="ntlm"))
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES"
        " (1, 'Acme', 'it@acme.example', 'GB', 'GBP')")
    subs = [sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                " started_on) VALUES (1, 'Work Folders', 5, 'GBP', 'monthly', '2027-01-01', '2026-01-01')"
                " RETURNING id")[0][0] for _ in range(3)]
    servers = {name: sql("INSERT INTO hosting_servers (name, role, engine, host, conn_id) VALUES"
                         " (%s, 'file', 'windows', %s, %s) RETURNING id",
                         (name, f"{name.lower()}.corp.example", name.lower()))[0][0] for name in ("FS01", "FS02")}

    def user(server, share, name, sub, upn=None):
        return sql("INSERT INTO workfolder_users (file_server_id, share_name, user_name, user_principal_name,"
                   " subscription_id) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                   (servers[server], share, name, upn, sub))[0][0]

    users = {"alice": user("FS01", "Finance", "CORP\\alice", subs[0]), "bob": user("FS01", "finance", "CORP\\bob", subs[0]),
             "x": user("FS01", "Finance", INJECTION, subs[0]),
             "carol": user("FS01", "Sales", "CORP\\carol", subs[1], "carol@corp.example"),
             "dave": user("FS01", "Archive", "CORP\\dave", subs[1]),          # a share FS01 no longer has
             "erin": user("FS02", "Finance", "CORP\\erin", subs[2])}          # FS02 does not answer
    return {"db": panel_db, "subs": subs, "users": users}


def test_storage_per_user_and_share_becomes_samples_and_an_episode(world, sql, recorded_powershell):
    sub1, sub2, sub3 = world["subs"]
    recorded_powershell.answer("workfolders/get_sync_shares", SHARES, when=on("fs01.corp.example"))
    recorded_powershell.answer("workfolders/get_sync_shares", timeout=True, when=on("fs02.corp.example"))
    recorded_powershell.answer("workfolders/get_user_usage", usage_answer)
    sql("INSERT INTO subscription_quotas (subscription_id, resource, quota_limit) VALUES (%s, 'workfolders_storage', 500)",
        (sub1,))

    result = sync_workfolder_usage(world["db"], Interval(CLOCK - timedelta(hours=1), CLOCK))

    assert result["file_servers"] == 2 and result["file_servers_failed"] == 1
    assert result["users_measured"] == 4 and result["users_not_measured"] == 1 and result["users_without_folder"] == 1
    assert "FS01 share Archive: sync share not on the server (Get-SyncShare)" in result["skipped_examples"]
    finance, sales = recorded_powershell.calls("workfolders/get_user_usage")
    assert finance.parameters == {"SyncShare": "Finance", "User": ["CORP\\alice", "CORP\\bob", INJECTION],
                                  "Folder": ["alice", "bob", "x'; Remove-SyncShare -Name Finance; '"]}
    assert finance.is_script and finance.command == script_text("workfolders/get_user_usage")
    assert finance.clixml.count("Remove-SyncShare -Name Finance") == 2          # the two parameter values, never script
    assert sales.parameters == {"SyncShare": "Sales", "User": ["CORP\\carol"], "Folder": ["carol@corp.example"]}
    (shares_call,) = [c for c in recorded_powershell.calls("workfolders/get_sync_shares")
                      if c.conn_host == "fs01.corp.example"]
    assert shares_call.parameters == {}

    u = world["users"]
    assert sql("SELECT workfolder_user_id, used_bytes, file_count, folder_found, devices, last_successful_sync"
               " FROM workfolder_usage ORDER BY workfolder_user_id") == [
        (u["alice"], 700 * MIB, 1200, True, 2, datetime(2026, 12, 6, 11, 2, 51, tzinfo=timezone.utc)),
        (u["bob"], 0, 0, False, 0, None),
        (u["x"], MIB, 3, True, 1, datetime(2025, 12, 6, 11, 0, tzinfo=timezone.utc)),
        (u["carol"], 5 * MIB, 40, True, 1, None)]
    # sub2 has dave (share gone) and sub3 erin (server down): no partial sums
    assert sql("SELECT subscription_id, used FROM resource_usage_samples WHERE resource = 'workfolders_storage'") == [
        (sub1, Decimal("701.000"))]
    assert result["samples_written"] == 1 and result["subscriptions_not_measured"] == 2
    assert sql("SELECT name, user_folder_name, missing_since FROM workfolder_shares ORDER BY name") == [
        ("Finance", "%username%", None), ("Sales", "[user]@[domain]", None)]

    assert sync_quota_overuse(world["db"], Interval(CLOCK, CLOCK))["overuse_opened"] == 1
    assert sql("SELECT subscription_id, resource, used FROM quota_overuse") == [
        (sub1, "workfolders_storage", Decimal("701.000"))]

    # a retry of the same run: the same rows, replaced
    again = sync_workfolder_usage(world["db"], Interval(CLOCK - timedelta(hours=1), CLOCK))
    assert again["users_measured"] == 4
    assert sql("SELECT count(*) FROM workfolder_usage") == [(4,)]
    assert sql("SELECT count(*) FROM resource_usage_samples") == [(1,)]


def test_a_share_no_longer_reported_is_marked_missing(world, sql, recorded_powershell):
    recorded_powershell.answer("workfolders/get_sync_shares", SHARES, when=on("fs01.corp.example"))
    recorded_powershell.answer("workfolders/get_sync_shares", [], when=on("fs02.corp.example"))
    recorded_powershell.answer("workfolders/get_user_usage", usage_answer)
    sync_workfolder_usage(world["db"], Interval(CLOCK, CLOCK))
    recorded_powershell.answer("workfolders/get_sync_shares", SHARES[:1], when=on("fs01.corp.example"))
    later = CLOCK + timedelta(hours=1)
    result = sync_workfolder_usage(world["db"], Interval(later, later))
    assert sql("SELECT name, missing_since FROM workfolder_shares ORDER BY name") == [("Finance", None),
                                                                                     ("Sales", later)]
    assert result["users_not_measured"] == 3    # carol (Sales gone), dave (Archive), erin (FS02 has no Finance)


def test_every_server_failing_fails_the_step_and_nothing_configured_does_not(world, sql, recorded_powershell):
    recorded_powershell.answer("workfolders/get_sync_shares", error="The term 'Get-SyncShare' is not recognized")
    with pytest.raises(EndpointsFailed, match="FS01"):
        sync_workfolder_usage(world["db"], Interval(CLOCK, CLOCK))
    sql("UPDATE workfolder_users SET removed_at = %s", (CLOCK,))
    result = sync_workfolder_usage(world["db"], Interval(CLOCK, CLOCK))
    assert result["file_servers"] == 0 and "no Work Folders users" in result["note"]


def test_user_folder_follows_the_share_naming():
    assert user_folder("%username%", "CORP\\alice", None) == "alice"
    assert user_folder(None, "CORP\\alice", None) == "alice"
    assert user_folder("[user]@[domain]", "CORP\\alice", "alice@corp.example") == "alice@corp.example"
    assert user_folder("[user]@[domain]", "CORP\\alice", None) is None
    assert user_folder("%username%", "CORP\\..", None) is None
    assert user_folder("%username%", "CORP\\a/b", None) is None
    assert user_folder("[domain]-[user]", "CORP\\alice", "alice@corp.example") is None


def test_a_share_refusing_the_usage_script_leaves_the_other_shares_measured(world, sql, recorded_powershell):
    recorded_powershell.answer("workfolders/get_sync_shares", SHARES, when=on("fs01.corp.example"))
    recorded_powershell.answer("workfolders/get_sync_shares", [], when=on("fs02.corp.example"))
    recorded_powershell.answer("workfolders/get_user_usage", usage_answer)
    recorded_powershell.answer("workfolders/get_user_usage", error="Cannot find the sync share 'Sales'.",
                               when=lambda sent: sent.parameters["SyncShare"] == "Sales")
    result = sync_workfolder_usage(world["db"], Interval(CLOCK, CLOCK))
    assert result["file_servers_failed"] == 0 and result["users_measured"] == 3
    assert "FS01 share Sales: get_user_usage failed: workfolders/get_user_usage: Cannot find the sync share 'Sales'." \
        in result["skipped_examples"]
    assert [r[0] for r in sql("SELECT subscription_id FROM resource_usage_samples")] == [world["subs"][0]]
