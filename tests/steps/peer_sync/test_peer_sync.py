"""PeerFileSyncWork against real SFTP servers: three OpenSSH ``sshd`` on 127.0.0.1 (the primary and
two peers, each with its own folder and host key), and the registry / State Service at the PSRP
boundary (recorded PowerShell: the scripts have not run on a real Windows server here)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness.sftp_server import SftpServer
from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 1, tzinfo=timezone.utc)
TABLES = ("peer_sync_state", "peer_primary_files", "peer_sync_items", "control_peers")
KEY = r"HKLM:\SOFTWARE\MachSol\MachPanel"
STATE_KEY = r"HKLM:\SYSTEM\CurrentControlSet\Services\aspnet_state\Parameters"


def at(end, minutes=10):
    return Interval(end - timedelta(minutes=minutes), end)


@pytest.fixture
def farm(panel_db, sql, tmp_path, monkeypatch, recorded_powershell):
    """CP1 (primary), CP2 and CP3 (peers): each an sshd with its own root folder and a psrp connection."""
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    servers = {}
    for name, role in (("CP1", "primary"), ("CP2", "peer"), ("CP3", "peer")):
        srv = SftpServer(tmp_path / name).start()
        servers[name] = srv
        (srv.root / "panel").mkdir()
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}_FILES", srv.connection())
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}_PS", recorded_powershell.connection(f"{name.lower()}.corp.example"))
        sql("INSERT INTO control_peers (name, role, sftp_conn_id, psrp_conn_id, root_folder)"
            " VALUES (%s, %s, %s, %s, %s)",
            (name, role, f"{name.lower()}_files", f"{name.lower()}_ps", str(srv.root / "panel")))
    yield servers
    for srv in servers.values():
        srv.stop()


def run(step_names, when, **params):
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.steps.peer_sync import files_and_registry, internal_sync, state_service

    steps = {"1": internal_sync.load_balanced_internal_sync, "1.1": state_service.sync_state_service_config,
             "1.2": files_and_registry.sync_files_and_registry}
    return [steps[s](PanelDatabaseHook(), at(when), params=params) for s in step_names]


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), int(p.stat().st_mtime)) for p in sorted(root.rglob("*"))
            if p.is_file()}


def write(path: Path, data: bytes, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def files(farm, sql):
    """The primary's configured files: web.config and the bin folder; local.log is not configured."""
    primary = farm["CP1"].root / "panel"
    write(primary / "web.config", b"<configuration>v2</configuration>", 1_700_000_000)
    write(primary / "bin" / "MachPanel.dll", os.urandom(300_000), 1_700_000_100)
    write(primary / "bin" / "lang" / "de.xml", "<t>Grüße</t>".encode(), 1_700_000_200)
    write(primary / "local.log", b"the primary's own log")
    write(farm["CP2"].root / "panel" / "web.config", b"<configuration>v1</configuration>")   # stale
    write(farm["CP2"].root / "panel" / "App_Data" / "peer-only.txt", b"never touched")
    sql("INSERT INTO peer_sync_items (kind, path) VALUES ('file', 'web.config'), ('file', 'bin'),"
        " ('file', 'missing.txt')")
    return primary


def configured(root: Path) -> dict:
    return {k: v for k, v in tree(root).items() if k == "web.config" or k.startswith("bin/")}


def test_two_peers_are_made_equal_to_the_primary_and_only_what_changed_is_copied(farm, files, sql):
    first, second = run(["1", "1.2"], T0)
    assert (first["members"], first["peers_up"], first["primary_files"], first["files_hashed"]) == (3, 2, 3, 3)
    assert first["skipped_examples"] == ["file item missing.txt: missing on the primary"]
    assert (second["files_copied"], second["peers"], second["peers_failed"]) == (6, 2, 0)
    want = configured(files)
    for peer in ("CP2", "CP3"):
        assert configured(farm[peer].root / "panel") == want            # same bytes, same mtimes
        assert "local.log" not in tree(farm[peer].root / "panel")       # not configured: not copied
        assert not [p for p in (farm[peer].root / "panel").rglob("*.partial")]
    assert tree(farm["CP2"].root / "panel")["App_Data/peer-only.txt"][0] == b"never touched"

    # the next run reads no file content and copies nothing
    first, second = run(["1", "1.2"], T0 + timedelta(minutes=10))
    assert (first["files_hashed"], second["files_copied"], second["files_unchanged"]) == (0, 0, 6)

    # one file changed on the primary: only it is copied, to both peers; one changed on a peer: back
    write(files / "bin" / "lang" / "de.xml", "<t>Hallo</t>".encode(), 1_700_001_000)
    write(farm["CP3"].root / "panel" / "web.config", b"edited on the peer")
    (files / "bin" / "MachPanel.dll").unlink()                        # gone from the primary
    first, second = run(["1", "1.2"], T0 + timedelta(minutes=20))
    assert first["files_hashed"] == 1
    assert (second["files_copied"], second["files_removed"], second["files_unchanged"]) == (3, 2, 1)
    want = configured(files)
    assert "bin/MachPanel.dll" not in want
    for peer in ("CP2", "CP3"):
        assert configured(farm[peer].root / "panel") == want
    state = sql("SELECT p.name, s.checksum, s.synced_at FROM peer_sync_state s JOIN control_peers p ON p.id = s.peer_id"
                " WHERE s.thing = 'file:web.config' ORDER BY p.name")
    assert [(n, t) for n, _, t in state] == [("CP2", T0), ("CP3", T0 + timedelta(minutes=20))]
    assert state[0][1] == state[1][1]


