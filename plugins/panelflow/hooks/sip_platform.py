"""The SIP platform: a Kamailio server, reached through its own PostgreSQL database (provisioning and
call records) and its JSON-RPC control interface (live dialog counts, cache reloads).

This module is the only place in panelflow that knows Kamailio. Steps see companies, subscribers,
numbers and calls; which tables hold them and which RPC counts them is decided here, so another
SIP platform is another hook with the same methods.

How the platform keeps what the panel provisions (the Kamailio config enforces all of it):

- a company is a SIP domain: a row of the ``domain`` table (domain module), its ``did`` the domain
  itself, with ``domain_attrs`` ``channel_limit`` (integer) and ``suspended`` (integer 1, absent
  when not suspended). The domain module caches those tables, so every change here is followed by
  the ``domain.reload`` RPC; a change is not done until Kamailio has reloaded it.
- a subscriber is a row of ``subscriber``, authenticated on ``ha1``/``ha1b`` (digest hashes bound
  to the domain as realm) computed here; the plain ``password`` column stays empty, so the platform
  DB never holds a reusable password. A suspended subscriber is in the ``grp`` group ``suspended``
  (group module, read live by the config on every REGISTER and INVITE).
- a number is a ``dbaliases`` row (alias_db module, looked up by number alone) pointing at its
  subscriber, so a call to the number reaches the subscriber.
- a call is a row of ``acc_cdrs`` (acc module, written when the dialog ends), with the columns
  :data:`SCHEMA_ADDITIONS` adds; the config fills them from dialog variables.
- live calls are the sizes of two dialog profiles with values: per caller domain and per caller
  ``user@domain``.

Timestamps in ``acc_cdrs`` are written by Kamailio in its own local time without a zone; the
extra ``timezone`` names that zone (run Kamailio with ``TZ=UTC`` and leave it at UTC).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number


class SipPlatformError(Exception):
    """The SIP platform did not do what was asked."""


class SipPlatformUnavailable(SipPlatformError):
    """The platform's database or control interface did not answer (in time): try again later."""


class SipPlatformRefused(SipPlatformError):
    """The platform refuses the request as made (a bad name, a number someone else holds, no such
    company): resending it unchanged will not help."""


@dataclass(frozen=True)
class SipCompany:
    domain: str
    channel_limit: int | None
    suspended: bool


@dataclass(frozen=True)
class SipSubscriber:
    ref: str  # the platform's stable id (``subscriber.id``), as text
    username: str
    domain: str
    suspended: bool


@dataclass(frozen=True)
class SipNumber:
    number: str  # E.164 digits, no '+'
    username: str
    domain: str


@dataclass(frozen=True)
class SipCall:
    callid: str
    caller: str
    caller_domain: str  # lower case
    callee: str  # what the caller dialled: a username or a number
    callee_domain: str  # lower case
    started_at: datetime  # tz-aware, UTC
    ended_at: datetime
    duration_seconds: int  # the platform's duration rounded to the nearest second


# What panelflow needs beyond Kamailio's own schema (/usr/share/kamailio/postgres/*-create.sql):
# the CDR columns the config fills, an index for "calls that ended in [start, end)", and unique
# keys that make provisioning idempotent under retries and concurrent runs.
SCHEMA_ADDITIONS = (
    "ALTER TABLE acc_cdrs ADD COLUMN IF NOT EXISTS callid varchar(255) NOT NULL DEFAULT ''",
    "ALTER TABLE acc_cdrs ADD COLUMN IF NOT EXISTS caller varchar(64) NOT NULL DEFAULT ''",
    "ALTER TABLE acc_cdrs ADD COLUMN IF NOT EXISTS caller_domain varchar(64) NOT NULL DEFAULT ''",
    "ALTER TABLE acc_cdrs ADD COLUMN IF NOT EXISTS callee varchar(64) NOT NULL DEFAULT ''",
    "ALTER TABLE acc_cdrs ADD COLUMN IF NOT EXISTS callee_domain varchar(64) NOT NULL DEFAULT ''",
    "CREATE INDEX IF NOT EXISTS acc_cdrs_end_time_idx ON acc_cdrs (end_time)",
    "ALTER TABLE acc ADD COLUMN IF NOT EXISTS src_user varchar(64) NOT NULL DEFAULT ''",
    "ALTER TABLE acc ADD COLUMN IF NOT EXISTS dst_user varchar(64) NOT NULL DEFAULT ''",
    "ALTER TABLE acc ADD COLUMN IF NOT EXISTS domain varchar(64) NOT NULL DEFAULT ''",
    "CREATE UNIQUE INDEX IF NOT EXISTS dbaliases_number_uidx ON dbaliases (alias_username)",
    "CREATE UNIQUE INDEX IF NOT EXISTS domain_attrs_panelflow_uidx ON domain_attrs (did, name)"
    " WHERE name IN ('channel_limit', 'suspended')",
)

