"""ProvisioningWork 45 at the PSRP boundary: configuration templates queued in the panel applied to
their servers once (values as PSRP parameters), the drift report, unreachable servers and a worker
killed mid-apply."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from psycopg.types.json import Jsonb

from panelflow.step import EndpointsFailed, Interval
from panelflow.steps.configuration_studio import run_configuration_studio

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
TLS10 = r"HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\Protocols\TLS 1.0\Server"
INJECTION = "x'; Remove-Item C:\\ -Recurse -Force; '"
SETTINGS = [
    ("registry_value", {"path": TLS10, "name": "Enabled", "type": "DWord", "value": 0}),
    ("registry_value", {"path": r"HKLM:\SOFTWARE\HostingCo\Panel", "name": "Banner", "type": "String",
                        "value": INJECTION}),
    ("registry_value", {"path": r"HKLM:\SOFTWARE\HostingCo\Panel", "name": "Mask", "type": "DWord",
                        "value": 4294967295}),
    ("service", {"name": "W3SVC", "startup_type": "Automatic", "status": "Running"}),
    ("registry_value", {"path": r"HKCU:\Software\Bad", "name": "X", "type": "String", "value": "y"}),
]
TABLES = ("config_application_results", "config_applications", "config_template_settings", "config_templates",
          "servers")


@pytest.fixture(autouse=True)
def _clean(panel_db, sql):
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def servers(recorded_powershell, monkeypatch, sql):
    """WEB01 and WEB02 reached over psrp, OLD01 disabled."""
    ids = {}
    for name, enabled in (("WEB01", True), ("WEB02", True), ("OLD01", False)):
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", recorded_powershell.connection(f"{name.lower()}.corp.example"))
        ids[name] = sql("INSERT INTO servers (name, role, host, psrp_conn_id, enabled) VALUES (%s, 'remote', %s,"
                        " %s, %s) RETURNING id", (name, f"{name.lower()}.corp.example", name.lower(), enabled))[0][0]
    return ids


def template(sql, settings=SETTINGS, name="IIS hardening"):
    (template_id,) = sql("INSERT INTO config_templates (name) VALUES (%s) RETURNING id", (name,))[0]
    for position, (kind, setting) in enumerate(settings, 1):
        sql("INSERT INTO config_template_settings (template_id, position, kind, setting) VALUES (%s, %s, %s, %s)",
            (template_id, position, kind, Jsonb(setting)))
    return template_id


def queue(sql, template_id, server_id):
    return sql("INSERT INTO config_applications (template_id, server_id, requested_by) VALUES (%s, %s, 'admin')"
               " RETURNING id", (template_id, server_id))[0][0]


def run(panel_db, minutes, **params):
    end = T0 + timedelta(minutes=minutes)
    return run_configuration_studio(panel_db, Interval(end - timedelta(minutes=5), end), params)


def on(host):
    return lambda sent: sent.conn_host == host


def registry(found=None):
    """What set/get_registry_value print: the value as the registry API reads it back (a DWord is
    signed). Without ``found`` (name → (type, value)), the value just set."""
    def record(cmd):
        kind, value = found[cmd.parameters["Name"]] if found else (cmd.parameters["Type"], cmd.parameters["Value"])
        return [{"Path": cmd.parameters["Path"], "Name": cmd.parameters["Name"], "Exists": True, "Type": kind,
                 "Value": value}]
    return record


W3SVC_RUNNING = [{"Name": "W3SVC", "Exists": True, "StartupType": "Automatic", "Status": "Running"}]


def answer_apply(ps, host="web01.corp.example"):
    ps.answer("configuration/set_registry_value", registry(), when=on(host))
    ps.answer("configuration/set_service", W3SVC_RUNNING, when=on(host))


def results(sql, application):
    return sql("SELECT position, in_sync, error IS NOT NULL FROM config_application_results"
               " WHERE application_id = %s ORDER BY position", (application,))


def test_a_template_is_applied_once_with_its_values_as_parameters(recorded_powershell, servers, panel_db, sql):
    application = queue(sql, template(sql), servers["WEB01"])
    answer_apply(recorded_powershell)
    summary = run(panel_db, 0)
    assert summary["applications_partial"] == 1 and summary["settings_applied"] == 4
    assert sql("SELECT status, attempts, drifted, error FROM config_applications") == [
        ("partial", 1, 1, "setting 5: 'path' must be an HKLM:\\ registry path without wildcards")]
    assert results(sql, application) == [(1, True, False), (2, True, False), (3, True, False), (4, True, False),
                                         (5, False, True)]
    sent = [(c.script, c.parameters, c.is_script) for c in recorded_powershell.sent]
    assert sent == [
        ("configuration/set_registry_value", {"Path": TLS10, "Name": "Enabled", "Type": "DWord", "Value": 0}, True),
        ("configuration/set_registry_value", {"Path": r"HKLM:\SOFTWARE\HostingCo\Panel", "Name": "Banner",
                                              "Type": "String", "Value": INJECTION}, True),
        ("configuration/set_registry_value", {"Path": r"HKLM:\SOFTWARE\HostingCo\Panel", "Name": "Mask",
                                              "Type": "DWord", "Value": -1}, True),   # the registry's signed form
        ("configuration/set_service", {"Name": "W3SVC", "StartupType": "Automatic", "Status": "Running"}, True)]
    assert all(INJECTION not in c.command for c in recorded_powershell.sent)   # a parameter, never script text

    run(panel_db, 0)                                                   # a rerun: applied once
    run(panel_db, 10)
    assert len(recorded_powershell.sent) == 4


def test_the_drift_report_compares_what_was_applied_with_what_the_server_says(recorded_powershell, servers, panel_db,
                                                                              sql):
    application = queue(sql, template(sql, SETTINGS[:4]), servers["WEB01"])
    answer_apply(recorded_powershell)
    assert run(panel_db, 0)["applications_applied"] == 1
    recorded_powershell.answer("configuration/get_registry_value", registry(
        {"Enabled": ("DWord", 1), "Banner": ("String", INJECTION), "Mask": ("DWord", -1)}))  # TLS 1.0 re-enabled
    recorded_powershell.answer("configuration/get_service", [{**W3SVC_RUNNING[0], "Status": "Stopped"}])
    assert run(panel_db, 60)["drift_checks"] == 0                      # not due yet
    sql("UPDATE config_template_settings SET setting = setting || '{\"value\": 7}' WHERE position = 1")  # edited later

    summary = run(panel_db, 24 * 60)
    assert summary["drift_checks"] == 1 and summary["settings_drifted"] == 2
    assert summary["drift"] == [
        "WEB01: IIS hardening setting 1: wanted exists=True, type=DWord, value=0,"
        " found exists=True, type=DWord, value=1",
        "WEB01: IIS hardening setting 4: wanted exists=True, startup_type=Automatic, status=Running,"
        " found exists=True, startup_type=Automatic, status=Stopped"]
    assert results(sql, application) == [(1, False, False), (2, True, False), (3, True, False), (4, False, False)]
    assert sql("SELECT drifted, last_checked_at FROM config_applications") == [(2, T0 + timedelta(days=1))]
    reads = [(c.script, c.parameters) for c in recorded_powershell.calls("configuration/get_registry_value")]
    assert reads[0] == ("configuration/get_registry_value", {"Path": TLS10, "Name": "Enabled"})   # as applied
    assert [c.parameters for c in recorded_powershell.calls("configuration/get_service")] == [{"Name": "W3SVC"}]
    assert not any(c.script.startswith("configuration/set") for c in recorded_powershell.sent[4:])  # reported only


def test_unreachable_and_unusable_servers(recorded_powershell, servers, panel_db, sql):
    settings = template(sql, SETTINGS[:1])
    web01, web02 = queue(sql, settings, servers["WEB01"]), queue(sql, settings, servers["WEB02"])
    disabled = queue(sql, settings, servers["OLD01"])
    answer_apply(recorded_powershell)
    recorded_powershell.answer("configuration/set_registry_value", timeout=True, when=on("web02.corp.example"))
    summary = run(panel_db, 0, max_attempts=2)
    assert summary["servers_failed"] == 1 and summary["applications_applied"] == 1
    status = dict((r[0], r[1:]) for r in sql("SELECT id, status, attempts, error IS NOT NULL FROM config_applications"))
    assert status == {web01: ("applied", 1, False), web02: ("queued", 1, True), disabled: ("failed", 1, True)}

    with pytest.raises(EndpointsFailed, match="every configuration studio server failed"):
        run(panel_db, 5, max_attempts=2)                               # WEB02 was the only one: the task fails
    assert sql("SELECT status, attempts FROM config_applications WHERE id = %s", (web02,)) == [("failed", 2)]


def test_a_worker_killed_mid_apply_is_taken_again_once_stale(recorded_powershell, servers, panel_db, sql):
    application = queue(sql, template(sql, SETTINGS[:4]), servers["WEB01"])
    recorded_powershell.answer("configuration/set_registry_value", registry())
    recorded_powershell.answer("configuration/set_service", W3SVC_RUNNING)
    recorded_powershell.answer("configuration/set_service", hang_up=True, times=1)   # the session dies mid-apply
    with pytest.raises(EndpointsFailed):
        run(panel_db, 0)
    assert sql("SELECT status FROM config_applications") == [("queued",)]
    assert len(results(sql, application)) == 3                          # what it had done is kept …

    sql("UPDATE config_applications SET status = 'applying', started_at = %s", (T0 + timedelta(minutes=5),))
    assert run(panel_db, 10)["applications_applied"] == 0              # … a live claim is left alone (SIGKILL case)
    summary = run(panel_db, 40)                                         # stale: applied again (states, not toggles)
    assert summary["applications_applied"] == 1
    assert results(sql, application) == [(1, True, False), (2, True, False), (3, True, False), (4, True, False)]
    assert sql("SELECT status, attempts FROM config_applications") == [("applied", 2)]
