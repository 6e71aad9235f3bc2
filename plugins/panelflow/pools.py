"""Create and update Airflow pools from the catalog: ``python -m panelflow.pools [--dry-run]``.

Run groups become pools, the Group Job Settings become the ``group_actions`` pool. Pools this
command created earlier (their description starts with ``panelflow``) and that the catalog no
longer names are removed; pools made by hand are left alone. An admin command run by
``make run`` against the metadata DB, not task code.
"""

from __future__ import annotations

import argparse
import json

from panelflow.catalog import load_catalog

OURS = "panelflow"


def sync_pools(pools: dict[str, dict], dry_run: bool = False) -> dict[str, list[str]]:
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    changes: dict[str, list[str]] = {"created": [], "updated": [], "removed": [], "unchanged": []}
    with create_session() as session:
        existing = {p.pool: p for p in Pool.get_pools(session=session)}
        for name, spec in sorted(pools.items()):
            current = existing.get(name)
            same = current is not None and (current.slots, current.description, current.include_deferred) == (
                spec["slots"], spec["description"], spec["include_deferred"])
            changes["unchanged" if same else "updated" if current else "created"].append(name)
            if not same and not dry_run:
                Pool.create_or_update_pool(name, spec["slots"], spec["description"], spec["include_deferred"],
                                           session=session)
        for name, pool in existing.items():
            if name not in pools and (pool.description or "").startswith(OURS):
                changes["removed"].append(name)
                if not dry_run:
                    Pool.delete_pool(name, session=session)
    return changes


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m panelflow.pools", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--print", action="store_true", help="print the pools as `airflow pools import` JSON and exit")
    args = p.parse_args()
    pools = load_catalog().pools()
    if args.print:
        print(json.dumps(pools, indent=2))
        return
    changes = sync_pools(pools, dry_run=args.dry_run)
    print("pools: " + "; ".join(f"{k} {len(v)}" + (f" ({', '.join(v)})" if v and k != "unchanged" else "")
                                for k, v in changes.items()))


if __name__ == "__main__":
    main()
