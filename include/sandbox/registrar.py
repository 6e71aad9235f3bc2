"""A loopback EPP server (RFC 5730–5734, with RFC 8590 change-poll) for tests and ``make run``.

Registries' EPP test systems (OT&E) are remote, shared, slow to reset and need accreditation; the
cases the registrar steps must survive — a domain transferred away or deleted between runs, a poll
queue of transfers and server-side changes, a ``domain:update`` the registry refuses, a certificate
that must verify — are produced here on demand. panelflow's ``RegistrarHook`` talks to it through
the ``epptools`` client exactly as to a registry. What it answers, as the RFCs define it:

- transport (RFC 5734): TLS 1.2+ over TCP, each message framed by a 4-byte big-endian length that
  counts itself; ``<greeting>`` first. The certificates are made here (``cryptography``): a sandbox
  CA (``ca.pem``, what clients trust) signs the server's for ``localhost``/``127.0.0.1``; with
  ``require_client_cert`` it demands a client certificate of that CA (``issue_client_certificate``).
- session (RFC 5730): ``<hello>`` → greeting; ``<login>`` (version 1.0, lang en, offered objURIs
  only, else 2306/2307) → 1000 or 2200; a command before login or a second login → 2002;
  ``<logout>`` → 1500 and close. Answers echo ``<clTRID>`` with a fresh ``<svTRID>``; malformed
  XML or a DTD → 2001; what is not implemented here → 2000.
- domain (RFC 5731): ``<check>``; ``<info>`` (``infData`` in the RFC's order, authInfo for the
  sponsor only) — 2303 unknown, 2201 another client's; ``<update>`` (``add``/``rem`` hostObj and
  client statuses, ``chg`` registrant) — 2304 under ``*UpdateProhibited``/``pendingDelete``, 2303
  for a host object that does not exist, 2306 for fewer than 2 or more than 13 name servers.
- host (RFC 5732): ``<check>``; ``<create>`` of an external host → creData (in-zone: 2003, glue).
- contact (RFC 5733): ``<info>`` (one ``int`` postalInfo, voice, email, clID, dates) — 2303.
- poll (RFC 5730 §2.9.2.3): ``op="req"`` → 1300 empty, or 1301 with ``<msgQ count id>``, qDate,
  msg and either a transfer's ``domain:trnData`` (RFC 5731 §3.3) or a server-side change: the
  domain's ``infData`` plus ``changePoll:changeData`` in ``<extension>``; ``op="ack"`` → 1000 with
  the count left, 2303 for an unknown id. Each client sees its own queue, oldest first, the same
  message until it is acked.

A domain whose name contains ``broken``, or that ``fail(name)`` names, answers ``<info>`` 2400.
Controls (tests): ``add_domain``, ``change_domain`` (optionally queueing a change message),
``change_contact``, ``queue_change``, ``transfer``, ``delete_domain``, ``fail``; ``.domains``,
``.hosts``, ``.messages(clid)``, ``.commands`` (client, command, object, result code of each).

Run it: ``python -m sandbox.registrar --host 127.0.0.1 --port 8766 [--tls-dir DIR] [--clid ID]
[--password PW] [--domains 25]`` (password: ``$PANELFLOW_SANDBOX_REGISTRAR_PASSWORD`` or
``sandbox-pw1``, a sandbox value). ``--tls-dir`` keeps the CA across restarts.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import logging
import os
import re
import signal
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from sandbox.registrar_tls import certificates, client_certificate

EPP = "urn:ietf:params:xml:ns:epp-1.0"
DOMAIN = "urn:ietf:params:xml:ns:domain-1.0"
CONTACT = "urn:ietf:params:xml:ns:contact-1.0"
HOST = "urn:ietf:params:xml:ns:host-1.0"
CHANGEPOLL = "urn:ietf:params:xml:ns:changePoll-1.0"
OBJ_URIS = (DOMAIN, CONTACT, HOST)
PREFIXES = {EPP: "", DOMAIN: "domain", CONTACT: "contact", HOST: "host", CHANGEPOLL: "changePoll"}

DEFAULT_CLID = "panelflow-sandbox"
DEFAULT_PASSWORD = "sandbox-pw1"
MAX_FRAME = 1 << 20
ROLES = ("admin", "tech", "billing")  # RFC 5731 contact types; the registrant is its own element
MESSAGES = {
    1000: "Command completed successfully", 1300: "Command completed successfully; no messages",
    1301: "Command completed successfully; ack to dequeue", 1500: "Command completed successfully; ending session",
    2000: "Unknown command", 2001: "Command syntax error", 2002: "Command use error",
    2003: "Required parameter missing", 2005: "Parameter value syntax error", 2200: "Authentication error",
    2201: "Authorization error", 2302: "Object exists", 2303: "Object does not exist",
    2304: "Object status prohibits operation", 2306: "Parameter value policy error",
    2307: "Unimplemented object service", 2400: "Command failed",
}
_UPDATE_BLOCKERS = {"clientUpdateProhibited", "serverUpdateProhibited", "pendingDelete"}

log = logging.getLogger("panelflow.sandbox.registrar")
for _uri, _name in PREFIXES.items():
    ET.register_namespace(_name, _uri)


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.0Z")


class EppError(Exception):
    """A command refused with an EPP result code (and the value that caused it)."""

    def __init__(self, code: int, reason: str | None = None):
        super().__init__(f"{code} {reason or MESSAGES[code]}")
        self.code, self.reason = code, reason


# -- demo data ---------------------------------------------------------------------------------

def demo_contact(handle: str, n: int = 0, *, label: str = "customer", role: str = "registrant",
                 clid: str = DEFAULT_CLID) -> dict[str, Any]:
    return {"id": handle, "roid": f"C{n:06d}-SBX", "clID": clid, "name": f"{role.title()} of {label}",
            "org": f"{label.title()} Ltd", "street": [f"{n + 1} High Street"], "city": "London", "sp": None,
            "pc": "EC1A 1AA", "cc": "GB", "voice": f"+44.20{n:08d}", "email": f"{role}@{label}.example",
            "crDate": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)}


def demo_domain(name: str, n: int = 0, *, clid: str = DEFAULT_CLID,
                nameservers: tuple[str, ...] = ("ns1.hostmatic.example", "ns2.hostmatic.example"),
                statuses: tuple[str, ...] = ("clientTransferProhibited",)) -> tuple[dict[str, Any], list[dict]]:
    """A domain and its four contacts (registrant, admin, tech, billing), as a registry holds them."""
    label = name.split(".")[0]
    handles = {role: f"{label[:6].upper()}-{role[:3].upper()}-{n:04d}" for role in ("registrant", *ROLES)}
    contacts = [demo_contact(h, n, label=label, role=role, clid=clid) for role, h in handles.items()]
    created = dt.datetime(2024, 1 + n % 12, 1 + n % 28, tzinfo=dt.timezone.utc)
    domain = {"name": name.lower(), "roid": f"D{n:06d}-SBX", "statuses": list(statuses), "clID": clid,
              "registrant": handles["registrant"], "contacts": {role: [handles[role]] for role in ROLES},
              "ns": list(nameservers), "crDate": created, "upDate": None, "trDate": None,
              "exDate": dt.datetime(2027 + n % 3, 1 + n % 12, 1 + n % 28, tzinfo=dt.timezone.utc),
              "authInfo": f"auth-{n:04d}-sbx"}
    return domain, contacts


def demo_domains(count: int = 25, clid: str = DEFAULT_CLID) -> list[tuple[dict[str, Any], list[dict]]]:
    """``count`` demo domains (``customer001.example`` …), the last one ``broken-detail.example``."""
    domains = [demo_domain(f"customer{i:03d}.example", i, clid=clid) for i in range(1, count)]
    if count > 0:
        domains.append(demo_domain("broken-detail.example", count, clid=clid))
    return domains


# -- the registry ------------------------------------------------------------------------------

class RegistrarSandbox:
    """The emulator: ``start()`` → listening on ``host:port`` with TLS; ``stop()`` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, clients: dict[str, str] | None = None,
                 domains: list[tuple[dict[str, Any], list[dict]]] | None = None, tls_dir: str | Path | None = None,
                 require_client_cert: bool = False):
        self.host, self.port = host, port
        self.clients = dict(clients or {DEFAULT_CLID: DEFAULT_PASSWORD})
        self.require_client_cert = require_client_cert
        self._tmp = None if tls_dir else tempfile.TemporaryDirectory(prefix="epp-sandbox-")
        self._tls_dir = Path(tls_dir or self._tmp.name)
        self._lock = threading.RLock()
        self._domains: dict[str, dict[str, Any]] = {}
        self._contacts: dict[str, dict[str, Any]] = {}
        self._hosts: set[str] = set()
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._failing: set[str] = set()
        self._ids = itertools.count(1)
        self._clock = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # deterministic, always moves
        self._commands: list[dict[str, Any]] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        for domain, contacts in demo_domains() if domains is None else domains:
            self.add_domain(domain, contacts)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "RegistrarSandbox":
        ca, _, cert, key = certificates(self._tls_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(ca)
        registry = self

        class Handler(_Session):
            sandbox = registry
            tls = context

        self._server = socketserver.ThreadingTCPServer((self.host, self.port), Handler, bind_and_activate=False)
        self._server.allow_reuse_address = True
        self._server.daemon_threads = True
        self._server.server_bind()
        self._server.server_activate()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="epp-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "RegistrarSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    @property
    def ca_file(self) -> str:
        return str(certificates(self._tls_dir)[0])

    @property
    def ca_pem(self) -> str:
        return Path(self.ca_file).read_text()

    def issue_client_certificate(self, clid: str) -> tuple[str, str]:
        """A client certificate and its key (PEM), signed by the sandbox CA, for mutual TLS."""
        return client_certificate(self._tls_dir, clid)

    # -- data and control (tests) -------------------------------------------------------------

    def _tick(self) -> dt.datetime:
        self._clock += dt.timedelta(seconds=1)
        return self._clock

    def add_domain(self, domain: dict[str, Any], contacts: list[dict[str, Any]] = ()) -> None:
        with self._lock:
            record = copy.deepcopy(domain)
            self._domains[record["name"]] = record
            self._hosts.update(record["ns"])
            for contact in contacts:
                self._contacts[contact["id"]] = copy.deepcopy(contact)

    def add_contact(self, contact: dict[str, Any]) -> None:
        with self._lock:
            self._contacts[contact["id"]] = copy.deepcopy(contact)

    def change_domain(self, name: str, *, notify: str | None = None, reason: str | None = None, **fields) -> None:
        """Change a domain at the registry (``statuses``, ``ns``, ``exDate`` …); ``notify``: also queue an
        RFC 8590 change message with that operation (``update``, ``renew``, ``autoRenew`` …) to its sponsor."""
        with self._lock:
            record = self._domains[name]
            record.update(copy.deepcopy(fields))
            record["upDate"], record["upID"] = self._tick(), "registry"
            if notify:
                self.queue_change(name, notify, reason=reason)

    def change_contact(self, handle: str, **fields) -> None:
        with self._lock:
            self._contacts[handle].update(copy.deepcopy(fields))
            self._contacts[handle]["upDate"] = self._tick()

    def queue_change(self, name: str, operation: str, *, reason: str | None = None, state: str = "after") -> str:
        """An RFC 8590 change-poll message about ``name`` (as it is now) for its sponsor; returns its id."""
        with self._lock:
            record = copy.deepcopy(self._domains[name])
            return self._queue(record["clID"], {"kind": "change", "domain": record, "operation": operation,
                                                "state": state, "reason": reason,
                                                "text": f"Domain {name} {operation} by the registry"})

    def transfer(self, name: str, to_clid: str, *, status: str = "serverApproved") -> None:
        """The domain moves to ``to_clid`` (unless the status is not an approval); both clients get the
        RFC 5731 ``trnData`` message."""
        with self._lock:
            record = self._domains[name]
            losing, at = record["clID"], self._tick()
            data = {"name": name, "trStatus": status, "reID": to_clid, "reDate": at, "acID": losing, "acDate": at,
                    "exDate": record["exDate"]}
            if status in ("clientApproved", "serverApproved"):
                record["clID"], record["trDate"], record["upDate"] = to_clid, at, at
            for clid in dict.fromkeys((losing, to_clid)):
                self._queue(clid, {"kind": "transfer", "trnData": dict(data),
                                   "text": f"Transfer {status} for {name}"})

    def delete_domain(self, name: str, *, notify: bool = True) -> None:
        """The registry deletes the domain; ``notify``: its sponsor gets a change message (state before)."""
        with self._lock:
            record = self._domains.pop(name)
            if notify:
                self._queue(record["clID"], {"kind": "change", "domain": record, "operation": "delete",
                                             "state": "before", "reason": "expired",
                                             "text": f"Domain {name} deleted by the registry"})

    def fail(self, name: str, failing: bool = True) -> None:
        with self._lock:
            (self._failing.add if failing else self._failing.discard)(name)

    def _queue(self, clid: str, message: dict[str, Any]) -> str:
        message["id"], message["qDate"] = str(next(self._ids)), self._tick()
        self._messages.setdefault(clid, []).append(message)
        return message["id"]

    @property
    def domains(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._domains)

    @property
    def hosts(self) -> set[str]:
        with self._lock:
            return set(self._hosts)

    def messages(self, clid: str = DEFAULT_CLID) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._messages.get(clid, []))

    @property
    def commands(self) -> list[dict[str, Any]]:
        """Every command answered: client, command (``domain:info``, ``poll:ack`` …), object, code."""
        with self._lock:
            return [dict(c) for c in self._commands]

    def _record(self, clid: str | None, command: str, obj: str | None, code: int) -> None:
        log.info("%s %s %s -> %d", clid or "-", command, obj or "", code)  # never a frame: logins carry the password
        with self._lock:
            self._commands.append({"clid": clid, "command": command, "object": obj, "code": code})

    def server_transaction(self) -> str:
        """A new svTRID."""
        return f"SBX-{next(self._ids):08d}"

    # -- commands -----------------------------------------------------------------------------

    def login(self, clid: str, password: str) -> bool:
        expected = self.clients.get(clid)
        return expected is not None and expected == password

    def domain_check(self, names: list[str]) -> list[tuple[str, bool, str | None]]:
        with self._lock:
            return [(n, n not in self._domains, None if n not in self._domains else "In use") for n in names]

    def domain_info(self, clid: str, name: str, auth: str | None) -> dict[str, Any]:
        with self._lock:
            record = self._domains.get(name)
            if record is None:
                raise EppError(2303)
            if name in self._failing or "broken" in name:
                raise EppError(2400, "The registry database did not answer")
            if record["clID"] != clid and auth != record["authInfo"]:
                raise EppError(2201)
            return copy.deepcopy(record)

    def domain_update(self, clid: str, name: str, add: dict, rem: dict, registrant: str | None) -> None:
        with self._lock:
            record = self._domains.get(name)
            if record is None:
                raise EppError(2303)
            if record["clID"] != clid:
                raise EppError(2201)
            blocked = _UPDATE_BLOCKERS.intersection(record["statuses"])
            if blocked:
                raise EppError(2304, sorted(blocked)[0])
            missing = [h for h in add["ns"] if h not in self._hosts]
            if missing:
                raise EppError(2303, missing[0])
            if any(s.startswith("server") for s in add["statuses"] + rem["statuses"]):
                raise EppError(2306, "server statuses are the registry's")
            ns = [h for h in record["ns"] if h not in rem["ns"]] + [h for h in add["ns"] if h not in record["ns"]]
            if not 2 <= len(ns) <= 13:
                raise EppError(2306, f"{len(ns)} name servers (2 to 13 allowed)")
            statuses = [s for s in record["statuses"] if s not in rem["statuses"]]
            statuses += [s for s in add["statuses"] if s not in statuses]
            record["ns"], record["statuses"] = ns, [s for s in statuses if s != "ok"] or ["ok"]
            if registrant:
                record["registrant"] = registrant
            record["upDate"], record["upID"] = self._tick(), clid

    def host_create(self, name: str) -> dt.datetime:
        with self._lock:
            if name in self._hosts:
                raise EppError(2302, name)
            if any(name.endswith("." + d) for d in self._domains):
                raise EppError(2003, "an in-zone host needs its addresses (glue)")
            self._hosts.add(name)
            return self._tick()

    def contact_info(self, name: str) -> dict[str, Any]:
        with self._lock:
            contact = self._contacts.get(name)
            if contact is None:
                raise EppError(2303)
            return copy.deepcopy(contact)

    def poll_request(self, clid: str) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            queue = self._messages.get(clid, [])
            return len(queue), copy.deepcopy(queue[0]) if queue else None

    def poll_ack(self, clid: str, msg_id: str) -> int:
        with self._lock:
            queue = self._messages.get(clid, [])
            for i, message in enumerate(queue):
                if message["id"] == msg_id:
                    del queue[i]
                    return len(queue)
            raise EppError(2303, msg_id)


