"""CallDataProcessWork 1: the run's call records of both voice platforms into the panel's call records.

MachPanel's step reads the Lync/Skype for Business monitoring records; a provider with a SIP
platform too has its calls billed the same way. Each platform keeps its own importer with its
backend — :func:`panelflow.steps.voice.calls.import_sip_call_records` (Kamailio's ``acc_cdrs`` →
``sip_usage``) and :func:`panelflow.steps.lync.calls.import_lync_call_records` (the LcsCDR
database → ``ocs_call_records``) — and both import exactly once per record (unique source keys),
so a rerun or a backfill of the same interval adds nothing. One platform failing does not hold
back the other's records; the task then fails naming it, and Airflow's retry imports the rest.
"""

from __future__ import annotations

from panelflow.step import run_parts


def process_call_records(panel_db, interval, params, log) -> dict:
    """Process Lync call records data for voice call report (and the SIP platform's, alike)."""
    from panelflow.steps.lync.calls import import_lync_call_records
    from panelflow.steps.voice.calls import import_sip_call_records

    return run_parts((("sip", lambda: import_sip_call_records(panel_db, interval, params, log)),
                      ("lync", lambda: import_lync_call_records(panel_db, interval, params, log))),
                     what="call records", log=log)
