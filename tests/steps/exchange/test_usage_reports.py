"""UsageReportWork 1, 3 and 4 (panelflow.steps.exchange.usage_reports, .pst_cleanup) at the PSRP boundary,
and the PST files deleted from a real SMB share (standalone smbd on 127.0.0.1, Airflow's SambaHook).

The real PowerShellHook/pypsrp send our scripts with their parameters to the recorded endpoint,
which answers with what the scripts print (ConvertTo-Json of the objects they build from
Get-Mailbox / Get-MailboxStatistics / Get-MailboxDatabase -Status / Get-MailboxExportRequest). The
recordings are written from the cmdlets' documented output; the scripts have not run on a real
Exchange server."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from harness import require_binary
from harness.smb_share import SmbShare
from panelflow.step import Interval

T0 = datetime(2026, 12, 3, 15, 20, tzinfo=timezone.utc)
TZ = "Europe/London"
HOSTS = {"exch01.corp.example": "EXCH01", "exch02.corp.example": "EXCH02"}
GiB = 1024 ** 3
MiB = 1024 ** 2
CONTOSO_OU = "OU=Contoso,OU=Hosting,DC=corp,DC=example"
FABRIKAM_OU = "OU=Fabrikam,OU=Hosting,DC=corp,DC=example"
TAILSPIN_OU = "OU=Tailspin'; Remove-Mailbox -Identity * -Confirm:$false; ',OU=Hosting,DC=corp,DC=example"
JOHN, ANNA, INFO, ROOM = ("3f2a1b0c-1111-4a2b-8c3d-000000000001", "3f2a1b0c-1111-4a2b-8c3d-000000000002",
                          "3f2a1b0c-1111-4a2b-8c3d-000000000003", "3f2a1b0c-1111-4a2b-8c3d-000000000004")
DB01, DB02, DB03 = ("9d1c6a55-7e2f-4f0b-a1c3-00000000db01", "9d1c6a55-7e2f-4f0b-a1c3-00000000db02",
                    "9d1c6a55-7e2f-4f0b-a1c3-00000000db03")
OWN_TABLES = ("exchange_servers", "exchange_organizations", "exchange_mailboxes", "exchange_usage_reports",
              "exchange_database_mailbox_sizes", "exchange_pst_exports", "resource_usage_samples", "report_schedules",
              "sent_reports")


def run_at(end=T0):
    return Interval(end - timedelta(hours=12), end, TZ)


@pytest.fixture
def world(panel_db, sql, recorded_powershell, monkeypatch):
    """EXCH01 and EXCH02; Contoso (EXCH01, a subscription), Fabrikam (EXCH02, a subscription) and
    Tailspin (EXCH01, no subscription, an OU name that is an injection attempt)."""
    sql("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    (customer,) = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                      " VALUES (1, 'Contoso Ltd', 'it@contoso.example', 'GB', 'GBP') RETURNING id")[0]
    subs = [sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                " started_on) VALUES (%s, 'Hosted Exchange', 10, 'GBP', 'monthly', '2026-12-01', '2026-01-01')"
                " RETURNING id", (customer,))[0][0] for _ in range(2)]
    servers = {}
    for name in ("EXCH01", "EXCH02"):
        monkeypatch.setenv(f"AIRFLOW_CONN_EXCHANGE_{name}",
                           recorded_powershell.connection(f"{name.lower()}.corp.example", auth="ntlm"))
        servers[name] = sql("INSERT INTO exchange_servers (name, fqdn, conn_id) VALUES (%s, %s, %s) RETURNING id",
                            (name, f"{name.lower()}.corp.example", f"exchange_{name.lower()}"))[0][0]
    orgs = {}
    for name, ou, server, sub in (("Contoso", CONTOSO_OU, "EXCH01", subs[0]), ("Fabrikam", FABRIKAM_OU, "EXCH02", subs[1]),
                                  ("Tailspin", TAILSPIN_OU, "EXCH01", None)):
        orgs[name] = sql("INSERT INTO exchange_organizations (customer_id, exchange_server_id, name, organizational_unit,"
                         " subscription_id) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                         (customer, servers[server], name, ou, sub))[0][0]
    for guid, address in ((JOHN, "john@contoso.example"), (ANNA, "anna@contoso.example")):
        sql("INSERT INTO exchange_mailboxes (organization_id, exchange_server_id, exchange_guid, primary_smtp_address,"
            " alias, display_name, status) VALUES (%s, %s, %s, %s, %s, %s, 'active')",
            (orgs["Contoso"], servers["EXCH01"], guid, address, address.split("@")[0], address))
    return {"servers": servers, "orgs": orgs, "subs": subs, "ps": recorded_powershell}


def _usage(guid, address, kind, size, deleted=0, items=100, database="DB01", db_guid=DB01):
    return {"ExchangeGuid": guid, "PrimarySmtpAddress": address, "RecipientTypeDetails": kind, "Database": database,
            "DatabaseGuid": db_guid, "TotalItemSize": size, "TotalDeletedItemSize": deleted, "ItemCount": items}


USAGE = {
    CONTOSO_OU: [_usage(JOHN, "john@contoso.example", "UserMailbox", 2 * GiB, 10 * MiB, 5400),
                 _usage(ANNA, "anna@contoso.example", "UserMailbox", GiB // 2, 0, 1200),
                 _usage(INFO, "info@contoso.example", "SharedMailbox", 300 * MiB, 0, 800),
                 _usage(ROOM, "boardroom@contoso.example", "RoomMailbox", None, None, None)],   # never logged on
    FABRIKAM_OU: [_usage("5c6d7e8f-2222-4a2b-8c3d-000000000010", "sam@fabrikam.example", "UserMailbox", 5 * GiB,
                         items=20000, database="DB02", db_guid=DB02)],
    TAILSPIN_OU: [],
}


def serve_usage(ps, usage=None):
    data = USAGE if usage is None else usage
    ps.answer("exchange/get_organization_mailbox_usage", lambda sent: data[sent.parameters["OrganizationalUnit"]])


def reports(sql):
    return sql("SELECT o.name, r.report_date, r.subscription_id, r.mailboxes, r.user_mailboxes, r.shared_mailboxes,"
               " r.resource_mailboxes, r.total_item_size_bytes, r.total_deleted_item_size_bytes, r.item_count, r.read_at"
               " FROM exchange_usage_reports r JOIN exchange_organizations o ON o.id = r.organization_id ORDER BY o.name")


def samples(sql):
    return sql("SELECT subscription_id, resource, sampled_at, used FROM resource_usage_samples"
               " ORDER BY subscription_id, resource, sampled_at")


# -- 1. usage per organisation ---------------------------------------------------------------------------

def test_usage_report_per_organisation_with_samples_and_panel_sizes_once_per_day(world, panel_db, sql):
    from panelflow.hooks.powershell import script_text
    from panelflow.steps.exchange.usage_reports import exchange_usage_report

    ps, subs = world["ps"], world["subs"]
    serve_usage(ps)
    summary = exchange_usage_report(panel_db, run_at(), None)

    day = date(2026, 12, 3)
    assert reports(sql) == [
        ("Contoso", day, subs[0], 4, 2, 1, 1, 2 * GiB + GiB // 2 + 300 * MiB, 10 * MiB, 7400, T0),
        ("Fabrikam", day, subs[1], 1, 1, 0, 0, 5 * GiB, 0, 20000, T0),
        ("Tailspin", day, None, 0, 0, 0, 0, 0, 0, 0, T0),
    ]
    contoso_mb = Decimal(2 * 1024 + 512 + 300)
    assert samples(sql) == [(subs[0], "mailbox_storage", T0, contoso_mb), (subs[0], "mailboxes", T0, 4),
                            (subs[1], "mailbox_storage", T0, 5 * 1024), (subs[1], "mailboxes", T0, 1)]
    assert sql("SELECT primary_smtp_address, size_bytes, item_count, size_read_at FROM exchange_mailboxes"
               " ORDER BY primary_smtp_address") == [("anna@contoso.example", GiB // 2, 1200, T0),
                                                     ("john@contoso.example", 2 * GiB, 5400, T0)]
    assert summary["reports_written"] == 3 and summary["samples_written"] == 4
    assert summary["organizations_without_subscription"] == 1 and summary["report_date"] == "2026-12-03"
    # each OU went as a PSRP parameter to the server its organisation is on; the script text is ours, unchanged
    calls = ps.calls("exchange/get_organization_mailbox_usage")
    assert sorted((HOSTS[c.conn_host], c.parameters["OrganizationalUnit"]) for c in calls) == sorted(
        [("EXCH01", CONTOSO_OU), ("EXCH01", TAILSPIN_OU), ("EXCH02", FABRIKAM_OU)])
    assert all(c.is_script and c.command == script_text("exchange/get_organization_mailbox_usage") for c in calls)

    # the same run again: nothing new, still one report per organisation and day
    again = exchange_usage_report(panel_db, run_at(), None)
    assert again["samples_written"] == 0 and len(reports(sql)) == 3 and len(samples(sql)) == 4

    # the afternoon run replaces the day's report; an older run retried after it does not
    later = T0 + timedelta(hours=1)
    grown = {**USAGE, FABRIKAM_OU: [dict(USAGE[FABRIKAM_OU][0], TotalItemSize=6 * GiB)]}
    serve_usage(ps, grown)
    exchange_usage_report(panel_db, run_at(later), None)
    serve_usage(ps)
    exchange_usage_report(panel_db, run_at(), None)
    fabrikam = [r for r in reports(sql) if r[0] == "Fabrikam"]
    assert fabrikam == [("Fabrikam", day, subs[1], 1, 1, 0, 0, 6 * GiB, 0, 20000, later)]
    assert (subs[1], "mailbox_storage", later, 6 * 1024) in samples(sql)


def test_usage_report_skips_a_refused_organisation_and_a_timed_out_server(world, panel_db, sql):
    from panelflow.steps.exchange._backend import ExchangeServersFailed
    from panelflow.steps.exchange.usage_reports import exchange_usage_report

    ps = world["ps"]
    serve_usage(ps)
    ps.answer("exchange/get_organization_mailbox_usage", error="The operation couldn't be performed because object"
              " 'OU=Tailspin...' couldn't be found on 'dc01.corp.example'.",
              when=lambda sent: sent.parameters["OrganizationalUnit"] == TAILSPIN_OU)
    ps.answer("exchange/get_organization_mailbox_usage", timeout=True, when=lambda sent: HOSTS[sent.conn_host] == "EXCH02")
    summary = exchange_usage_report(panel_db, run_at(), None)
    assert [r[0] for r in reports(sql)] == ["Contoso"]
    assert summary["failed"] == 1 and summary["servers_failed"] == 1
    assert any("Tailspin" in e for e in summary["skipped_examples"])
    assert any("EXCH02" in e for e in summary["skipped_examples"])

    ps.answer("exchange/get_organization_mailbox_usage", timeout=True)
    with pytest.raises(ExchangeServersFailed):
        exchange_usage_report(panel_db, run_at(T0 + timedelta(hours=1)), None)


def test_usage_samples_reach_the_scheduled_resource_usage_report(world, panel_db, sql):
    """UsageReportScheduleWork's ``resource_usage`` report carries the organisation's mailboxes and storage."""
    import csv
    import io

    from panelflow.steps.exchange.usage_reports import exchange_usage_report
    from panelflow.steps.reports import send_scheduled_enterprise_reports

    serve_usage(world["ps"])
    exchange_usage_report(panel_db, run_at(), None)
    (schedule,) = sql("INSERT INTO report_schedules (customer_id, report_kind, recipients, frequency, next_run_on)"
                      " SELECT customer_id, 'resource_usage', '{it@contoso.example}', 'daily', '2026-12-04'"
                      " FROM subscriptions WHERE id = %s RETURNING id", (world["subs"][0],))[0]
    send_scheduled_enterprise_reports(panel_db, Interval(T0, T0 + timedelta(hours=19), TZ))
    (content,) = sql("SELECT a.content FROM email_outbox o JOIN email_outbox_attachments a ON a.outbox_id = o.id"
                     " WHERE o.dedupe_key = %s", (f"report-{schedule}-2026-12-03:it@contoso.example",))[0]
    rows = list(csv.DictReader(io.StringIO(bytes(content).decode("utf-8"))))
    assert {(r["subscription_id"], r["resource"], r["last_used"]) for r in rows} == {
        (str(world["subs"][0]), "mailbox_storage", "2860"), (str(world["subs"][0]), "mailboxes", "4"),
        (str(world["subs"][1]), "mailbox_storage", "5120"), (str(world["subs"][1]), "mailboxes", "1")}


# -- 4. average mailbox size per database --------------------------------------------------------------------

SIZES = {
    "EXCH01": [{"Name": "DB01", "Guid": DB01, "Server": "EXCH01", "MailboxCount": 4, "TotalItemSizeBytes": 10 * GiB},
               {"Name": "DB03", "Guid": DB03, "Server": "EXCH01", "MailboxCount": 0, "TotalItemSizeBytes": 0}],
    "EXCH02": [{"Name": "DB02", "Guid": DB02, "Server": "EXCH02", "MailboxCount": 3, "TotalItemSizeBytes": 1000},
               {"Name": "", "Guid": "not-a-guid", "MailboxCount": -1}],
}


def test_average_mailbox_size_per_database_and_day(world, panel_db, sql):
    from panelflow.steps.exchange.usage_reports import sync_average_mailbox_sizes

    ps, servers = world["ps"], world["servers"]
    ps.answer("exchange/get_database_mailbox_sizes", lambda sent: SIZES[HOSTS[sent.conn_host]])
    summary = sync_average_mailbox_sizes(panel_db, run_at(), None)
    rows = "SELECT database_name, report_date, exchange_server_id, mailboxes, total_item_size_bytes," \
           " average_mailbox_size_bytes, read_at FROM exchange_database_mailbox_sizes ORDER BY database_name"
    day = date(2026, 12, 3)
    assert sql(rows) == [("DB01", day, servers["EXCH01"], 4, 10 * GiB, 10 * GiB // 4, T0),
                         ("DB02", day, servers["EXCH02"], 3, 1000, 333, T0),
                         ("DB03", day, servers["EXCH01"], 0, 0, None, T0)]
    assert summary["databases_written"] == 3 and summary["skipped"]   # the malformed record is named, not written
    assert sorted((HOSTS[c.conn_host], c.parameters) for c in ps.calls("exchange/get_database_mailbox_sizes")) == [
        ("EXCH01", {"Server": "EXCH01"}), ("EXCH02", {"Server": "EXCH02"})]
    sync_average_mailbox_sizes(panel_db, run_at(), None)
    assert len(sql(rows)) == 3


# -- 3. PST files deleted after the configured age ----------------------------------------------------------

ROOT = r"\\fs01.corp.example\PST"


@pytest.fixture
def shares(world, tmp_path, monkeypatch, sql):
    """EXCH01 exports to the PST share (a real smbd) behind ``pst_share``; EXCH02's connection
    ``pst_refused`` reaches the same share with a wrong password."""
    require_binary("smbd")
    with SmbShare(tmp_path / "smb") as smb:
        monkeypatch.setenv("AIRFLOW_CONN_PST_SHARE", smb.connection_uri())
        refused = json.loads(smb.connection_uri())
        refused["password"] = "not-the-password"
        monkeypatch.setenv("AIRFLOW_CONN_PST_REFUSED", json.dumps(refused))
        sql("UPDATE exchange_servers SET pst_share_unc = %s, pst_smb_conn_id = CASE name WHEN 'EXCH01' THEN"
            " 'pst_share' ELSE 'pst_refused' END", (ROOT,))
        yield smb


def put(smb, path):
    target = smb.path.joinpath(*path.split("\\"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"!BDN" + b"\0" * 512)     # a PST's magic
    return target


class Exports:
    """What Get-MailboxExportRequest | Get-MailboxExportRequestStatistics knows on each server, and
    the script's answer computed from its parameters as the script computes it."""

    def __init__(self, ps):
        self.requests: dict[str, list[dict]] = {"EXCH01": [], "EXCH02": []}
        self.refuse: set[str] = set()
        self.guard = True
        ps.answer("exchange/remove_expired_mailbox_export_requests", self.answer)

    def add(self, server, name, path, age_days, guid):
        self.requests[server].append({"RequestGuid": guid, "Identity": f"corp.example/Hosting/{name}\\MailboxExport",
                                      "FilePath": path, "CompletionTimestamp": T0 - timedelta(days=age_days)})

    def climbs(self, request):
        """The script's own guard (``-notmatch '\\\.\.?(\\|$)'``), unless a test plays a script without it."""
        return self.guard and re.search(r"\\\.\.?(\\|$)", request["FilePath"]) is not None

    def answer(self, sent):
        cutoff = datetime.fromisoformat(sent.parameters["CompletedBefore"].replace("Z", "+00:00"))
        root = sent.parameters["ShareRoot"].rstrip("\\") + "\\"
        requests = self.requests[HOSTS[sent.conn_host]]
        due = sorted((r for r in requests if r["CompletionTimestamp"] < cutoff and r["FilePath"].lower().startswith(
            root.lower()) and r["FilePath"].lower().endswith(".pst") and not self.climbs(r)),
            key=lambda r: r["CompletionTimestamp"])
        out = []
        for r in due[:sent.parameters["Limit"]]:
            refused = r["Identity"] in self.refuse
            if not refused:
                requests.remove(r)
            out.append({**r, "CompletionTimestamp": r["CompletionTimestamp"].isoformat(), "Removed": not refused,
                        "Error": "The request is being processed by the Microsoft Exchange Mailbox Replication service."
                        if refused else None})
        return out


