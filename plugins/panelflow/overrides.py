"""Operator overrides from the Threads Manager: a thread's time interval and verbose task logs.

MachPanel's "Update Time Interval" and "Enable Logging" are changed at run time, not in the
catalog, and must hold on every node and across restarts, so they live in Airflow's metadata
store: ONE Variable (``panelflow_overrides``) holding JSON ``{dag_id: {"schedule": {…},
"verbose_logging": true, …}}``. The DAG file reads it once per parse (a Variable read costs
17–40 ms in the dag-processor; one per DAG would be 61 of them) and the factory applies it.

A schedule override has the catalog's own shape and is validated by the catalog's own pydantic
model. The page refuses a bad one with the reason; a bad value that reaches the Variable anyway
(edited by hand, written by an older version) is skipped with a warning and that thread keeps its
catalog schedule — an override can never break the DAG file.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError

from panelflow.catalog import Catalog
from panelflow.catalog.model import Schedule, Strict, Thread

VARIABLE_KEY = "panelflow_overrides"

log = logging.getLogger(__name__)

_SCHEDULE = TypeAdapter(Schedule)
# kinds an operator may set: a daemon's queue is wiring, not a time interval, so it stays the catalog's
SETTABLE_KINDS = ("periodic", "interval", "fixed", "manual")


class OverrideError(ValueError):
    """A refused override, with a message meant for the operator who asked for it."""


class ThreadOverride(Strict):
    schedule: Schedule | None = None
    verbose_logging: bool = False
    updated_by: str | None = Field(default=None, max_length=200)
    updated_at: datetime | None = None

    @property
    def is_empty(self) -> bool:
        return self.schedule is None and not self.verbose_logging


def _field_errors(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p not in SETTABLE_KINDS + ("daemon",)]  # drop discriminator tags
        where = ".".join([prefix, *loc]) if loc else prefix
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def validate_schedule(thread: Thread, value: Any, catalog_timezone: str | None = None) -> Schedule:
    """An operator's schedule for ``thread``, checked like the catalog checks it.

    A thread whose catalog schedule owns a period (``data_interval: true``, BillingWork) keeps
    that unless the override says otherwise: a new run-at time must not silently change what a
    run covers. Daemon threads have no time interval (JeraSoft: a daemon service has no
    schedule); they are refused, as is turning a thread into a daemon.
    """
    who = f"thread {thread.name}"
    if thread.schedule is None or thread.schedule.kind == "daemon":
        raise OverrideError(f"{who} is a daemon: it runs whenever its queue has work and has no time interval")
    if not isinstance(value, dict):
        raise OverrideError(f"{who}, field schedule: must be an object such as "
                            '{"kind": "periodic", "every": 10, "align_to": 3}')
    kind = value.get("kind")
    if kind not in SETTABLE_KINDS:
        raise OverrideError(f"{who}, field schedule.kind: must be one of {', '.join(SETTABLE_KINDS)} (got {kind!r})")
    value = dict(value)
    if kind != "manual" and "data_interval" not in value and getattr(thread.schedule, "data_interval", False):
        value["data_interval"] = True
    if kind == "fixed" and not value.get("timezone") and catalog_timezone:
        value.setdefault("timezone", getattr(thread.schedule, "timezone", None) or catalog_timezone)
    try:
        return _SCHEDULE.validate_python(value)
    except ValidationError as exc:
        raise OverrideError(f"{who}, {_field_errors(exc, 'field schedule')}") from None


def parse(raw: Any, catalog: Catalog, problems: dict[str, str] | None = None) -> dict[str, ThreadOverride]:
    """The valid overrides in a stored value; anything else is logged (and put in ``problems``) and skipped."""
    problems = {} if problems is None else problems
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except ValueError as exc:
        log.warning("Variable %s is not JSON (%s): every thread keeps its catalog schedule", VARIABLE_KEY, exc)
        problems["*"] = f"not JSON: {exc}"
        return {}
    if not isinstance(data, dict):
        log.warning("Variable %s must be a JSON object {dag_id: override}; ignored", VARIABLE_KEY)
        problems["*"] = "not a JSON object {dag_id: override}"
        return {}
    live = {t.dag_id: t for t in catalog.live_threads}
    out: dict[str, ThreadOverride] = {}
    for dag_id, entry in data.items():
        thread = live.get(dag_id)
        if thread is None:
            log.warning("Variable %s: %r is not a live thread of the catalog; its override is ignored",
                        VARIABLE_KEY, dag_id)
            problems[dag_id] = "not a live thread of the catalog"
            continue
        try:
            if not isinstance(entry, dict):
                raise OverrideError(f"must be an object, got {type(entry).__name__}")
            override = ThreadOverride.model_validate({**entry, "schedule": None})
            if entry.get("schedule") is not None:
                # read exactly as the page validated it (daemons refused, data_interval kept)
                schedule = validate_schedule(thread, entry["schedule"], catalog.settings.timezone)
                override = override.model_copy(update={"schedule": schedule})
        except (ValidationError, OverrideError) as exc:
            reason = _field_errors(exc, "override") if isinstance(exc, ValidationError) else str(exc)
            log.warning("Variable %s: the override of %s is ignored (%s); it keeps its catalog schedule",
                        VARIABLE_KEY, dag_id, reason)
            problems[dag_id] = reason
            continue
        out[dag_id] = override
    return out


def read_variable() -> str | None:
    """The stored JSON, or None where no metadata store answers (tests, parse checks).

    ``airflow.sdk.Variable`` follows the process's secrets chain: in the dag-processor and a
    task it asks the metadata store through Airflow's supervisor, elsewhere it sees only
    ``AIRFLOW_VAR_PANELFLOW_OVERRIDES``. A store that fails must not fail the parse.
    """
    from airflow.sdk import Variable

    try:
        return Variable.get(VARIABLE_KEY, default=None)
    except Exception as exc:  # noqa: BLE001 - any failure means: no overrides this parse
        log.warning("could not read Variable %s (%s); threads keep their catalog schedules", VARIABLE_KEY, exc)
        return None


def load(catalog: Catalog) -> dict[str, ThreadOverride]:
    return parse(read_variable(), catalog)


def applied(thread: Thread, override: ThreadOverride | None) -> Thread:
    """``thread`` with its overridden schedule: the factory builds the DAG from this."""
    if override is None or override.schedule is None:
        return thread
    return thread.model_copy(update={"schedule": override.schedule})
