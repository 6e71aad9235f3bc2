"""DiskQuotaWork: disk usage per site (FSRM) and per database (the server's own sizes), summed per subscription.

MachPanel's "Sync Hostmatic websites disk quota usage". Three measurements at the run's clock:

- **files**: per server holding site content (a site's file server, else its web server), one
  ``fsrm/get_quotas`` call per batch of content folders (``Get-FsrmQuota``: FSRM keeps each quota
  folder's usage current, so nothing walks the customer's files). Each site's ``Usage``/``Size`` is a
  ``hosted_site_disk_usage`` row keyed by (site, clock). A folder without an FSRM quota has no
  usage to read: it is reported (the ``change_quota`` group action puts one on it);
- **databases**: per MySQL/MariaDB server the data + index length of each database's tables
  (``information_schema.TABLES``, :meth:`HostedMySqlHook.database_sizes`), per SQL Server host its
  files' size (``mssql/get_database_sizes``), into ``hosted_databases.size_bytes`` with the clock;
- **per subscription**: files + databases in MB as a ``resource_usage_samples`` row of resource
  ``disk_space`` at the clock — what QuotaOverUsedWork (``steps/quotas.py``) compares with the
  subscription's quota. A subscription is sampled only when **every** live site and database of it
  was measured by this run: a server that failed would otherwise make a usage that looks smaller
  than it is. Its subscriptions are named in the summary and sampled by the next run.

Keyed by the clock, so a rerun or retry of the same interval adds nothing (``ON CONFLICT DO NOTHING``).
A server that fails is named in the summary; the step fails only when every server tried failed.
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import BaseModel, ConfigDict, Field

from panelflow.hooks.hosted_mysql import HostedMySqlHook
from panelflow.hooks.powershell import parse_records, powershell_session
from panelflow.step import StepReport
from panelflow.steps.hosting._backend import (MIB, HostingServer, Site, for_each_server, servers, sites, valid_folder,
                                              with_note)

PATHS_PER_CALL = 500
NAMES_PER_CALL = 500


class QuotaRecord(BaseModel):
    """A row of ``fsrm/get_quotas``: FSRM's quota on one folder, or ``Found = false``."""

    model_config = ConfigDict(extra="ignore")
    Path: str = Field(min_length=1)
    Found: bool
    Size: int | None = Field(default=None, ge=0)
    Usage: int | None = Field(default=None, ge=0)


class DatabaseSize(BaseModel):
    model_config = ConfigDict(extra="ignore")
    Name: str = Field(min_length=1)
    SizeBytes: int = Field(ge=0)


_SITE_USAGE = """
INSERT INTO hosted_site_disk_usage (site_id, sampled_at, used_mb, quota_mb)
SELECT u.site_id, %(at)s, u.used_mb, u.quota_mb
FROM unnest(%(sites)s::bigint[], %(used)s::numeric[], %(quota)s::numeric[]) AS u(site_id, used_mb, quota_mb)
ON CONFLICT (site_id, sampled_at) DO NOTHING
"""

_DATABASE_SIZES = """
UPDATE hosted_databases d SET size_bytes = x.size_bytes, size_sampled_at = %(at)s
FROM unnest(%(ids)s::bigint[], %(sizes)s::bigint[]) AS x(id, size_bytes)
WHERE d.id = x.id
"""

_LIVE_DATABASES = """
SELECT id, name FROM hosted_databases WHERE db_server_id = %s AND status IN ('active', 'suspended') ORDER BY id
"""

# files + databases per subscription, sampled only where this run measured all of them
_SAMPLES = """
WITH parts AS (
    SELECT s.subscription_id, u.used_mb AS mb, u.site_id IS NOT NULL AS measured
    FROM hosted_sites s
    LEFT JOIN hosted_site_disk_usage u ON u.site_id = s.id AND u.sampled_at = %(at)s
    WHERE s.status IN ('active', 'suspended')
    UNION ALL
    SELECT d.subscription_id, d.size_bytes / 1048576.0, coalesce(d.size_sampled_at = %(at)s, false)
    FROM hosted_databases d WHERE d.status IN ('active', 'suspended')
), per_subscription AS (
    SELECT subscription_id, round(coalesce(sum(mb), 0), 3) AS mb, bool_and(measured) AS complete
    FROM parts GROUP BY subscription_id
), written AS (
    INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used)
    SELECT subscription_id, 'disk_space', %(at)s, mb FROM per_subscription WHERE complete
    ON CONFLICT (subscription_id, resource, sampled_at) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM written),
       (SELECT count(*) FROM per_subscription WHERE complete),
       (SELECT count(*) FROM per_subscription WHERE NOT complete),
       (SELECT (array_agg(subscription_id ORDER BY subscription_id))[1:%(keep)s] FROM per_subscription
        WHERE NOT complete)
"""


