"""PeerFileSyncWork 1: the load-balanced internal sync's plan — who is up, and what the primary holds.

:func:`load_balanced_internal_sync` opens an SFTP session to every enabled control server (host
key verified) and checks its root folder is there; the answer is recorded on the server's
``control_peers`` row for this run's clock, which is what 1.1 and 1.2 follow (a peer found down is
skipped by them and caught up by a later run). In the primary's session it then reads the
configured files (``peer_sync_items`` of kind ``file``: a file or a whole folder under the root
folder) into ``peer_primary_files``: size, mtime and SHA-256, re-reading a file only when its size
or mtime moved, so a quiet run reads no file content. A configured path missing on the primary is
reported, not an error; files gone from it leave the list (1.2 then removes them from the peers).

The primary not answering fails the step (Airflow retries and alerts): there is nothing to make
the peers equal to. At most ``max_files`` (5,000) files are read; more is a configuration error.
"""

from __future__ import annotations

import json
import stat

from panelflow.hooks.sftp_files import SftpFiles, remote_join, sftp_errors
from panelflow.step import StepReport, first_line
from panelflow.steps.peer_sync._backend import (NOTHING_CONFIGURED, NoPrimary, Peer, PeersFailed, members,
                                                record_check)

MAX_FILES = 5000

_ITEMS = "SELECT id, path FROM peer_sync_items WHERE kind = 'file' AND enabled ORDER BY path"
_KNOWN = "SELECT path, size_bytes, mtime, sha256 FROM peer_primary_files"
_SCANNED = """
INSERT INTO peer_primary_files (path, item_id, size_bytes, mtime, sha256, scanned_for)
SELECT path, item_id, size_bytes, mtime, sha256, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(path text, item_id bigint, size_bytes bigint, mtime bigint, sha256 text)
ON CONFLICT (path) DO UPDATE SET item_id = EXCLUDED.item_id, size_bytes = EXCLUDED.size_bytes,
    mtime = EXCLUDED.mtime, sha256 = EXCLUDED.sha256, scanned_for = EXCLUDED.scanned_for
"""
_GONE = "DELETE FROM peer_primary_files WHERE scanned_for <> %(at)s"


def _probe(files: SftpFiles, peer: Peer) -> None:
    attrs = files.sftp.stat(peer.root_folder)
    if not stat.S_ISDIR(attrs.st_mode or 0):
        raise NotADirectoryError(f"{peer.root_folder} on {peer.name} is not a folder")


def read_primary(conn, files: SftpFiles, primary: Peer, at, report: StepReport, limit: int) -> None:
    """The configured files of the primary into ``peer_primary_files`` (see the module doc)."""
    known = {path: (size, mtime, sha) for path, size, mtime, sha in conn.execute(_KNOWN)}
    rows: dict[str, dict] = {}
    for item_id, item in conn.execute(_ITEMS).fetchall():
        full = remote_join(primary.root_folder, item)
        attrs = files.stat_or_none(full)
        if attrs is None:
            report.skip("missing on the primary", f"file item {item}")
            continue
        if stat.S_ISDIR(attrs.st_mode or 0):
            found = [(f"{item}/{rel}", a) for rel, a in files.walk(full, limit - len(rows))]
        else:
            found = [(item, attrs)]
        for path, a in found:
            size, mtime = int(a.st_size), int(a.st_mtime)
            old = known.get(path)
            if old is not None and old[:2] == (size, mtime):
                sha = old[2]
            else:
                sha = files.sha256(remote_join(primary.root_folder, path))
                report.add("files_hashed")
            rows[path] = {"path": path, "item_id": item_id, "size_bytes": size, "mtime": mtime, "sha256": sha}
            if len(rows) > limit:
                raise ValueError(f"more than {limit} files configured for the peer sync")
    conn.execute(_SCANNED, {"at": at, "rows": json.dumps(list(rows.values()))})
    conn.execute(_GONE, {"at": at})
    report.add("primary_files", len(rows))


def load_balanced_internal_sync(panel_db, interval, params=None, log=None) -> dict:
    """Used for Load Balanced server internal sync."""
    params = params or {}
    limit = int(params.get("max_files", MAX_FILES))
    at = interval.end
    report = StepReport().zero("members", "peers_up", "peers_down", "primary_files", "files_hashed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        found = members(conn)
        if not found:
            return {**report.as_dict(), "note": NOTHING_CONFIGURED}
        if not any(m.role == "primary" for m in found):
            raise NoPrimary("control peers are configured but none is an enabled primary")
        errors = sftp_errors()
        down = []
        for member in found:            # the primary first
            report.add("members")
            try:
                with SftpFiles(member.sftp_conn_id) as files:
                    _probe(files, member)
                    if member.role == "primary":
                        read_primary(conn, files, member, at, report, limit)
            except errors as exc:
                why = f"{type(exc).__name__}: {first_line(exc)}"
                record_check(conn, member, at, why)
                if member.role == "primary":
                    raise PeersFailed(f"the primary {member.name} cannot be read: {why}") from exc
                down.append(member.name)
                report.add("peers_down")
                report.skip(why, f"peer {member.name}")
                if log is not None:
                    log.warning("control peer %s is down: %s", member.name, why)
                continue
            record_check(conn, member, at, None)
            if member.role != "primary":
                report.add("peers_up")
    return {**report.as_dict(), "down_peers": down}
