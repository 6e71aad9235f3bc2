"""Active Directory over LDAP (ldap3): searches, incremental change reads and the writes group actions need.

A directory is an Airflow connection of type ``panelflow_active_directory``: host (a domain
controller), port, login (``svc-panel@corp.example`` or a DN), password, and extras

- ``use_ssl``: LDAPS (implicit TLS); default true when the port is 636 or unset;
- ``start_tls``: upgrade a plain 389 connection with StartTLS before binding;
- ``validate_cert``: verify the DC's certificate (default true); ``ca_certs_file``: a PEM of the
  CA (or the DC's self-signed certificate) to trust instead of the system's;
- ``base_dn``: the default search base (else the domain's ``defaultNamingContext``);
- ``connect_timeout`` (10 s), ``receive_timeout`` (60 s): how long a connect or one answer may take;
- ``page_size``: entries per page of a paged search (1000, AD's MaxPageSize).

The password is only ever sent inside TLS unless the connection asks for neither ``use_ssl`` nor
``start_tls`` (loopback test servers); :meth:`ActiveDirectoryHook.set_password` refuses a
connection without TLS, as AD itself does for ``unicodePwd``.

Why ``uSNChanged`` and not DirSync for incremental reads. Every DC numbers its writes (USN); an
object's ``uSNChanged`` is the USN of its last change on this DC and ``highestCommittedUSN`` in
the rootDSE is the last USN committed. Reading ``(uSNChanged>=W+1)`` under the managed subtree,
with ``W`` the ``highestCommittedUSN`` read *before* the previous pass, returns exactly the objects
changed since, in full, with the attributes we ask for — constructed ones included
(``msDS-UserPasswordExpiryTimeComputed``, ``msDS-User-Account-Control-Computed``). DirSync
(``extend.microsoft.dir_sync``) must be rooted at the naming context, returns every changed object
of the whole domain with only its changed attributes (so each must be merged with what was
stored, and constructed attributes never come), and needs the "Replicating Directory Changes"
right on the service account. Deletions, which a subtree search cannot see, are read from the
tombstones (``isDeleted=TRUE`` in ``CN=Deleted Objects``, with the Show Deleted control): they
keep their ``objectGUID`` and get a new ``uSNChanged``. USNs are per DC and per database, so the
watermark is kept with the DC's ``invocationId`` (:meth:`ActiveDirectoryHook.root_dse`): another
DC or a restored database means a full pass. An object moved out of the managed subtree is not
seen by either search; the steps' periodic full pass reconciles that.

Values are read raw (bytes) and converted here (:class:`ADEntry`), so the result does not depend
on ldap3 loading the schema: GUIDs (little-endian ``objectGUID``), SIDs, FILETIME integers
(``pwdLastSet``, ``lockoutTime``, ``msDS-UserPasswordExpiryTimeComputed``: 100 ns since 1601;
0 and 2^63-1 mean "never") and GeneralizedTime (``whenChanged``). A value that does not parse
raises :class:`ValueError` naming the attribute: the caller reports and skips that one entry.

Errors: :class:`ActiveDirectoryUnavailable` — the DC could not be reached, timed out, was busy or
refused the credentials: worth retrying later; :class:`ActiveDirectoryRejected` — the DC answered
an operation with an LDAP result code (``result``/``description``: ``noSuchObject``,
``insufficientAccessRights``, ``constraintViolation`` …): retrying the same request changes nothing.
"""

from __future__ import annotations

import math
import re
import ssl
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number, flag

FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
FILETIME_NEVER = 0x7FFFFFFFFFFFFFFF

# userAccountControl / msDS-User-Account-Control-Computed bits
UF_ACCOUNTDISABLE = 0x2
UF_LOCKOUT = 0x10
UF_NORMAL_ACCOUNT = 0x200
UF_DONT_EXPIRE_PASSWD = 0x10000
UF_PASSWORD_EXPIRED = 0x800000

MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"
MATCHING_RULE_BIT_AND = "1.2.840.113556.1.4.803"
# SAM_NORMAL_USER_ACCOUNT: user accounts only (no computers, trusts or contacts); sAMAccountType is
# indexed, which makes it the cheapest exact user filter (objectCategory=person plus objectClass=user
# selects the same accounts at about twice the cost on Samba).
USER_FILTER = "(sAMAccountType=805306368)"
GROUP_FILTER = "(objectClass=group)"
OU_FILTER = "(objectClass=organizationalUnit)"
BUILTIN_RDS_SID = "S-1-5-32-555"   # BUILTIN\Remote Desktop Users

