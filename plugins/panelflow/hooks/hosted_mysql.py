"""Customers' MySQL/MariaDB databases and users on a hosting database server (PyMySQL).

One Airflow connection of type ``hosted_mysql`` per database server: host, port (3306), login and
password of an account allowed to create databases and users and to grant (``root`` or a panel
admin with ``CREATE, DROP, CREATE USER, RELOAD … WITH GRANT OPTION``), and extras

- ``user_host``: the host part of the customers' accounts (default ``%``: any client, which is
  what shared hosting needs; ``10.0.%`` to allow only the web farm);
- ``connect_timeout`` / ``read_timeout``: seconds (default 10 / 60);
- ``ssl_ca``: a PEM file to verify the server's certificate with (TLS is then required).

Why a hook of our own rather than the MySQL provider: the work here is DDL on *customers'* names —
``CREATE DATABASE``, ``CREATE USER``, ``GRANT``, ``RENAME USER``, ``DROP`` — and MySQL takes no
parameters in those statements' identifiers. Every name is therefore checked against the server's
own rules and quoted by them, in one place:

- a database name is an identifier: 1–64 characters, no NUL, no trailing space (MySQL's rules);
  it is put between backticks with each embedded backtick doubled (:func:`quote_identifier`). In
  ``GRANT … ON db.*`` ``_`` and ``%`` are wildcards, so there they are escaped with a backslash too
  (:func:`grant_pattern`): a grant on ``shop_1`` never opens ``shopX1``;
- a user name (and host) is a string in MySQL's syntax (``'jo'@'%'``): it travels as a PyMySQL
  parameter, escaped by the driver's own string-literal rules, checked against the server's length
  limit (read from the grant table: 128 on the MariaDB 10.11 tested here, 32 on MySQL 8);
- passwords are parameters too and never logged.

A name that breaks the rules is refused (:class:`HostedMySqlNameError`) before anything is sent;
a valid but hostile name (``x`; DROP DATABASE mysql; --``) is created as that literal name.
Panels usually allow less (letters, digits, ``_``): that policy belongs to the caller.

Every method is idempotent (looks before it creates or drops) so a retried group action does its
work once. The connection runs in autocommit: MySQL DDL commits implicitly anyway.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number

IDENTIFIER_MAX = 64
# client errors of a server that went away or never answered (CR_CONN_HOST_ERROR, CR_SERVER_GONE_ERROR,
# CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED): the statement may be retried later
CONNECTION_LOST = (2003, 2006, 2013, 2055)


class HostedMySqlError(Exception):
    """The database server could not be reached or refused the login: worth retrying later."""


class HostedMySqlNameError(ValueError):
    """A database or user name MySQL's rules do not allow: refused, nothing was sent."""


def quote_identifier(name: str, what: str = "database name") -> str:
    """``name`` as a MySQL identifier between backticks (embedded backticks doubled), after MySQL's
    own checks: 1–64 characters, no NUL, no trailing space, only characters of the BMP."""
    if not isinstance(name, str) or not name:
        raise HostedMySqlNameError(f"empty {what}")
    if len(name) > IDENTIFIER_MAX:
        raise HostedMySqlNameError(f"{what} {name[:20]!r}… is longer than {IDENTIFIER_MAX} characters")
    if "\x00" in name or name != name.rstrip(" ") or any(ord(ch) > 0xFFFF for ch in name):
        raise HostedMySqlNameError(f"{what} {name!r} holds NUL, a trailing space or characters MySQL refuses")
    return "`" + name.replace("`", "``") + "`"


def grant_pattern(database: str) -> str:
    """A database name for ``GRANT … ON <here>.*``: quoted, with the wildcards ``_`` ``%`` (and the
    escape ``\\`` itself) escaped, so the grant covers that one database."""
    quote_identifier(database)
    escaped = database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
    return "`" + escaped.replace("`", "``") + "`"


