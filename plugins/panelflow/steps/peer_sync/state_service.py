"""PeerFileSyncWork 1.1: the ASP.NET State Service configuration made equal on every peer.

The load-balanced control servers keep their ASP.NET session state in the State Service
(``aspnet_state``); its configuration lives in the registry under
``HKLM:\\SYSTEM\\CurrentControlSet\\Services\\aspnet_state\\Parameters`` (``Port``,
``AllowRemoteConnection``) plus the service's start type. The primary's configuration is read over
PowerShell (``peers/get_state_service_config``), each peer step 1 found up is read the same way,
and a peer that differs is set (``peers/set_state_service_config``, every value a PSRP
parameter; the script restarts a running service only when a value changed, since the service
reads them at start). An unset value counts as the service's default (port 42424, no remote
connections), so "unset" on one server and "42424" on another are equal. What a peer was given is
kept in ``peer_sync_state`` (``state_service``).
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from panelflow.hooks.powershell import PowerShellOutputError, parse_records, powershell_session
from panelflow.step import StepReport
from panelflow.steps.peer_sync._backend import NoPrimary, Peer, for_each_peer, plan, record_error, record_state, summary

DEFAULT_PORT = 42424
THING = "state_service"


class StateServiceConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ComputerName: str | None = None
    Port: int | None = Field(default=None, ge=1, le=65535)
    AllowRemoteConnection: int | None = Field(default=None, ge=0)
    StartType: str

    def wanted(self) -> dict:
        """The configuration as the peers must have it (defaults made explicit)."""
        if self.StartType not in ("Automatic", "Manual", "Disabled"):
            raise ValueError(f"the state service's start type {self.StartType!r} cannot be copied")
        return {"Port": self.Port or DEFAULT_PORT, "AllowRemoteConnection": 1 if self.AllowRemoteConnection else 0,
                "StartType": self.StartType}


def _read(ps, name: str) -> dict:
    """The server's configuration as :meth:`StateServiceConfig.wanted`; an answer that is not one
    is that server's failure (:class:`PowerShellOutputError`), not a bug of ours."""
    rows = ps.run_script("peers/get_state_service_config")
    try:
        (record,) = parse_records(StateServiceConfig, rows[:1] or [None], what=f"{name} state service")
        return record.wanted()
    except ValueError as exc:
        raise PowerShellOutputError(f"peers/get_state_service_config on {name}: {exc}") from None


def sync_state_service_config(panel_db, interval, params=None, log=None) -> dict:
    """1.1.Sync state service configuration"""
    at = interval.end
    report = StepReport().zero("peers_changed", "peers_unchanged")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        the_plan = plan(conn, at, report)
        if the_plan is None:
            return summary(report, None)
        primary = the_plan.primary
        if not primary.psrp_conn_id:
            raise NoPrimary(f"the primary {primary.name} has no psrp connection to read its state service from")
        with powershell_session(primary.psrp_conn_id, log) as ps:
            wanted = _read(ps, primary.name)
        checksum = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()

        def work(peer: Peer) -> None:
            if not peer.psrp_conn_id:
                report.skip("no psrp connection: its state service is not synced", f"peer {peer.name}")
                return
            with powershell_session(peer.psrp_conn_id, log) as ps:
                if _read(ps, peer.name) == wanted:
                    report.add("peers_unchanged")
                else:
                    ps.run_script("peers/set_state_service_config", wanted)
                    report.add("peers_changed")
            record_state(conn, peer, THING, at, checksum=checksum, value=wanted)

        outcome = for_each_peer(the_plan.up, work, report, log,
                                on_failure=lambda peer, _exc, why: record_error(conn, peer, THING, why))
    result = summary(report, the_plan, outcome)
    result["configuration"] = wanted
    return result
