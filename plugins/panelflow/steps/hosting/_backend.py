"""The web-hosting backend: who the servers and sites are, the names they accept, and the loop over servers.

Every hosting server is a ``hosting_servers`` row (0024) naming the Airflow connection that reaches
it — psrp for IIS web servers, FSRM file servers and SQL Server hosts, ``hosted_mysql``
(:class:`panelflow.hooks.hosted_mysql.HostedMySqlHook`) for MySQL/MariaDB. The hosting steps (and the
bandwidth, transfer and backup modules beside them) find servers and sites here, so the rules about
which rows count — enabled servers, sites not deleted — are written once.

A step working several servers does it with :func:`for_each_server`: a server that cannot be reached,
refuses the login or whose script fails is named in the summary and the rest are still done; the step
fails only when every server tried failed. With no server configured at all the step says so in its
summary (:data:`NO_SERVERS`) and succeeds: there is nothing to do, which is not an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from panelflow.step import EndpointsFailed, Outcome, StepReport, for_each

NO_SERVERS = "no hosting servers configured"
MIB = 1024 * 1024

# a DNS host name as IIS takes it in a binding's host header: lower case, labels of letters, digits and
# inner hyphens, at least one dot (a quote, space, ';' or ':' can never reach a script as a host name)
HOST_NAME = re.compile(r"^(?=.{4,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")
# an absolute local Windows folder (D:\Sites\example.com), no '.'/'..' segment climbing out
WINDOWS_FOLDER = re.compile(r"^[A-Za-z]:(?:\\[^\\/:*?\"<>|\x00-\x1f]+)+$")


class HostingServersFailed(EndpointsFailed):
    """Every hosting server the step tried failed: the run fails, so Airflow retries it and alerts."""


@dataclass(frozen=True)
class HostingServer:
    id: int
    name: str
    role: str            # web, database, file
    engine: str          # iis, mysql, mssql, windows
    host: str
    conn_id: str
    log_share_conn_id: str | None
    log_folder: str
    content_root: str | None
    ftp_site: str | None      # web: the IIS FTP site the FTP accounts are published on


@dataclass(frozen=True)
class Site:
    id: int
    subscription_id: int
    web_server_id: int
    file_server_id: int | None
    name: str
    iis_site_id: int | None
    physical_path: str | None
    app_pool: str | None
    status: str

    @property
    def storage_server_id(self) -> int:
        """The server whose FSRM holds the site's content quota: its file server, else its web server."""
        return self.file_server_id or self.web_server_id


_SERVER_COLUMNS = "id, name, role, engine, host, conn_id, log_share_conn_id, log_folder, content_root, ftp_site"
_SERVER = f"SELECT {_SERVER_COLUMNS} FROM hosting_servers"
_SERVER_ENABLED = f"SELECT {_SERVER_COLUMNS}, enabled FROM hosting_servers"
_SITE = ("SELECT id, subscription_id, web_server_id, file_server_id, name, iis_site_id, physical_path, app_pool, status"
         " FROM hosted_sites")


def configured(conn) -> int:
    """How many hosting servers the panel knows (enabled or not)."""
    return conn.execute("SELECT count(*) FROM hosting_servers").fetchone()[0]


def servers(conn, *, role: str | None = None, engine: str | None = None, ids: list[int] | None = None
            ) -> list[HostingServer]:
    """The enabled servers of ``role``/``engine`` (of ``ids`` when given), by id."""
    rows = conn.execute(_SERVER + " WHERE enabled AND (%(role)s::text IS NULL OR role = %(role)s)"
                        " AND (%(engine)s::text IS NULL OR engine = %(engine)s)"
                        " AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[])) ORDER BY id",
                        {"role": role, "engine": engine, "ids": ids}).fetchall()
    return [HostingServer(*r) for r in rows]


def server_named(conn, name: str, role: str | None = None) -> tuple[HostingServer, bool] | None:
    """The server called ``name`` (any case; of ``role`` when given) and whether it is enabled."""
    row = conn.execute(_SERVER_ENABLED + " WHERE lower(name) = lower(%s) AND (%s::text IS NULL OR role = %s)",
                       (name, role, role)).fetchone()
    return None if row is None else (HostingServer(*row[:-1]), row[-1])


def server_by_id(conn, server_id: int) -> tuple[HostingServer, bool] | None:
    row = conn.execute(_SERVER_ENABLED + " WHERE id = %s", (server_id,)).fetchone()
    return None if row is None else (HostingServer(*row[:-1]), row[-1])


def site_by_id(conn, site_id: int, lock: bool = False) -> Site | None:
    row = conn.execute(_SITE + " WHERE id = %s" + (" FOR UPDATE" if lock else ""), (site_id,)).fetchone()
    return None if row is None else Site(*row)


def sites(conn, *, server_ids: list[int] | None = None, statuses: tuple[str, ...] = ("active", "suspended"),
          storage: bool = False) -> list[Site]:
    """Sites in ``statuses`` (live ones by default) on ``server_ids`` — their web servers, or with
    ``storage`` the servers holding their content (file server, else web server) — by id."""
    column = "coalesce(file_server_id, web_server_id)" if storage else "web_server_id"
    rows = conn.execute(_SITE + f" WHERE status = ANY(%(statuses)s) AND (%(ids)s::bigint[] IS NULL"
                        f" OR {column} = ANY(%(ids)s::bigint[])) ORDER BY id",
                        {"statuses": list(statuses), "ids": server_ids}).fetchall()
    return [Site(*r) for r in rows]


def valid_host_name(name: str | None) -> bool:
    return bool(name) and HOST_NAME.match(name) is not None


def valid_folder(path: str | None) -> bool:
    return bool(path) and WINDOWS_FOLDER.match(path) is not None and \
        not any(seg in (".", "..") for seg in path.split("\\"))


def int64(value: int | None):
    """A byte count as a PSRP Int64 (pypsrp sends a Python int as Int32, which overflows past 2 GiB)."""
    from pypsrp.serializer import TaggedValue

    return None if value is None else TaggedValue("I64", value)


def backend_error(exc: BaseException) -> str | None:
    """Why a server failed, when the failure is the server's (unreachable, login refused, script
    error, a connection missing or misconfigured); None for anything else — a bug, which fails the task."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.hosted_mysql import HostedMySqlError
    from panelflow.hooks.powershell import PowerShellError
    from panelflow.step import first_line

    try:
        import pymysql
        mysql_errors: tuple = (pymysql.err.MySQLError,)
    except ImportError:  # pragma: no cover - PyMySQL is a dependency
        mysql_errors = ()
    if isinstance(exc, (PowerShellError, HostedMySqlError, AirflowException, *mysql_errors)):
        return f"{type(exc).__name__}: {first_line(exc)}"
    return None


def for_each_server(targets: list[HostingServer], work: Callable[[HostingServer], Any], report: StepReport,
                    log, what: str = "hosting server") -> Outcome:
    """``work(server)`` per server under :func:`panelflow.step.for_each`'s one failure rule."""
    return for_each(targets, work, report=report, kind="server", reason=backend_error, log=log,
                    everything_failed=HostingServersFailed, what=what)


def with_note(report: StepReport, conn, outcome: Outcome | None = None) -> dict:
    """The step's summary, saying so when no hosting server is configured and naming failed servers."""
    summary = report.as_dict()
    if configured(conn) == 0:
        summary["note"] = NO_SERVERS
    if outcome is not None and outcome.failed:
        summary["failed_servers"] = outcome.failed
    return summary
