"""HostedMySqlHook on a real MariaDB 10.11 (``mariadbd`` started by harness.mariadb, one per module).

What matters: names reach the server only checked and quoted by MySQL's rules (a hostile but valid
name is a literal name, never SQL), grants cover exactly one database, and every method is
idempotent — a second call finds the work done.
"""

from __future__ import annotations

import os

import pymysql
import pytest

from harness.mariadb import MariaDB
from panelflow.hooks.hosted_mysql import (HostedMySqlError, HostedMySqlHook, HostedMySqlNameError, grant_pattern,
                                          quote_identifier)

INJECTION = "x`; DROP DATABASE mysql; --"


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    """One throw-away mariadbd for the module, reachable as Airflow connection ``db_test``."""
    with MariaDB(tmp_path_factory.mktemp("mariadb")) as db:
        os.environ["AIRFLOW_CONN_DB_TEST"] = db.connection_uri()
        try:
            yield db
        finally:
            os.environ.pop("AIRFLOW_CONN_DB_TEST", None)


@pytest.fixture
def hook(mariadb):
    with HostedMySqlHook("db_test") as h:
        yield h


def test_quoting_follows_mysql_rules():
    assert quote_identifier("shop") == "`shop`"
    assert quote_identifier(INJECTION) == "`x``; DROP DATABASE mysql; --`"
    assert grant_pattern("shop_1") == r"`shop\_1`"
    assert grant_pattern("a%b`c") == r"`a\%b``c`"
    for bad in ("", "d" * 65, "trailing ", "nul\x00", "emoji\U0001F600"):
        with pytest.raises(HostedMySqlNameError):
            quote_identifier(bad)


def test_database_and_user_lifecycle_is_idempotent(mariadb, hook):
    assert hook.create_database("shop_1") is True
    assert hook.create_database("shop_1") is False
    assert hook.create_user("shop_user", "S3cret!pw") is True
    assert hook.create_user("shop_user", None) is False          # exists: left alone, no password needed
    hook.grant_database("shop_user", "shop_1")
    hook.grant_database("shop_user", "shop_1")
    mariadb.execute("CREATE DATABASE shopX1")

    with mariadb.connect("shop_user", "S3cret!pw", "shop_1") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY)")
        cur.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(pymysql.err.OperationalError, match="denied"):   # `_` was not a wildcard
            cur.execute("CREATE TABLE shopX1.t (id int)")
    assert mariadb.execute("SELECT Host FROM mysql.user WHERE User = 'shop_user'") == [("%",)]

    sizes = hook.database_sizes(["shop_1", "shopX1", "absent"])
    assert sizes["shop_1"] > 0 and sizes["shopX1"] == 0 and "absent" not in sizes

    assert hook.rename_user("shop_user", "shop_owner") == 1
    assert hook.rename_user("shop_user", "shop_owner") == 0         # done already
    with mariadb.connect("shop_owner", "S3cret!pw", "shop_1"):
        pass
    assert hook.drop_user("shop_owner") == 1
    assert hook.drop_user("shop_owner") == 0
    assert hook.drop_database("shop_1") is True
    assert hook.drop_database("shop_1") is False
    assert mariadb.execute("SELECT count(*) FROM mysql.user WHERE User LIKE 'shop%%'") == [(0,)]
    mariadb.execute("DROP DATABASE shopX1")


def test_a_hostile_name_is_a_literal_name(mariadb, hook):
    assert hook.create_database(INJECTION) is True
    assert mariadb.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (%s, 'mysql')"
                           " ORDER BY 1", (INJECTION,)) == [("mysql",), (INJECTION,)]
    assert hook.create_user("x'@'%' IDENTIFIED BY 'a'; --", "pw1!Pw") is True
    assert mariadb.execute("SELECT Host FROM mysql.user WHERE User = %s", ("x'@'%' IDENTIFIED BY 'a'; --",)) == [("%",)]
    assert hook.drop_user("x'@'%' IDENTIFIED BY 'a'; --") == 1
    assert hook.drop_database(INJECTION) is True
    assert mariadb.execute("SELECT count(*) FROM mysql.user WHERE User = 'root'") == [(3,)]
    with pytest.raises(HostedMySqlNameError, match="system database"):
        hook.drop_database("mysql")


def test_names_over_the_servers_limits_are_refused(hook):
    assert hook.user_name_max() == 128                               # MariaDB 10.11; MySQL 8 says 32
    with pytest.raises(HostedMySqlNameError, match="longer than 128"):
        hook.create_user("u" * 129, "pw")
    with pytest.raises(HostedMySqlNameError, match="longer than 64"):
        hook.create_database("d" * 65)
    with pytest.raises(HostedMySqlNameError, match="no password"):
        hook.create_user("nobody_yet", "")


def test_wrong_password_and_unreachable_server_are_retryable(mariadb, monkeypatch):
    import json

    bad = json.loads(mariadb.connection_uri())
    monkeypatch.setenv("AIRFLOW_CONN_DB_BAD", json.dumps({**bad, "password": "wrong"}))
    with pytest.raises(HostedMySqlError, match="Access denied"):
        HostedMySqlHook("db_bad").get_conn()
    from panelflow.dev.postgres import free_port

    monkeypatch.setenv("AIRFLOW_CONN_DB_DOWN", json.dumps({**bad, "port": free_port(), "extra": {"connect_timeout": 2}}))
    with pytest.raises(HostedMySqlError, match="cannot log in"):
        HostedMySqlHook("db_down").get_conn()
