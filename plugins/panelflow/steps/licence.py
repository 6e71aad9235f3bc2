"""LicenseWork: the panel's own licence — verified, refreshed, counted against, alerted on.

**Trust.** A licence is a JSON document signed by the panel vendor with Ed25519. Its key is pinned
in the ``licence_vendor`` connection (``panelflow.hooks.licence_vendor``), never taken from the
document. A document is used only after its signature verified against that key and its fields
read well (and, when the connection names an installation, it is this installation's); it is then
stored in ``panel_licences`` with its signed bytes. A document that fails — a tampered or damaged
licence file, one signed by another key — is refused and named in the summary, and the licence in
force stays the last good one: nothing the file or the network says can replace it unverified.

**Sources**, each run: the licence file the connection names, then the vendor's service over HTTPS
(certificate verified; the licence key in the header). A vendor that cannot be reached fails the
task after the usage part ran on the licence already stored (``run_parts``), so Airflow retries and
alerts while the alerts keep working. No connection at all: nothing configured, said so.

**Usage.** The licence in force at the run's clock (``interval.end``: the valid document with the
latest ``issued_at``) is counted against the panel's own tables — mailboxes (``exchange_mailboxes``
active or disabled), users (``ad_users`` not deleted), VMs (``hyperv_vms`` not deleted), tenants
(``m365_tenants`` enabled). At 90 % and at 100 % of a unit, one alert e-mail goes to the connection's
``alert_to``: the ``licence_alerts`` row (unique per licence period, unit and threshold) and the
outbox message are written in one transaction, so reruns, retries and backfills alert once. Usage
that jumps past both thresholds at once sends the 100 % alert only (the 90 % row is recorded too, so
it never follows later).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg.types.json import Jsonb

from panelflow.services.outbox import enqueue
from panelflow.step import StepReport, first_line, run_parts

TEMPLATE = "licence_usage_alert"
THRESHOLDS = (90, 100)
MAX_LICENCE_BYTES = 64 * 1024    # a licence is a small JSON document; anything larger is refused unread

# What each licensed unit counts, and its words in the alert.
UNITS = {
    "mailboxes": ("Exchange mailboxes",
                  "SELECT count(*) FROM exchange_mailboxes WHERE status IN ('active', 'disabled')"),
    "users": ("directory users", "SELECT count(*) FROM ad_users WHERE NOT deleted"),
    "vms": ("virtual machines", "SELECT count(*) FROM hyperv_vms WHERE deleted_at IS NULL"),
    "tenants": ("Microsoft 365 tenants", "SELECT count(*) FROM m365_tenants WHERE enabled"),
}

STORE = """
INSERT INTO panel_licences (licence_id, issued_at, licensee, installation_id, valid_from, valid_until, units, payload,
                            signature, key_fingerprint, source, stored_at)
VALUES (%(licence_id)s, %(issued_at)s, %(licensee)s, %(installation_id)s, %(valid_from)s, %(valid_until)s, %(units)s,
        %(payload)s, %(signature)s, %(fingerprint)s, %(source)s, %(clock)s)
