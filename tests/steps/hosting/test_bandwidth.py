"""BandwidthQuotaWork on a real Samba share (smbd on 127.0.0.1, read through Airflow's SambaHook) and
the real panel DB: IIS W3C log lines become per-site daily traffic and bandwidth samples exactly once,
a half-written line waits for the next run, malformed lines are counted and named, and an over-quota
site ends as a QuotaOverUsedWork over-use episode."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from harness import require_binary
from harness.iis_logs import FIELDS, header, line, log_name, site_folder
from harness.smb_share import SmbShare
from panelflow.step import EndpointsFailed, Interval, StepReport
from panelflow.steps.hosting import bandwidth
from panelflow.steps.hosting.bandwidth import W3CCounter, sync_bandwidth_quota_usage
from panelflow.steps.quotas import sync_quota_overuse

UTC = timezone.utc
CLOCK = datetime(2026, 12, 6, 12, 13, tzinfo=UTC)
D5, D6, D7 = date(2026, 12, 5), date(2026, 12, 6), date(2026, 12, 7)
MIB = 1024 * 1024
TABLES = ("iis_log_files", "site_bandwidth_daily", "hosted_sites", "hosting_servers", "subscription_quotas",
          "resource_usage_samples", "quota_overuse", "subscription_quota_rechecks")


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    require_binary("smbd")
    with SmbShare(tmp_path_factory.mktemp("smb")) as smb:
        yield smb


@pytest.fixture
def world(panel_db, sql, share, monkeypatch):
    """Two subscriptions with a site each on WEB01, whose IIS logs are on the SMB share."""
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    for child in share.path.iterdir():
        _rmtree(child)
    monkeypatch.setenv("AIRFLOW_CONN_WEB01_LOGS", share.connection_uri())
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    (cust,) = sql("INSERT INTO customers (provider_id, name, email, country, currency) VALUES"
                  " (1, 'Acme', 'it@acme.example', 'GB', 'GBP') RETURNING id")[0]
    subs = [sql("INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                " started_on) VALUES (%s, 'Web', 10, 'GBP', 'monthly', '2027-01-01', '2026-01-01') RETURNING id",
                (cust,))[0][0] for _ in range(2)]
    (web,) = sql("INSERT INTO hosting_servers (name, role, engine, host, conn_id, log_share_conn_id, log_folder)"
                 " VALUES ('WEB01', 'web', 'iis', 'web01.corp.example', 'web01', 'web01_logs', 'LogFiles')"
                 " RETURNING id")[0]
    sites = [sql("INSERT INTO hosted_sites (subscription_id, web_server_id, name, iis_site_id, status)"
                 " VALUES (%s, %s, %s, %s, 'active') RETURNING id", (sub, web, name, iis))[0][0]
             for sub, name, iis in ((subs[0], "acme.example", 3), (subs[1], "shop.example", 4))]
    return {"subs": subs, "sites": sites, "web": web, "db": panel_db, "logs": share.path / "LogFiles"}


def _rmtree(path):
    if path.is_dir():
        for child in path.iterdir():
            _rmtree(child)
        path.rmdir()
    else:
        path.unlink()


def write(path, text: str, modified: datetime = CLOCK - timedelta(minutes=1), mode: str = "w"):
    with open(path, mode, encoding="utf-8", newline="") as f:
        f.write(text)
    os.utime(path, (modified.timestamp(), modified.timestamp()))


def daily(sql):
    return sql("SELECT site_id, day, bytes_sent, bytes_received, requests FROM site_bandwidth_daily"
               " ORDER BY site_id, day")


def samples(sql):
    return sql("SELECT subscription_id, sampled_at, used FROM resource_usage_samples WHERE resource = 'bandwidth'"
               " ORDER BY subscription_id, sampled_at")


def run(world, clock=CLOCK):
    return sync_bandwidth_quota_usage(world["db"], Interval(clock - timedelta(minutes=30), clock))


def test_log_lines_become_samples_once_and_an_over_quota_site_an_episode(world, sql):
    acme, shop = world["sites"]
    sub_acme, sub_shop = world["subs"]
    a, s = site_folder(world["logs"], 3), site_folder(world["logs"], 4)
    site_folder(world["logs"], 99)                       # a site the panel does not host: not read
    # yesterday's finished log: 600 KiB out in two requests, a malformed line, a bad date
    write(a / log_name(D5), header(D5) + line(D5, "10:00:00", 400 * 1024, 1000) + "2026-12-05 10:00:01 only four fields\r\n"
          + line(D5, "10:00:02", 200 * 1024, 24) + line("2026-13-45", "10:00:03", 5, 5), CLOCK - timedelta(hours=13))
    # today's log, still being written: fields redeclared midway in another order, a bad byte count,
    # and a last line IIS has not finished writing
    reordered = "cs-bytes time date sc-bytes"
    write(a / log_name(D6), header(D6) + line(D6, "08:00:00", 300 * 1024, 2000)
          + f"#Fields: {reordered}\r\n" + "3000 09:00:00 2026-12-06 204800\r\n" + "12 09:00:01 2026-12-06 -\r\n"
          + "4000 09:00:02 2026-12")
    write(s / log_name(D6), header(D6) + line(D6, "11:00:00", 5000, 700) + line(D6, "11:00:05", 7000, 300))
    sql("INSERT INTO subscription_quotas (subscription_id, resource, quota_limit) VALUES (%s, 'bandwidth', 1),"
        " (%s, 'bandwidth', 1)", (sub_acme, sub_shop))

    first = run(world)
    assert first["skipped"] == {"wrong number of fields": 1, "bad date": 1, "sc-bytes or cs-bytes is not a byte count": 1}

    assert daily(sql) == [(acme, D5, 600 * 1024, 1024, 2), (acme, D6, 500 * 1024, 5000, 2),
                          (shop, D6, 12000, 1000, 2)]
    assert first["files_read"] == 3 and first["lines_counted"] == 6 and first["lines_malformed"] == 3
    assert first["log_folders"] == 2 and first["log_folders_without_site"] == 1
    assert first["files_completed"] == 1                  # yesterday's: a newer file exists for the site
    examples = first["skipped_examples"]
    assert f"WEB01 LogFiles/W3SVC3/{log_name(D5)} line 6 (5, #Fields declares 17): wrong number of fields" in examples
    assert f"WEB01 LogFiles/W3SVC3/{log_name(D5)} line 8 ('2026-13-45'): bad date" in examples
    assert f"WEB01 LogFiles/W3SVC3/{log_name(D6)} line 8: sc-bytes or cs-bytes is not a byte count" in examples
    acme_mb = Decimal(round((1100 * 1024 + 6024) / MIB, 3)).quantize(Decimal("0.001"))
    assert samples(sql) == [(sub_acme, CLOCK, acme_mb), (sub_shop, CLOCK, Decimal("0.012"))]
    state = sql("SELECT path, fields, lines_read, malformed_lines, completed_at FROM iis_log_files ORDER BY path")
    assert state[1][1:] == (reordered, 8, 1, None)    # resumes in the redeclared layout, before the half line

    # QuotaOverUsedWork: acme's 1.08 MB is over its 1 MB quota, shop's 0.012 MB is not
    over = sync_quota_overuse(world["db"], Interval(CLOCK, CLOCK))
    assert over["overuse_opened"] == 1
    assert sql("SELECT subscription_id, resource, quota_limit, used, status FROM quota_overuse") == [
        (sub_acme, "bandwidth", Decimal(1), acme_mb, "open")]

    # the same run again (a retry): nothing is counted twice
    again = run(world)
    assert again["files_read"] == 0 and again["lines_counted"] == 0
    assert daily(sql)[1] == (acme, D6, 500 * 1024, 5000, 2) and len(samples(sql)) == 2

    # IIS finishes the half-written line and writes another: only those are added
    later = CLOCK + timedelta(minutes=30)
    write(a / log_name(D6), "-06 1048576\r\n" + "10 10:00:00 2026-12-06 20\r\n", later - timedelta(minutes=1), "a")
    third = run(world, later)
    assert third["files_read"] == 1 and third["lines_counted"] == 2 and third["lines_malformed"] == 0
    assert daily(sql)[1] == (acme, D6, 500 * 1024 + 1048576 + 20, 5000 + 4000 + 10, 4)

    # a new day's file completes today's; its last line, without a line end, counts once it is complete
    write(a / log_name(D6), "11 11:00:00 2026-12-06 30", later, "a")
    write(a / log_name(D7), header(D7) + line(D7, "00:00:01", 100, 10), later)
    fourth = run(world, later + timedelta(minutes=30))
    assert fourth["files_read"] == 2 and fourth["files_completed"] == 1 and fourth["lines_counted"] == 2
    assert daily(sql)[1][2:] == (500 * 1024 + 1048576 + 50, 5000 + 4000 + 21, 5)
    assert daily(sql)[2] == (acme, D7, 100, 10, 1)
    assert run(world, later + timedelta(minutes=60))["files_read"] == 0
    assert sql("SELECT count(*) FROM iis_log_files WHERE completed_at IS NULL") == [(2,)]   # D7 and shop's D6


def test_a_site_s_last_file_unchanged_for_a_day_is_complete(world, sql):
    """A site no longer logging (stopped, deleted): its last file is finished by age, last line and all."""
    write(site_folder(world["logs"], 4) / log_name(D5), header(D5) + line(D5, "10:00:00", 100, 1)
          + "2026-12-05 23:59:59 10.0.0.5 GET / - 443 - 203.0.113.7 - - 200 0 0 50 5 1",
          CLOCK - timedelta(days=1, minutes=1))
    result = run(world)
    assert result["files_completed"] == 1 and result["lines_counted"] == 2
    assert daily(sql) == [(world["sites"][1], D5, 150, 6, 2)]
    assert sql("SELECT completed_at FROM iis_log_files") == [(CLOCK,)]


def test_a_crash_between_batches_counts_nothing_twice(world, sql, monkeypatch):
    """Each batch commits offsets and counts together: a worker dying after the first file's batch
    leaves that file counted and the second untouched; the retry counts the second exactly once."""
    a = site_folder(world["logs"], 3)
    write(a / log_name(D5), header(D5) + line(D5, "10:00:00", 100, 1) + line(D5, "10:00:01", 200, 2))
    write(a / log_name(D6), header(D6) + line(D6, "10:00:00", 300, 3))
    monkeypatch.setattr(bandwidth, "FLUSH_FILES", 1)
    real = bandwidth._read_file
    calls = []

    def dies_on_second(*args):
        calls.append(args[2].path)
        if len(calls) == 2:
            raise SystemExit("worker killed")
        return real(*args)

    monkeypatch.setattr(bandwidth, "_read_file", dies_on_second)
    with pytest.raises(SystemExit):
        run(world)
    assert daily(sql) == [(world["sites"][0], D5, 300, 3, 2)]
    monkeypatch.setattr(bandwidth, "_read_file", real)
    retry = run(world)
    assert retry["files_read"] == 1
    assert daily(sql) == [(world["sites"][0], D5, 300, 3, 2), (world["sites"][0], D6, 300, 3, 1)]


def test_a_file_advanced_by_another_run_meanwhile_is_not_counted_twice(world, sql, monkeypatch):
    """Two runs at once (a retry beside a run believed dead): the offsets move only from where a run
    started, so the second to commit finds them moved, drops its counts and says so."""
    a = site_folder(world["logs"], 3)
    write(a / log_name(D6), header(D6) + line(D6, "10:00:00", 100, 1) + line(D6, "10:00:01", 200, 2))
    real = bandwidth._read_file

    def other_run_first(hook, server, f, batch, report):
        other = bandwidth._Batch()
        real(hook, server, f, other, report)              # the other run reads the same file and commits
        with world["db"].get_conn() as conn:
            conn.autocommit = True
            bandwidth._flush(conn, other, CLOCK, StepReport())
        real(hook, server, f, batch, report)

    monkeypatch.setattr(bandwidth, "_read_file", other_run_first)
    result = run(world)
    assert ("web_server WEB01 (1 of 1 files of the batch): log files advanced by another run meanwhile: this run's"
            " counts for them were dropped") in result["skipped_examples"]
    assert daily(sql) == [(world["sites"][0], D6, 300, 3, 2)]


def test_an_unreachable_log_share_fails_alone_and_its_subscriptions_get_no_sample(world, sql, monkeypatch):
    import json

    from panelflow.dev.postgres import free_port

    site_folder(world["logs"], 3)
    write(site_folder(world["logs"], 3) / log_name(D6), header(D6) + line(D6, "10:00:00", 100, 1))
    monkeypatch.setenv("AIRFLOW_CONN_WEB02_LOGS", json.dumps({   # nothing listens there
        "conn_type": "samba", "host": "127.0.0.1", "schema": "logs", "login": "u", "password": "p",
        "port": free_port()}))
    (web2,) = sql("INSERT INTO hosting_servers (name, role, engine, host, conn_id, log_share_conn_id)"
                  " VALUES ('WEB02', 'web', 'iis', 'web02.corp.example', 'web02', 'web02_logs') RETURNING id")[0]
    # shop also has a site on WEB02: it cannot be measured whole, so it gets no sample
    sql("INSERT INTO hosted_sites (subscription_id, web_server_id, name, iis_site_id, status)"
        " VALUES (%s, %s, 'shop2.example', 1, 'active')", (world["subs"][1], web2))
    result = run(world)
    assert result["web_servers"] == 2 and result["web_servers_failed"] == 1
    assert any("web_server WEB02" in e for e in result["skipped_examples"])
    assert result["subscriptions_not_measured"] == 1
    assert [r[0] for r in samples(sql)] == [world["subs"][0]]

    sql("UPDATE hosting_servers SET enabled = false WHERE name = 'WEB01'")
    with pytest.raises(EndpointsFailed, match="WEB02"):
        run(world)


def test_nothing_configured_is_a_summary_not_a_failure(world, sql):
    sql("UPDATE hosting_servers SET log_share_conn_id = NULL")
    result = run(world)
    assert result["web_servers"] == 0 and result["samples_written"] == 0
    assert "no web server has an IIS log share" in result["note"]


def test_counter_fields_in_any_order_redeclared_and_malformed_named():
    report = StepReport()
    c = W3CCounter(None, line_base=10, label="f.log", report=report)
    c.feed([b"2026-12-06 10:00:00 1 2",                                  # before any #Fields
            b"#Fields: time sc-bytes date cs-bytes\r",
            b"10:00:00 100 2026-12-06 7\r", b"", b"10:00:01 5 2026-12-06 x\r",
            b"#Fields: date cs-bytes sc-bytes", b"2026-12-07 1 2", b"2026-12-06 3 4"])
    assert c.days == {b"2026-12-06": [104, 10, 2], b"2026-12-07": [2, 1, 1]}
    assert (c.requests, c.malformed, c.other, c.lines, c.fields) == (3, 2, 3, 8, "date cs-bytes sc-bytes")
    assert report.examples == [
        "f.log line 11: no #Fields directive with date, sc-bytes and cs-bytes before the line",
        "f.log line 15: sc-bytes or cs-bytes is not a byte count"]
    assert W3CCounter(FIELDS).fields == FIELDS


def test_a_spent_run_budget_defers_the_rest_to_the_next_run(world, sql, monkeypatch):
    write(site_folder(world["logs"], 3) / log_name(D6), header(D6) + line(D6, "10:00:00", 100, 1))
    monkeypatch.setattr(bandwidth, "RUN_BUDGET_SECONDS", -1)
    result = run(world)
    assert result["web_servers_deferred"] == 1 and result["web_servers_failed"] == 0
    assert result["files_read"] == 0 and daily(sql) == [] and samples(sql) == []
    monkeypatch.setattr(bandwidth, "RUN_BUDGET_SECONDS", 600)
    assert run(world)["lines_counted"] == 1