# -- one client's session ----------------------------------------------------------------------

class _Session(socketserver.BaseRequestHandler):
    sandbox: RegistrarSandbox
    tls: ssl.SSLContext

    def handle(self) -> None:
        self.clid: str | None = None
        try:
            self.conn = self.tls.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake refused: %s", exc)
            return
        self.conn.settimeout(300)
        try:
            self._send(self._greeting())
            while True:
                frame = self._read()
                if frame is None:
                    return
                answer, close = self._answer(frame)
                self._send(answer)
                if close:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            try:
                self.conn.close()
            except OSError:
                pass

    # framing (RFC 5734 §4): the length counts its own 4 bytes
    def _read(self) -> bytes | None:
        header = self._exactly(4)
        if header is None:
            return None
        (length,) = struct.unpack("!I", header)
        if not 5 <= length <= MAX_FRAME:
            return None
        return self._exactly(length - 4)

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _send(self, root: ET.Element) -> None:
        body = b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>' + ET.tostring(root, encoding="utf-8",
                                                                                       xml_declaration=False)
        self.conn.sendall(struct.pack("!I", len(body) + 4) + body)

    # documents
    def _greeting(self) -> ET.Element:
        epp = ET.Element(_q(EPP, "epp"))
        greeting = ET.SubElement(epp, _q(EPP, "greeting"))
        ET.SubElement(greeting, _q(EPP, "svID")).text = "panelflow EPP sandbox"
        ET.SubElement(greeting, _q(EPP, "svDate")).text = _time(dt.datetime.now(dt.timezone.utc))
        menu = ET.SubElement(greeting, _q(EPP, "svcMenu"))
        ET.SubElement(menu, _q(EPP, "version")).text = "1.0"
        ET.SubElement(menu, _q(EPP, "lang")).text = "en"
        for uri in OBJ_URIS:
            ET.SubElement(menu, _q(EPP, "objURI")).text = uri
        ET.SubElement(ET.SubElement(menu, _q(EPP, "svcExtension")), _q(EPP, "extURI")).text = CHANGEPOLL
        dcp = ET.SubElement(greeting, _q(EPP, "dcp"))
        ET.SubElement(ET.SubElement(dcp, _q(EPP, "access")), _q(EPP, "all"))
        statement = ET.SubElement(dcp, _q(EPP, "statement"))
        purpose = ET.SubElement(statement, _q(EPP, "purpose"))
        ET.SubElement(purpose, _q(EPP, "admin"))
        ET.SubElement(purpose, _q(EPP, "prov"))
        recipient = ET.SubElement(statement, _q(EPP, "recipient"))
        ET.SubElement(recipient, _q(EPP, "ours"))
        ET.SubElement(recipient, _q(EPP, "public"))
        ET.SubElement(ET.SubElement(statement, _q(EPP, "retention")), _q(EPP, "stated"))
        return epp

    def _response(self, code: int, cltrid: str | None, *, reason: str | None = None, msgq: dict | None = None,
                  res_data: ET.Element | None = None, extension: ET.Element | None = None) -> ET.Element:
        epp = ET.Element(_q(EPP, "epp"))
        response = ET.SubElement(epp, _q(EPP, "response"))
        result = ET.SubElement(response, _q(EPP, "result"), code=str(code))
        ET.SubElement(result, _q(EPP, "msg")).text = MESSAGES[code]
        if reason:
            ext = ET.SubElement(result, _q(EPP, "extValue"))
            ET.SubElement(ext, _q(EPP, "value")).text = reason
            ET.SubElement(ext, _q(EPP, "reason")).text = reason
        if msgq is not None:
            queue = ET.SubElement(response, _q(EPP, "msgQ"), count=str(msgq["count"]), id=msgq["id"])
            if "qDate" in msgq:
                ET.SubElement(queue, _q(EPP, "qDate")).text = _time(msgq["qDate"])
                ET.SubElement(queue, _q(EPP, "msg")).text = msgq["text"]
        if res_data is not None:
            response.append(res_data)
        if extension is not None:
            response.append(extension)
        trid = ET.SubElement(response, _q(EPP, "trID"))
        if cltrid:
            ET.SubElement(trid, _q(EPP, "clTRID")).text = cltrid
        ET.SubElement(trid, _q(EPP, "svTRID")).text = self.sandbox.server_transaction()
        return epp

    def _answer(self, frame: bytes) -> tuple[ET.Element, bool]:
        if b"<!DOCTYPE" in frame or b"<!ENTITY" in frame:
            return self._response(2001, None, reason="DTDs are not allowed"), False
        try:
            root = ET.fromstring(frame)
        except ET.ParseError as exc:
            return self._response(2001, None, reason=str(exc)), False
        if root.tag != _q(EPP, "epp") or len(root) != 1:
            return self._response(2001, None), False
        element = root[0]
        if element.tag == _q(EPP, "hello"):
            return self._greeting(), False
        if element.tag != _q(EPP, "command") or not len(element):
            return self._response(2001, None), False
        verb = element[0]
        cltrid = (element.findtext(_q(EPP, "clTRID")) or "").strip() or None
        name = verb.tag.rpartition("}")[2]
        obj = verb[0] if len(verb) and verb[0].tag[1:].partition("}")[0] in OBJ_URIS else None
        command = f"poll:{verb.get('op')}" if name == "poll" else name if obj is None else f"{_prefix(obj.tag)}:{name}"
        try:
            if name == "login":
                answer, close = self._login(verb, cltrid), False
            elif name == "logout":
                self._logged_in()
                answer, close = self._response(1500, cltrid), True
            else:
                self._logged_in()
                answer, close = self._command(name, verb, obj, cltrid), False
        except EppError as exc:
            answer, close = self._response(exc.code, cltrid, reason=exc.reason), False
        code = int(answer.find(f"{_q(EPP, 'response')}/{_q(EPP, 'result')}").get("code"))
        self.sandbox._record(self.clid, command, _object_name(obj), code)
        return answer, close

    def _logged_in(self) -> None:
        if self.clid is None:
            raise EppError(2002, "log in first")

    def _login(self, verb: ET.Element, cltrid: str | None) -> ET.Element:
        if self.clid is not None:
            raise EppError(2002, "already logged in")
        clid, pw = verb.findtext(_q(EPP, "clID")), verb.findtext(_q(EPP, "pw"))
        if clid is None or pw is None:
            raise EppError(2003)
        if verb.findtext(f"{_q(EPP, 'options')}/{_q(EPP, 'version')}") != "1.0":
            raise EppError(2306, "version 1.0 only")
        if verb.findtext(f"{_q(EPP, 'options')}/{_q(EPP, 'lang')}") != "en":
            raise EppError(2306, "lang en only")
        for uri in verb.iter(_q(EPP, "objURI")):
            if uri.text not in OBJ_URIS:
                raise EppError(2307, uri.text)
        if not self.sandbox.login(clid.strip(), pw):
            raise EppError(2200)
        self.clid = clid.strip()
        return self._response(1000, cltrid)

    def _command(self, name: str, verb: ET.Element, obj: ET.Element | None, cltrid: str | None) -> ET.Element:
        s = self.sandbox
        if name == "poll":
            return self._poll(verb, cltrid)
        if obj is None:
            raise EppError(2001)
        if obj.tag == _q(DOMAIN, "check") and name == "check":
            data = ET.Element(_q(EPP, "resData"))
            chk = ET.SubElement(data, _q(DOMAIN, "chkData"))
            for n, avail, reason in s.domain_check([_norm(e.text) for e in obj.iter(_q(DOMAIN, "name"))]):
                cd = ET.SubElement(chk, _q(DOMAIN, "cd"))
                ET.SubElement(cd, _q(DOMAIN, "name"), avail="1" if avail else "0").text = n
                if reason:
                    ET.SubElement(cd, _q(DOMAIN, "reason")).text = reason
            return self._response(1000, cltrid, res_data=data)
        if obj.tag == _q(DOMAIN, "info") and name == "info":
            domain = s.domain_info(self.clid, _norm(obj.findtext(_q(DOMAIN, "name"))),
                                   obj.findtext(f"{_q(DOMAIN, 'authInfo')}/{_q(DOMAIN, 'pw')}"))
            data = ET.Element(_q(EPP, "resData"))
            data.append(_domain_inf(domain, with_auth=domain["clID"] == self.clid))
            return self._response(1000, cltrid, res_data=data)
        if obj.tag == _q(DOMAIN, "update") and name == "update":
            def delta(tag: str) -> dict[str, list[str]]:
                block = obj.find(_q(DOMAIN, tag))
                if block is None:
                    return {"ns": [], "statuses": []}
                if block.find(f"{_q(DOMAIN, 'ns')}/{_q(DOMAIN, 'hostAttr')}") is not None:
                    raise EppError(2306, "this registry uses host objects (hostObj)")
                return {"ns": [_norm(h.text) for h in block.iter(_q(DOMAIN, "hostObj"))],
                        "statuses": [st.get("s") for st in block.iter(_q(DOMAIN, "status"))]}

            s.domain_update(self.clid, _norm(obj.findtext(_q(DOMAIN, "name"))), delta("add"), delta("rem"),
                            obj.findtext(f"{_q(DOMAIN, 'chg')}/{_q(DOMAIN, 'registrant')}"))
            return self._response(1000, cltrid)
        if obj.tag == _q(HOST, "check") and name == "check":
            data = ET.Element(_q(EPP, "resData"))
            chk = ET.SubElement(data, _q(HOST, "chkData"))
            hosts = s.hosts
            for e in obj.iter(_q(HOST, "name")):
                cd = ET.SubElement(chk, _q(HOST, "cd"))
                ET.SubElement(cd, _q(HOST, "name"), avail="0" if _norm(e.text) in hosts else "1").text = _norm(e.text)
            return self._response(1000, cltrid, res_data=data)
        if obj.tag == _q(HOST, "create") and name == "create":
            if obj.find(_q(HOST, "addr")) is not None:
                raise EppError(2306, "the sandbox creates external hosts only")
            host = _norm(obj.findtext(_q(HOST, "name")))
            created = s.host_create(host)
            data = ET.Element(_q(EPP, "resData"))
            cre = ET.SubElement(data, _q(HOST, "creData"))
            ET.SubElement(cre, _q(HOST, "name")).text = host
            ET.SubElement(cre, _q(HOST, "crDate")).text = _time(created)
            return self._response(1000, cltrid, res_data=data)
        if obj.tag == _q(CONTACT, "info") and name == "info":
            data = ET.Element(_q(EPP, "resData"))
            data.append(_contact_inf(s.contact_info((obj.findtext(_q(CONTACT, "id")) or "").strip())))
            return self._response(1000, cltrid, res_data=data)
        raise EppError(2000, f"{name} of {obj.tag}")

    def _poll(self, verb: ET.Element, cltrid: str | None) -> ET.Element:
        op = verb.get("op")
        if op == "ack":
            msg_id = verb.get("msgID")
            if not msg_id:
                raise EppError(2003, "msgID")
            left = self.sandbox.poll_ack(self.clid, msg_id)
            return self._response(1000, cltrid, msgq={"count": left, "id": msg_id})
        if op != "req":
            raise EppError(2005, f"op={op}")
        count, message = self.sandbox.poll_request(self.clid)
        if message is None:
            return self._response(1300, cltrid)
        data = ET.Element(_q(EPP, "resData"))
        extension = None
        if message["kind"] == "transfer":
            trn = ET.SubElement(data, _q(DOMAIN, "trnData"))
            t = message["trnData"]
            for tag in ("name", "trStatus", "reID", "reDate", "acID", "acDate", "exDate"):
                value = t.get(tag)
                if value is not None:
                    ET.SubElement(trn, _q(DOMAIN, tag)).text = _time(value) if isinstance(value, dt.datetime) else value
        else:
            data.append(_domain_inf(message["domain"], with_auth=False))
            extension = ET.Element(_q(EPP, "extension"))
            change = ET.SubElement(extension, _q(CHANGEPOLL, "changeData"), state=message["state"])
            ET.SubElement(change, _q(CHANGEPOLL, "operation")).text = message["operation"]
            ET.SubElement(change, _q(CHANGEPOLL, "date")).text = _time(message["qDate"])
            ET.SubElement(change, _q(CHANGEPOLL, "svTRID")).text = f"SBX-CHG-{message['id']}"
            ET.SubElement(change, _q(CHANGEPOLL, "who")).text = "Registry"
            if message.get("reason"):
                ET.SubElement(change, _q(CHANGEPOLL, "reason")).text = message["reason"]
        return self._response(1301, cltrid, msgq={"count": count, "id": message["id"], "qDate": message["qDate"],
                                                  "text": message["text"]}, res_data=data, extension=extension)


