"""A domain registrar (or registry) over EPP — RFC 5730–5734 — through the ``epptools`` client.

EPP is what registries and registrars publish for provisioning: one TLS session (RFC 5734,
port 700) in which the client logs in with its client id (clID) and password, then sends
``domain:info``, ``contact:info``, ``domain:update``, ``host:check``/``create`` and ``poll``
commands, each answered with a result code (1000 done, 1300/1301 poll empty/message, 2201 not
yours, 2303 no such object, 2304 a status forbids it …). ``epptools`` (MIT, stdlib only) does the
framing, TLS, login with the services the greeting offers, XML built with ElementTree and the
clTRID check of every answer; this hook turns its answers into panelflow's values and errors.

The registrar account is an Airflow connection (type ``panelflow_epp``; ``registrar`` by default,
one per ``registrar_accounts`` row, whose ``conn_id`` names it): host, port (700), login = the
clID, password = the EPP password (6–16 characters, RFC 5730), and extras:

- ``ca_file`` (a path) or ``ca_pem`` (the PEM itself): the CA that signs the server's certificate
  (a registry's private CA, the sandbox's); neither → the system's trust store. The server's
  certificate and name are always verified: there is no switch to turn that off;
- ``client_cert_file`` and ``client_key_file`` (paths), or ``client_cert_pem`` and
  ``client_private_key`` (PEM): the registrar's certificate where the registry demands mutual TLS;
- ``connect_timeout`` (10 s), ``read_timeout`` (30 s);
- ``obj_uris`` / ``ext_uris``: the services to log in with (default: what the greeting offers);
- ``lang`` (``en``).

PEM given in extras is written, for the session only, to a private (0700) temporary folder that
``close()`` removes, because ``ssl`` loads client certificates from files. Passwords and authInfo
are never logged (``epptools`` masks them in frames; nothing here logs frames).

Errors: :class:`RegistrarUnavailable` — unreachable, TLS refused, timed out, session closed by the
server (25xx) or a command failed server-side (2400): worth a later retry; the session is unusable
after a transport failure. :class:`RegistrarAuthenticationError` — login refused (2200).
:class:`RegistrarNotFound` (2303), :class:`RegistrarNotSponsored` (2201/2202: another client's),
:class:`RegistrarRefused` (any other 2xxx, with ``code``): the same command would fail again.
:class:`RegistrarResponseError` — an answer the RFCs do not define. :class:`RegistrarConfigError`
— the connection lacks what EPP needs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow.sdk import BaseHook

from panelflow.hooks._extras import extra_number

ROLES = ("registrant", "admin", "tech", "billing")


class RegistrarError(Exception):
    """Any failure to get an answer from the registrar."""


class RegistrarConfigError(RegistrarError, ValueError):
    """The connection lacks what an EPP session needs (host, clID, password, a readable PEM)."""


class RegistrarUnavailable(RegistrarError):
    """Unreachable, TLS refused, timed out, or the server failed or closed the session."""


class RegistrarRefused(RegistrarError):
    """The server answered a command with an error result code (``code``), or the client refused to
    send a command the RFCs' schema forbids (``code`` None); resending it unchanged will not help."""

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.code = code


class RegistrarAuthenticationError(RegistrarRefused):
    """The login was refused (2200): every command of this account fails the same way."""


class RegistrarNotFound(RegistrarRefused):
    """No such object at the server (2303): deleted, or never there."""


class RegistrarNotSponsored(RegistrarRefused):
    """The object exists but another client sponsors it (2201/2202): transferred away."""


class RegistrarResponseError(RegistrarError):
    """An answer that is not what the RFCs define (no object name, a date that is no dateTime)."""


@dataclass(frozen=True)
class Contact:
    handle: str
    name: str | None = None
    organization: str | None = None
    email: str | None = None
    phone: str | None = None
    street: str | None = None
    city: str | None = None
    postal_code: str | None = None
    state: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class DomainInfo:
    """A ``domain:infData`` (RFC 5731 §3.1.2) as panelflow keeps it."""

    name: str
    roid: str | None
    statuses: tuple[str, ...]
    sponsor: str | None                       # clID of the sponsoring client
    nameservers: tuple[str, ...] = ()         # lower case, no root dot, in the server's order
    contacts: dict[str, str] = field(default_factory=dict)  # role (ROLES) → handle (the first of a role)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    transferred_at: datetime | None = None