ON CONFLICT (licence_id, issued_at) DO NOTHING
"""

IN_FORCE = """
SELECT licence_id, licensee, valid_from, valid_until, units FROM panel_licences
WHERE valid_from <= %(clock)s AND key_fingerprint = %(fingerprint)s
ORDER BY issued_at DESC, id DESC LIMIT 1
"""

ALERT = """
INSERT INTO licence_alerts (licence_id, valid_from, unit, threshold, used, licensed, to_address, raised_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (licence_id, valid_from, unit, threshold) DO NOTHING
RETURNING id
"""


class Refused(Exception):
    """A licence document that may not be used; the message says why."""


@dataclass(frozen=True)
class Licence:
    licence_id: str
    issued_at: datetime
    licensee: str
    installation_id: str | None
    valid_from: datetime
    valid_until: datetime
    units: dict[str, int]
    payload: str
    signature: str


def verify(envelope: Any, public_key, *, installation_id: str | None) -> Licence:
    """The licence in ``envelope`` (``{"payload", "signature"}``, base64 each) once its signature
    verified against the pinned ``public_key`` and its fields read well; else :class:`Refused`."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), str) \
            or not isinstance(envelope.get("signature"), str):
        raise Refused("not a licence envelope (payload and signature expected)")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signature = base64.b64decode(envelope["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise Refused("payload or signature is not base64") from None
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise Refused("the signature does not verify against the pinned vendor key") from None
    try:
        fields = json.loads(payload)
        licence = Licence(
            licence_id=_text(fields, "licence_id"), issued_at=_moment(fields, "issued_at"),
            licensee=_text(fields, "licensee"), installation_id=fields.get("installation_id"),
            valid_from=_moment(fields, "valid_from"), valid_until=_moment(fields, "valid_until"),
            units=_units(fields.get("units")), payload=envelope["payload"], signature=envelope["signature"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise Refused(f"signed, but unreadable: {exc}") from None
    if licence.valid_from >= licence.valid_until:
        raise Refused("valid_from is not before valid_until")
    if licence.installation_id is not None and licence.installation_id != installation_id:
        raise Refused(f"issued for installation {licence.installation_id!r}, not this one ({installation_id!r})")
    return licence


def handle_license(panel_db, interval, log=None) -> dict:
    """License work handling: refresh and verify the licence, count units against it, alert at 90/100 %."""
    from airflow.exceptions import AirflowNotFoundException

    from panelflow.hooks.licence_vendor import LicenceVendorHook

    clock = datetime.fromtimestamp(interval.end.timestamp(), tz=timezone.utc)
    with LicenceVendorHook() as hook:
        try:
            settings = hook.licence_settings()
        except AirflowNotFoundException:
            return {"configured": False, "message": "no licence_vendor connection: no licence is configured"}
        with panel_db.get_conn() as conn:
            conn.autocommit = True
            return run_parts([("licences", lambda: _refresh(conn, hook, settings, clock, log)),
                              ("usage", lambda: _usage(conn, settings, clock, log))],
                             what="part of LicenseWork", log=log)


def _refresh(conn, hook, settings, clock: datetime, log) -> dict:
    """Read the licence file and the vendor's current licence; store each that verifies."""
    from panelflow.hooks.licence_vendor import LicenceVendorError

    report = StepReport().zero("licences_read", "licences_stored", "licences_refused")
    sources: list[tuple[str, Any]] = []
    if settings.licence_file:
        try:
            with open(settings.licence_file, "rb") as handle:
                data = handle.read(MAX_LICENCE_BYTES + 1)
            if len(data) > MAX_LICENCE_BYTES:
                raise Refused(f"larger than {MAX_LICENCE_BYTES} bytes")
            sources.append(("file", json.loads(data)))
        except (OSError, ValueError, Refused) as exc:
            report.add("licences_refused")
            report.skip(f"licence file unreadable: {first_line(exc)}", settings.licence_file)
    vendor_error = None
    if settings.refresh:
        try:
            sources.append(("vendor", hook.fetch_current(settings.installation_id)))
        except (LicenceVendorError, ValueError) as exc:
            vendor_error = exc  # raised after the file was dealt with: the task fails and is retried
    for source, envelope in sources:
        report.add("licences_read")
        try:
            licence = verify(envelope, settings.public_key, installation_id=settings.installation_id)
        except Refused as exc:
            report.add("licences_refused")
            report.skip(f"licence refused: {exc}", f"{source} licence")
            if log is not None:
                log.warning("%s licence refused: %s", source, exc)
            continue
        report.add("licences_stored", conn.execute(STORE, {
            **{k: getattr(licence, k) for k in ("licence_id", "issued_at", "licensee", "installation_id",
                                                "valid_from", "valid_until", "payload", "signature")},
            "units": Jsonb(licence.units), "fingerprint": settings.key_fingerprint, "source": source,
            "clock": clock}).rowcount)
    if vendor_error is not None:
        raise vendor_error
    return report.as_dict()


def _usage(conn, settings, clock: datetime, log) -> dict:
    """Count the units against the licence in force and raise each threshold's alert once."""
    report = StepReport().zero("alerts_queued")
    row = conn.execute(IN_FORCE, {"clock": clock, "fingerprint": settings.key_fingerprint}).fetchone()
    if row is None:
        return {**report.as_dict(), "licence": None, "message": "no verified licence in force"}
    licence_id, licensee, valid_from, valid_until, units = row
    summary: dict[str, Any] = {"licence": licence_id, "valid_until": valid_until.isoformat(), "units": {}}
    if valid_until <= clock:
        report.add("licence_expired")
    for unit, (words, count_sql) in UNITS.items():
        used = conn.execute(count_sql).fetchone()[0]
        licensed = units.get(unit)
        summary["units"][unit] = {"used": used, "licensed": licensed}
        if not licensed or valid_until <= clock:
            continue  # not licensed by count, or the licence has ended: no threshold to measure against
        crossed = [t for t in THRESHOLDS if used * 100 >= t * licensed]
        if not crossed:
            continue
        if settings.alert_to is None:
            report.skip("no alert address (extra 'alert_to' of the licence_vendor connection)",
                        f"{unit} at {used}/{licensed}")
            continue
        with conn.transaction():
            new = set()
            for threshold in crossed:
                row = conn.execute(ALERT, (licence_id, valid_from, unit, threshold, used, licensed, settings.alert_to,
                                           clock)).fetchone()
                if row is not None:
                    new.add(threshold)
            top = max(crossed)
            if top in new:
                report.add("alerts_queued", enqueue(
                    conn, dedupe_key=f"licence-alert:{licence_id}:{valid_from.isoformat()}:{unit}:{top}",
                    to=settings.alert_to, template=TEMPLATE, not_before=clock,
                    context={"licence_id": licence_id, "licensee": licensee, "unit": words, "used": used,
                             "licensed": licensed, "threshold": top, "percent": used * 100 // licensed,
                             "valid_until": valid_until.date().isoformat()}))
                if log is not None:
                    log.warning("licence %s: %s at %s of %s (%s %%)", licence_id, unit, used, licensed, top)
    return {**report.as_dict(), **summary}


# -- reading the payload ------------------------------------------------------------------------


def _text(fields: dict, key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' is missing")
    return value.strip()


def _moment(fields: dict, key: str) -> datetime:
    value = datetime.fromisoformat(_text(fields, key).replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"'{key}' has no time zone")
    return value


def _units(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError("'units' is not an object")
    units = {}
    for unit, count in value.items():
        if unit not in UNITS:
            continue  # a unit this panel does not count (a newer licence format) limits nothing here
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"units.{unit} is not a count: {count!r}")
        units[unit] = count
    return units