def _prefix(tag: str) -> str:
    return PREFIXES.get(tag[1:].partition("}")[0], "?")


def _norm(value: str | None) -> str:
    return (value or "").strip().lower().rstrip(".")


def _object_name(obj: ET.Element | None) -> str | None:
    if obj is None:
        return None
    for child in obj:
        local = child.tag.rpartition("}")[2]
        if local in ("name", "id"):
            return _norm(child.text) if local == "name" else (child.text or "").strip()
    return None


def _domain_inf(d: dict[str, Any], *, with_auth: bool) -> ET.Element:
    """``domain:infData`` in RFC 5731 §3.1.2's element order."""
    inf = ET.Element(_q(DOMAIN, "infData"))
    ET.SubElement(inf, _q(DOMAIN, "name")).text = d["name"]
    ET.SubElement(inf, _q(DOMAIN, "roid")).text = d["roid"]
    for status in d["statuses"]:
        ET.SubElement(inf, _q(DOMAIN, "status"), s=status)
    if d.get("registrant"):
        ET.SubElement(inf, _q(DOMAIN, "registrant")).text = d["registrant"]
    for role in ROLES:
        for handle in d["contacts"].get(role, ()):
            ET.SubElement(inf, _q(DOMAIN, "contact"), type=role).text = handle
    if d["ns"]:
        ns = ET.SubElement(inf, _q(DOMAIN, "ns"))
        for host in d["ns"]:
            ET.SubElement(ns, _q(DOMAIN, "hostObj")).text = host
    ET.SubElement(inf, _q(DOMAIN, "clID")).text = d["clID"]
    ET.SubElement(inf, _q(DOMAIN, "crID")).text = d["clID"]
    ET.SubElement(inf, _q(DOMAIN, "crDate")).text = _time(d["crDate"])
    if d.get("upDate"):
        ET.SubElement(inf, _q(DOMAIN, "upID")).text = d.get("upID") or d["clID"]
        ET.SubElement(inf, _q(DOMAIN, "upDate")).text = _time(d["upDate"])
    ET.SubElement(inf, _q(DOMAIN, "exDate")).text = _time(d["exDate"])
    if d.get("trDate"):
        ET.SubElement(inf, _q(DOMAIN, "trDate")).text = _time(d["trDate"])
    if with_auth:
        ET.SubElement(ET.SubElement(inf, _q(DOMAIN, "authInfo")), _q(DOMAIN, "pw")).text = d["authInfo"]
    return inf


