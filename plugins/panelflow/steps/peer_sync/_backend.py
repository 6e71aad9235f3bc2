"""PeerFileSyncWork's backend: who the control servers are, which of them this run found up, and
what each peer was last given.

The load-balanced control panel runs on several Windows servers behind a load balancer; one is the
designated ``primary`` (``control_peers``), the others ``peer``s that must stay equal to it. Each
is reached through two Airflow connections: ``sftp`` (OpenSSH Server for Windows; host key pinned)
for files under its ``root_folder``, and ``psrp`` for its registry and services.

Step 1 probes every member and records the answer on its row for this run's clock; steps 1.1 and
1.2 then work only the peers step 1 found up (:func:`plan`) — a peer found down is named in their
summaries (``peers_down``) and left for the next run, which compares it with the primary again
and so catches it up. A peer failing during 1.1/1.2 fails alone (:func:`panelflow.step.for_each`);
the step fails when every peer it tried failed. What each peer was given is kept in
``peer_sync_state`` (checksum or value, when, the last error).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from panelflow.hooks.sftp_files import sftp_errors
from panelflow.step import EndpointsFailed, StepReport, for_each

NOTHING_CONFIGURED = "no control peers configured"


class PeersFailed(EndpointsFailed):
    """Every peer the step tried failed, or the primary cannot be read: nothing was made equal."""


class NoPrimary(RuntimeError):
    """Peers are configured but no enabled primary (or the primary was not reached by this run)."""


@dataclass(frozen=True)
class Peer:
    id: int
    name: str
    role: str
    sftp_conn_id: str
    psrp_conn_id: str | None
    root_folder: str
    checked_for: Any
    reachable: bool | None


_MEMBERS = """
SELECT id, name, role, sftp_conn_id, psrp_conn_id, root_folder, last_checked_for, reachable
FROM control_peers WHERE enabled ORDER BY role = 'primary' DESC, name
"""

_CHECKED = """
UPDATE control_peers SET last_checked_for = %(at)s, reachable = %(ok)s, last_error = %(error)s WHERE id = %(id)s
"""

_STATE = """
INSERT INTO peer_sync_state AS s (peer_id, thing, checksum, value, peer_size, peer_mtime, synced_at, last_error)
VALUES (%(peer)s, %(thing)s, %(checksum)s, %(value)s, %(size)s, %(mtime)s, %(at)s, NULL)
ON CONFLICT (peer_id, thing) DO UPDATE
SET checksum = EXCLUDED.checksum, value = EXCLUDED.value, peer_size = EXCLUDED.peer_size,
    peer_mtime = EXCLUDED.peer_mtime, synced_at = EXCLUDED.synced_at, last_error = NULL
"""

_STATE_ERROR = """
INSERT INTO peer_sync_state AS s (peer_id, thing, last_error) VALUES (%(peer)s, %(thing)s, %(error)s)
ON CONFLICT (peer_id, thing) DO UPDATE SET last_error = EXCLUDED.last_error
"""


def members(conn) -> list[Peer]:
    """The enabled control servers, the primary first."""
    return [Peer(*row) for row in conn.execute(_MEMBERS)]


def record_check(conn, peer: Peer, at, error: str | None) -> None:
    conn.execute(_CHECKED, {"id": peer.id, "at": at, "ok": error is None, "error": error})


def record_state(conn, peer: Peer, thing: str, at, *, checksum: str | None = None, value: Any = None,
                 size: int | None = None, mtime: int | None = None) -> None:
    conn.execute(_STATE, {"peer": peer.id, "thing": thing, "checksum": checksum, "at": at, "size": size,
                          "mtime": mtime, "value": None if value is None else json.dumps(value)})


def record_error(conn, peer: Peer, thing: str, error: str) -> None:
    conn.execute(_STATE_ERROR, {"peer": peer.id, "thing": thing, "error": error[:1000]})


def state(conn, peer: Peer, prefix: str) -> dict[str, tuple]:
    """``thing → (checksum, value, peer_size, peer_mtime)`` of what ``peer`` was last given."""
    rows = conn.execute("SELECT thing, checksum, value, peer_size, peer_mtime FROM peer_sync_state"
                        " WHERE peer_id = %s AND thing LIKE %s AND synced_at IS NOT NULL",
                        (peer.id, prefix.replace("%", r"\%").replace("_", r"\_") + "%"))
    return {thing: rest for thing, *rest in rows}


def peer_errors() -> tuple[type[BaseException], ...]:
    """A peer's own failures (down, refused, a script's error), as ``for_each`` counts them."""
    from panelflow.hooks.powershell import PowerShellError

    return (*sftp_errors(), PowerShellError)


@dataclass
class Plan:
    primary: Peer
    up: list[Peer]
    down: list[Peer]


def plan(conn, at, report: StepReport) -> Plan | None:
    """The primary and the peers step 1 found up at this run's clock; None when nothing is configured.

    A peer step 1 found down is counted (``peers_down``) and named in the summary; a peer step 1 has
    not probed at this clock (a sub-step run on its own) is tried. The primary must have answered
    step 1 of this run: without it there is nothing to make the peers equal to."""
    found = members(conn)
    report.zero("peers_down")
    if not found:
        return None
    primary = next((m for m in found if m.role == "primary"), None)
    if primary is None:
        raise NoPrimary("control peers are configured but none is an enabled primary")
    if primary.checked_for != at or not primary.reachable:
        raise NoPrimary(f"the primary {primary.name} did not answer step 1 of this run")
    up, down = [], []
    for peer in found:
        if peer.role == "primary":
            continue
        if peer.checked_for == at and not peer.reachable:
            down.append(peer)
            report.skip("down at this run's check: caught up by a later run", f"peer {peer.name}")
        else:
            up.append(peer)
    report.add("peers_down", len(down))
    return Plan(primary, up, down)


def for_each_peer(peers: list[Peer], work: Callable[[Peer], Any], report: StepReport, log,
                  on_failure: Callable[[Peer, BaseException, str], None] | None = None):
    return for_each(peers, work, report=report, kind="peer", expected=peer_errors(), log=log,
                    what="control peer", everything_failed=PeersFailed, on_failure=on_failure)


def summary(report: StepReport, the_plan: Plan | None, outcome=None) -> dict:
    result = report.as_dict()
    if the_plan is None:
        result["note"] = NOTHING_CONFIGURED
        return result
    result["primary"] = the_plan.primary.name
    result["down_peers"] = [p.name for p in the_plan.down]
    if outcome is not None:
        result["failed_peers"] = outcome.failed
    return result
