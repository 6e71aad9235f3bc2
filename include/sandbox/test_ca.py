"""A throwaway certificate authority (root → intermediate) that signs real X.509 certificates.

The DigiCert and Sectigo sandboxes issue what the vendors issue — a leaf for the order's CSR, its
intermediate and the root — so the SSL steps verify a real chain the way they verify a vendor's.
The CA is made fresh when a sandbox starts (nothing to keep, nothing secret: it exists for one
process) with the extensions a public CA puts in (basic constraints, key usage, key identifiers,
serverAuth, SANs), because panelflow verifies with ``cryptography``'s RFC 5280 / Web PKI path
validation, which refuses certificates without them.

A wrong certificate is made on request, for the tests that prove the steps refuse one: a leaf
for ANOTHER key than the CSR's (``Variant.WRONG_KEY``), already expired (``EXPIRED``), not yet
valid (``NOT_YET_VALID``), or for other names than the CSR asked for (``WRONG_NAME``).

``csr_for(common_name, sans)`` makes a key and a CSR the way a customer's server would, for tests
and ``make run``'s demo orders.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_NAME = "panelflow Sandbox Root CA"
INTERMEDIATE_NAME = "panelflow Sandbox TLS CA"
CA_LIFETIME = timedelta(days=3650)


class Variant(str, enum.Enum):
    """What the sandbox hands back for an order (``good`` unless a test asks otherwise)."""

    GOOD = "good"
    WRONG_KEY = "wrong_key"          # signed for a fresh key, not the CSR's
    EXPIRED = "expired"              # validity ended before the issue time
    NOT_YET_VALID = "not_yet_valid"  # validity starts a year after the issue time
    WRONG_NAME = "wrong_name"        # SANs other than those the order asked for


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "panelflow sandbox"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_cert(subject: str, key, issuer: x509.Name, issuer_key, not_before: datetime, path_length: int | None):
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_before + CA_LIFETIME)
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class TestCA:
    """A root and an intermediate, valid from ``not_before`` (default: a year ago) for ten years."""

    __test__ = False  # not a pytest class

    def __init__(self, not_before: datetime | None = None):
        start = not_before or datetime.now(timezone.utc) - timedelta(days=365)
        self._root_key, self._key = _key(), _key()
        self.root = _ca_cert(ROOT_NAME, self._root_key, _name(ROOT_NAME), self._root_key, start, 1)
        self.intermediate = _ca_cert(INTERMEDIATE_NAME, self._key, self.root.subject, self._root_key, start, 0)

    @property
    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, csr_pem: str, *, names: list[str], days: int, at: datetime,
              variant: Variant = Variant.GOOD) -> list[x509.Certificate]:
        """The leaf for ``csr_pem`` (SANs ``names``, the first also its CN), then intermediate and root."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        if not csr.is_signature_valid:
            raise ValueError("the CSR's signature does not verify")
        public_key = _key().public_key() if variant is Variant.WRONG_KEY else csr.public_key()
        start = at - timedelta(minutes=5)
        if variant is Variant.EXPIRED:
            start = at - timedelta(days=days + 30)
        elif variant is Variant.NOT_YET_VALID:
            start = at + timedelta(days=365)
        if variant is Variant.WRONG_NAME:
            names = [f"other-{n.lstrip('*.')}" for n in names]
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.intermediate.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=False, crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        return [leaf, self.intermediate, self.root]


def pem(certificates: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def csr_for(common_name: str, sans: list[str] | tuple[str, ...] = ()) -> tuple[str, str]:
    """``(private key PEM, CSR PEM)`` for ``common_name`` and ``sans``, as a customer's server makes them."""
    key = _key()
    names = list(dict.fromkeys([common_name, *sans]))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()
