"""PeerFileSyncWork 1.2: the configured files and registry keys copied from the primary to each peer.

Files — the primary's list as step 1 read it this run (``peer_primary_files``: path, size, mtime,
SHA-256). For each peer step 1 found up, a file is copied only when it differs: the peer was last
given another checksum, or the peer's file no longer has the size and mtime it had right after that
copy (someone changed it there), or it is missing. A copy streams primary → peer over SFTP, lands
as ``<name>.partial`` and is renamed over the old file once whole (never a half-written file under
the real name), with the primary's mtime; its SHA-256 (computed while it streams) and the peer
file's size and mtime are recorded in ``peer_sync_state``. A file the peer was given that is no
longer on the primary is deleted from the peer — only files this sync put there.

Registry — for the ``registry`` items, the primary's values (``peers/get_registry_values``) are
compared with each peer's own (read, not assumed), and the values that differ or are missing are
set (``peers/set_registry_values``, the values as one JSON parameter). Every value a peer shares
with the primary is recorded; one the primary no longer has is then removed from the peer
(``peers/remove_registry_values``), while values only a peer ever had are left alone.

A peer that fails (down, refused, a script error) is named in the summary and the others are done;
its ``peer_sync_state`` shows what it still lacks, and the next run catches it up.
"""

from __future__ import annotations

import hashlib
import json
import posixpath

from panelflow.hooks.powershell import powershell_session
from panelflow.hooks.sftp_files import SftpFiles, remote_join
from panelflow.step import StepReport
from panelflow.steps.peer_sync._backend import (NoPrimary, Peer, Plan, for_each_peer, plan, record_error,
                                                record_state, state, summary)

_MANIFEST = "SELECT path, size_bytes, mtime, sha256 FROM peer_primary_files WHERE scanned_for = %(at)s ORDER BY path"
# the file items found on the primary this run: only under these is a file gone from it removed from the peers
_PRESENT_ITEMS = """
SELECT DISTINCT i.path FROM peer_primary_files f JOIN peer_sync_items i ON i.id = f.item_id AND i.enabled
WHERE f.scanned_for = %(at)s
"""
_REGISTRY_ITEMS = "SELECT path FROM peer_sync_items WHERE kind = 'registry' AND enabled ORDER BY path"
_FORGET = "DELETE FROM peer_sync_state WHERE peer_id = %s AND thing = %s"

FILE, REGISTRY, SYNC = "file:", "registry:", "sync"


def registry_values(rows: list, report: StepReport, where: str) -> dict[str, dict[str, dict]]:
    """``key → name → {"Kind", "Value"}`` from ``get_registry_values`` rows: a key that exists is
    present (empty when it holds no value), a missing key is absent — so a key missing on the
    primary never reads as "every value was deleted"."""
    values: dict[str, dict[str, dict]] = {}
    for row in rows:
        if not isinstance(row, dict) or not row.get("Key"):
            report.skip("not a registry value record", f"{where} {str(row)[:80]}")
            continue
        if row.get("Exists"):
            found = values.setdefault(row["Key"], {})
            if row.get("Name") is not None:
                found[row["Name"]] = {"Kind": row.get("Kind"), "Value": row.get("Value")}
    return values


