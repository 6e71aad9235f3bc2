"""ProvisioningWork 45, "Run configuration studio": apply queued configuration templates to their
servers once, then report how far each server has drifted from them.

MachPanel's Configuration Studio keeps templates of server settings and applies them to managed
Windows servers. Here a template (``config_templates``, migration 0029) is a numbered list of
settings of two kinds, each applied and read by a script of ``include/powershell/configuration/``
over the server's psrp connection (``servers.psrp_conn_id``, the hook ServerStatsWork uses):

- ``registry_value``: ``{"path": "HKLM:\\…", "name": …, "type": String|ExpandString|DWord|QWord,
  "value": …}`` — a machine-wide registry value (HKLM only; no wildcards);
- ``service``: ``{"name": …, "startup_type": Automatic|Manual|Disabled, "status": Running|Stopped}``
  (either or both) — a Windows service's state.

Every setting is a *state* the script sets (never a toggle), and values travel as PSRP parameters,
never inside script text. So applying again is harmless, which is what makes the queue safe: an
application is claimed (``applying``, committed) before its server is contacted; a worker killed
mid-way leaves it ``applying`` and a run ``stale_minutes`` later applies it again, upserting the
one result row per setting.

Two parts per run, each bounded:

1. **Apply** the queued applications (``applications_per_run``), per server in one session: each
   setting is set and read back; ``applied`` when every setting is in sync, ``partial`` when some
   are, ``failed`` when none is. A server that cannot be reached fails alone
   (:func:`panelflow.step.for_each`): its applications go back to the queue until
   ``max_attempts``, then fail.
2. **Drift report**: the latest application of each template on each server is read again once
   ``drift_check_hours`` have passed since its last check (``drift_checks_per_run``); each
   setting's ``actual`` and ``in_sync`` are updated and the application's ``drifted`` count is the
   report. Drift is reported, never corrected silently: re-queueing the template corrects it.

The clock is ``interval.end`` (claims, checks and staleness are measured on it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from airflow.exceptions import AirflowException   # a server's psrp connection missing or misconfigured
from psycopg.types.json import Jsonb

from panelflow.hooks.powershell import (PowerShellOutputError, PowerShellScriptError, PowerShellUnavailable,
                                        powershell_session)
from panelflow.step import StepReport, for_each

APPLICATIONS_PER_RUN = 20
DRIFT_CHECKS_PER_RUN = 50
DRIFT_CHECK_HOURS = 24
STALE_MINUTES = 30
MAX_ATTEMPTS = 5
DRIFT_SHOWN = 20
REGISTRY_PATH = re.compile(r"^HKLM:\\[^*?\[\]\x00-\x1f]{1,250}$")
REGISTRY_TYPES = {"String": str, "ExpandString": str, "DWord": 32, "QWord": 64}
STARTUP_TYPES = ("Automatic", "Manual", "Disabled")
STATUSES = ("Running", "Stopped")


class BadSetting(Exception):
    """A template's setting cannot be applied as written: recorded as that setting's error."""


@dataclass
class Application:
    id: int
    template: str
    server: str
    conn_id: str | None
    settings: list = field(default_factory=list)


# -- the two kinds: what the script is given, and whether what it reports is the desired state ----

def _registry(setting: dict) -> tuple[dict, dict, dict]:
    path, name, kind, value = (setting.get(k) for k in ("path", "name", "type", "value"))
    if not isinstance(path, str) or not REGISTRY_PATH.match(path):
        raise BadSetting("'path' must be an HKLM:\\ registry path without wildcards")
    if not isinstance(name, str) or not name or len(name) > 255:
        raise BadSetting("'name' must be a registry value name")
    if kind not in REGISTRY_TYPES:
        raise BadSetting(f"'type' must be one of {', '.join(REGISTRY_TYPES)}")
    bits = REGISTRY_TYPES[kind]
    if bits is str:
        if not isinstance(value, str):
            raise BadSetting(f"a {kind} value must be text")
        sent = value
    else:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** bits:
            raise BadSetting(f"a {kind} value must be a whole number from 0 to {2 ** bits - 1}")
        sent = value - 2 ** bits if value >= 2 ** (bits - 1) else value   # the registry API's signed form
    target = {"Path": path, "Name": name}
    return target, {**target, "Type": kind, "Value": sent}, {"exists": True, "type": kind, "value": value}


def _registry_state(row: dict, desired: dict) -> dict:
    value = row.get("Value")
    bits = REGISTRY_TYPES.get(row.get("Type"))
    if isinstance(bits, int) and isinstance(value, int):
        value %= 2 ** bits   # read back signed: the same bits as the unsigned value asked for
    return {"exists": bool(row.get("Exists")), "type": row.get("Type"), "value": value}


def _service(setting: dict) -> tuple[dict, dict, dict]:
    name, startup, status = setting.get("name"), setting.get("startup_type"), setting.get("status")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.$ -]{1,256}", name):
        raise BadSetting("'name' must be a service name")
    if startup is None and status is None:
        raise BadSetting("a service setting needs 'startup_type' or 'status'")
    if startup is not None and startup not in STARTUP_TYPES:
        raise BadSetting(f"'startup_type' must be one of {', '.join(STARTUP_TYPES)}")
    if status is not None and status not in STATUSES:
        raise BadSetting(f"'status' must be one of {', '.join(STATUSES)}")
    write = {"Name": name, **({"StartupType": startup} if startup else {}), **({"Status": status} if status else {})}
    state = {"exists": True, **({"startup_type": startup} if startup else {}), **({"status": status} if status else {})}
    return {"Name": name}, write, state


def _service_state(row: dict, desired: dict) -> dict:
    return {"exists": bool(row.get("Exists")), **{k: row.get(c) for k, c in (("startup_type", "StartupType"),
                                                                            ("status", "Status")) if k in desired}}


@dataclass(frozen=True)
class Kind:
    read: str        # include/powershell script that reads the setting
    write: str       # … and the one that sets it, answering in the same shape
    parse: Any       # setting → (parameters naming it, parameters setting it, the state it must be in)
    state: Any       # the script's record → the comparable state


KINDS = {
    "registry_value": Kind("configuration/get_registry_value", "configuration/set_registry_value", _registry,
                           _registry_state),
    "service": Kind("configuration/get_service", "configuration/set_service", _service, _service_state),
}
def _one(rows: list, script: str) -> dict:
    if len(rows) != 1 or not isinstance(rows[0], dict):
        raise PowerShellOutputError(f"{script}: expected one record, got {len(rows)}")
    return rows[0]


# -- 1. apply ---------------------------------------------------------------------------------

_CLAIM = """
WITH due AS (
    SELECT a.id FROM config_applications a
    WHERE a.status = 'queued' OR (a.status = 'applying' AND a.started_at <= %(stale)s)
    ORDER BY a.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE config_applications a SET status = 'applying', attempts = a.attempts + 1, started_at = %(at)s, error = NULL
FROM due WHERE a.id = due.id
RETURNING a.id
"""

_APPLICATIONS = """
SELECT a.id, t.name, s.name, CASE WHEN s.enabled THEN s.psrp_conn_id END
FROM config_applications a JOIN config_templates t ON t.id = a.template_id JOIN servers s ON s.id = a.server_id
WHERE a.id = ANY(%s) ORDER BY a.id
"""

_SETTINGS = """
SELECT a.id, ts.position, ts.kind, ts.setting FROM config_applications a
JOIN config_template_settings ts ON ts.template_id = a.template_id
WHERE a.id = ANY(%s) ORDER BY a.id, ts.position
"""

_RESULT = """
INSERT INTO config_application_results (application_id, position, kind, desired, applied, actual, in_sync, error,
                                        checked_at)
VALUES (%(app)s, %(position)s, %(kind)s, %(desired)s, %(actual)s, %(actual)s, %(in_sync)s, %(error)s, %(at)s)
ON CONFLICT (application_id, position) DO UPDATE
SET kind = EXCLUDED.kind, desired = EXCLUDED.desired, applied = EXCLUDED.applied, actual = EXCLUDED.actual,
    in_sync = EXCLUDED.in_sync, error = EXCLUDED.error, checked_at = EXCLUDED.checked_at
"""

_DONE = """
UPDATE config_applications SET status = %(status)s, applied_at = %(at)s, last_checked_at = %(at)s,
       drifted = %(drifted)s, error = %(error)s
WHERE id = %(id)s AND status = 'applying'
"""

_RELEASE = """
UPDATE config_applications SET status = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'queued' END,
       error = %(error)s
WHERE id = ANY(%(ids)s) AND status = 'applying'
"""


def _load(conn, ids: list[int], settings: str) -> list[Application]:
    """The applications with their settings: the template's (to apply) or the results' (to check)."""
    apps = {r[0]: Application(*r) for r in conn.execute(_APPLICATIONS, (ids,))}
    for app_id, position, kind, setting in conn.execute(settings, (ids,)):
        apps[app_id].settings.append((position, kind, setting))
    return list(apps.values())


def _by_server(apps: list[Application]) -> list[tuple[str, str, list[Application]]]:
    servers: dict[tuple, list[Application]] = {}
    for app in apps:
        servers.setdefault((app.server, app.conn_id), []).append(app)
    return [(name, conn_id, group) for (name, conn_id), group in servers.items()]


def _apply(conn, hook, app: Application, at: datetime, report: StepReport) -> None:
    """Set and read back each of the template's settings; record each result and the outcome."""
    in_sync, errors = 0, []
    for position, kind, setting in app.settings:
        desired, actual, error = {"setting": setting}, None, None
        try:
            target, write, state = KINDS[kind].parse(setting)
            desired = {"target": target, "state": state}   # what the drift checks compare with, as applied
            actual = KINDS[kind].state(_one(hook.run_script(KINDS[kind].write, write), KINDS[kind].write), state)
        except (BadSetting, PowerShellScriptError, PowerShellOutputError) as exc:
            error = str(exc)[:500]
            errors.append(f"setting {position}: {error}")
        ok = error is None and actual == desired["state"]
        in_sync += ok
        conn.execute(_RESULT, {"app": app.id, "position": position, "kind": kind, "desired": Jsonb(desired),
                               "actual": Jsonb(actual) if actual is not None else None, "in_sync": ok,
                               "error": error, "at": at})
    total = len(app.settings)
    status = "failed" if not total else "applied" if in_sync == total else "partial" if in_sync else "failed"
    conn.execute(_DONE, {"id": app.id, "status": status, "at": at, "drifted": total - in_sync,
                         "error": "; ".join(errors)[:2000] or (None if total else "the template has no settings")})
    report.add(f"applications_{status}")
    report.add("settings_applied", in_sync)
    if status != "applied":
        report.skip(f"{total - in_sync} of {total} settings not in the template's state",
                    f"application {app.id} ({app.template} on {app.server})")


def _apply_queued(conn, at: datetime, params: dict, report: StepReport, log) -> None:
    stale = at - timedelta(minutes=int(params.get("stale_minutes", STALE_MINUTES)))
    max_attempts = int(params.get("max_attempts", MAX_ATTEMPTS))
    ids = [r[0] for r in conn.execute(_CLAIM, {"at": at, "stale": stale,
                                               "limit": int(params.get("applications_per_run", APPLICATIONS_PER_RUN))})]
    if not ids:
        return
    apps = _load(conn, ids, _SETTINGS)
    for app in [a for a in apps if a.conn_id is None]:
        conn.execute(_DONE, {"id": app.id, "status": "failed", "at": at, "drifted": None,
                             "error": "the server is disabled or has no PowerShell connection (psrp_conn_id)"})
        report.add("applications_failed")
        report.skip("server disabled or without a psrp connection", f"application {app.id} on {app.server}")

    def work(server):
        _, conn_id, group = server
        with powershell_session(conn_id, log) as hook:
            for app in group:
                _apply(conn, hook, app, at, report)

    def release(server, exc, why):
        conn.execute(_RELEASE, {"ids": [a.id for a in server[2]], "max": max_attempts, "error": why[:500]})

    for_each([s for s in _by_server(apps) if s[1] is not None], work, report=report, kind="server",
             name=lambda s: s[0], expected=(PowerShellUnavailable, AirflowException), log=log,
             what="configuration studio server", on_failure=release)


# -- 2. drift report --------------------------------------------------------------------------

# The latest application of each template on each server, checked longest ago first.
_DUE_CHECKS = """
SELECT a.id FROM config_applications a
WHERE a.status IN ('applied', 'partial') AND a.last_checked_at <= %(due)s
  AND NOT EXISTS (SELECT 1 FROM config_applications later
                  WHERE later.template_id = a.template_id AND later.server_id = a.server_id AND later.id > a.id
                    AND later.status IN ('applied', 'partial'))
ORDER BY a.last_checked_at, a.id LIMIT %(limit)s
"""

_APPLIED = """
SELECT application_id, position, kind, desired FROM config_application_results
WHERE application_id = ANY(%s) ORDER BY application_id, position
"""

_CHECKED = """
UPDATE config_application_results SET actual = %(actual)s, in_sync = %(in_sync)s, error = %(error)s,
       checked_at = %(at)s
WHERE application_id = %(app)s AND position = %(position)s AND checked_at <= %(at)s
"""


def _shown(state: dict) -> str:
    return ", ".join(f"{key}={state[key]}" for key in sorted(state))


def _check(conn, hook, app: Application, at: datetime, report: StepReport, drift: list[str]) -> None:
    """Read each applied setting again and compare it with the state it was applied in (a template
    edited since does not move the goal: queueing it again does)."""
    drifted = 0
    for position, kind, desired in app.settings:
        if "target" not in desired:
            drifted += 1   # never applied (the setting was malformed): stays as recorded
            continue
        actual, error = None, None
        try:
            actual = KINDS[kind].state(_one(hook.run_script(KINDS[kind].read, desired["target"]), KINDS[kind].read),
                                       desired["state"])
        except (PowerShellScriptError, PowerShellOutputError) as exc:
            error = str(exc)[:500]
        ok = error is None and actual == desired["state"]
        if not ok:
            drifted += 1
            if len(drift) < DRIFT_SHOWN:
                drift.append(f"{app.server}: {app.template} setting {position}: wanted {_shown(desired['state'])},"
                             f" found {_shown(actual) if error is None else error}")
        conn.execute(_CHECKED, {"app": app.id, "position": position, "in_sync": ok, "error": error, "at": at,
                                "actual": Jsonb(actual) if actual is not None else None})
    conn.execute("UPDATE config_applications SET last_checked_at = %s, drifted = %s WHERE id = %s",
                 (at, drifted, app.id))
    report.add("drift_checks")
    report.add("settings_drifted", drifted)


def _check_drift(conn, at: datetime, params: dict, report: StepReport, log) -> list[str]:
    due = at - timedelta(hours=int(params.get("drift_check_hours", DRIFT_CHECK_HOURS)))
    ids = [r[0] for r in conn.execute(_DUE_CHECKS, {"due": due, "limit": int(params.get(
        "drift_checks_per_run", DRIFT_CHECKS_PER_RUN))})]
    drift: list[str] = []
    if not ids:
        return drift
    apps = [a for a in _load(conn, ids, _APPLIED) if a.conn_id is not None]

    def work(server):
        with powershell_session(server[1], log) as hook:
            for app in server[2]:
                _check(conn, hook, app, at, report, drift)

    for_each(_by_server(apps), work, report=report, kind="server", plural="drift_servers", name=lambda s: s[0],
             expected=(PowerShellUnavailable, AirflowException), log=log, what="configuration studio server")
    return drift


def run_configuration_studio(panel_db, interval, params=None, log=None) -> dict:
    """Run configuration studio: apply the queued configuration templates to their servers, then
    report the drift of applied ones from their templates."""
    params = params or {}
    at = interval.end
    report = StepReport().zero("applications_applied", "applications_partial", "applications_failed",
                               "settings_applied", "drift_checks", "settings_drifted")
    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each claim, result and outcome commits as soon as it is known
        _apply_queued(conn, at, params, report, log)
        drift = _check_drift(conn, at, params, report, log)
    return {**report.as_dict(), "drift": drift}
