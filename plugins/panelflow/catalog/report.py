"""``make catalog-report``: which seed steps are built, per thread, and the totals.

Built means the step has a real function and everything it depends on is built too, so the
DAG runs it; the rest is declared in the catalog and absent from the DAG.
"""

from __future__ import annotations

import sys

from panelflow.catalog import Catalog, load_catalog
from panelflow.schedules import describe


def report(catalog: Catalog, verbose: bool = False) -> tuple[str, dict[str, int]]:
    tz = catalog.settings.timezone
    w = max([len(describe(t.schedule, tz)) for t in catalog.live_threads] + [8])
    lines = [f"{'thread':<40} {'domain':<13} {'schedule':<{w}} {'built/steps':>11}"]
    totals = {"threads": 0, "live": 0, "legacy": 0, "steps": 0, "built": 0}
    for t in sorted(catalog.threads, key=lambda t: (not t.is_live, t.name.lower())):
        totals["threads"] += 1
        if not t.is_live:
            totals["legacy"] += 1
            lines.append(f"{t.name:<40} {'legacy':<13} superseded by {t.legacy.superseded_by}")
            continue
        totals["live"] += 1
        runnable = {s.id for s in t.runnable_steps()}
        totals["steps"] += len(t.steps)
        totals["built"] += len(runnable)
        lines.append(f"{t.name:<40} {t.domain:<13} {describe(t.schedule, tz):<{w}} {len(runnable):>5}/{len(t.steps):<5}")
        if verbose:
            for s in t.steps:
                state = "built" if s.id in runnable else "blocked" if s.implemented else "missing"
                lines.append(f"    {s.number:<5} {state:<8} {s.id}")
    missing = totals["steps"] - totals["built"]
    pct = 100.0 * totals["built"] / totals["steps"] if totals["steps"] else 0.0
    lines.append("")
    lines.append(
        f"totals: {totals['threads']} threads ({totals['live']} live, {totals['legacy']} legacy), "
        f"{totals['steps']} steps, {totals['built']} implemented ({pct:.1f}%), {missing} missing"
    )
    return "\n".join(lines), totals


def main() -> None:
    text, _ = report(load_catalog(), verbose="-v" in sys.argv[1:])
    print(text)


if __name__ == "__main__":
    main()
