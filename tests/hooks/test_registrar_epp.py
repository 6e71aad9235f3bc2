"""RegistrarHook (EPP over TLS, through epptools) against the loopback EPP server (include/sandbox/registrar.py).

Real TLS on 127.0.0.1 with a certificate the hook must verify; real RFC 5734 framing; the XML the
RFCs define. Nothing of the protocol is mocked.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from harness import ROOT
from panelflow.hooks.registrar import (
    RegistrarAuthenticationError,
    RegistrarConfigError,
    RegistrarHook,
    RegistrarNotFound,
    RegistrarNotSponsored,
    RegistrarRefused,
    RegistrarUnavailable,
)
from sandbox import registrar as sandbox

CLID, PASSWORD = "panelflow-test", "epp-test-pw1"
OTHER = "other-registrar"
EPP = "{urn:ietf:params:xml:ns:epp-1.0}"


def connect(monkeypatch, server, conn_id="registrar_epp", **changes) -> str:
    """Wire ``server`` as the Airflow connection ``conn_id``; ``changes`` replace fields or extras."""
    extra = {"ca_pem": server.ca_pem, "connect_timeout": 5, "read_timeout": 5}
    extra.update(changes.pop("extra", {}))
    conn = {"conn_type": "panelflow_epp", "host": "127.0.0.1", "port": server.port, "login": CLID,
            "password": PASSWORD, "extra": extra, **changes}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


@pytest.fixture
def server():
    domains = [sandbox.demo_domain(f"d{i}.example.test", i, clid=CLID) for i in range(1, 4)]
    domains.append(sandbox.demo_domain("theirs.example.test", 9, clid=OTHER))
    domains.append(sandbox.demo_domain("broken.example.test", 10, clid=CLID))
    with sandbox.RegistrarSandbox(port=0, clients={CLID: PASSWORD, OTHER: "other-pw-1"}, domains=domains) as s:
        yield s


def test_domain_and_contact_info_over_verified_tls(server, monkeypatch):
    with RegistrarHook(connect(monkeypatch, server)) as hook:
        info = hook.domain_info("D2.example.test.")
        contact = hook.contact_info(info.contacts["admin"])
    assert (info.name, info.statuses, info.sponsor, info.nameservers) == (
        "d2.example.test", ("clientTransferProhibited",), CLID, ("ns1.hostmatic.example", "ns2.hostmatic.example"))
    assert info.contacts == {"registrant": "D2-REG-0002", "admin": "D2-ADM-0002", "tech": "D2-TEC-0002",
                             "billing": "D2-BIL-0002"}
    assert info.expires_at.isoformat() == "2029-03-03T00:00:00+00:00" and info.updated_at is None
    assert (contact.handle, contact.email, contact.phone, contact.street, contact.city, contact.country) == (
        "D2-ADM-0002", "admin@d2.example", "+44.2000000002", "3 High Street", "London", "GB")
    assert [c["command"] for c in server.commands] == ["login", "domain:info", "contact:info", "logout"]
    assert {c["clid"] for c in server.commands} == {CLID}


def test_the_server_certificate_is_verified(server, monkeypatch):
    """Without the sandbox CA (the system trust store), the handshake is refused: no command is sent."""
    conn_id = connect(monkeypatch, server, extra={"ca_pem": None})
    with RegistrarHook(conn_id) as hook, pytest.raises(RegistrarUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        hook.domain_info("d1.example.test")
    assert server.commands == []
    ok, message = RegistrarHook(conn_id).test_connection()
    assert not ok and "TLS handshake" in message
    assert RegistrarHook(connect(monkeypatch, server, extra={"ca_file": server.ca_file, "ca_pem": None})
                         ).test_connection() == (True, "the EPP server answered and accepted the login")


def test_login_refused_and_result_codes(server, monkeypatch):
    with RegistrarHook(connect(monkeypatch, server, password="wrong-pw-1")) as hook:
        with pytest.raises(RegistrarAuthenticationError, match="login was refused"):
            hook.domain_info("d1.example.test")
    assert server.commands[-1] == {"clid": None, "command": "login", "object": None, "code": 2200}
    with RegistrarHook(connect(monkeypatch, server)) as hook:
        with pytest.raises(RegistrarNotFound) as missing:
            hook.domain_info("nope.example.test")
        with pytest.raises(RegistrarNotSponsored):
            hook.domain_info("theirs.example.test")
        with pytest.raises(RegistrarUnavailable, match="2400"):
            hook.domain_info("broken.example.test")
        assert hook.domain_info("d1.example.test").name == "d1.example.test"  # the session goes on
    assert missing.value.code == 2303
    assert [c["code"] for c in server.commands if c["command"] == "domain:info"] == [2303, 2201, 2400, 1000]


def test_configuration_errors(server, monkeypatch):
    with pytest.raises(RegistrarConfigError, match="needs a host, a login"):
        RegistrarHook(connect(monkeypatch, server, password=None)).get_conn()
    with pytest.raises(RegistrarConfigError, match="extra 'read_timeout' must be a number"):
        RegistrarHook(connect(monkeypatch, server, extra={"read_timeout": "soon"})).get_conn()
    with pytest.raises(RegistrarConfigError, match="is not a readable file"):
        RegistrarHook(connect(monkeypatch, server, extra={"ca_pem": None, "ca_file": "/nonexistent.pem"})).get_conn()
    with pytest.raises(RegistrarConfigError, match="16"):  # RFC 5730 pwType: 6 to 16 characters
        RegistrarHook(connect(monkeypatch, server, password="x" * 17)).get_conn()


def test_mutual_tls_with_pem_in_the_connection(monkeypatch):
    domains = [sandbox.demo_domain("d1.example.test", 1, clid=CLID)]
    with sandbox.RegistrarSandbox(port=0, clients={CLID: PASSWORD}, domains=domains,
                                  require_client_cert=True) as server:
        with RegistrarHook(connect(monkeypatch, server)) as hook, pytest.raises(RegistrarUnavailable):
            hook.domain_info("d1.example.test")  # no client certificate: the server ends the handshake
        cert, key = server.issue_client_certificate(CLID)
        hook = RegistrarHook(connect(monkeypatch, server, extra={"client_cert_pem": cert, "client_private_key": key}))
        with hook:
            assert hook.domain_info("d1.example.test").sponsor == CLID
            folder = hook._tmp
            assert sorted(os.listdir(folder)) == ["ca_file.pem", "client_cert.pem", "client_key.pem"]
            assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
        assert not os.path.exists(folder)  # the PEM files live for the session only


def test_poll_queue_and_name_server_update(server, monkeypatch):
    with RegistrarHook(connect(monkeypatch, server)) as hook:
        assert hook.poll_request() is None
        server.change_domain("d1.example.test", statuses=["clientHold"], notify="update", reason="abuse")
        server.transfer("d2.example.test", OTHER)
        change = hook.poll_request()
        assert hook.poll_request().id == change.id  # the same message until it is acked
        assert (change.kind, change.domain, change.change["operation"], change.change["state"],
                change.change["reason"], change.info.statuses) == (
            "change", "d1.example.test", "update", "after", "abuse", ("clientHold",))
        assert hook.poll_ack(change.id) == 1
        transfer = hook.poll_request()
        assert (transfer.kind, transfer.domain, transfer.transfer["status"], transfer.transfer["requested_by"],
                transfer.transfer["acting_client"]) == ("transfer", "d2.example.test", "serverApproved", OTHER, CLID)
        assert hook.poll_ack(transfer.id) == 0 and hook.poll_request() is None
        with pytest.raises(RegistrarNotFound):
            hook.poll_ack(transfer.id)

        assert hook.ensure_hosts([]) == []
        assert hook.ensure_hosts(["ns1.nsa.example.net", "ns1.hostmatic.example"]) == ["ns1.nsa.example.net"]
        done = hook.update_nameservers("d3.example.test", add=["ns1.nsa.example.net"], remove=["ns2.hostmatic.example"])
        assert done.code == 1000 and done.server_transaction.startswith("SBX-")
        assert server.domains["d3.example.test"]["ns"] == ["ns1.hostmatic.example", "ns1.nsa.example.net"]
        with pytest.raises(RegistrarRefused) as refused:  # clientHold does not forbid updates; a lock does
            server.change_domain("d1.example.test", statuses=["clientUpdateProhibited"])
            hook.update_nameservers("d1.example.test", add=["ns1.nsa.example.net"], remove=[])
        assert refused.value.code == 2304
        with pytest.raises(RegistrarNotFound):  # a host object that does not exist
            hook.update_nameservers("d3.example.test", add=["ns9.nowhere.example"], remove=[])
        with pytest.raises(RegistrarRefused, match="not sent") as empty:  # RFC 5731: an update must change something
            hook.update_nameservers("d3.example.test", add=[], remove=[])
        assert empty.value.code is None


def _exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def _frame(sock) -> bytes:
    """One RFC 5734 frame: a 4-byte big-endian length that counts itself, then the XML."""
    (length,) = struct.unpack("!I", _exactly(sock, 4))
    return _exactly(sock, length - 4)


def test_rfc5734_framing_and_session_rules(server):
    """Raw TLS: the greeting comes first, lengths count their own 4 bytes, a command before login is
    2002, malformed XML 2001, and clTRID is echoed."""
    context = ssl.create_default_context(cafile=server.ca_file)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        greeting = ET.fromstring(_frame(tls))
        assert greeting.find(f"{EPP}greeting/{EPP}svcMenu/{EPP}version").text == "1.0"
        assert [e.text for e in greeting.iter(f"{EPP}objURI")] == list(sandbox.OBJ_URIS)

        def send(body: bytes) -> ET.Element:
            tls.sendall(struct.pack("!I", len(body) + 4) + body)
            return ET.fromstring(_frame(tls))

        answer = send(b'<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><poll op="req"/>'
                      b"<clTRID>ABC-1</clTRID></command></epp>")
        assert answer.find(f"{EPP}response/{EPP}result").get("code") == "2002"
        assert answer.find(f"{EPP}response/{EPP}trID/{EPP}clTRID").text == "ABC-1"
        assert send(b"<epp><command>").find(f"{EPP}response/{EPP}result").get("code") == "2001"
        hello = send(b'<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><hello/></epp>')
        assert hello.find(f"{EPP}greeting") is not None


def test_sandbox_cli(tmp_path, monkeypatch):
    from panelflow.dev.postgres import free_port

    port = free_port()
    env = {**os.environ, "PANELFLOW_SANDBOX_REGISTRAR_PASSWORD": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.registrar", "--host", "127.0.0.1", "--port", str(port),
                             "--tls-dir", str(tmp_path), "--clid", CLID, "--domains", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT / "include", env=env)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "ca.pem").exists() or not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR", json.dumps({
            "conn_type": "panelflow_epp", "host": "127.0.0.1", "port": port, "login": CLID, "password": PASSWORD,
            "extra": {"ca_file": str(tmp_path / "ca.pem")}}))
        with RegistrarHook() as hook:
            assert hook.domain_info("customer004.example").sponsor == CLID
            with pytest.raises(RegistrarUnavailable):
                hook.domain_info("broken-detail.example")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
