"""The EPP sandbox's certificates: a CA of its own, the server's certificate, client certificates.

RFC 5734 puts EPP inside TLS, and registries authenticate the server by its certificate (and
often the registrar by a client certificate): the hook must verify the sandbox as it verifies a
registry, never with verification off. So the sandbox makes a CA (``ca.pem`` — what the hook's
connection trusts), signs its own server certificate for ``localhost`` and ``127.0.0.1`` with it
and, for mutual TLS, client certificates. The files are made once per folder, so a ``make run``
restart (``--tls-dir``) keeps the CA its connection already trusts. Nothing here is a secret of
any deployment: the keys exist for the sandbox only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.pem", "ca.key", "server.pem", "server.key")
_PEM = serialization.Encoding.PEM
_PLAIN = (serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _start() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificates(folder: Path) -> tuple[Path, Path, Path, Path]:
    """``ca.pem``, ``ca.key``, ``server.pem``, ``server.key`` in ``folder``, made if absent."""
    paths = tuple(folder / n for n in FILES)
    if all(p.exists() for p in paths):
        return paths  # type: ignore[return-value]
    folder.mkdir(parents=True, exist_ok=True)
    start = _start()
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("panelflow EPP sandbox CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(start + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(start + dt.timedelta(days=825))
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    for path, data in zip(paths, (ca.public_bytes(_PEM), ca_key.private_bytes(_PEM, *_PLAIN),
                                  server.public_bytes(_PEM), key.private_bytes(_PEM, *_PLAIN))):
        path.write_bytes(data)
        path.chmod(0o600)
    return paths  # type: ignore[return-value]


def client_certificate(folder: Path, common_name: str) -> tuple[str, str]:
    """A client certificate and its key (PEM text), signed by ``folder``'s CA."""
    ca_path, ca_key_path, _, _ = certificates(folder)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _start()
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(_PEM).decode(), key.private_bytes(_PEM, *_PLAIN).decode()