def pst_rows(sql):
    return {r[0]: r[1:] for r in sql(
        "SELECT request_identity, file_path, request_removed_at IS NOT NULL, deleted_at IS NOT NULL, last_error IS NOT NULL"
        " FROM exchange_pst_exports")}


def test_expired_pst_files_requests_removed_then_files_deleted_over_smb(world, shares, panel_db, sql):
    from panelflow.steps.exchange._backend import utc_text
    from panelflow.steps.exchange.pst_cleanup import delete_expired_pst_files

    ps, smb = world["ps"], shares
    exports = Exports(ps)
    john, anna, young, outside = (put(smb, p) for p in (r"Contoso\john.pst", r"Contoso\anna.pst", r"Contoso\young.pst",
                                                         "outside.pst"))
    exports.add("EXCH01", "john", ROOT + r"\Contoso\john.pst", 45, "0b1e7c11-0000-4000-8000-000000000001")
    exports.add("EXCH01", "anna", ROOT + r"\Contoso\anna.pst", 44, "0b1e7c11-0000-4000-8000-000000000002")
    exports.add("EXCH01", "gone", ROOT + r"\Contoso\gone.pst", 43, "0b1e7c11-0000-4000-8000-000000000003")
    exports.add("EXCH01", "escape", ROOT + r"\Contoso\..\outside.pst", 42, "0b1e7c11-0000-4000-8000-000000000004")
    exports.add("EXCH01", "young", ROOT + r"\Contoso\young.pst", 10, "0b1e7c11-0000-4000-8000-000000000005")
    exports.refuse.add("corp.example/Hosting/anna\\MailboxExport")     # still being processed: not removed
    exports.guard = False     # the panel refuses a path climbing out of the share even if Exchange sends one

    # bounded: a batch of 2 handles the two oldest exports only
    first = delete_expired_pst_files(panel_db, run_at(), {"pst_delete_batch": 2}, None)
    assert first["requests_removed"] == 1 and first["requests_failed"] == 1 and first["files_deleted"] == 1
    assert not john.exists() and anna.exists()
    calls = ps.calls("exchange/remove_expired_mailbox_export_requests")
    assert sorted(HOSTS[c.conn_host] for c in calls) == ["EXCH01", "EXCH02"]      # both have an export share
    assert all(c.parameters == {"CompletedBefore": utc_text(T0 - timedelta(days=30)), "ShareRoot": ROOT, "Limit": 2}
               and c.is_script and "fs01" not in c.command for c in calls)

    summary = delete_expired_pst_files(panel_db, run_at(), None, None)
    rows = pst_rows(sql)
    assert rows["corp.example/Hosting/john\\MailboxExport"] == ("Contoso/john.pst", True, True, False)
    assert rows["corp.example/Hosting/anna\\MailboxExport"] == ("Contoso/anna.pst", False, False, True)   # kept
    assert rows["corp.example/Hosting/gone\\MailboxExport"] == ("Contoso/gone.pst", True, True, False)    # file gone
    assert "corp.example/Hosting/escape\\MailboxExport" not in rows and "young" not in str(rows)
    assert summary["files_missing"] == 1 and summary["requests_refused"] == 1 and summary["requests_failed"] == 1
    assert anna.exists() and young.exists() and outside.exists()
    assert any("outside.pst" in e for e in summary["skipped_examples"])

    # anna's request is released at last; a rerun then deletes her file and nothing else
    exports.refuse.clear()
    again = delete_expired_pst_files(panel_db, run_at(), None, None)
    assert again["files_deleted"] == 1 and not anna.exists() and young.exists()
    assert delete_expired_pst_files(panel_db, run_at(), None, None)["files_due"] == 0
    assert len(pst_rows(sql)) == 3


