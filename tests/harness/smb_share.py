"""A real SMB share for the tests: a standalone Samba ``smbd`` on 127.0.0.1 with one share.

Use::

    from harness.smb_share import SmbShare

    with SmbShare(tmp_path) as smb:
        (smb.path / "LogFiles").mkdir()                 # the share's directory: write files directly
        monkeypatch.setenv("AIRFLOW_CONN_WEB_LOGS", smb.connection_uri())   # SambaHook reads it
        ...

Why a real smbd and not a fake: the steps read the share through Airflow's ``SambaHook`` and
``smbprotocol`` (SMB2/3, NTLM, reads at offsets, directory listing), so the tests exercise the same
protocol a Windows file server speaks. Everything lives in ``workdir`` (smb.conf, passdb, locks,
logs, the share), smbd listens on a free port of 127.0.0.1 only, and runs in its own process group:
smbd calls ``setsid()`` itself (so it is started without ``start_new_session``, which would make that
call fail; with ``--no-process-group`` its shutdown would signal the test process's group), with a
parent-death signal, so it goes away with the test even when pytest is killed. ``stop()`` ends it by
PID with a bounded wait, and ``samba-dcerpcd`` too if a share listing started it.

The share has ``force user = root``: the tests (running as root, which smbd requires) create files
and folders in ``.path`` directly, and clients writing over SMB must be able to write into them; the
SMB login is still checked against the share's own passdb (``valid users``). The Unix account the
SMB user needs is created once per machine with ``useradd --system --no-create-home``.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import require_binary

HOST = "127.0.0.1"
SMB_USER = "pfsmb"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM a process we started (by PID), wait a bounded time, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class SmbShare:
    """One standalone smbd in ``workdir`` serving one share (``share``, default ``panelflow``)."""

    def __init__(self, workdir: str | Path, share: str = "panelflow", user: str = SMB_USER,
                 password: str | None = None):
        self.dir = Path(workdir)
        self.share = share
        self.user = user
        self.password = password or ("Pf!" + secrets.token_urlsafe(12))
        self.path = self.dir / "share"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "smb.conf"

    # -- lifecycle ------------------------------------------------------------------------------------

    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""[global]
    server role = standalone server
    interfaces = {HOST}
    bind interfaces only = yes
    smb ports = {self.port}
    disable netbios = yes
    passdb backend = tdbsam:{d}/private/passdb.tdb
    private dir = {d}/private
    lock directory = {d}/lock
    state directory = {d}/state
    cache directory = {d}/cache
    pid directory = {d}/pid
    ncalrpc dir = {d}/ncalrpc
    log file = {d}/log/smbd.log
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    server min protocol = SMB2_10
    map to guest = never

[{self.share}]
    path = {self.path}
    read only = no
    valid users = {self.user}
    force user = root
""")

    def _ensure_unix_user(self) -> None:
        if subprocess.run(["id", "-u", self.user], capture_output=True).returncode == 0:
            return
        useradd = require_binary("useradd")
        done = subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.user],
                              capture_output=True, text=True, timeout=30)
        # Another test process may have created it meanwhile: only a still-missing user is an error.
        if done.returncode != 0 and subprocess.run(["id", "-u", self.user], capture_output=True).returncode != 0:
            raise RuntimeError(f"useradd {self.user} failed: {done.stderr.strip()}")

    def start(self, timeout: float = 20) -> "SmbShare":
        smbd = require_binary("smbd")
        smbpasswd = require_binary("smbpasswd")
        if os.geteuid() != 0:
            raise PermissionError("smbd must run as root")
        self.port = _free_port()
        self._write_conf()
        self._ensure_unix_user()
        done = subprocess.run([smbpasswd, "-c", str(self.conf), "-s", "-a", self.user],
                              input=f"{self.password}\n{self.password}\n", capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"smbpasswd failed: {done.stderr.strip() or done.stdout.strip()}")
        out = open(self.dir / "log" / "smbd.out", "ab")
        try:
            self.proc = subprocess.Popen([smbd, "-F", "--debug-stdout", "-s", str(self.conf)], cwd=self.dir,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        finally:
            out.close()
        try:
            deadline = time.monotonic() + timeout
            while not _port_open(self.port):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"smbd exited ({self.proc.returncode}): "
                                       + (self.dir / "log" / "smbd.out").read_text(errors="replace")[-2000:])
                if time.monotonic() > deadline:
                    raise TimeoutError(f"smbd did not listen on {HOST}:{self.port} within {timeout} s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)      # its own group: smbd and the children it forked
            except ProcessLookupError:
                proc.terminate()                         # stopped before its setsid(): only the process
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        # Listing shares (srvsvc) makes smbd start samba-dcerpcd, which detaches: stop it by its PID file.
        pidfile = self.dir / "pid" / "samba-dcerpcd.pid"
        if pidfile.exists():
            try:
                _stop_pid(int(pidfile.read_text().split()[0]))
            except (ValueError, IndexError):
                pass

    def __enter__(self) -> "SmbShare":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- access ---------------------------------------------------------------------------------------

    def connection_uri(self, **extra) -> str:
        """The value of ``AIRFLOW_CONN_<ID>`` for Airflow's SambaHook (conn type ``samba``: host,
        schema = share name, login, password, port; ``extra`` e.g. ``share_type``)."""
        return json.dumps({"conn_type": "samba", "host": HOST, "schema": self.share, "login": self.user,
                           "password": self.password, "port": self.port, "extra": extra or {}})

    def unc(self, relative: str = "") -> str:
        """``\\\\127.0.0.1\\<share>\\<relative>`` for smbprotocol's smbclient (pass ``port=self.port``)."""
        tail = relative.strip("/\\").replace("/", "\\")
        return f"\\\\{HOST}\\{self.share}" + (f"\\{tail}" if tail else "")
