"""Files on remote servers over SFTP: the provider's :class:`SFTPHook` plus what the hosting steps
need from it — an upload that never leaves a file looking complete, checksums while streaming, and
one directory listing instead of a stat per file.

The connection (conn type ``sftp``) is the provider's: host, port, login, and either a
``private_key`` / ``key_file`` extra or a password. **The server's host key must be known**: the
``host_key`` extra (``ssh-ed25519 AAAA…``, what ``ssh-keyscan`` prints after the host name) or the
worker's ``~/.ssh/known_hosts``; paramiko's default policy then refuses any other key and any
unknown host. A connection with ``no_host_key_check`` or ``allow_host_key_change`` (both accept
any key) is refused here before anything is sent.

Why a subclass and not the hook's own ``store_file``: ``store_file`` writes the final name
directly, so a worker killed mid-upload leaves a truncated file that looks like a backup. Here a
file goes to ``<name>.partial`` and is renamed over the final name only once whole and its size
checked (``posix-rename@openssh.com``, which OpenSSH on Linux and OpenSSH for Windows both offer
and which replaces an existing file atomically), so a rerun simply writes it again.

A connection attempt is made once (``conn_retry_attempts=1``): a server that is down is reported
by the step and tried again by the next run or Airflow's retry, not after sleeps inside this one.
"""

from __future__ import annotations

import hashlib
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from airflow.providers.sftp.hooks.sftp import SFTPHook

CHUNK = 1 << 20
PARTIAL = ".partial"


class SftpUnsafeConnection(ValueError):
    """The connection would not verify the server's host key: refused."""


def sftp_errors() -> tuple[type[BaseException], ...]:
    """What a server that is down, refuses us or fails an operation raises: the endpoint's failure
    (``for_each``'s ``expected``), never a bug of ours."""
    import paramiko
    from airflow.exceptions import AirflowException

    return (OSError, EOFError, paramiko.SSHException, AirflowException)


def remote_join(*parts: str) -> str:
    return posixpath.join(*parts)


class SftpFiles(SFTPHook):
    """One SFTP server; use as a context manager: ``with SftpFiles(conn_id) as files: …``."""

    hook_name = "SFTP files (panelflow)"

    def __init__(self, ssh_conn_id: str, **kwargs: Any):
        kwargs.setdefault("conn_retry_attempts", 1)
        super().__init__(ssh_conn_id=ssh_conn_id, **kwargs)
        if self.no_host_key_check or self.allow_host_key_change:
            raise SftpUnsafeConnection(f"connection {ssh_conn_id!r} does not verify the server's host key"
                                       " (no_host_key_check / allow_host_key_change): refused")
        self._managed = None
        self.sftp = None

    def __enter__(self) -> SftpFiles:
        self._managed = self.get_managed_conn()
        self.sftp = self._managed.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        managed, self._managed, self.sftp = self._managed, None, None
        if managed is not None:
            managed.__exit__(None, None, None)   # closes the SFTP channel and the SSH connection

    # -- reading ----------------------------------------------------------------------------------

    def listing(self, folder: str) -> dict[str, Any]:
        """``name → SFTPAttributes`` of one folder; an absent folder is empty."""
        try:
            return {a.filename: a for a in self.sftp.listdir_attr(folder)}
        except FileNotFoundError:
            return {}

    def walk(self, folder: str, limit: int) -> Iterator[tuple[str, Any]]:
        """``(path relative to folder, attributes)`` of every regular file under ``folder``, at most
        ``limit`` (a ValueError past it: a configuration gone wrong, not a partial sync)."""
        count = 0
        pending = [""]
        while pending:
            sub = pending.pop()
            for name, attrs in sorted(self.listing(remote_join(folder, sub) if sub else folder).items()):
                rel = f"{sub}/{name}" if sub else name
                if stat.S_ISDIR(attrs.st_mode or 0):
                    pending.append(rel)
                elif stat.S_ISREG(attrs.st_mode or 0) and not name.endswith(PARTIAL):
                    count += 1
                    if count > limit:
                        raise ValueError(f"more than {limit} files under {folder}")
                    yield rel, attrs

    def stat_or_none(self, path: str):
        try:
            return self.sftp.stat(path)
        except FileNotFoundError:
            return None

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.sftp.open(path, "rb") as handle:
            handle.prefetch()
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    # -- writing ----------------------------------------------------------------------------------

    def makedirs(self, folder: str) -> None:
        """``mkdir -p``: each missing level is made (an existing one is fine)."""
        missing = []
        while folder not in ("", "/") and self.stat_or_none(folder) is None:
            missing.append(folder)
            folder = posixpath.dirname(folder)
        for path in reversed(missing):
            try:
                self.sftp.mkdir(path)
            except OSError:
                if self.stat_or_none(path) is None:
                    raise

    def put_atomic(self, source: IO[bytes], path: str, mtime: int | None = None) -> tuple[int, str]:
        """Write ``source`` to ``path`` through ``<path>.partial`` and a rename; returns the size and
        SHA-256 of what was sent, after checking the server holds that many bytes. ``mtime`` sets
        the file's modification time (kept equal to the original's by the peer sync)."""
        partial = path + PARTIAL
        digest, size = hashlib.sha256(), 0
        with self.sftp.open(partial, "wb") as out:
            out.set_pipelined(True)
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        remote = self.sftp.stat(partial).st_size
        if remote != size:
            raise OSError(f"{partial}: the server holds {remote} bytes, {size} were sent")
        if mtime is not None:
            self.sftp.utime(partial, (mtime, mtime))
        self.sftp.posix_rename(partial, path)
        return size, digest.hexdigest()

    @contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        with self.sftp.open(path, "rb") as handle:
            handle.prefetch()
            yield handle

    def remove(self, path: str) -> bool:
        """Delete one file; False when it was already gone."""
        try:
            self.sftp.remove(path)
            return True
        except FileNotFoundError:
            return False