def test_a_peer_that_is_down_is_reported_and_caught_up_on_the_next_run(farm, files, sql):
    farm["CP3"].stop()
    first, second = run(["1", "1.2"], T0)
    assert (first["peers_up"], first["peers_down"], first["down_peers"]) == (1, 1, ["CP3"])
    assert (second["peers"], second["peers_down"], second["down_peers"]) == (1, 1, ["CP3"])
    assert "peer CP3: down at this run's check" in second["skipped_examples"][0]
    assert configured(farm["CP2"].root / "panel") == configured(files)
    assert configured(farm["CP3"].root / "panel") == {}
    assert sql("SELECT name, reachable, last_error IS NOT NULL FROM control_peers ORDER BY name") == \
        [("CP1", True, False), ("CP2", True, False), ("CP3", False, True)]

    farm["CP3"].start()
    first, second = run(["1", "1.2"], T0 + timedelta(minutes=10))
    assert (first["peers_down"], second["files_copied"], second["files_unchanged"]) == (0, 3, 3)
    assert configured(farm["CP3"].root / "panel") == configured(files)


def test_a_peer_failing_during_the_copy_fails_alone(farm, files, monkeypatch, sql):
    from harness.sftp_server import make_key

    run(["1"], T0)
    # CP3 answered step 1, then shows another host key: refused, CP2 still done, the error kept
    monkeypatch.setenv("AIRFLOW_CONN_CP3_FILES",
                       farm["CP3"].connection(host_key=make_key(farm["CP3"].dir / "impostor")))
    (second,) = run(["1.2"], T0)
    assert (second["peers"], second["peers_failed"], second["failed_peers"]) == (2, 1, ["CP3"])
    assert configured(farm["CP2"].root / "panel") == configured(files)
    (error,), = sql("SELECT s.last_error FROM peer_sync_state s JOIN control_peers p ON p.id = s.peer_id"
                    " WHERE p.name = 'CP3' AND s.thing = 'sync'")
    assert "Host key for server" in error


def test_the_primary_down_fails_the_run(farm, files):
    from panelflow.steps.peer_sync._backend import NoPrimary, PeersFailed

    farm["CP1"].stop()
    with pytest.raises(PeersFailed, match="the primary CP1 cannot be read"):
        run(["1"], T0)
    with pytest.raises(NoPrimary):
        run(["1.2"], T0)


def test_nothing_configured_is_a_summary(panel_db, sql):
    sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    for summary in run(["1", "1.1", "1.2"], T0):
        assert summary["note"] == "no control peers configured"


def on(host):
    return lambda sent: sent.conn_host == host


def test_state_service_configuration_is_set_where_a_peer_differs(farm, recorded_powershell, sql):
    ps = recorded_powershell
    ps.answer("peers/get_state_service_config", [{"ComputerName": "CP1", "Port": 42424, "AllowRemoteConnection": 1,
                                                  "StartType": "Automatic", "Status": "Running"}],
              when=on("cp1.corp.example"))
    ps.answer("peers/get_state_service_config", [{"ComputerName": "CP2", "Port": None, "AllowRemoteConnection": 1,
                                                  "StartType": "Automatic", "Status": "Running"}],
              when=on("cp2.corp.example"))    # unset port = the default 42424: equal
    ps.answer("peers/get_state_service_config", [{"ComputerName": "CP3", "Port": 42425, "AllowRemoteConnection": 0,
                                                  "StartType": "Manual", "Status": "Stopped"}],
              when=on("cp3.corp.example"))
    ps.answer("peers/set_state_service_config", [{"ComputerName": "CP3", "Changed": True, "Restarted": False}])
    first, summary = run(["1", "1.1"], T0)
    assert (summary["peers_changed"], summary["peers_unchanged"]) == (1, 1)
    (call,) = ps.calls("peers/set_state_service_config")
    assert call.conn_host == "cp3.corp.example" and call.is_script
    assert call.parameters == {"Port": 42424, "AllowRemoteConnection": 1, "StartType": "Automatic"}
    assert call.script == "peers/set_state_service_config"     # the file's text as it is: values only as parameters
    assert {c.conn_host for c in ps.calls("peers/get_state_service_config")} == \
        {"cp1.corp.example", "cp2.corp.example", "cp3.corp.example"}
    rows = sql("SELECT p.name, s.value FROM peer_sync_state s JOIN control_peers p ON p.id = s.peer_id"
               " WHERE s.thing = 'state_service' ORDER BY p.name")
    assert rows == [("CP2", summary["configuration"]), ("CP3", summary["configuration"])]