class HostedMySqlHook(BaseHook):
    """DDL for customers' databases and users on one MySQL/MariaDB server (see the module doc)."""

    conn_name_attr = "hosted_mysql_conn_id"
    default_conn_name = "hosted_mysql_default"
    conn_type = "hosted_mysql"
    hook_name = "Hosted MySQL/MariaDB (panelflow)"

    DEFAULT_PORT = 3306

    def __init__(self, hosted_mysql_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.hosted_mysql_conn_id = hosted_mysql_conn_id
        self._conn = None
        self._user_max: int | None = None
        self.user_host = "%"

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms.fields import StringField

        return {
            "user_host": StringField(lazy_gettext("Host of customers' accounts"), widget=BS3TextFieldWidget(),
                                     default="%"),
            "ssl_ca": StringField(lazy_gettext("CA file (PEM) to verify the server"), widget=BS3TextFieldWidget()),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"host": "Database server", "login": "Admin user"},
            "placeholders": {"port": "3306", "login": "root",
                             "extra": '{"user_host": "%", "connect_timeout": 10, "ssl_ca": "/etc/ssl/db-ca.pem"}'},
        }

    # -- session --------------------------------------------------------------------------------------

    def get_conn(self):
        """The PyMySQL connection (autocommit), opened on first use."""
        import pymysql

        if self._conn is None:
            conn = self.get_connection(self.hosted_mysql_conn_id)
            extra = conn.extra_dejson
            if not conn.host or not conn.login:
                raise ValueError(f"connection {self.hosted_mysql_conn_id!r} needs a host and a login")
            self.user_host = str(extra.get("user_host") or "%")
            cid = self.hosted_mysql_conn_id
            options: dict[str, Any] = {
                "connect_timeout": extra_number(cid, extra, "connect_timeout", 10.0, minimum=1.0),
                "read_timeout": extra_number(cid, extra, "read_timeout", 60.0, minimum=1.0),
                "write_timeout": extra_number(cid, extra, "read_timeout", 60.0, minimum=1.0),
            }
            if extra.get("ssl_ca"):
                options["ssl"] = {"ca": extra["ssl_ca"]}
            try:
                self._conn = pymysql.connect(host=conn.host, port=conn.port or self.DEFAULT_PORT, user=conn.login,
                                             password=conn.password or "", autocommit=True, charset="utf8mb4",
                                             **options)
            except pymysql.err.OperationalError as exc:
                raise HostedMySqlError(f"{cid}: cannot log in to {conn.host}:{conn.port or self.DEFAULT_PORT}:"
                                       f" {exc.args[-1] if exc.args else exc}") from exc
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a connection already broken has nothing left to close
                pass

    def __enter__(self) -> HostedMySqlHook:
        self.get_conn()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, sql: str, params=None) -> list[tuple]:
        import pymysql

        try:
            with self.get_conn().cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in CONNECTION_LOST:
                self.close()
                raise HostedMySqlError(f"{self.hosted_mysql_conn_id}: {exc.args[-1]}") from exc
            raise

    # -- names ----------------------------------------------------------------------------------------

    def user_name_max(self) -> int:
        """The longest user name this server takes, from its grant table (MariaDB 10.11: 128; MySQL 8: 32)."""
        if self._user_max is None:
            rows = self._run("SELECT max(CHARACTER_MAXIMUM_LENGTH) FROM information_schema.COLUMNS"
                             " WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME IN ('global_priv', 'user')"
                             " AND COLUMN_NAME = 'User'")
            self._user_max = int(rows[0][0]) if rows and rows[0][0] else 32
        return self._user_max

    def check_user_name(self, user: str) -> str:
        if not isinstance(user, str) or not user or "\x00" in user:
            raise HostedMySqlNameError(f"bad user name {user!r}")
        limit = self.user_name_max()
        if len(user) > limit:
            raise HostedMySqlNameError(f"user name {user[:20]!r}… is longer than {limit} characters")
        return user

    # -- databases ------------------------------------------------------------------------------------

    def database_exists(self, name: str) -> bool:
        quote_identifier(name)
        return bool(self._run("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)))

    def create_database(self, name: str) -> bool:
        """Create database ``name`` (utf8mb4) unless it exists; True when this call created it."""
        quoted = quote_identifier(name)
        if self.database_exists(name):
            return False
        self._run(f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return True

    def drop_database(self, name: str) -> bool:
        """Drop database ``name`` if it exists; True when this call dropped it."""
        quoted = quote_identifier(name)
        if name.lower() in ("mysql", "information_schema", "performance_schema", "sys"):
            raise HostedMySqlNameError(f"{name!r} is a system database")
        if not self.database_exists(name):
            return False
        self._run(f"DROP DATABASE IF EXISTS {quoted}")
        return True

    def database_sizes(self, names: list[str]) -> dict[str, int]:
        """Bytes per database (data + index of its tables, ``information_schema.TABLES``); a database
        that does not exist is absent from the answer, an empty one is 0."""
        sizes: dict[str, int] = {}
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            for schema, in self._run(f"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({marks})",
                                     chunk):
                sizes[schema] = 0
            for schema, size in self._run(
                    "SELECT TABLE_SCHEMA, coalesce(sum(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES"
                    f" WHERE TABLE_SCHEMA IN ({marks}) GROUP BY TABLE_SCHEMA", chunk):
                sizes[schema] = int(size)
        return sizes

    # -- users ----------------------------------------------------------------------------------------

    def user_hosts(self, user: str) -> list[str]:
        """The host parts ``user`` exists with on this server."""
        self.check_user_name(user)
        return [r[0] for r in self._run("SELECT Host FROM mysql.user WHERE User = %s ORDER BY Host", (user,))]

    def create_user(self, user: str, password: str | None) -> bool:
        """Create ``'user'@'<user_host>'`` with ``password`` unless it exists (then it is left as it
        is: a retried job must not change a password the customer may since have changed).
        True when this call created it; a missing user without a password is refused."""
        self.check_user_name(user)
        self.get_conn()
        if self.user_host in self.user_hosts(user):
            return False
        if not password:
            raise HostedMySqlNameError(f"user {user!r} does not exist and no password was given")
        self._run("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, self.user_host, password))
        return True

    def grant_database(self, user: str, database: str) -> None:
        """All privileges on ``database`` (that one only) to ``'user'@'<user_host>'``; granting twice is a no-op."""
        self.check_user_name(user)
        self.get_conn()
        self._run(f"GRANT ALL PRIVILEGES ON {grant_pattern(database)}.* TO %s@%s", (user, self.user_host))

    def drop_user(self, user: str) -> int:
        """Drop ``user`` with every host part it has; the number of accounts dropped (0: already gone)."""
        hosts = self.user_hosts(user)
        for host in hosts:
            self._run("DROP USER IF EXISTS %s@%s", (user, host))
        return len(hosts)

    def rename_user(self, old: str, new: str) -> int:
        """Rename every host part of ``old`` to ``new``; the number of accounts renamed. Refused when
        ``new`` already exists with one of those host parts (it would be another account)."""
        self.check_user_name(new)
        hosts = self.user_hosts(old)
        taken = set(self.user_hosts(new)) & set(hosts)
        if taken:
            raise HostedMySqlNameError(f"user {new!r} already exists at {sorted(taken)}")
        for host in hosts:
            self._run("RENAME USER %s@%s TO %s@%s", (old, host, new, host))
        return len(hosts)