SUSPENDED_GROUP = "suspended"  # the grp group the config refuses
_ATTR_INT = 0  # domain_attrs.type of an integer attribute
_BATCH = 5000  # rows per statement when a company is deleted
_COMPANY_ROWS = ("subscriber", "grp", "dbaliases")  # what names a company's domain, deleted before it
_COPY_CHUNK = 1 << 20  # bytes of call records per write() of copy_call_records

_USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMBER = re.compile(r"[0-9]{3,15}")


def _domain(value: str) -> str:
    """A SIP domain as stored: lower case (domains compare case-insensitively), a DNS name that fits
    Kamailio's varchar(64) columns."""
    domain = value.lower() if isinstance(value, str) else ""
    if len(domain) > 64 or not _DOMAIN.fullmatch(domain):
        raise SipPlatformRefused(f"not a SIP domain name: {value!r}")
    return domain


def _username(value: str) -> str:
    if not isinstance(value, str) or not _USERNAME.fullmatch(value):
        raise SipPlatformRefused(f"not a SIP username ([A-Za-z0-9._-], 1-64): {value!r}")
    return value


def _number(value: str) -> str:
    if not isinstance(value, str) or not _NUMBER.fullmatch(value):
        raise SipPlatformRefused(f"not a number (3-15 digits, no '+'): {value!r}")
    return value