@dataclass(frozen=True)
class PollMessage:
    """One queued service message (RFC 5730 §2.9.2.3): what it is about and what it says.

    ``kind``: ``transfer`` (a ``domain:trnData``, ``transfer`` holds trStatus, reID, acID …),
    ``change`` (RFC 8590: ``change`` holds operation, state, date, who, reason; ``info`` the domain
    as the message describes it), ``pending`` (a ``panData``: an offline outcome), or ``other``."""

    id: str
    queued_at: datetime | None
    text: str | None
    kind: str
    domain: str | None = None
    transfer: dict[str, Any] | None = None
    change: dict[str, Any] | None = None
    info: DomainInfo | None = None


@dataclass(frozen=True)
class UpdateResult:
    code: int
    message: str | None
    server_transaction: str | None


class RegistrarHook(BaseHook):
    """One EPP session per hook, opened at the first command; ``with`` (or ``close()``) logs out."""

    conn_name_attr = "registrar_conn_id"
    default_conn_name = "registrar"
    conn_type = "panelflow_epp"
    hook_name = "panelflow registrar (EPP)"

    DEFAULT_PORT = 700
    DEFAULT_CONNECT_TIMEOUT = 10.0
    DEFAULT_READ_TIMEOUT = 30.0

    def __init__(self, registrar_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.registrar_conn_id = registrar_conn_id
        self._client = None
        self._clid: str | None = None
        self._tmp: str | None = None

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextAreaFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import StringField, TextAreaField

        return {
            "ca_file": StringField(lazy_gettext("Server CA file (PEM path)"), widget=BS3TextFieldWidget()),
            "ca_pem": TextAreaField(lazy_gettext("Server CA (PEM)"), widget=BS3TextAreaFieldWidget()),
            "client_cert_file": StringField(lazy_gettext("Client certificate file"), widget=BS3TextFieldWidget()),
            "client_key_file": StringField(lazy_gettext("Client key file"), widget=BS3TextFieldWidget()),
            "client_cert_pem": TextAreaField(lazy_gettext("Client certificate (PEM)"), widget=BS3TextAreaFieldWidget()),
            "client_private_key": TextAreaField(lazy_gettext("Client private key (PEM)"),
                                                widget=BS3TextAreaFieldWidget()),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"host": "EPP server", "login": "Client id (clID)", "password": "EPP password"},
            "placeholders": {"host": "epp.registry.example", "port": "700", "login": "registrar-clid",
                             "extra": '{"ca_file": "/etc/ssl/certs/registry-ca.pem", "connect_timeout": 10,'
                                      ' "read_timeout": 30}'},
        }

    # -- session --------------------------------------------------------------------------------

    @property
    def clid(self) -> str:
        """This account's client id: what ``DomainInfo.sponsor`` is when the domain is ours."""
        if self._clid is None:
            self.get_conn()
        return self._clid

    def _pem_file(self, name: str, text: str) -> str:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="panelflow-epp-")  # mode 0700
        path = os.path.join(self._tmp, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(text)
        return path

    def _config(self):
        from epptools import Config

        cid = self.registrar_conn_id
        conn = self.get_connection(cid)
        extra = conn.extra_dejson
        if not conn.host or not conn.login or not conn.password:
            raise RegistrarConfigError(f"connection {cid!r} needs a host, a login (the clID) and a password")
        files: dict[str, str | None] = {}
        for key, file_key, pem_key in (("ca_file", "ca_file", "ca_pem"),
                                       ("client_cert", "client_cert_file", "client_cert_pem"),
                                       ("client_key", "client_key_file", "client_private_key")):
            if extra.get(pem_key):
                files[key] = self._pem_file(f"{key}.pem", str(extra[pem_key]))
            else:
                files[key] = extra.get(file_key) or None
            if files[key] is not None and not os.path.isfile(files[key]):
                raise RegistrarConfigError(f"connection {cid!r}: {file_key} {files[key]!r} is not a readable file")
        if files["client_key"] and not files["client_cert"]:
            raise RegistrarConfigError(f"connection {cid!r}: a client key without its certificate")
        try:
            timeouts = {"connect_timeout": extra_number(cid, extra, "connect_timeout", self.DEFAULT_CONNECT_TIMEOUT,
                                                        minimum=0.1),
                        "read_timeout": extra_number(cid, extra, "read_timeout", self.DEFAULT_READ_TIMEOUT,
                                                     minimum=1.0)}
        except ValueError as exc:
            raise RegistrarConfigError(str(exc)) from None
        return Config(
            host=conn.host, port=int(conn.port or self.DEFAULT_PORT), clid=conn.login, password=conn.password,
            lang=str(extra.get("lang") or "en"), ca_file=files["ca_file"], client_cert=files["client_cert"],
            client_key=files["client_key"], verify_peer=True, verify_peer_name=True, **timeouts,
            obj_uris=extra.get("obj_uris") or None, ext_uris=extra.get("ext_uris"), cltrid_prefix="panelflow")

    def get_conn(self):
        """The logged-in ``epptools.Client`` (connect, read the greeting, login: once per hook)."""
        if self._client is None:
            from epptools import Client

            client = None
            try:
                config = self._config()
                client = Client(config)
                self._call(lambda: (client.connect(), client.login()), "login")
            except BaseException:
                if client is not None:
                    client.disconnect()
                self.close()  # no socket or PEM file outlives a session that did not open
                raise
            self._client, self._clid = client, config.clid
        return self._client

    def close(self) -> None:
        """Log out (best effort: the server may already have closed) and drop the PEM files."""
        client, self._client = self._client, None
        if client is not None:
            try:
                if client.is_logged_in():
                    client.logout()
            except Exception:  # noqa: BLE001 - a session that cannot log out is closed all the same
                pass
            client.disconnect()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "RegistrarHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def test_connection(self) -> tuple[bool, str]:
        """Whether the server answers over verified TLS and accepts the login."""
        try:
            with self:
                self.get_conn()
        except RegistrarError as exc:
            return False, str(exc)
        return True, "the EPP server answered and accepted the login"

    def _call(self, command, what: str):
        """Run one epptools command, turning its exceptions into this hook's."""
        from epptools.exceptions import (
            AuthenticationException,
            AuthorizationError,
            CommandException,
            ConfigException,
            ConnectionException,
            ObjectDoesNotExistError,
            SessionError,
            ValidationException,
        )

        where = f"registrar {self.registrar_conn_id!r}: {what}"
        try:
            return command()
        except ConfigException as exc:
            raise RegistrarConfigError(f"{where}: {exc}") from exc
        except ConnectionException as exc:
            raise RegistrarUnavailable(f"{where}: {exc}") from exc
        except ValidationException as exc:  # epptools refused to build a frame the schema forbids
            raise RegistrarRefused(f"{where}: not sent: {exc}", None) from exc
        except (OSError, ValueError) as exc:  # a CA or key file ssl cannot load
            raise RegistrarConfigError(f"{where}: {type(exc).__name__}: {exc}") from exc
        except CommandException as exc:
            code = exc.epp_code
            if isinstance(exc, AuthenticationException):
                raise RegistrarAuthenticationError(f"{where}: the login was refused (EPP {code})", code) from exc
            if isinstance(exc, ObjectDoesNotExistError):
                raise RegistrarNotFound(f"{where}: {exc}", code) from exc
            if isinstance(exc, AuthorizationError):
                raise RegistrarNotSponsored(f"{where}: {exc}", code) from exc
            if isinstance(exc, SessionError) or exc.is_retryable():
                raise RegistrarUnavailable(f"{where}: {exc}") from exc
            raise RegistrarRefused(f"{where}: {exc}", code) from exc

    # -- commands -------------------------------------------------------------------------------

    def domain_info(self, name: str) -> DomainInfo:
        client = self.get_conn()
        response = self._call(lambda: client.domain.info(name, hosts="all"), f"domain:info {name}")
        info = _domain_info(response)
        if info.name != name.lower().rstrip("."):
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: asked for {name}, got {info.name}")
        return info

    def contact_info(self, handle: str) -> Contact:
        client = self.get_conn()
        response = self._call(lambda: client.contact.info(handle), f"contact:info {handle}")
        postal = response.postal_info()
        address = postal.get("int") or postal.get("loc") or {}
        return Contact(
            handle=response.object_name() or handle, name=_text(address.get("name")),
            organization=_text(address.get("org")), email=_text(response.email()), phone=_text(response.voice()),
            street=_text("\n".join(s for s in address.get("street") or () if s)), city=_text(address.get("city")),
            postal_code=_text(address.get("pc")), state=_text(address.get("sp")), country=_text(address.get("cc")))

    def ensure_hosts(self, names: list[str]) -> list[str]:
        """Host objects (RFC 5732) for ``names``, created where the server has none; returns the created.

        A ``domain:update`` may only name host objects that exist; an external name server (outside
        the registry's zones) is created without addresses, an in-zone one needs glue the panel does
        not hold, and the server's refusal says so."""
        wanted = [n.lower().rstrip(".") for n in names]
        if not wanted:
            return []
        client = self.get_conn()
        answer = self._call(lambda: client.host.check(wanted), "host:check " + " ".join(wanted))
        available = {k.lower(): v for k, v in answer.availability().items()}
        created = []
        for name in wanted:
            if available.get(name):
                self._call(lambda name=name: client.host.create(name), f"host:create {name}")
                created.append(name)
        return created

    def update_nameservers(self, name: str, add: list[str], remove: list[str]) -> UpdateResult:
        """``domain:update`` adding and removing ``hostObj`` name servers in one command."""
        client = self.get_conn()
        spec: dict[str, Any] = {}
        if add:
            spec["add"] = {"ns": list(add)}
        if remove:
            spec["remove"] = {"ns": list(remove)}
        response = self._call(lambda: client.domain.update(name, **spec), f"domain:update {name}")
        return UpdateResult(response.code(), response.message(), response.sv_trid())

    def poll_request(self) -> PollMessage | None:
        """The oldest message of this client's queue (``poll op="req"``), or ``None`` (1300: empty).

        The server hands out the same message until :meth:`poll_ack` removes it."""
        client = self.get_conn()
        response = self._call(client.poll.request, "poll req")
        if response.code() == 1300:
            return None
        msg_id = response.message_id()
        if response.code() != 1301 or not msg_id:
            raise RegistrarResponseError(f"registrar {self.registrar_conn_id!r}: poll req answered {response.code()}"
                                         " without a message")
        transfer, change, pending = response.transfer(), response.change(), response.pending_action_data()
        info = None
        if change is not None and _has(response, "infData"):
            info = _domain_info(response)
        kind = "transfer" if transfer else "change" if change else "pending" if pending else "other"
        domain = (response.object_name() or (pending or {}).get("object") or None) if kind != "other" else None
        return PollMessage(
            id=msg_id, queued_at=_time(response.queue_date()), text=response.queue_message(), kind=kind,
            domain=domain.lower().rstrip(".") if domain else None,
            transfer={**transfer, "requested_at": _time(transfer["requested_at"]),
                      "act_by": _time(transfer["act_by"]), "expiry_date": _time(transfer["expiry_date"])}
            if transfer else None,
            change={**change, "date": _time(change["date"])} if change else None, info=info)

    def poll_ack(self, msg_id: str) -> int:
        """Acknowledge (delete) a message; returns how many are left in the queue."""
        client = self.get_conn()
        return self._call(lambda: client.poll.ack(msg_id), f"poll ack {msg_id}").message_count()


def _has(response, local: str) -> bool:
    data = response.res_data()
    return data is not None and any(child.tag.rpartition("}")[2] == local for child in data)


def _domain_info(response) -> DomainInfo:
    name = (response.object_name() or "").strip().lower().rstrip(".")
    if not name:
        raise RegistrarResponseError("domain:info answered without a domain name")
    contacts = {"registrant": response.registrant()} if response.registrant() else {}
    for role, handles in response.contacts().items():
        role = role.lower()
        if role in ROLES and handles:
            contacts.setdefault(role, handles[0])
    return DomainInfo(
        name=name, roid=response.roid(), statuses=tuple(sorted(set(response.statuses()))),
        sponsor=response.sponsor(), nameservers=tuple(dict.fromkeys(n.rstrip(".") for n in response.nameservers())),
        contacts=contacts, created_at=_time(response.created_date()), updated_at=_time(response.updated_date()),
        expires_at=_time(response.expiry_date()), transferred_at=_time(response.transfer_date()))


def _time(value: str | None) -> datetime | None:
    """An EPP ``dateTime`` (``2027-04-04T00:00:00.0Z``, or with an offset); ``None`` when absent."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise RegistrarResponseError(f"not an EPP dateTime: {value!r}") from exc


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