def _value_checksum(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


class _FileSync:
    """Copies the primary's files to one peer at a time, through one primary session."""

    def __init__(self, conn, the_plan: Plan, primary_files: SftpFiles, at, report: StepReport):
        self.conn, self.plan, self.source, self.at, self.report = conn, the_plan, primary_files, at, report
        self.manifest = conn.execute(_MANIFEST, {"at": at}).fetchall()
        self.present = [p for (p,) in conn.execute(_PRESENT_ITEMS, {"at": at})]

    def _removable(self, path: str) -> bool:
        """Gone from an item the primary still has (a whole item missing there removes nothing)."""
        return any(path == item or path.startswith(item + "/") for item in self.present)

    def run(self, peer: Peer) -> None:
        given = state(self.conn, peer, FILE)
        wanted = set()
        with SftpFiles(peer.sftp_conn_id) as dest:
            for path, size, mtime, sha in self.manifest:
                thing = FILE + path
                wanted.add(thing)
                target = remote_join(peer.root_folder, path)
                old = given.get(thing)
                if old is not None and old[0] == sha:
                    now = dest.stat_or_none(target)
                    if now is not None and (now.st_size, int(now.st_mtime)) == (old[2], old[3]):
                        self.report.add("files_unchanged")
                        continue
                dest.makedirs(posixpath.dirname(target))
                with self.source.open_read(remote_join(self.plan.primary.root_folder, path)) as src:
                    sent, sent_sha = dest.put_atomic(src, target, mtime=mtime)
                after = dest.sftp.stat(target)
                record_state(self.conn, peer, thing, self.at, checksum=sent_sha, size=after.st_size,
                             mtime=int(after.st_mtime))
                self.report.add("files_copied")
                self.report.add("bytes_copied", sent)
            for thing in sorted(t for t in set(given) - wanted if self._removable(t[len(FILE):])):
                # gone from the primary: removed from the peer, and only files this sync put there
                dest.remove(remote_join(peer.root_folder, thing[len(FILE):]))
                self.conn.execute(_FORGET, (peer.id, thing))
                self.report.add("files_removed")


def _sync_registry(conn, peer: Peer, keys: list[str], primary_values: dict, at, report: StepReport, log) -> None:
    if not peer.psrp_conn_id:
        report.skip("no psrp connection: its registry is not synced", f"peer {peer.name}")
        return
    given = state(conn, peer, REGISTRY)
    with powershell_session(peer.psrp_conn_id, log) as ps:
        current = registry_values(ps.run_script("peers/get_registry_values", {"Keys": keys}), report, peer.name)
        for key in keys:
            if key not in primary_values:      # missing on the primary: nothing to copy, nothing removed
                continue
            wanted = primary_values[key]
            changes = [{"Name": name, **value} for name, value in sorted(wanted.items())
                       if current.get(key, {}).get(name) != value]
            report.add("registry_values_unchanged", len(wanted) - len(changes))
            if changes:
                ps.run_script("peers/set_registry_values", {"Key": key, "ValuesJson": json.dumps(changes)})
                report.add("registry_values_set", len(changes))
            prefix = f"{REGISTRY}{key}\\"
            for name, value in wanted.items():     # every value the peer now shares with the primary
                checksum = _value_checksum(value)
                if given.get(prefix + name, (None,))[0] != checksum:
                    record_state(conn, peer, prefix + name, at, checksum=checksum, value=value)
            # values the peer shared with the primary that the primary no longer has: removed (never
            # a value only the peer ever had)
            gone = sorted(t[len(prefix):] for t in given if t.startswith(prefix) and t[len(prefix):] not in wanted)
            if gone:
                ps.run_script("peers/remove_registry_values", {"Key": key, "Names": gone})
                for name in gone:
                    conn.execute(_FORGET, (peer.id, prefix + name))
                report.add("registry_values_removed", len(gone))


def sync_files_and_registry(panel_db, interval, params=None, log=None) -> dict:
    """1.2.Sync files and registry"""
    at = interval.end
    report = StepReport().zero("files_copied", "files_unchanged", "files_removed", "bytes_copied",
                               "registry_values_set", "registry_values_unchanged", "registry_values_removed")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        the_plan = plan(conn, at, report)
        if the_plan is None:
            return summary(report, None)
        keys = [k for (k,) in conn.execute(_REGISTRY_ITEMS)]
        primary_values: dict = {}
        if keys:
            if not the_plan.primary.psrp_conn_id:
                raise NoPrimary(f"registry items are configured but the primary {the_plan.primary.name}"
                                " has no psrp connection")
            with powershell_session(the_plan.primary.psrp_conn_id, log) as ps:
                primary_values = registry_values(ps.run_script("peers/get_registry_values", {"Keys": keys}),
                                                 report, the_plan.primary.name)
            for key in keys:
                if key not in primary_values:
                    report.skip("registry key missing on the primary", key)
        with SftpFiles(the_plan.primary.sftp_conn_id) as primary_files:
            files = _FileSync(conn, the_plan, primary_files, at, report)

            def work(peer: Peer) -> None:
                files.run(peer)
                if keys:
                    _sync_registry(conn, peer, keys, primary_values, at, report, log)
                record_state(conn, peer, SYNC, at)      # the peer's last whole sync, its error cleared

            outcome = for_each_peer(the_plan.up, work, report, log,
                                    on_failure=lambda peer, _exc, why: record_error(conn, peer, SYNC, why))
    return summary(report, the_plan, outcome)
