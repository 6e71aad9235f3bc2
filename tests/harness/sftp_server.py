"""A real SFTP server for the tests: OpenSSH ``sshd`` with ``internal-sftp`` on 127.0.0.1.

Use::

    from harness.sftp_server import SftpServer

    with SftpServer(tmp_path / "backup1") as srv:          # its own host key, client key and root
        (srv.root / "in").mkdir()                           # the server's files: a plain directory
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP1", srv.connection())   # SFTPHook reads it
        ...

Why OpenSSH and not an in-process server: the steps go through Airflow's ``SFTPHook`` (paramiko),
so the tests exercise the same SSH transport, key exchange, host-key check and SFTP protocol a
Linux backup server (or OpenSSH Server for Windows) speaks.

Each server makes, in ``workdir``: an ed25519 **host key**, whose public part goes into the
connection's ``host_key`` extra (paramiko then refuses any other key: the test
:meth:`connection` with ``host_key=`` another key proves it), and an ed25519 **client key** made by
the test, authorised in its own ``authorized_keys`` and carried in the connection's
``private_key`` extra — a secret only in the ``AIRFLOW_CONN_*`` connection, as in production.
Password logins are off; nothing else on the machine (``~/.ssh``) is read or written.

``root`` is the folder the test treats as this server's disk (peers, backup folders). sshd runs as
root (it must), listens on a free port of 127.0.0.1 only, dies with the test process (parent-death
signal) and is stopped by its PID with a bounded wait. ``stop()`` then ``start()`` again keeps the
same keys and port, so a peer can be "down" for a run and back for the next.
"""

from __future__ import annotations

import ctypes
import getpass
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import require_binary

HOST = "127.0.0.1"


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    """sshd is ready when it sends its identification banner."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def make_key(path: Path) -> str:
    """An ed25519 key pair at ``path`` (no passphrase); returns the public line ``ssh-ed25519 AAAA…``."""
    keygen = require_binary("ssh-keygen")
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "panelflow-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


class SftpServer:
    def __init__(self, workdir: str | Path):
        self.dir = Path(workdir).resolve()
        self.root = self.dir / "root"
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.host_key: str | None = None
        self.client_key: Path = self.dir / "client_key"

    def _prepare(self) -> None:
        if self.host_key is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        self.host_key = make_key(self.dir / "host_key")
        client_public = make_key(self.client_key)
        (self.dir / "authorized_keys").write_text(client_public + "\n")
        (self.dir / "sshd_config").write_text(f"""ListenAddress {HOST}
Port {self.port}
HostKey {self.dir}/host_key
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
""")

    def start(self, timeout: float = 10) -> SftpServer:
        sshd = require_binary("sshd")
        self._prepare()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)   # its privilege-separation directory
        log = open(self.dir / "sshd.log", "ab")
        try:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): "
                                   + (self.dir / "sshd.log").read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"sshd did not answer on {HOST}:{self.port} within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> SftpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def connection(self, host_key: str | None = None, **extra) -> str:
        """The ``AIRFLOW_CONN_…`` JSON of an ``sftp`` connection to this server: its host key pinned
        (``host_key`` overrides it, e.g. with another server's key) and the test's client key."""
        return json.dumps({
            "conn_type": "sftp", "host": HOST, "port": self.port, "login": getpass.getuser(),
            "extra": {"host_key": host_key or self.host_key, "private_key": self.client_key.read_text(),
                      "look_for_keys": "false", "conn_timeout": 5, **extra},
        })
