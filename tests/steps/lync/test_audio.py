"""CallDataProcessWork 2: Response Group prompts copied from a real SMB share (standalone smbd on
127.0.0.1, read through Airflow's SambaHook / smbprotocol), changed files only, checksummed."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from harness import require_binary
from harness.smb_share import SmbShare
from panelflow.step import Interval
from panelflow.steps.lync.audio import sync_workflow_audio_files

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
RGS = "1-ApplicationServer-1/AppServerFiles/RGS"
WORKFLOW = "Instances/6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"
WELCOME = b"RIFF" + bytes(range(256)) * 2          # stands in for a PCM .wav prompt
HOLD = b"0&\xb2u\x8ef\xcf\x11" + b"\x01" * 300      # an ASF (.wma) header and payload


def _run(minutes=0):
    end = T0 + timedelta(minutes=15 * minutes)
    return Interval(end - timedelta(minutes=15), end)


def _put(path, data, when):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (when.timestamp(), when.timestamp()))


@pytest.fixture
def share(tmp_path, monkeypatch, pools, sql):
    """POOL01's file store on a real share; POOL02's share refuses its login."""
    require_binary("smbd")
    with SmbShare(tmp_path / "smb") as smb:
        prompts = smb.path.joinpath(*RGS.split("/"), *WORKFLOW.split("/"))
        _put(prompts / "welcome.wav", WELCOME, T0 - timedelta(days=3))
        _put(prompts / "Queue" / "hold.WMA", HOLD, T0 - timedelta(days=2))
        _put(prompts / "workflow-notes.txt", b"not a prompt", T0 - timedelta(days=2))
        _put(prompts / "huge.wav", b"\0" * 5000, T0 - timedelta(days=1))
        _put(smb.path / "elsewhere.wav", b"outside the audio folder", T0 - timedelta(days=1))
        monkeypatch.setenv("AIRFLOW_CONN_LYNC_AUDIO01", smb.connection_uri())
        refused = json.loads(smb.connection_uri())
        refused["password"] = "not-the-password"
        monkeypatch.setenv("AIRFLOW_CONN_LYNC_AUDIO02", json.dumps(refused))
        sql("UPDATE lync_pools SET audio_conn_id = 'lync_audio01', audio_folder = %s WHERE name = 'POOL01'",
            (RGS.replace("/", "\\"),))     # as an operator copies it from the topology: backslashes
        sql("UPDATE lync_pools SET audio_conn_id = 'lync_audio02', audio_folder = '' WHERE name = 'POOL02'")
        smb.prompts = prompts
        yield smb


def rows(sql):
    return sql("SELECT path, size_bytes, modified_at, sha256, copied_at, checked_at, removed_at"
               " FROM lync_workflow_audio_files ORDER BY path")


def test_prompts_copied_once_changed_ones_again_removed_ones_marked(share, panel_db, sql, tmp_path):
    target = tmp_path / "audio"
    params = {"audio_dir": str(target), "max_audio_bytes": 4096}
    welcome, hold = f"{WORKFLOW}/welcome.wav", f"{WORKFLOW}/Queue/hold.WMA"
    local = {welcome: target / "POOL01" / WORKFLOW / "welcome.wav",
             hold: target / "POOL01" / WORKFLOW / "Queue" / "hold.WMA"}

    summary = sync_workflow_audio_files(panel_db, _run(), params)
    assert (summary["pools"], summary["pools_failed"], summary["failed_pools"]) == (2, 1, ["POOL02"])
    assert (summary["files_seen"], summary["files_copied"], summary["files_unchanged"]) == (2, 2, 0)
    assert any("LogonFailure" in reason for reason in summary["skipped"])
    assert summary["skipped"]["larger than 4096 bytes"] == 1
    assert rows(sql) == [
        (hold, len(HOLD), T0 - timedelta(days=2), hashlib.sha256(HOLD).hexdigest(), T0, T0, None),
        (welcome, len(WELCOME), T0 - timedelta(days=3), hashlib.sha256(WELCOME).hexdigest(), T0, T0, None)]
    assert local[welcome].read_bytes() == WELCOME and local[hold].read_bytes() == HOLD
    assert sql("SELECT local_path FROM lync_workflow_audio_files ORDER BY path") == [(str(local[hold]),),
                                                                                      (str(local[welcome]),)]
    copied = {p: f.stat().st_mtime_ns for p, f in local.items()}

    # nothing changed on the share: nothing is read or rewritten
    summary = sync_workflow_audio_files(panel_db, _run(1), params)
    assert (summary["files_copied"], summary["files_same_content"], summary["files_unchanged"]) == (0, 0, 2)
    assert {p: f.stat().st_mtime_ns for p, f in local.items()} == copied
    assert [r[5] for r in rows(sql)] == [T0 + timedelta(minutes=15)] * 2

    # a new recording of the welcome prompt (same size), hold music saved again unchanged, a prompt deleted
    new_welcome = b"RIFF" + bytes(reversed(range(256))) * 2
    _put(share.prompts / "welcome.wav", new_welcome, T0 + timedelta(minutes=20))
    _put(share.prompts / "Queue" / "hold.WMA", HOLD, T0 + timedelta(minutes=21))
    summary = sync_workflow_audio_files(panel_db, _run(2), params)
    assert (summary["files_copied"], summary["files_same_content"], summary["files_unchanged"]) == (1, 1, 0)
    assert local[welcome].read_bytes() == new_welcome
    assert local[hold].stat().st_mtime_ns == copied[hold]                  # same content: the copy stays
    assert rows(sql) == [
        (hold, len(HOLD), T0 + timedelta(minutes=21), hashlib.sha256(HOLD).hexdigest(), T0,
         T0 + timedelta(minutes=30), None),
        (welcome, len(WELCOME), T0 + timedelta(minutes=20), hashlib.sha256(new_welcome).hexdigest(),
         T0 + timedelta(minutes=30), T0 + timedelta(minutes=30), None)]

    (share.prompts / "Queue" / "hold.WMA").unlink()
    summary = sync_workflow_audio_files(panel_db, _run(3), params)
    assert (summary["files_seen"], summary["files_removed"]) == (1, 1)
    assert sql("SELECT path, removed_at FROM lync_workflow_audio_files WHERE removed_at IS NOT NULL") == [
        (hold, T0 + timedelta(minutes=45))]
    assert local[hold].read_bytes() == HOLD                                # the panel's copy is kept
    assert not [p for p in target.rglob("*.part")]                         # no temporary file left behind
    assert sql("SELECT count(*) FROM lync_workflow_audio_files") == [(2,)]


def test_a_bounded_walk_marks_nothing_removed(share, panel_db, sql, tmp_path):
    params = {"audio_dir": str(tmp_path / "audio"), "max_audio_files": 1}
    summary = sync_workflow_audio_files(panel_db, _run(), params)
    assert (summary["files_seen"], summary["files_copied"]) == (1, 1)
    assert summary["skipped"]["more than 1 audio files: the rest waits for the next run"] == 1
    sync_workflow_audio_files(panel_db, _run(1), params)
    assert sql("SELECT count(*) FROM lync_workflow_audio_files WHERE removed_at IS NULL") == [(1,)]


def test_no_pool_with_an_audio_share_is_nothing_to_do(pools, panel_db, tmp_path):
    summary = sync_workflow_audio_files(panel_db, _run(), {"audio_dir": str(tmp_path)})
    assert (summary["pools"], summary["pools_without_audio_share"], summary["failed_pools"]) == (0, 2, [])