def _measure_files(conn, server: HostingServer, targets: list[Site], at, report: StepReport, log) -> None:
    by_path: dict[str, Site] = {}
    for site in targets:
        if valid_folder(site.physical_path):
            by_path[site.physical_path.rstrip("\\").lower()] = site
        else:
            report.skip("the site has no content folder", f"site {site.name}")
    paths = [s.physical_path for s in by_path.values()]
    with powershell_session(server.conn_id, log) as hook:
        for start in range(0, len(paths), PATHS_PER_CALL):
            rows = hook.run_script("fsrm/get_quotas", {"Paths": paths[start:start + PATHS_PER_CALL]})
            measured: dict[int, tuple] = {}
            for record in parse_records(QuotaRecord, rows, report, "FSRM quota"):
                site = by_path.get(record.Path.rstrip("\\").lower())
                if site is None:
                    report.skip("FSRM answered for a folder that was not asked", record.Path)
                elif not record.Found or record.Usage is None:
                    report.skip("no FSRM quota on the content folder", f"site {site.name}")
                else:
                    measured[site.id] = (record.Usage / MIB, None if record.Size is None else record.Size / MIB)
            conn.execute(_SITE_USAGE, {"at": at, "sites": list(measured), "used": [v[0] for v in measured.values()],
                                       "quota": [v[1] for v in measured.values()]})
            report.add("sites_measured", len(measured))


def _measure_databases(conn, server: HostingServer, at, report: StepReport, log) -> None:
    live = conn.execute(_LIVE_DATABASES, (server.id,)).fetchall()
    ids = {name: db_id for db_id, name in live}
    names = list(ids)
    sizes: dict[str, int] = {}
    if not names:
        return
    if server.engine == "mysql":
        with HostedMySqlHook(server.conn_id) as hook:
            sizes = hook.database_sizes(names)
    else:
        with powershell_session(server.conn_id, log) as hook:
            for start in range(0, len(names), NAMES_PER_CALL):
                rows = hook.run_script("mssql/get_database_sizes", {"Names": names[start:start + NAMES_PER_CALL]})
                sizes.update({r.Name: r.SizeBytes for r in parse_records(DatabaseSize, rows, report, "database size")})
    for name in names:
        if name not in sizes:
            report.skip("the database is not on its server", f"database {name} on {server.name}")
    found = [(ids[n], s) for n, s in sizes.items() if n in ids]
    conn.execute(_DATABASE_SIZES, {"at": at, "ids": [i for i, _ in found], "sizes": [s for _, s in found]})
    report.add("databases_measured", len(found))


def sync_disk_quota_usage(panel_db, interval, params=None, log=None) -> dict:
    """Sync Hostmatic websites disk quota usage: FSRM usage per site, database sizes, and one
    ``disk_space`` sample (MB) per subscription at the run's clock (see the module's doc)."""
    at = interval.end
    report = StepReport().zero("sites_measured", "databases_measured", "samples_written", "subscriptions_sampled",
                               "subscriptions_incomplete")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        live_sites = sites(conn)
        by_server: dict[int, list[Site]] = defaultdict(list)
        for site in live_sites:
            by_server[site.storage_server_id].append(site)
        storage = [s for s in servers(conn, ids=sorted(by_server)) if s.engine in ("iis", "windows")]
        holding = [r[0] for r in conn.execute("SELECT DISTINCT db_server_id FROM hosted_databases"
                                              " WHERE status IN ('active', 'suspended')")]
        databases = servers(conn, role="database", ids=holding)

        def work(server: HostingServer) -> None:
            if server.role == "database":
                _measure_databases(conn, server, at, report, log)
            else:
                _measure_files(conn, server, by_server[server.id], at, report, log)

        outcome = for_each_server(storage + databases, work, report, log)
        written, complete, incomplete, examples = conn.execute(_SAMPLES, {"at": at, "keep": report.keep}).fetchone()
        report.add("samples_written", written)
        report.add("subscriptions_sampled", complete)
        report.add("subscriptions_incomplete", incomplete)
        if incomplete:
            report.skip_grouped([("not every site and database was measured: no sample this run", incomplete,
                                  [f"subscription {s}" for s in examples or ()])])
        return with_note(report, conn, outcome)