def test_pst_share_refusing_the_login_keeps_its_files_and_fails_alone(world, shares, panel_db, sql):
    from panelflow.steps.exchange.pst_cleanup import PstSharesFailed, delete_expired_pst_files

    exports = Exports(world["ps"])
    kept = put(shares, r"Fabrikam\sam.pst")
    deleted = put(shares, r"Contoso\john.pst")
    exports.add("EXCH01", "john", ROOT + r"\Contoso\john.pst", 40, "0b1e7c11-0000-4000-8000-000000000011")
    exports.add("EXCH02", "sam", ROOT + r"\Fabrikam\sam.pst", 40, "0b1e7c11-0000-4000-8000-000000000012")
    summary = delete_expired_pst_files(panel_db, run_at(), None, None)
    assert kept.exists() and not deleted.exists()
    assert summary["shares_failed"] == 1 and any("pst_refused" in e for e in summary["skipped_examples"])
    assert sql("SELECT request_identity, request_removed_at IS NOT NULL, last_error IS NOT NULL"
               " FROM exchange_pst_exports WHERE deleted_at IS NULL") == [
        ("corp.example/Hosting/sam\\MailboxExport", True, False)]

    with pytest.raises(PstSharesFailed):     # only the refusing share has work left: the step fails
        delete_expired_pst_files(panel_db, run_at(T0 + timedelta(hours=12)), None, None)
    assert kept.exists()


def test_no_export_share_configured_is_nothing_to_do(world, panel_db, sql):
    from panelflow.steps.exchange.pst_cleanup import delete_expired_pst_files

    summary = delete_expired_pst_files(panel_db, run_at(), None, None)
    assert summary["servers"] == 0 and summary["files_due"] == 0 and not world["ps"].sent