def _limit(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise SipPlatformRefused(f"a channel limit is a whole number >= 0 or None, not {value!r}")
    return value


def digest_hashes(username: str, domain: str, password: str) -> tuple[str, str]:
    """``ha1`` and ``ha1b`` as Kamailio's auth_db reads them, the domain being the realm."""
    if not isinstance(password, str) or not password:
        raise SipPlatformRefused("a subscriber needs a non-empty password")
    ha1 = hashlib.md5(f"{username}:{domain}:{password}".encode()).hexdigest()
    ha1b = hashlib.md5(f"{username}@{domain}:{domain}:{password}".encode()).hexdigest()
    return ha1, ha1b


# acc_cdrs rows of calls that ended in [start, end), in the connection's zone (the hook sets UTC).
# Domains folded to lower case here, on the platform's server (they compare case-insensitively, and
# the panel stores them so): the panel's import of a day of records then matches them as they come.
_CALLS = """
SELECT callid, caller, lower(caller_domain) AS caller_domain, callee, lower(callee_domain) AS callee_domain,
       start_time AT TIME ZONE %(tz)s AS started_at, end_time AT TIME ZONE %(tz)s AS ended_at,
       round(duration)::int AS duration_seconds
FROM acc_cdrs
WHERE end_time >= (%(start)s::timestamptz AT TIME ZONE %(tz)s)
  AND end_time < (%(end)s::timestamptz AT TIME ZONE %(tz)s)
"""


class SipPlatformHook(BaseHook):
    """Provisioning, call records and live counts of a Kamailio SIP platform.

    The connection is the platform's PostgreSQL (host, port, schema = database, login, password);
    extras: ``rpc_url`` (Kamailio's JSON-RPC over HTTP, e.g. ``http://10.0.0.5:5071/RPC``),
    ``timeout`` (seconds for a connect, a statement and an RPC; default 10), ``company_profile`` and
    ``subscriber_profile`` (the dialog profiles counting calls per caller domain and per caller
    ``user@domain``), ``timezone`` (the zone of acc_cdrs' timestamps, default UTC), and libpq's
    ``sslmode``/``sslrootcert``/``sslcert``/``sslkey``.

    One database connection and one HTTP client per hook, opened on first use; :meth:`close` them
    (or use the hook as a context manager). A lost connection is reopened by the next call.
    """

    conn_name_attr = "sip_platform_conn_id"
    default_conn_name = "sip_platform_default"
    conn_type = "panelflow_sip_platform"
    hook_name = "SIP platform (Kamailio)"

    DEFAULT_TIMEOUT = 10.0
    DEFAULT_COMPANY_PROFILE = "calls_per_domain"
    DEFAULT_SUBSCRIBER_PROFILE = "calls_per_subscriber"

    def __init__(self, sip_platform_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.sip_platform_conn_id = sip_platform_conn_id
        self._settings: dict[str, Any] | None = None
        self._db = None
        self._http = None
        self._rpc_ids = itertools.count(1)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import StringField

        return {
            "rpc_url": StringField(lazy_gettext("Kamailio JSON-RPC URL"), widget=BS3TextFieldWidget()),
            "timeout": StringField(lazy_gettext("Timeout (seconds)"), widget=BS3TextFieldWidget(),
                                   default=str(int(cls.DEFAULT_TIMEOUT))),
            "company_profile": StringField(lazy_gettext("Dialog profile: calls per domain"),
                                           widget=BS3TextFieldWidget(), default=cls.DEFAULT_COMPANY_PROFILE),
            "subscriber_profile": StringField(lazy_gettext("Dialog profile: calls per subscriber"),
                                              widget=BS3TextFieldWidget(), default=cls.DEFAULT_SUBSCRIBER_PROFILE),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": [],
            "relabeling": {"host": "Platform DB host", "schema": "Platform database", "login": "DB user"},
            "placeholders": {"host": "sipdb.internal", "port": "5432", "schema": "kamailio", "login": "panelflow",
                             "extra": '{"rpc_url": "http://sip1.internal:5071/RPC", "timeout": 10}'},
        }

    # -- connections ----------------------------------------------------------------------------

    def _read_settings(self) -> dict[str, Any]:
        if self._settings is None:
            conn = self.get_connection(self.sip_platform_conn_id)
            extra = conn.extra_dejson
            cid = self.sip_platform_conn_id
            if not conn.host or not conn.schema:
                raise ValueError(f"connection {cid!r} needs the platform database's host and name (schema)")
            if not extra.get("rpc_url"):
                raise ValueError(f"connection {cid!r} needs the extra 'rpc_url' (Kamailio's JSON-RPC over HTTP)")
            timeout = extra_number(cid, extra, "timeout", self.DEFAULT_TIMEOUT, minimum=1.0)
            zone = extra.get("timezone") or "UTC"
            try:
                ZoneInfo(zone)
            except (ValueError, ZoneInfoNotFoundError):
                raise ValueError(f"connection {cid!r}: extra 'timezone' is not a time zone: {zone!r}") from None
            db = {"host": conn.host, "port": conn.port or 5432, "dbname": conn.schema, "user": conn.login or None,
                  "password": conn.password or None, "connect_timeout": max(1, round(timeout)),
                  "options": f"-c statement_timeout={int(timeout * 1000)} -c TimeZone=UTC",
                  "application_name": "panelflow-sip-platform"}
            for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
                if key in extra:
                    db[key] = extra[key]
            self._settings = {
                "db": {k: v for k, v in db.items() if v is not None}, "rpc_url": extra["rpc_url"],
                "timeout": timeout, "timezone": zone,
                "company_profile": extra.get("company_profile") or self.DEFAULT_COMPANY_PROFILE,
                "subscriber_profile": extra.get("subscriber_profile") or self.DEFAULT_SUBSCRIBER_PROFILE,
            }
        return self._settings

    def get_conn(self):
        """The platform database connection (psycopg, autocommit; a transaction where one is needed)."""
        if self._db is None or self._db.closed:
            import psycopg

            with self._db_errors("connect"):
                self._db = psycopg.connect(autocommit=True, **self._read_settings()["db"])
        return self._db

    def close(self) -> None:
        db, self._db = self._db, None
        http, self._http = self._http, None
        if db is not None:
            db.close()
        if http is not None:
            http.close()

    def __enter__(self) -> "SipPlatformHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _db_errors(self, what: str):
        """Unreachable or too slow is :class:`SipPlatformUnavailable` (the connection is dropped and
        reopened next time); a unique key taken by someone else is :class:`SipPlatformRefused`."""
        import psycopg

        try:
            yield
        except psycopg.errors.UniqueViolation as exc:
            raise SipPlatformRefused(f"{what}: {exc.diag.message_primary}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()
            raise SipPlatformUnavailable(f"{self.sip_platform_conn_id}: {what}: {_first_line(exc)}") from exc
        except psycopg.Error as exc:   # the platform DB is not what the hook expects (schema, rights)
            raise SipPlatformError(f"{self.sip_platform_conn_id}: {what}: {_first_line(exc)}") from exc

    def _rows(self, what: str, query: str, params: dict | tuple = ()) -> list[tuple]:
        with self._db_errors(what):
            cur = self.get_conn().execute(query, params)
            return cur.fetchall() if cur.description else []

    def _rpc(self, method: str, *params: Any, missing_ok: bool = False) -> Any:
        """One JSON-RPC call; its ``result``. ``missing_ok``: an error answer meaning "not found"
        (Kamailio's 404) is ``None`` rather than an error."""
        import httpx

        settings = self._read_settings()
        if self._http is None:
            self._http = httpx.Client(timeout=httpx.Timeout(settings["timeout"]), follow_redirects=False)
        body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": next(self._rpc_ids)}
        try:
            response = self._http.post(settings["rpc_url"], json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise SipPlatformUnavailable(f"{self.sip_platform_conn_id}: RPC {method}: {type(exc).__name__}:"
                                         f" {exc}") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            kind = SipPlatformUnavailable if response.status_code >= 500 else SipPlatformError
            raise kind(f"{self.sip_platform_conn_id}: RPC {method}: HTTP {response.status_code}, not a JSON-RPC answer")
        error = answer.get("error")
        if error:
            # Kamailio answers a failed command with an HTTP status equal to its error code: 404 for
            # "not found", 500 for an internal failure (its own DB connection, say): worth a retry
            code = error.get("code") if isinstance(error, dict) else None
            if missing_ok and code == 404:
                return None
            kind = SipPlatformUnavailable if isinstance(code, int) and code >= 500 else SipPlatformError
            raise kind(f"{self.sip_platform_conn_id}: RPC {method}: {error}")
        return answer.get("result")

    def test_connection(self) -> tuple[bool, str]:
        try:
            version = self._rpc("core.version")
            companies = self._rows("count domains", "SELECT count(*) FROM domain")[0][0]
        except (SipPlatformError, ValueError) as exc:
            return False, str(exc)
        return True, f"{version}; {companies} SIP domain(s)"

    def ensure_schema(self) -> None:
        """Add :data:`SCHEMA_ADDITIONS` to a platform DB that has Kamailio's tables (idempotent);
        run once when a platform is set up, by whoever owns its schema."""
        with self._db_errors("schema additions"), self.get_conn().transaction():
            for statement in SCHEMA_ADDITIONS:
                self.get_conn().execute(statement)

    def reload_domains(self) -> None:
        """Make Kamailio reread the ``domain``/``domain_attrs`` tables it caches. Every change here
        does it; a provisioning run may call it once more at its end, so a change whose reload failed
        (RPC down after the DB commit) is applied even though rerunning it finds nothing to change."""
        self._rpc("domain.reload")

    # -- companies (SIP domains) -----------------------------------------------------------------

    def companies(self) -> list[SipCompany]:
        rows = self._rows("list companies", """
            SELECT d.domain, max(a.value) FILTER (WHERE a.name = 'channel_limit'),
                   coalesce(bool_or(a.name = 'suspended' AND a.value = '1'), false)
            FROM domain d LEFT JOIN domain_attrs a
                 ON a.did = coalesce(d.did, d.domain) AND a.name IN ('channel_limit', 'suspended')
            GROUP BY d.domain ORDER BY d.domain""")
        return [SipCompany(domain, int(limit) if limit is not None else None, suspended)
                for domain, limit, suspended in rows]

    def ensure_company(self, domain: str, channel_limit: int | None) -> bool:
        """The company exists with this channel limit (its suspension is left as it is)."""
        domain, channel_limit = _domain(domain), _limit(channel_limit)
        with self._db_errors(f"ensure company {domain}"), self.get_conn().transaction():
            created = bool(self.get_conn().execute(
                "INSERT INTO domain (domain, did) VALUES (%s, %s) ON CONFLICT (domain) DO NOTHING RETURNING id",
                (domain, domain)).fetchall())
            changed = self._set_attr(self._did(domain), "channel_limit", channel_limit) or created
        if changed:
            self.reload_domains()
        return changed

    def set_company_suspended(self, domain: str, suspended: bool) -> bool:
        domain = _domain(domain)
        return self._change_attr(domain, "suspended", 1 if suspended else None)

    def set_channel_limit(self, domain: str, limit: int | None) -> bool:
        domain, limit = _domain(domain), _limit(limit)
        return self._change_attr(domain, "channel_limit", limit)

    def _change_attr(self, domain: str, name: str, value: int | None) -> bool:
        with self._db_errors(f"set {name} of {domain}"), self.get_conn().transaction():
            changed = self._set_attr(self._did(domain), name, value)
        if changed:
            self.reload_domains()
        return changed

    def _did(self, domain: str) -> str:
        """The company's domain id; refused when there is no such company."""
        row = self.get_conn().execute("SELECT coalesce(did, domain) FROM domain WHERE domain = %s FOR UPDATE",
                                      (domain,)).fetchone()
        if row is None:
            raise SipPlatformRefused(f"no SIP company {domain!r} on the platform")
        return row[0]

    def _set_attr(self, did: str, name: str, value: int | None) -> bool:
        conn = self.get_conn()
        if value is None:
            return conn.execute("DELETE FROM domain_attrs WHERE did = %s AND name = %s", (did, name)).rowcount > 0
        return bool(conn.execute("""
            INSERT INTO domain_attrs (did, name, type, value) VALUES (%s, %s, %s, %s)
            ON CONFLICT (did, name) WHERE name IN ('channel_limit', 'suspended')
            DO UPDATE SET value = EXCLUDED.value, type = EXCLUDED.type
            WHERE domain_attrs.value IS DISTINCT FROM EXCLUDED.value OR domain_attrs.type <> EXCLUDED.type
            RETURNING id""", (did, name, _ATTR_INT, str(value))).fetchall())

    def delete_company(self, domain: str) -> bool:
        """The company with its subscribers, numbers, group memberships and attributes. The bulk goes
        in bounded batches; the ``domain`` row last, so a run killed half-way is finished by the next."""
        from psycopg import sql

        domain = _domain(domain)
        deleted = 0
        with self._db_errors(f"delete company {domain}"):
            conn = self.get_conn()
            for table in _COMPANY_ROWS:
                while True:
                    n = conn.execute(sql.SQL("DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE domain = %s LIMIT %s)")
                                     .format(t=sql.Identifier(table)), (domain, _BATCH)).rowcount
                    deleted += n
                    if n < _BATCH:
                        break
            with conn.transaction():
                # under the domain row's lock (ensure_subscriber takes it too): what was added since the
                # batches — a few rows at most — goes with the company. Subscribers first: a number or
                # group change locks its subscriber, so it either finished before or finds none.
                if conn.execute("SELECT 1 FROM domain WHERE domain = %s FOR UPDATE", (domain,)).fetchone():
                    for table in _COMPANY_ROWS:
                        deleted += conn.execute(sql.SQL("DELETE FROM {t} WHERE domain = %s")
                                                .format(t=sql.Identifier(table)), (domain,)).rowcount
                    deleted += conn.execute("DELETE FROM domain_attrs WHERE did IN (SELECT coalesce(did, domain)"
                                            " FROM domain WHERE domain = %s)", (domain,)).rowcount
                    deleted += conn.execute("DELETE FROM domain WHERE domain = %s", (domain,)).rowcount
        if deleted:
            self.reload_domains()
        return deleted > 0

    # -- subscribers -----------------------------------------------------------------------------

    def subscribers(self, domain: str | None = None) -> list[SipSubscriber]:
        rows = self._rows("list subscribers", """
            SELECT s.id::text, s.username, s.domain, g.id IS NOT NULL
            FROM subscriber s LEFT JOIN grp g ON g.username = s.username AND g.domain = s.domain AND g.grp = %(grp)s
            WHERE %(domain)s::text IS NULL OR s.domain = %(domain)s ORDER BY s.domain, s.username""",
            {"grp": SUSPENDED_GROUP, "domain": None if domain is None else _domain(domain)})
        return [SipSubscriber(*row) for row in rows]

    def ensure_subscriber(self, domain: str, username: str, password: str) -> bool:
        """The subscriber exists; one that already exists keeps its password (see :meth:`set_password`)."""
        domain, username = _domain(domain), _username(username)
        ha1, ha1b = digest_hashes(username, domain, password)
        with self._db_errors(f"ensure subscriber {username}@{domain}"), self.get_conn().transaction():
            self._did(domain)
            return bool(self.get_conn().execute("""
                INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES (%s, %s, '', %s, %s)
                ON CONFLICT (username, domain) DO NOTHING RETURNING id""", (username, domain, ha1, ha1b)).fetchall())

    def set_password(self, domain: str, username: str, password: str) -> bool:
        domain, username = _domain(domain), _username(username)
        ha1, ha1b = digest_hashes(username, domain, password)
        with self._db_errors(f"set password of {username}@{domain}"), self.get_conn().transaction():
            self._subscriber_id(domain, username)
            return self.get_conn().execute("""
                UPDATE subscriber SET ha1 = %s, ha1b = %s, password = ''
                WHERE username = %s AND domain = %s AND (ha1, ha1b, password) IS DISTINCT FROM (%s, %s, '')""",
                (ha1, ha1b, username, domain, ha1, ha1b)).rowcount > 0

    def _subscriber_id(self, domain: str, username: str) -> int:
        row = self.get_conn().execute("SELECT id FROM subscriber WHERE username = %s AND domain = %s FOR UPDATE",
                                      (username, domain)).fetchone()
        if row is None:
            raise SipPlatformRefused(f"no SIP subscriber {username}@{domain} on the platform")
        return row[0]

    def set_subscriber_suspended(self, domain: str, username: str, suspended: bool) -> bool:
        domain, username = _domain(domain), _username(username)
        with self._db_errors(f"suspend {username}@{domain}"), self.get_conn().transaction():
            self._subscriber_id(domain, username)
            if suspended:
                return bool(self.get_conn().execute(
                    "INSERT INTO grp (username, domain, grp) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                    (username, domain, SUSPENDED_GROUP)).fetchall())
            return self.get_conn().execute("DELETE FROM grp WHERE username = %s AND domain = %s AND grp = %s",
                                           (username, domain, SUSPENDED_GROUP)).rowcount > 0

    def delete_subscriber(self, domain: str, username: str) -> bool:
        """The subscriber with its numbers and group memberships; its live registrations are dropped
        (``ul.rm``) every time, so a rerun after a failed RPC still drops them."""
        domain, username = _domain(domain), _username(username)
        with self._db_errors(f"delete subscriber {username}@{domain}"), self.get_conn().transaction():
            conn = self.get_conn()
            conn.execute("DELETE FROM dbaliases WHERE username = %s AND domain = %s", (username, domain))
            conn.execute("DELETE FROM grp WHERE username = %s AND domain = %s", (username, domain))
            deleted = conn.execute("DELETE FROM subscriber WHERE username = %s AND domain = %s",
                                   (username, domain)).rowcount > 0
        self._rpc("ul.rm", "location", f"{username}@{domain}", missing_ok=True)
        return deleted

    # -- numbers ---------------------------------------------------------------------------------

    def numbers(self, domain: str | None = None) -> list[SipNumber]:
        rows = self._rows("list numbers", """
            SELECT alias_username, username, domain FROM dbaliases
            WHERE alias_username ~ '^[0-9]{3,15}$' AND (%(domain)s::text IS NULL OR domain = %(domain)s)
            ORDER BY alias_username""", {"domain": None if domain is None else _domain(domain)})
        return [SipNumber(*row) for row in rows]

    def assign_number(self, domain: str, username: str, number: str) -> bool:
        """The number rings this subscriber. A number someone else holds is refused, not moved:
        moving it is a release and an assignment, decided by the caller."""
        domain, username, number = _domain(domain), _username(username), _number(number)
        with self._db_errors(f"assign {number} to {username}@{domain}"), self.get_conn().transaction():
            conn = self.get_conn()
            self._subscriber_id(domain, username)
            if conn.execute("""
                    INSERT INTO dbaliases (alias_username, alias_domain, username, domain) VALUES (%s, %s, %s, %s)
                    ON CONFLICT (alias_username) DO NOTHING RETURNING id""",
                    (number, domain, username, domain)).fetchall():
                return True
            holder = conn.execute("SELECT username, domain FROM dbaliases WHERE alias_username = %s",
                                  (number,)).fetchone()
        if holder == (username, domain):
            return False
        raise SipPlatformRefused(f"number {number} is held by another subscriber")

    def release_number(self, number: str) -> bool:
        number = _number(number)
        with self._db_errors(f"release {number}"):
            return self.get_conn().execute("DELETE FROM dbaliases WHERE alias_username = %s", (number,)).rowcount > 0

    # -- call records ----------------------------------------------------------------------------

    def _calls_params(self, start: datetime, end: datetime) -> dict[str, Any]:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("call record bounds must be timezone-aware")
        return {"start": start, "end": end, "tz": self._read_settings()["timezone"]}

    def call_records(self, start: datetime, end: datetime) -> Iterator[SipCall]:
        """Calls that ended in ``[start, end)``, by end time, streamed from a server-side cursor."""
        params = self._calls_params(start, end)
        with self._db_errors("read call records"):
            conn = self.get_conn()
            with conn.transaction(), conn.cursor(name="panelflow_sip_calls") as cur:
                conn.execute("SET LOCAL statement_timeout = 0")  # a FETCH is bounded by the page, not the clock
                cur.itersize = 2000
                cur.execute(_CALLS + " ORDER BY end_time, id", params)
                for row in cur:
                    yield SipCall(*row)

    def copy_call_records(self, start: datetime, end: datetime, write: Callable[[bytes], None]) -> int:
        """The rows of :meth:`call_records` (unordered) as ``COPY … TO STDOUT`` text, chunk by chunk to
        ``write``; timestamps in UTC. Returns how many rows were copied."""
        params = self._calls_params(start, end)
        with self._db_errors("copy call records"):
            conn = self.get_conn()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL statement_timeout = 0")  # one COPY of a whole day may take a while
                buffer = bytearray()
                with cur.copy(f"COPY ({_CALLS}) TO STDOUT", params) as copy:
                    for row in copy:   # the server sends one message per row: hand them on in big chunks
                        buffer += row
                        if len(buffer) >= _COPY_CHUNK:
                            write(bytes(buffer))
                            buffer.clear()
                if buffer:
                    write(bytes(buffer))
                return cur.rowcount

    # -- live calls ------------------------------------------------------------------------------

    def _profile_counts(self, profile: str) -> dict[str, int]:
        """Dialogs per value of a dialog profile with values (``dlg.profile_list``)."""
        counts: dict[str, int] = {}
        for dialog in _dialogs(self._rpc("dlg.profile_list", profile, missing_ok=True)):
            for entry in dialog.get("profiles") or ():
                if isinstance(entry, dict) and profile in entry:
                    counts[entry[profile]] = counts.get(entry[profile], 0) + 1
        return counts

    def live_calls_by_company(self) -> dict[str, int]:
        """Caller domain → its calls up now (early and confirmed dialogs). The config counts the
        domain as the caller wrote it; domains compare case-insensitively, so the hook folds case."""
        out: dict[str, int] = {}
        for domain, n in self._profile_counts(self._read_settings()["company_profile"]).items():
            out[domain.lower()] = out.get(domain.lower(), 0) + n
        return out

    def live_calls_by_subscriber(self) -> dict[tuple[str, str], int]:
        """(domain, username) → calls up now that the subscriber placed."""
        out: dict[tuple[str, str], int] = {}
        for value, n in self._profile_counts(self._read_settings()["subscriber_profile"]).items():
            username, _, domain = value.rpartition("@")
            key = (domain.lower(), username)
            out[key] = out.get(key, 0) + n
        return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _dialogs(result: Any) -> list[dict]:
    if isinstance(result, dict):
        result = result.get("Dialogs", result.get("dialogs", [result]))
    return [d for d in (result or ()) if isinstance(d, dict)]