# Result codes that mean "the server could not do it now", not "this request is wrong".
_TRANSIENT_RESULTS = {3: "timeLimitExceeded", 51: "busy", 52: "unavailable", 80: "other"}


class ActiveDirectoryError(Exception):
    """An LDAP call to a directory failed."""


class ActiveDirectoryConfigError(ActiveDirectoryError, ValueError):
    """The Airflow connection lacks what the hook needs (host, login)."""


class ActiveDirectoryUnavailable(ActiveDirectoryError):
    """The DC could not be reached, timed out, was busy or refused the bind: retry later."""


class ActiveDirectoryRejected(ActiveDirectoryError):
    """The DC refused the operation with an LDAP result code; the same request would fail again."""

    def __init__(self, operation: str, result: int, description: str, message: str = "", dn: str | None = None):
        self.operation, self.result, self.description, self.message, self.dn = operation, result, description, message, dn
        text = f"{operation}{' ' + dn if dn else ''}: {description} ({result})"
        super().__init__(text + (f": {message}" if message else ""))


# -- value conversion ------------------------------------------------------------------------------

def filetime_to_datetime(value: int | str | bytes | None) -> datetime | None:
    """A FILETIME (100 ns ticks since 1601-01-01 UTC) as an aware datetime; 0 / never → None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii")
    ticks = int(value)
    if ticks <= 0 or ticks >= FILETIME_NEVER:
        return None
    return FILETIME_EPOCH + timedelta(microseconds=ticks // 10)


def datetime_to_filetime(value: datetime) -> int:
    delta = value.astimezone(timezone.utc) - FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


_GENTIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(?:[.,](\d+))?(Z|[+-]\d{4})$")


def generalized_time(value: str | bytes) -> datetime:
    """``20261122043233.0Z`` → aware datetime (AD always writes UTC)."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    m = _GENTIME.match(value.strip())
    if not m:
        raise ValueError(f"not a GeneralizedTime: {value!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    offset = timezone.utc if tz == "Z" else timezone(timedelta(hours=int(tz[:3]), minutes=int(tz[0] + tz[3:])))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=offset).astimezone(timezone.utc)


def guid_from_bytes(raw: bytes) -> uuid.UUID:
    if len(raw) != 16:
        raise ValueError(f"objectGUID is {len(raw)} bytes, not 16")
    return uuid.UUID(bytes_le=raw)


def guid_filter_value(guid: uuid.UUID | str) -> str:
    """An objectGUID as an escaped filter value: ``(objectGUID=\\2d\\2b…)``."""
    return "".join(f"\\{b:02x}" for b in uuid.UUID(str(guid)).bytes_le)


def sid_from_bytes(raw: bytes) -> str:
    if len(raw) < 8 or len(raw) != 8 + 4 * raw[1]:
        raise ValueError("objectSid is malformed")
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack("<" + "I" * raw[1], raw[8:])
    return "S-{}-{}".format(raw[0], authority) + "".join(f"-{s}" for s in subs)


def escape_filter_value(value: str) -> str:
    from ldap3.utils.conv import escape_filter_chars

    return escape_filter_chars(value)


def dn_components(dn: str) -> list[str]:
    """The RDNs of ``dn`` as written (escapes kept), leaf first."""
    from ldap3.utils.dn import to_dn

    return [c.strip() for c in to_dn(dn)] if dn else []


def dn_key(dn: str) -> str:
    """A comparable form of a DN: components split safely, attribute names and values lower-cased."""
    return ",".join(c.strip().lower() for c in dn_components(dn))


def parent_under(dn: str, base_dn: str) -> str | None:
    """The DN of the child of ``base_dn`` that contains ``dn`` (``dn`` itself if it is that child);
    None when ``dn`` is not below ``base_dn``."""
    comps, base = dn_components(dn), dn_components(base_dn)
    if len(comps) <= len(base) or [c.lower() for c in comps[-len(base):]] != [c.lower() for c in base]:
        return None
    return ",".join(comps[-len(base) - 1:])


_EXTENDED_DN_PREFIX = re.compile(r"^(?:<[A-Za-z]+=[^>]*>;)+")


class ADEntry:
    """One search result: its DN and raw attribute values (case-insensitive names), with converters.

    Every converter raises ``ValueError("<attribute>: …")`` for a value that does not parse.
    """

    __slots__ = ("dn", "_raw", "_range_end")

    def __init__(self, dn: str, raw: Mapping[str, Sequence[bytes]]):
        self.dn = _EXTENDED_DN_PREFIX.sub("", dn)   # the extended-DN control also extends the entry's own DN
        self._raw = {}
        self._range_end: dict[str, str] = {}
        for name, values in raw.items():
            base, _, options = name.partition(";")   # member;range=0-1499 → member (those values only)
            self._raw.setdefault(base.lower(), []).extend(values)
            if options.lower().startswith("range="):
                self._range_end[base.lower()] = options.rsplit("-", 1)[1]

    def range_end(self, name: str) -> str | None:
        """The last value index the DC sent for ``name`` (``"*"``: the last one), None when it sent
        the values without a range."""
        return self._range_end.get(name.lower())

    def partial(self, name: str) -> bool:
        """Whether the DC sent only the first range of ``name``'s values (AD: more than
        MaxValRange, 1500, values): read the rest with :meth:`ActiveDirectoryHook.ranged_values`."""
        return self.range_end(name) not in (None, "*")

    def __repr__(self) -> str:
        return f"ADEntry({self.dn!r})"

    def has(self, name: str) -> bool:
        return bool(self._raw.get(name.lower()))

    def raw(self, name: str) -> list[bytes]:
        return list(self._raw.get(name.lower(), ()))

    def texts(self, name: str) -> list[str]:
        try:
            return [v.decode("utf-8") for v in self._raw.get(name.lower(), ())]
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not UTF-8") from exc

    def text(self, name: str) -> str | None:
        values = self.texts(name)
        return values[0] if values else None

    def _parsed(self, name: str, parse, kind: str):
        """The attribute's first value through ``parse``; a value that does not parse names the attribute."""
        value = self.text(name)
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not {kind}") from None

    def int(self, name: str) -> int | None:
        return self._parsed(name, int, "an integer")

    def bool(self, name: str) -> bool | None:
        value = self.text(name)
        if value is None:
            return None
        if value.upper() not in ("TRUE", "FALSE"):
            raise ValueError(f"{name}: {value!r} is not TRUE/FALSE")
        return value.upper() == "TRUE"

    def filetime(self, name: str) -> datetime | None:
        value = self.int(name)
        try:
            return filetime_to_datetime(value)
        except (OverflowError, ValueError):
            raise ValueError(f"{name}: {value!r} is not a FILETIME") from None

    def time(self, name: str) -> datetime | None:
        return self._parsed(name, generalized_time, "a GeneralizedTime")

    def _binary(self, name: str, decode):
        """The attribute's first raw value through ``decode``; a value that does not decode names the attribute."""
        values = self.raw(name)
        if not values:
            return None
        try:
            return decode(values[0])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def guid(self, name: str = "objectGUID") -> uuid.UUID | None:
        return self._binary(name, guid_from_bytes)

    def sid(self, name: str = "objectSid") -> str | None:
        return self._binary(name, sid_from_bytes)

    def extended_dns(self, name: str) -> list[tuple[uuid.UUID, str]]:
        """Values read with the extended-DN control (``<GUID=…>;<SID=…>;CN=…``) → (GUID, DN)."""
        out = []
        for value in self.texts(name):
            m = re.match(r"^<GUID=([0-9a-fA-F-]{32,36})>;(?:<SID=[^>]*>;)?(.*)$", value)
            if not m:
                raise ValueError(f"{name}: {value[:80]!r} is not an extended DN")
            out.append((uuid.UUID(m.group(1)), m.group(2)))
        return out


# -- the hook --------------------------------------------------------------------------------------

class ActiveDirectoryHook(BaseHook):
    """One bound LDAP connection to a domain controller per hook (``with`` closes it)."""

    conn_name_attr = "ad_conn_id"
    default_conn_name = "active_directory"
    conn_type = "panelflow_active_directory"
    hook_name = "Active Directory (LDAP)"

    DEFAULT_PAGE_SIZE = 1000     # AD's MaxPageSize: fewer round trips cannot be had
    DEFAULT_CONNECT_TIMEOUT = 10.0
    DEFAULT_RECEIVE_TIMEOUT = 60.0

    def __init__(self, ad_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.ad_conn_id = ad_conn_id
        self._conn = None
        self._settings: dict[str, Any] | None = None
        self._dse: dict[str, Any] | None = None

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField

        return {
            "base_dn": StringField(lazy_gettext("Base DN"), widget=BS3TextFieldWidget()),
            "use_ssl": BooleanField(lazy_gettext("LDAPS (port 636)"), default=True),
            "start_tls": BooleanField(lazy_gettext("StartTLS (port 389)"), default=False),
            "validate_cert": BooleanField(lazy_gettext("Validate the DC certificate"), default=True),
            "ca_certs_file": StringField(lazy_gettext("CA certificates file (PEM)"), widget=BS3TextFieldWidget()),
            "page_size": IntegerField(lazy_gettext("Page size"), default=cls.DEFAULT_PAGE_SIZE),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"host": "Domain controller", "login": "Service account (UPN or DN)"},
            "placeholders": {"host": "dc1.corp.example", "port": "636", "login": "svc-panel@corp.example",
                             "extra": '{"use_ssl": true, "base_dn": "OU=Hosting,DC=corp,DC=example",'
                                      ' "ca_certs_file": "/etc/ssl/certs/corp-ca.pem", "receive_timeout": 60}'},
        }

    # -- connection ---------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The connection's settings (no password): host, port, TLS mode, base DN, timeouts, page size."""
        if self._settings is None:
            cid = self.ad_conn_id
            conn = self.get_connection(cid)
            extra = conn.extra_dejson
            if not conn.host or not conn.login:
                raise ActiveDirectoryConfigError(f"connection {cid!r} needs a host and a login")
            start_tls = flag(extra.get("start_tls", False))
            use_ssl = flag(extra.get("use_ssl", not start_tls and conn.port in (None, 636, 3269)))
            self._settings = {
                "host": conn.host, "port": conn.port or (636 if use_ssl else 389), "login": conn.login,
                "password": conn.password or "", "use_ssl": use_ssl, "start_tls": start_tls and not use_ssl,
                "validate_cert": flag(extra.get("validate_cert", True)),
                "ca_certs_file": extra.get("ca_certs_file") or None,
                "base_dn": extra.get("base_dn") or None,
                "connect_timeout": extra_number(cid, extra, "connect_timeout", self.DEFAULT_CONNECT_TIMEOUT),
                "receive_timeout": extra_number(cid, extra, "receive_timeout", self.DEFAULT_RECEIVE_TIMEOUT),
                "page_size": extra_number(cid, extra, "page_size", self.DEFAULT_PAGE_SIZE, kind=int),
            }
        return self._settings

    @property
    def encrypted(self) -> bool:
        s = self.settings()
        return s["use_ssl"] or s["start_tls"]

    def _server(self):
        from ldap3 import NONE, Server, Tls

        s = self.settings()
        tls = None
        if s["use_ssl"] or s["start_tls"]:
            tls = Tls(validate=ssl.CERT_REQUIRED if s["validate_cert"] else ssl.CERT_NONE,
                      ca_certs_file=s["ca_certs_file"], version=ssl.PROTOCOL_TLS_CLIENT)
        return Server(s["host"], port=s["port"], use_ssl=s["use_ssl"], tls=tls, get_info=NONE,
                      connect_timeout=s["connect_timeout"])

    def _open(self, user: str, password: str):
        from ldap3 import SIMPLE, Connection
        from ldap3.core.exceptions import LDAPException

        s = self.settings()
        conn = Connection(self._server(), user=user, password=password, authentication=SIMPLE,
                          receive_timeout=max(1, math.ceil(s["receive_timeout"])), raise_exceptions=True, auto_referrals=False,
                          check_names=False, return_empty_attributes=False, auto_bind="NONE",
                          auto_range=False)   # ldap3's own range follow-up drops our controls: ranged_values()
        try:
            conn.open()
            if s["start_tls"]:
                conn.start_tls()
            conn.bind()
        except LDAPException as exc:
            _unbind(conn)
            raise self._translate("bind", exc, None) from exc
        return conn

    def get_conn(self):
        """The bound ldap3 connection (connects and binds on first use)."""
        if self._conn is None:
            s = self.settings()
            self._conn = self._open(s["login"], s["password"])
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _unbind(conn)

    def __enter__(self) -> "ActiveDirectoryHook":
        self.get_conn()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self:
                dse = self.root_dse()
        except (ActiveDirectoryError, ValueError) as exc:
            return False, str(exc)
        return True, f"bound to {dse.get('dnsHostName')}; highestCommittedUSN {dse.get('highestCommittedUSN')}"

    def check_credentials(self, user: str, password: str) -> bool:
        """Whether ``user`` can bind with ``password`` (a failed bind counts towards lockout, as in AD)."""
        try:
            conn = self._open(user, password)
        except ActiveDirectoryUnavailable as exc:
            if getattr(exc, "result", None) == 49:
                return False
            raise
        _unbind(conn)
        return True

    def _translate(self, operation: str, exc: Exception, dn: str | None) -> ActiveDirectoryError:
        from ldap3.core.exceptions import LDAPOperationResult

        s = self._settings or {}
        where = f"{self.ad_conn_id} ({s.get('host')}:{s.get('port')})"
        if isinstance(exc, LDAPOperationResult):
            code, desc = exc.result, exc.description
            msg = (exc.message or "").strip()
            if code == 49:
                err = ActiveDirectoryUnavailable(f"{where}: {operation}: the DC refused the credentials"
                                                 f" (invalidCredentials){': ' + msg if msg else ''}")
                err.result = code
                return err
            if code in _TRANSIENT_RESULTS:
                err = ActiveDirectoryUnavailable(f"{where}: {operation}: {desc} ({code}) {msg}".strip())
                err.result = code
                return err
            return ActiveDirectoryRejected(operation, code, desc, msg, dn)
        return ActiveDirectoryUnavailable(f"{where}: {operation}: {type(exc).__name__}: {exc}")

    def _call(self, operation: str, dn: str | None, fn, *args, **kwargs):
        from ldap3.core.exceptions import LDAPException

        try:
            return fn(*args, **kwargs)
        except LDAPException as exc:
            translated = self._translate(operation, exc, dn)
            if isinstance(translated, ActiveDirectoryUnavailable):
                self.close()           # the session is not to be trusted any more
            raise translated from exc

    # -- reading ------------------------------------------------------------------------------------

    def root_dse(self) -> dict[str, Any]:
        """The rootDSE as of now: naming contexts, ``highestCommittedUSN`` (int), ``dnsHostName``,
        ``dsServiceName`` and that DSA's ``invocationId`` (UUID) — what a USN watermark belongs to."""
        from ldap3 import BASE

        attrs = ["defaultNamingContext", "configurationNamingContext", "rootDomainNamingContext",
                 "highestCommittedUSN", "dnsHostName", "dsServiceName", "ldapServiceName"]
        entry = self.get("", attrs, scope=BASE, filter="(objectClass=*)")
        if entry is None:
            raise ActiveDirectoryUnavailable(f"{self.ad_conn_id}: the DC returned no rootDSE")
        dse = {a: entry.text(a) for a in attrs}
        dse["highestCommittedUSN"] = entry.int("highestCommittedUSN")
        dse["invocationId"] = None
        if self._dse and self._dse.get("dsServiceName") == dse["dsServiceName"]:
            dse["invocationId"] = self._dse["invocationId"]
        elif dse["dsServiceName"]:
            ntds = self.get(dse["dsServiceName"], ["invocationId"], scope=BASE)
            dse["invocationId"] = ntds.guid("invocationId") if ntds else None
        self._dse = dse
        return dse

    @property
    def base_dn(self) -> str:
        return self.settings()["base_dn"] or self.root_dse()["defaultNamingContext"]

    def search(self, base: str, filter: str, attributes: Iterable[str], *, scope: str = "SUBTREE",
               controls: list | None = None, page_size: int | None = None) -> Iterator[ADEntry]:
        """Every entry matching ``filter`` under ``base``, read page by page (a generator: one page
        in memory at a time). Referrals are not followed."""
        conn = self.get_conn()
        size = page_size or self.settings()["page_size"]
        attrs = list(attributes)
        results = self._call("search", base, conn.extend.standard.paged_search, base, filter, search_scope=scope,
                             attributes=attrs, controls=controls, paged_size=size, generator=True)
        while True:
            try:
                item = self._call("search", base, next, results)
            except StopIteration:
                return
            if item.get("type") == "searchResEntry":
                yield ADEntry(item["dn"], item.get("raw_attributes") or {})

    def get(self, dn: str, attributes: Iterable[str], *, scope: str = "BASE", filter: str = "(objectClass=*)",
            controls: list | None = None) -> ADEntry | None:
        """The entry ``dn`` (None when it does not exist)."""
        conn = self.get_conn()
        try:
            self._call("search", dn, conn.search, dn, filter, search_scope=scope, attributes=list(attributes),
                       controls=controls)
        except ActiveDirectoryRejected as exc:
            if exc.result == 32:     # noSuchObject
                return None
            raise
        for item in conn.response or ():
            if item.get("type") == "searchResEntry":
                return ADEntry(item["dn"], item.get("raw_attributes") or {})
        return None

    def changed_since(self, base: str, filter: str, usn: int | None, attributes: Iterable[str],
                      **kwargs) -> Iterator[ADEntry]:
        """Entries under ``base`` matching ``filter`` whose ``uSNChanged`` is above ``usn`` (all when None)."""
        if usn is not None:      # the USN term first: Samba evaluates it first, and it selects the fewest
            filter = f"(&(uSNChanged>={int(usn) + 1}){filter})"
        return self.search(base, filter, attributes, **kwargs)

    def deleted_since(self, usn: int | None, filter: str, attributes: Iterable[str] = ("objectGUID",
                                                                                        "lastKnownParent")) -> Iterator[ADEntry]:
        """Tombstones (deleted objects) matching ``filter`` deleted after ``usn`` — read with the
        Show Deleted control from the domain's Deleted Objects container."""
        from ldap3.protocol.microsoft import show_deleted_control

        nc = self.root_dse()["defaultNamingContext"]
        f = f"(&(isDeleted=TRUE){filter}" + (f"(uSNChanged>={int(usn) + 1})" if usn is not None else "") + ")"
        return self.search(f"CN=Deleted Objects,{nc}", f, ["objectGUID", "uSNChanged", *attributes],
                           controls=[show_deleted_control(criticality=True)])

    def ranged_values(self, dn: str, attribute: str, controls: list | None = None, *, per_range: int | None = None,
                      max_rounds: int = 100_000) -> list[bytes]:
        """Every value of a multi-valued attribute, read range by range (``member;range=0-*``, then
        from one past the last value the DC sent) — AD sends at most MaxValRange (1500) at a time.
        ``per_range`` asks for ranges of that size instead of "as many as the DC sends"."""
        values: list[bytes] = []
        low = 0
        for _ in range(max_rounds):
            high_asked = "*" if per_range is None else str(low + per_range - 1)
            entry = self.get(dn, [f"{attribute};range={low}-{high_asked}"], controls=controls)
            if entry is None:
                raise ActiveDirectoryRejected("search", 32, "noSuchObject", "", dn)
            values += entry.raw(attribute)
            high = entry.range_end(attribute)
            if high in (None, "*"):               # no range (all values at once), or the last one
                return values
            low = int(high) + 1
        raise ActiveDirectoryError(f"{dn}: {attribute} did not end within {max_rounds} ranges")

    def members_with_guids(self, group_dn: str, per_range: int | None = None) -> list[tuple[uuid.UUID, str]]:
        """A group's direct members as (objectGUID, DN), read with the extended-DN control, every
        range of a large group's ``member``."""
        from ldap3.protocol.microsoft import extended_dn_control

        raw = self.ranged_values(group_dn, "member", controls=[extended_dn_control(criticality=True, hex_format=False)],
                                 per_range=per_range)
        return ADEntry(group_dn, {"member": raw}).extended_dns("member")

    def builtin_rds_group_dn(self) -> str:
        """The DN of BUILTIN\\Remote Desktop Users (found by its well-known SID)."""
        nc = self.root_dse()["defaultNamingContext"]
        for entry in self.search(nc, f"(objectSid={BUILTIN_RDS_SID})", ["cn"]):
            return entry.dn
        return f"CN=Remote Desktop Users,CN=Builtin,{nc}"

    def find_dn(self, base: str, filter: str) -> str | None:
        for entry in self.search(base, filter, ["objectGUID"], page_size=2):
            return entry.dn
        return None

    # -- writing ------------------------------------------------------------------------------------

    def add(self, dn: str, object_class: str | Sequence[str], attributes: Mapping[str, Any] | None = None) -> None:
        conn = self.get_conn()
        self._call("add", dn, conn.add, dn, object_class, dict(attributes or {}))

    def delete(self, dn: str) -> None:
        conn = self.get_conn()
        self._call("delete", dn, conn.delete, dn)

    def replace_attributes(self, dn: str, changes: Mapping[str, Any]) -> None:
        """Set each attribute to the given value(s); ``None`` or ``[]`` clears it."""
        from ldap3 import MODIFY_REPLACE

        mods = {}
        for name, value in changes.items():
            values = [] if value is None else (list(value) if isinstance(value, (list, tuple, set)) else [value])
            mods[name] = [(MODIFY_REPLACE, values)]
        conn = self.get_conn()
        self._call("modify", dn, conn.modify, dn, mods)

    def add_member(self, group_dn: str, member_dn: str) -> bool:
        """Add ``member_dn`` to the group; False when it already was a member."""
        from ldap3 import MODIFY_ADD

        conn = self.get_conn()
        try:
            self._call("add member", group_dn, conn.modify, group_dn, {"member": [(MODIFY_ADD, [member_dn])]})
        except ActiveDirectoryRejected as exc:
            if exc.result in (20, 68):      # attributeOrValueExists / entryAlreadyExists
                return False
            raise
        return True

    def remove_member(self, group_dn: str, member_dn: str) -> bool:
        """Remove ``member_dn`` from the group; False when it was not a member."""
        from ldap3 import MODIFY_DELETE

        conn = self.get_conn()
        try:
            self._call("remove member", group_dn, conn.modify, group_dn, {"member": [(MODIFY_DELETE, [member_dn])]})
        except ActiveDirectoryRejected as exc:
            if exc.result in (16, 53):      # noSuchAttribute / unwillingToPerform (AD: not a member)
                if self.get(group_dn, ["objectGUID"]) is None:
                    raise
                return False
            raise
        return True

    def rename(self, dn: str, new_rdn: str) -> str:
        """Rename the object in place (``CN=New Name``; the value is escaped here) → its new DN."""
        from ldap3.utils.dn import escape_rdn

        attr, _, value = new_rdn.partition("=")
        rdn = f"{attr}={escape_rdn(value)}"
        conn = self.get_conn()
        self._call("modify_dn", dn, conn.modify_dn, dn, rdn)
        return ",".join([rdn, *dn_components(dn)[1:]])

    def move(self, dn: str, new_parent_dn: str) -> str:
        """Move the object under ``new_parent_dn`` keeping its RDN → its new DN."""
        rdn = dn_components(dn)[0]
        conn = self.get_conn()
        self._call("modify_dn", dn, conn.modify_dn, dn, rdn, new_superior=new_parent_dn)
        return f"{rdn},{new_parent_dn}"

    def set_enabled(self, dn: str, enabled: bool) -> int:
        """Clear or set ACCOUNTDISABLE in userAccountControl (other bits kept) → the new value."""
        entry = self.get(dn, ["userAccountControl"])
        if entry is None:
            raise ActiveDirectoryRejected("modify", 32, "noSuchObject", "", dn)
        uac = entry.int("userAccountControl") or UF_NORMAL_ACCOUNT
        new = (uac & ~UF_ACCOUNTDISABLE) if enabled else (uac | UF_ACCOUNTDISABLE)
        if new != uac:
            self.replace_attributes(dn, {"userAccountControl": str(new)})
        return new

    def set_password(self, dn: str, password: str, must_change: bool = False) -> None:
        """Set (reset) the password through ``unicodePwd`` — only over LDAPS/StartTLS, as AD requires.
        ``must_change``: the user must change it at next logon (pwdLastSet = 0)."""
        if not self.encrypted:
            raise ValueError(f"{self.ad_conn_id}: setting a password needs use_ssl or start_tls")
        changes: dict[str, Any] = {"unicodePwd": encode_password(password)}
        if must_change:
            changes["pwdLastSet"] = "0"
        self.replace_attributes(dn, changes)

    def unlock(self, dn: str) -> None:
        """Clear a lockout (lockoutTime = 0)."""
        self.replace_attributes(dn, {"lockoutTime": "0"})


def encode_password(password: str) -> bytes:
    """The ``unicodePwd`` value: the password in double quotes, UTF-16-LE."""
    return f'"{password}"'.encode("utf-16-le")


def _unbind(conn) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - a dead socket is already what we want
        pass