def _contact_inf(c: dict[str, Any]) -> ET.Element:
    """``contact:infData`` in RFC 5733 §3.1.2's element order (one ``int`` postalInfo)."""
    inf = ET.Element(_q(CONTACT, "infData"))
    ET.SubElement(inf, _q(CONTACT, "id")).text = c["id"]
    ET.SubElement(inf, _q(CONTACT, "roid")).text = c["roid"]
    ET.SubElement(inf, _q(CONTACT, "status"), s="ok")
    postal = ET.SubElement(inf, _q(CONTACT, "postalInfo"), type="int")
    ET.SubElement(postal, _q(CONTACT, "name")).text = c["name"]
    if c.get("org"):
        ET.SubElement(postal, _q(CONTACT, "org")).text = c["org"]
    addr = ET.SubElement(postal, _q(CONTACT, "addr"))
    for line in c.get("street") or ():
        ET.SubElement(addr, _q(CONTACT, "street")).text = line
    ET.SubElement(addr, _q(CONTACT, "city")).text = c["city"]
    for tag in ("sp", "pc"):
        if c.get(tag):
            ET.SubElement(addr, _q(CONTACT, tag)).text = c[tag]
    ET.SubElement(addr, _q(CONTACT, "cc")).text = c["cc"]
    if c.get("voice"):
        ET.SubElement(inf, _q(CONTACT, "voice")).text = c["voice"]
    ET.SubElement(inf, _q(CONTACT, "email")).text = c["email"]
    ET.SubElement(inf, _q(CONTACT, "clID")).text = c["clID"]
    ET.SubElement(inf, _q(CONTACT, "crID")).text = c["clID"]
    ET.SubElement(inf, _q(CONTACT, "crDate")).text = _time(c["crDate"])
    if c.get("upDate"):
        ET.SubElement(inf, _q(CONTACT, "upDate")).text = _time(c["upDate"])
    return inf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback EPP registry (panelflow sandbox).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--tls-dir", help="keep the CA (ca.pem) and server key here across restarts")
    parser.add_argument("--clid", default=DEFAULT_CLID, help="the client id (EPP login) of the demo domains")
    parser.add_argument("--password", default=os.environ.get("PANELFLOW_SANDBOX_REGISTRAR_PASSWORD", DEFAULT_PASSWORD),
                        help="its password, 6-16 characters (default $PANELFLOW_SANDBOX_REGISTRAR_PASSWORD)")
    parser.add_argument("--domains", type=int, default=25, help="demo domains (the last one's info always fails)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"\S{6,16}", args.password):
        parser.error("an EPP password is 6 to 16 characters without spaces (RFC 5730 pwType)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s registrar %(message)s", stream=sys.stderr)
    sandbox = RegistrarSandbox(args.host, args.port, {args.clid: args.password},
                               demo_domains(args.domains, args.clid), tls_dir=args.tls_dir).start()
    log.info("EPP over TLS on %s:%s (CA %s)", args.host, sandbox.port, sandbox.ca_file)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
