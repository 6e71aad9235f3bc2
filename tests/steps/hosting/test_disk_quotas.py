"""DiskQuotaWork: FSRM usage at the PSRP boundary (recorded ``fsrm/get_quotas`` answers) plus database sizes
read from a real MariaDB 10.11 (``mariadbd``, one per module), summed into ``disk_space`` samples that
QuotaOverUsedWork reads.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from panelflow.step import EndpointsFailed
from panelflow.steps.hosting.disk_quotas import sync_disk_quota_usage
from panelflow.steps.quotas import sync_quota_overuse

from .conftest import CLOCK, interval

MiB = 1024 ** 2


@pytest.fixture
def world(hosting, hosting_mariadb, recorded_powershell):
    """Subscription 1: acme.example on WEB01, its shop on FS01's storage, database acme_db on DB01.
    Subscription 2: blog.example on WEB01."""
    web = hosting.server("WEB01", "web", "iis", recorded_powershell.connection("web01.hosting.example"))
    files = hosting.server("FS01", "file", "windows", recorded_powershell.connection("fs01.hosting.example"))
    db = hosting.server("DB01", "database", "mysql", hosting_mariadb.connection_uri())
    sub1, sub2 = hosting.subscriptions
    hosting.site("acme.example", web, sub1, "active", r"D:\Sites\acme.example", 3)
    hosting.site("shop.acme.example", web, sub1, "suspended", r"E:\Shares\shop.acme.example", 4, file_server=files)
    hosting.site("blog.example", web, sub2, "active", r"D:\Sites\blog.example", 5)
    hosting.site("old.example", web, sub2, "pending")                  # not created yet: not measured
    hosting.sql("INSERT INTO hosted_databases (subscription_id, db_server_id, name) VALUES (%s, %s, 'acme_db')",
                (sub1, db))
    hosting_mariadb.execute("CREATE DATABASE IF NOT EXISTS acme_db")
    hosting_mariadb.execute("CREATE TABLE IF NOT EXISTS acme_db.orders (id int PRIMARY KEY, note text)")
    hosting_mariadb.execute("INSERT IGNORE INTO acme_db.orders SELECT seq, repeat('x', 500) FROM acme_db.seq_1_to_3000")
    hosting_mariadb.execute("ANALYZE TABLE acme_db.orders")          # InnoDB's sizes are its statistics
    recorded_powershell.answer("fsrm/get_quotas", [
        {"Path": r"D:\Sites\acme.example", "Found": True, "Size": 1024 * MiB, "Usage": 300 * MiB,
         "PeakUsage": 310 * MiB, "SoftLimit": False, "Disabled": False},
        {"Path": r"D:\Sites\blog.example", "Found": True, "Size": 512 * MiB, "Usage": 128 * MiB,
         "PeakUsage": 128 * MiB, "SoftLimit": False, "Disabled": False},
    ], when=lambda sent: sent.conn_host == "web01.hosting.example")
    recorded_powershell.answer("fsrm/get_quotas", [
        {"Path": r"E:\Shares\shop.acme.example", "Found": True, "Size": 2048 * MiB, "Usage": 50 * MiB,
         "PeakUsage": 50 * MiB, "SoftLimit": True, "Disabled": False},
    ], when=lambda sent: sent.conn_host == "fs01.hosting.example")
    return {"subs": (sub1, sub2)}


def mariadb_size(mariadb, name):
    return int(mariadb.execute("SELECT sum(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES"
                               " WHERE TABLE_SCHEMA = %s", (name,))[0][0])


def samples(hosting):
    return hosting.sql("SELECT subscription_id, resource, sampled_at, used FROM resource_usage_samples"
                       " ORDER BY sampled_at, subscription_id")


def test_files_and_databases_become_one_disk_space_sample_per_subscription_once(world, hosting, hosting_mariadb,
                                                                               recorded_powershell):
    sub1, sub2 = world["subs"]
    summary = sync_disk_quota_usage(hosting.db, interval())

    assert [(c.script, c.conn_host, c.parameters) for c in recorded_powershell.sent] == [
        ("fsrm/get_quotas", "web01.hosting.example", {"Paths": [r"D:\Sites\acme.example", r"D:\Sites\blog.example"]}),
        ("fsrm/get_quotas", "fs01.hosting.example", {"Paths": [r"E:\Shares\shop.acme.example"]}),
    ]
    db_bytes = mariadb_size(hosting_mariadb, "acme_db")
    assert db_bytes > 1 * MiB                                          # 3000 rows of 500 bytes, really stored
    assert hosting.sql("SELECT size_bytes, size_sampled_at FROM hosted_databases") == [(db_bytes, CLOCK)]
    assert hosting.sql("SELECT s.name, u.used_mb, u.quota_mb FROM hosted_site_disk_usage u JOIN hosted_sites s"
                       " ON s.id = u.site_id ORDER BY 1") == [
        ("acme.example", 300, 1024), ("blog.example", 128, 512), ("shop.acme.example", 50, 2048)]
    expected = round(Decimal(350) + Decimal(db_bytes) / Decimal(MiB), 3)
    assert samples(hosting) == [(sub1, "disk_space", CLOCK, expected), (sub2, "disk_space", CLOCK, Decimal("128.000"))]
    assert {k: summary[k] for k in ("servers", "servers_failed", "sites_measured", "databases_measured",
                                    "samples_written", "subscriptions_incomplete")} == {
        "servers": 3, "servers_failed": 0, "sites_measured": 3, "databases_measured": 1, "samples_written": 2,
        "subscriptions_incomplete": 0}

    hosting_mariadb.execute("INSERT INTO acme_db.orders SELECT seq, repeat('y', 500) FROM acme_db.seq_3001_to_6000")
    again = sync_disk_quota_usage(hosting.db, interval())             # a rerun of the same interval
    assert again["samples_written"] == 0
    assert samples(hosting) == [(sub1, "disk_space", CLOCK, expected), (sub2, "disk_space", CLOCK, Decimal("128.000"))]
    assert hosting.sql("SELECT count(*) FROM hosted_site_disk_usage") == [(3,)]

    # QuotaOverUsedWork reads the sample: 1 GB allowed, more used → an over-use episode
    hosting.sql("INSERT INTO subscription_quotas (subscription_id, resource, quota_limit) VALUES (%s, 'disk_space', 300)",
                (sub1,))
    sync_quota_overuse(hosting.db, interval(CLOCK + timedelta(minutes=5)))
    assert hosting.sql("SELECT subscription_id, resource, used FROM quota_overuse"
                       " WHERE resolved_at IS NULL") == [(sub1, "disk_space", expected)]


def test_a_failed_file_server_leaves_its_subscriptions_unsampled_and_is_named(world, hosting, recorded_powershell):
    sub1, sub2 = world["subs"]
    recorded_powershell.answer("fsrm/get_quotas", timeout=True, when=lambda sent: sent.conn_host == "fs01.hosting.example")
    summary = sync_disk_quota_usage(hosting.db, interval())

    assert summary["failed_servers"] == ["FS01"] and summary["servers_failed"] == 1
    assert [r[0] for r in samples(hosting)] == [sub2]                 # subscription 1 is incomplete
    assert summary["subscriptions_incomplete"] == 1
    assert f"subscription {sub1}: not every site and database was measured: no sample this run" in \
        summary["skipped_examples"]


def test_a_folder_without_an_fsrm_quota_is_reported(world, hosting, recorded_powershell):
    recorded_powershell.answer("fsrm/get_quotas", [
        {"Path": r"D:\Sites\acme.example", "Found": False},
        {"Path": r"D:\Sites\blog.example", "Found": True, "Size": 512 * MiB, "Usage": 128 * MiB},
    ], when=lambda sent: sent.conn_host == "web01.hosting.example")
    summary = sync_disk_quota_usage(hosting.db, interval())

    assert "site acme.example: no FSRM quota on the content folder" in summary["skipped_examples"]
    assert summary["sites_measured"] == 2 and summary["subscriptions_incomplete"] == 1


def test_every_server_failing_fails_the_step(world, hosting, recorded_powershell, monkeypatch):
    recorded_powershell.answer("fsrm/get_quotas", timeout=True)
    monkeypatch.setenv("AIRFLOW_CONN_DB01", '{"conn_type": "hosted_mysql", "host": "127.0.0.1", "port": 1,'
                                            ' "login": "root", "password": "x", "extra": {"connect_timeout": 2}}')
    with pytest.raises(EndpointsFailed, match="every hosting server failed"):
        sync_disk_quota_usage(hosting.db, interval())
    assert samples(hosting) == []


def test_nothing_configured_is_a_summary_not_a_failure(hosting):
    summary = sync_disk_quota_usage(hosting.db, interval())
    assert summary["note"] == "no hosting servers configured"
    assert summary["servers"] == 0 and summary["samples_written"] == 0
