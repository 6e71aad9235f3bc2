"""ProvisioningWork's step 38: legacy unsalted password digests wrapped in salted scrypt.

``salt_passwords`` (38): legacy unsalted hex digests (md5, sha1, sha256) are replaced by
scrypt of the digest with a random salt, scheme ``scrypt+<legacy>``, salt and parameters on the
row (see migration 0011 and :func:`verify_password`). Batched, at most ``MAX_SALTED_PER_RUN``
per run and within ``SALT_BUDGET_SECONDS``; a password changed meanwhile is not overwritten.
Reported (never with the hash): a stored value that is not a digest of its scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time

from panelflow.step import StepReport

LEGACY_HEX_DIGITS = {"md5": 32, "sha1": 40, "sha256": 64}
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
SALT_BYTES = 16
SALT_BATCH = 100
MAX_SALTED_PER_RUN = 2000
SALT_BUDGET_SECONDS = 5 * 60


def _scrypt(secret: bytes, salt: bytes, params: dict) -> bytes:
    n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=int(params["dklen"]),
                          maxmem=128 * r * (n + p + 2) + 1024 * 1024)


def wrap_legacy_hash(scheme: str, legacy_hex: str, salt: bytes | None = None,
                     params: dict | None = None) -> tuple[str, str, bytes, dict]:
    """(scheme, hash hex, salt, params) of a legacy unsalted digest wrapped in scrypt."""
    digest = legacy_hex.strip().lower()
    if scheme not in LEGACY_HEX_DIGITS or not re.fullmatch(f"[0-9a-f]{{{LEGACY_HEX_DIGITS[scheme]}}}", digest):
        raise ValueError(f"not a {scheme} hex digest")
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    params = dict(params or SCRYPT)
    return f"scrypt+{scheme}", _scrypt(digest.encode("ascii"), salt, params).hex(), salt, params


def verify_password(password: str, hash_scheme: str, password_hash: str, salt: bytes | None,
                    kdf_params: dict | None) -> bool:
    """Whether ``password`` matches a credentials row, whatever its scheme (what login does)."""
    if hash_scheme in LEGACY_HEX_DIGITS:
        candidate = hashlib.new(hash_scheme, password.encode()).hexdigest()
        return hmac.compare_digest(candidate, password_hash.strip().lower())
    if hash_scheme == "scrypt":
        secret = password.encode()
    elif hash_scheme.startswith("scrypt+") and hash_scheme[7:] in LEGACY_HEX_DIGITS:
        secret = hashlib.new(hash_scheme[7:], password.encode()).hexdigest().encode("ascii")
    else:
        raise ValueError(f"unknown hash scheme {hash_scheme!r}")
    return hmac.compare_digest(_scrypt(secret, bytes(salt), kdf_params).hex(), password_hash)


# Compare-and-set: a password changed since it was read keeps its new hash.
_SALT_UPDATE = """
UPDATE credentials c
SET hash_scheme = u.scheme, password_hash = u.hash, salt = u.salt, kdf_params = u.params, salted_at = %(at)s
FROM unnest(%(ids)s::bigint[], %(schemes)s::text[], %(hashes)s::text[], %(salts)s::bytea[], %(params)s::jsonb[],
            %(old_schemes)s::text[], %(old_hashes)s::text[]) AS u(id, scheme, hash, salt, params, old_scheme, old_hash)
WHERE c.id = u.id AND c.hash_scheme = u.old_scheme AND c.password_hash = u.old_hash
"""


def salt_passwords(panel_db, interval) -> dict:
    """Update employee, customer and contact password with salt."""
    report = StepReport().zero("salted", "changed_meanwhile")
    deadline = time.monotonic() + SALT_BUDGET_SECONDS
    last_id = 0
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        while report.counts["salted"] < MAX_SALTED_PER_RUN and time.monotonic() < deadline:
            want = min(SALT_BATCH, MAX_SALTED_PER_RUN - report.counts["salted"])
            rows = conn.execute(
                "SELECT id, principal_kind, hash_scheme, password_hash FROM credentials"
                " WHERE hash_scheme = ANY(%s) AND id > %s ORDER BY id LIMIT %s",
                (list(LEGACY_HEX_DIGITS), last_id, want)).fetchall()
            if not rows:
                break
            last_id = rows[-1][0]
            batch = {k: [] for k in ("ids", "schemes", "hashes", "salts", "params", "old_schemes", "old_hashes")}
            for credential_id, kind, scheme, old_hash in rows:
                try:
                    new_scheme, new_hash, salt, params = wrap_legacy_hash(scheme, old_hash)
                except ValueError as exc:  # the message names the scheme, never the value
                    report.skip(str(exc), f"{kind} credential {credential_id}")
                    continue
                for key, value in zip(batch, (credential_id, new_scheme, new_hash, salt, json.dumps(params), scheme,
                                              old_hash)):
                    batch[key].append(value)
            if batch["ids"]:
                n = conn.execute(_SALT_UPDATE, {**batch, "at": interval.end}).rowcount
                report.add("salted", n)
                report.add("changed_meanwhile", len(batch["ids"]) - n)
        (left,) = conn.execute("SELECT count(*) FROM credentials WHERE hash_scheme = ANY(%s) AND id > %s",
                               (list(LEGACY_HEX_DIGITS), last_id)).fetchone()
    report.add("left_for_next_run", left)
    return report.as_dict()
