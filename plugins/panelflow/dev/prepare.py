"""``make run``'s database preparation in ONE process: ``python -m panelflow.dev.prepare``.

Each step used to be its own ``python -m …`` and each imported Airflow (seconds apiece on 2
cores); here Airflow is imported only for what needs it, and not at all on a restart whose
metadata DB is already at this Airflow's head and whose pools already match the catalog. The
supervisor starts the Airflow components that only need the metadata DB as soon as the
``READY`` line appears, and the dag-processor (whose parse lets the scheduler run steps on the
panel DB) when this process exits 0.

Reads the environment ``make run`` gives its components (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``,
``AIRFLOW_CONN_PANEL_DB``, ``AIRFLOW_CONN_M365_TENANT_<i>``) plus ``PANELFLOW_HOME`` and
``PANELFLOW_DEMO_PORTS`` (``api=…,smtp=…``).
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

import psycopg

READY = "panelflow: airflow metadata DB ready"


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _airflow_revision(url: str) -> str | None:
    with psycopg.connect(_plain(url)) as conn:
        if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None


def migrate_airflow(url: str, stamp: Path) -> bool:
    """``airflow db migrate`` unless the DB is at the revision this Airflow version migrated it
    to last time (the stamp), which a restart with the data kept always is. Returns whether it ran.

    A stamp rather than Airflow's own head lookup: that lookup imports Airflow and parses every
    migration script, the very seconds a restart should not spend."""
    current = _airflow_revision(url)
    wanted = f"apache-airflow=={version('apache-airflow')} {current}"
    if current and stamp.exists() and stamp.read_text() == wanted:
        return False
    print("panelflow: airflow db migrate", flush=True)
    from airflow.utils.db import upgradedb

    upgradedb()
    stamp.write_text(f"apache-airflow=={version('apache-airflow')} {_airflow_revision(url)}")
    return True


def _pools_match(url: str, pools: dict[str, dict]) -> bool:
    from panelflow.pools import OURS

    with psycopg.connect(_plain(url)) as conn:
        rows = conn.execute("SELECT pool, slots, description, include_deferred FROM slot_pool").fetchall()
    existing = {name: (slots, description, deferred) for name, slots, description, deferred in rows}
    ours = {name for name, (_, description, _) in existing.items() if (description or "").startswith(OURS)}
    return ours <= pools.keys() and all(
        existing.get(name) == (spec["slots"], spec["description"], spec["include_deferred"])
        for name, spec in pools.items())


def sync_pools(url: str) -> None:
    """Pools from the catalog; Airflow's own Pool API only when something differs (reading
    ``slot_pool`` is a query, importing Airflow to write it is seconds)."""
    from panelflow.catalog import load_catalog

    pools = load_catalog().pools()
    if _pools_match(url, pools):
        print(f"pools: unchanged {len(pools)}", flush=True)
        return
    from panelflow.pools import sync_pools as airflow_sync

    changes = airflow_sync(pools)
    print("pools: " + "; ".join(f"{k} {len(v)}" for k, v in changes.items()), flush=True)


def main() -> int:
    home = Path(os.environ["PANELFLOW_HOME"])
    airflow_url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    panel = os.environ["AIRFLOW_CONN_PANEL_DB"]
    migrate_airflow(airflow_url, home / "airflow" / "migrated")
    print(READY, flush=True)

    from panelflow.db import upgrade

    upgrade(panel)
    flag = home / "demo-loaded"
    ports = {k: int(v) for k, v in (i.split("=") for i in os.environ["PANELFLOW_DEMO_PORTS"].split(","))}
    tenants = [json.loads(v)["extra"]["tenant_id"] for k, v in sorted(os.environ.items())
               if k.startswith("AIRFLOW_CONN_M365_TENANT_")]
    if not flag.exists():
        from panelflow.dev.demo import load_for_make_run

        load_for_make_run(panel, ports, tenants)
        flag.write_text("1")
    else:  # make run's own records are idempotent: a sandbox added since the first start gets its rows
        from panelflow.dev.demo import load_sandbox_records

        load_sandbox_records(panel, ports, tenants)
    sync_pools(airflow_url)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Airflow's exit-time teardown (ORM disposal, logging, telemetry) took seconds on a loaded
    # machine, seconds the dag-processor waited for; the work is committed, nothing is left to do
    os._exit(code)
