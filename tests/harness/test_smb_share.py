"""The SMB test share: a real smbd that Airflow's SambaHook logs in to, lists, reads and writes."""

import json
import subprocess

import pytest

from harness import require_binary
from harness.smb_share import SmbShare


def test_smbd_share_serves_samba_hook(tmp_path, monkeypatch):
    require_binary("smbd")
    from airflow.providers.samba.hooks.samba import SambaHook

    with SmbShare(tmp_path) as smb:
        (smb.path / "in").mkdir()
        (smb.path / "in" / "a.txt").write_bytes(b"hello over smb\n")
        monkeypatch.setenv("AIRFLOW_CONN_PF_SMB_SHARE", smb.connection_uri())
        assert json.loads(smb.connection_uri())["schema"] == smb.share
        with SambaHook("pf_smb_share") as hook:
            assert hook.listdir("in") == ["a.txt"]
            with hook.open_file("in/a.txt", mode="rb") as f:
                assert f.read() == b"hello over smb\n"
            with hook.open_file("in/b.txt", mode="wb") as f:      # a client writes into a folder the test made
                f.write(b"written")
        assert (smb.path / "in" / "b.txt").read_bytes() == b"written"
        pid = smb.proc.pid
    assert smb.proc is None
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_wrong_password_is_refused(tmp_path, monkeypatch):
    require_binary("smbd")
    from airflow.providers.samba.hooks.samba import SambaHook
    from smbprotocol.exceptions import LogonFailure

    with SmbShare(tmp_path) as smb:
        bad = json.loads(smb.connection_uri())
        bad["password"] = "wrong"
        monkeypatch.setenv("AIRFLOW_CONN_PF_SMB_BAD", json.dumps(bad))
        with pytest.raises(LogonFailure):
            with SambaHook("pf_smb_bad") as hook:
                hook.listdir("")


def test_listing_shares_starts_samba_dcerpcd_and_stop_ends_it(tmp_path):
    smbclient = require_binary("smbclient")
    require_binary("smbd")
    with SmbShare(tmp_path) as smb:
        listed = subprocess.run([smbclient, "-L", "//127.0.0.1", "-p", str(smb.port), "-U", f"{smb.user}%{smb.password}",
                                 "-m", "SMB3"], capture_output=True, text=True, timeout=60)
        assert smb.share in listed.stdout, listed.stdout + listed.stderr
        pidfile = smb.dir / "pid" / "samba-dcerpcd.pid"   # Samba 4.17: srvsvc is samba-dcerpcd's, started on demand
        dcerpcd = int(pidfile.read_text().split()[0])
        assert subprocess.run(["kill", "-0", str(dcerpcd)], capture_output=True).returncode == 0
    assert subprocess.run(["kill", "-0", str(dcerpcd)], capture_output=True).returncode != 0