def test_state_service_a_peer_that_hangs_up_fails_alone(farm, recorded_powershell, sql):
    ps = recorded_powershell
    config = [{"Port": 42424, "AllowRemoteConnection": 1, "StartType": "Automatic"}]
    ps.answer("peers/get_state_service_config", config)
    ps.answer("peers/get_state_service_config", hang_up=True, when=on("cp3.corp.example"))
    first, summary = run(["1", "1.1"], T0)
    assert (summary["peers_unchanged"], summary["peers_failed"], summary["failed_peers"]) == (1, 1, ["CP3"])
    assert ps.calls("peers/set_state_service_config") == []
    (error,), = sql("SELECT s.last_error FROM peer_sync_state s JOIN control_peers p ON p.id = s.peer_id"
                    " WHERE p.name = 'CP3' AND thing = 'state_service'")
    assert "closed connection" in error


def test_registry_values_are_copied_where_a_peer_differs(farm, recorded_powershell, sql):
    ps = recorded_powershell
    sql("INSERT INTO peer_sync_items (kind, path) VALUES ('registry', %s)", (KEY,))
    hostile = "x'; Remove-Item -Recurse HKLM:\\SOFTWARE; '"
    primary = [{"Key": KEY, "Exists": True, "Name": "LicenseServer", "Kind": "String", "Value": hostile},
               {"Key": KEY, "Exists": True, "Name": "SessionTimeout", "Kind": "DWord", "Value": 30},
               {"Key": KEY, "Exists": True, "Name": "Nodes", "Kind": "MultiString", "Value": ["cp1", "cp2", "cp3"]},
               {"Key": KEY, "Exists": True, "Name": "Seed", "Kind": "Binary", "Value": "AAEC/w=="}]
    ps.answer("peers/get_registry_values", primary, when=on("cp1.corp.example"))
    ps.answer("peers/get_registry_values", primary, when=on("cp2.corp.example"))
    ps.answer("peers/get_registry_values", [dict(primary[0], Value="old"), primary[1],
                                            {"Key": KEY, "Exists": True, "Name": "PeerOnly", "Kind": "String",
                                             "Value": "kept"}], when=on("cp3.corp.example"))
    ps.answer("peers/set_registry_values", lambda cmd: [{"Key": KEY, "Name": v["Name"], "Kind": v["Kind"]}
                                                        for v in json.loads(cmd.parameters["ValuesJson"])])
    first, summary = run(["1", "1.2"], T0)
    assert (summary["registry_values_set"], summary["registry_values_unchanged"]) == (3, 5)
    (call,) = ps.calls("peers/set_registry_values")
    assert call.conn_host == "cp3.corp.example"
    assert call.parameters["Key"] == KEY
    assert json.loads(call.parameters["ValuesJson"]) == [
        {"Name": "LicenseServer", "Kind": "String", "Value": hostile},
        {"Name": "Nodes", "Kind": "MultiString", "Value": ["cp1", "cp2", "cp3"]},
        {"Name": "Seed", "Kind": "Binary", "Value": "AAEC/w=="}]
    assert hostile not in call.command
    (read,) = [c for c in ps.calls("peers/get_registry_values") if c.conn_host == "cp1.corp.example"]
    assert read.parameters == {"Keys": [KEY]}
    rows = sql("SELECT s.thing, s.value FROM peer_sync_state s JOIN control_peers p ON p.id = s.peer_id"
               " WHERE p.name = 'CP3' AND s.thing LIKE 'registry:%%' ORDER BY s.thing")
    assert rows == [(f"registry:{KEY}\\{v['Name']}", {"Kind": v["Kind"], "Value": v["Value"]})
                    for v in sorted(primary, key=lambda v: v["Name"])]

    # the primary drops Seed: removed from both peers (they shared it), PeerOnly on CP3 stays untouched
    ps.answer("peers/get_registry_values", primary[:3])
    ps.answer("peers/remove_registry_values", lambda cmd: [{"Key": KEY, "Name": n, "Removed": True, "Missing": False}
                                                           for n in cmd.parameters["Names"]])
    first, summary = run(["1", "1.2"], T0 + timedelta(minutes=10))
    assert (summary["registry_values_set"], summary["registry_values_removed"]) == (0, 2)
    removed = ps.calls("peers/remove_registry_values")
    assert sorted(c.conn_host for c in removed) == ["cp2.corp.example", "cp3.corp.example"]
    assert all(c.parameters == {"Key": KEY, "Names": ["Seed"]} for c in removed)
    assert sql("SELECT count(*) FROM peer_sync_state WHERE thing LIKE %s", ("%Seed",)) == [(0,)]

    # the key missing on the primary (a failed install?): reported, nothing removed from the peers
    ps.answer("peers/get_registry_values", [{"Key": KEY, "Exists": False, "Name": None}], when=on("cp1.corp.example"))
    first, summary = run(["1", "1.2"], T0 + timedelta(minutes=20))
    assert (summary["registry_values_set"], summary["registry_values_removed"]) == (0, 0)
    assert f"{KEY}: registry key missing on the primary" in summary["skipped_examples"]
    assert len(ps.calls("peers/remove_registry_values")) == 2
