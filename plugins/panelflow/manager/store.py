"""Writing the Threads Manager's overrides into Airflow's metadata store.

All overrides are one Variable (panelflow/overrides.py), so two operators saving at once could
each overwrite the other's change: the row is locked for the read-modify-write. After a change
the DAG file is queued for re-parsing — Airflow's own "reparse" request — so the new interval is
applied in seconds rather than at the next periodic parse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from panelflow.catalog import Catalog
from panelflow.overrides import VARIABLE_KEY, OverrideError, ThreadOverride, parse

DESCRIPTION = ("panelflow Threads Manager: per-thread time-interval and logging overrides "
               "{dag_id: {schedule, verbose_logging}}; applied by the DAG factory at the next parse")


class ShadowedError(RuntimeError):
    """The Variable comes from an environment variable or a secrets backend: a DB write would not count."""


def _shadowing_backend() -> str | None:
    from airflow.configuration import ensure_secrets_loaded
    from airflow.secrets.metastore import MetastoreBackend

    for backend in ensure_secrets_loaded():
        if isinstance(backend, MetastoreBackend):
            return None
        if backend.get_variable(VARIABLE_KEY) is not None:
            return type(backend).__name__
    return None


def read(catalog: Catalog) -> tuple[dict[str, ThreadOverride], dict[str, str]]:
    """The overrides the factory applies (same secrets chain, same parsing), and why any stored one is not."""
    from airflow.models.variable import Variable

    raw = Variable.get(VARIABLE_KEY, default_var=None)
    problems: dict[str, str] = {}
    return parse(raw, catalog, problems), problems


def update(session: Session, catalog: Catalog, dag_id: str, user: str,
           change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> ThreadOverride | None:
    """Apply ``change`` to the stored entry of ``dag_id`` (``None`` drops the entry), under a row lock."""
    from airflow.models.variable import Variable

    if backend := _shadowing_backend():
        raise ShadowedError(f"the overrides are set by {backend} (Variable {VARIABLE_KEY}); change them there")
    lock = select(Variable).where(Variable.key == VARIABLE_KEY, Variable.team_name.is_(None)).with_for_update()
    var = session.scalars(lock).one_or_none()
    if var is None:
        Variable.set(VARIABLE_KEY, "{}", description=DESCRIPTION, session=session)  # an upsert: a racing insert is fine
        var = session.scalars(lock).one()
    try:
        stored = json.loads(var.val or "{}")
    except ValueError:
        stored = {}
    if not isinstance(stored, dict):
        stored = {}
    # entries of threads no longer in the catalog stay: the catalog may be rolled back
    entry = change(dict(stored.get(dag_id) or {}))
    if entry is not None and entry.get("schedule") is None and not entry.get("verbose_logging"):
        entry = None  # nothing left to override
    if entry is None:
        stored.pop(dag_id, None)
        result = None
    else:
        entry = {k: v for k, v in entry.items() if v is not None}
        entry["updated_by"] = user
        entry["updated_at"] = datetime.now(timezone.utc).isoformat()
        problems: dict[str, str] = {}
        result = parse({dag_id: entry}, catalog, problems).get(dag_id)
        if result is None:  # e.g. logging switched on for a thread whose stored interval is broken
            raise OverrideError(f"the override of {dag_id} would not be applied: {problems.get(dag_id)}")
        stored[dag_id] = entry
    var.val = json.dumps(stored, indent=1, sort_keys=True)
    var.description = DESCRIPTION
    _request_reparse(session, dag_id)
    session.flush()
    return result


def _request_reparse(session: Session, dag_id: str) -> None:
    """Queue the thread's DAG file for parsing now (what Airflow's reparse endpoint does)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbag import DagPriorityParsingRequest

    dag = session.get(DagModel, dag_id)
    if dag is None or not dag.relative_fileloc:
        return
    # the request's id is the hash of its file (Airflow's generate_md5_hash): one pending request per file
    request_id = hashlib.md5(f"{dag.bundle_name}:{dag.relative_fileloc}".encode()).hexdigest()
    if session.get(DagPriorityParsingRequest, request_id) is None:
        session.add(DagPriorityParsingRequest(bundle_name=dag.bundle_name, relative_fileloc=dag.relative_fileloc))
