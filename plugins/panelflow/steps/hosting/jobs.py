"""GroupActionWorkGeneral: the general and shared-hosting group actions, and the Hostmatic login jobs.

:func:`process_general_group_actions` works two queues of ``group_action_jobs`` through
:func:`panelflow.services.group_actions.process_group_actions`, one after the other in one task
(the daemon queue ``group_actions.general`` wakes for both):

``general`` — the panel's shared-hosting actions. Sites are ``hosted_sites`` rows the panel writes
(``pending``) before it queues ``create_site``; the other site actions name the row::

    create_site           site_id               IIS site + app pool + content folder (iis/new_site)
    suspend_site          site_id               site and pool Stopped, no auto-start (iis/set_site_state)
    unsuspend_site        site_id               Started again
    delete_site           site_id               Remove-Website and its pool; content kept (iis/remove_site)
    change_quota          site_id, disk_quota_mb          FSRM quota of the content folder (fsrm/set_quota)
    create_ftp_account    site_id, user, password, home_folder?   local user + FTP isolation (iis/new_ftp_user)
    delete_ftp_account    site_id, user         (iis/remove_ftp_user; the files stay)
    create_database       db_server, subscription_id, name, user?, password?   (MySQL/MariaDB)
    delete_database       db_server, name       drops its users, then the database
    create_database_user  db_server, database, user, password
    delete_database_user  db_server, user

``hostmatic`` — queued by GroupActionWorkAD step 5 when an AD user behind a Hostmatic login was
renamed or deleted (payloads of :mod:`panelflow.steps.active_directory.hostmatic`)::

    rename_database_user  engine, db_server, old_login, new_login
    delete_database_user  engine, db_server, login

MySQL logins are renamed/dropped with :class:`~panelflow.hooks.hosted_mysql.HostedMySqlHook`; MSSQL
logins over PowerShell remoting on the SQL Server host (``mssql/rename_login``, ``mssql/drop_login``:
names as SqlParameters, ``QUOTENAME`` inside T-SQL).

Exactly once per job. Every action looks before it acts and sets a state: a site or database that
exists is not created again, a stopped site is not stopped again, a dropped user is "already gone".
Names the panel allows are narrower than MySQL's (letters, digits, ``_``; databases ≤ 64, users
≤ 32 characters, portable to MySQL 8): anything else is rejected before a server is asked. A database
or user the server has but the panel does not is someone else's: refused, never adopted. The panel
row is written *before* the server is asked (a worker killed between the two leaves a row whose
retry finishes the work), and the job's password is removed from the payload when the job ends —
so a rerun of a finished job finds the user there and needs none.

A server that cannot be reached puts the job back (:class:`JobDeferred`, retried by a later run);
a server's refusal fails it with the server's words (:class:`JobRejected`). One session per server
serves the whole run.
"""

from __future__ import annotations

import re
from datetime import datetime

from panelflow.hooks.hosted_mysql import HostedMySqlError, HostedMySqlHook, HostedMySqlNameError

from panelflow.services.group_actions import (JobDeferred, JobRejected, Payload, PowerShellSessions,
                                              process_group_actions)
from panelflow.step import StepReport
from panelflow.steps.hosting._backend import (MIB, NO_SERVERS, HostingServer, Site, configured, int64, server_by_id,
                                              server_named, site_by_id, valid_folder, valid_host_name)

GENERAL = "general"
HOSTMATIC = "hostmatic"
GENERAL_ACTIONS = ("create_site", "suspend_site", "unsuspend_site", "delete_site", "change_quota", "create_ftp_account",
                   "delete_ftp_account", "create_database", "delete_database", "create_database_user",
                   "delete_database_user")
HOSTMATIC_ACTIONS = ("rename_database_user", "delete_database_user")
NAME = re.compile(r"^[A-Za-z0-9_]+$")
DATABASE_MAX, USER_MAX = 64, 32
FTP_USER = re.compile(r"^[A-Za-z0-9_-]{1,20}$")          # a local Windows account name, as the script checks it
QUOTA_MB = (1, 16 * 1024 * 1024)
ROW_ID = (1, 2**63 - 1)


def _name(p: Payload, key: str, longest: int, what: str) -> str:
    """A database or user name as the panel allows it: letters, digits, ``_``, at most ``longest``."""
    value = p.text(key, limit=128)
    if len(value) > longest or not NAME.match(value):
        raise JobRejected(f"{what} {value!r} may hold only letters, digits and '_' (at most {longest} characters)")
    return value


def _password(p: Payload) -> str | None:
    """The new user's password exactly as given (never stripped, never logged): 8–128 characters."""
    value = p.get("password")
    if value is None:
        return None
    if not isinstance(value, str) or not 8 <= len(value) <= 128 or any(ord(ch) < 32 for ch in value):
        raise JobRejected("payload 'password' must be 8 to 128 characters without control characters")
    return value


class _HostingJobs:
    """The handler of both queues: one PowerShell session and one MySQL connection per server per run."""

    def __init__(self, conn, at: datetime, log):
        self.conn, self.at, self.log = conn, at, log
        self.sessions = PowerShellSessions(log)   # its "down" list covers the MySQL servers too
        self.mysql: dict[str, HostedMySqlHook] = {}

    def close(self) -> None:
        self.sessions.close()
        for hook in self.mysql.values():
            hook.close()
        self.mysql.clear()

    def general(self, action: str, payload: dict) -> dict:
        return getattr(self, action)(Payload(payload))

    def hostmatic(self, action: str, payload: dict) -> dict:
        return getattr(self, f"hostmatic_{action}")(Payload(payload))

    # -- reaching the servers ------------------------------------------------------------------------

    def _server(self, name: str, role: str, engines: tuple[str, ...]) -> HostingServer:
        found = server_named(self.conn, name, role)
        if found is None:
            raise JobRejected(f"no {role} hosting server {name!r}")
        server, enabled = found
        if not enabled:
            raise JobRejected(f"hosting server {server.name} is disabled")
        if server.engine not in engines:
            raise JobRejected(f"hosting server {server.name} is {server.engine}, not {' or '.join(engines)}")
        return server

    def _server_of(self, server_id: int, what: str) -> HostingServer:
        found = server_by_id(self.conn, server_id)
        if found is None or not found[1]:
            raise JobRejected(f"the {what} of this site is disabled")
        return found[0]

    def _unreachable(self, server: HostingServer, exc: BaseException) -> JobDeferred:
        return self.sessions.unreachable(server.name, server.conn_id, exc)

    def powershell(self, server: HostingServer, script: str, parameters: dict) -> list:
        rows = self.sessions.run(server.name, server.conn_id, script, parameters)
        if len(rows) != 1 or not isinstance(rows[0], dict):
            raise JobRejected(f"{server.name}: {script} answered {len(rows)} records, not one")
        return rows

    def database(self, server: HostingServer, work):
        """``work(hook)`` on the server's MySQL connection: lost connections defer, refusals reject."""
        import pymysql
        from airflow.exceptions import AirflowException

        self.sessions.check(server.name, server.conn_id)
        try:
            hook = self.mysql.get(server.conn_id)
            if hook is None:
                hook = HostedMySqlHook(server.conn_id)
                hook.get_conn()
                self.mysql[server.conn_id] = hook
            return work(hook)
        except HostedMySqlNameError as exc:
            raise JobRejected(f"{server.name}: {exc}") from None
        except (HostedMySqlError, AirflowException) as exc:
            self.mysql.pop(server.conn_id, None)
            raise self._unreachable(server, exc) from None
        except pymysql.err.MySQLError as exc:     # the server refused the statement (privileges, limits …)
            raise JobRejected(f"{server.name}: MySQL error {exc.args[0] if exc.args else ''}: "
                              f"{exc.args[-1] if exc.args else exc}") from None

    # -- sites ---------------------------------------------------------------------------------------

    def _site(self, p: Payload, *statuses: str) -> Site:
        site_id = p.integer("site_id", *ROW_ID, required=True)
        site = site_by_id(self.conn, site_id)
        if site is None:
            raise JobRejected(f"no hosted site {site_id}")
        if site.status not in statuses:
            raise JobRejected(f"site {site.name} is {site.status}")
        return site

    def create_site(self, p: Payload) -> dict:
        site = self._site(p, "pending", "active")
        server = self._server_of(site.web_server_id, "web server")
        if server.engine != "iis":
            raise JobRejected(f"web server {server.name} is {server.engine}, not iis")
        if not valid_host_name(site.name):
            raise JobRejected(f"site name {site.name!r} is not a host name IIS can bind")
        path = site.physical_path
        if path is None:
            if not valid_folder(server.content_root):
                raise JobRejected(f"web server {server.name} has no content root for new sites")
            path = f"{server.content_root}\\{site.name}"
        if not valid_folder(path):
            raise JobRejected(f"content folder {path!r} is not an absolute local folder")
        pool = site.app_pool or site.name[:64]
        (row,) = self.powershell(server, "iis/new_site", {"Name": site.name, "HostName": site.name,
                                                          "PhysicalPath": path, "AppPool": pool})
        iis_id = row.get("Id")
        if not isinstance(iis_id, int) or iis_id < 1:
            raise JobRejected(f"{server.name}: iis/new_site returned no site id")
        self.conn.execute("UPDATE hosted_sites SET iis_site_id = %s, physical_path = %s, app_pool = %s,"
                          " status = CASE WHEN status = 'pending' THEN 'active' ELSE status END WHERE id = %s",
                          (iis_id, row.get("PhysicalPath") or path, row.get("ApplicationPool") or pool, site.id))
        return {"site": site.name, "server": server.name, "iis_site_id": iis_id, "created": bool(row.get("Created")),
                "state": row.get("State")}

    def _set_state(self, p: Payload, state: str, status: str) -> dict:
        site = self._site(p, "active", "suspended")
        server = self._server_of(site.web_server_id, "web server")
        (row,) = self.powershell(server, "iis/set_site_state", {"Name": site.name, "State": state})
        self.conn.execute("UPDATE hosted_sites SET status = %s WHERE id = %s AND status <> 'deleted'", (status, site.id))
        return {"site": site.name, "server": server.name, "state": row.get("State"), "changed": bool(row.get("Changed"))}

    def suspend_site(self, p: Payload) -> dict:
        return self._set_state(p, "Stopped", "suspended")

    def unsuspend_site(self, p: Payload) -> dict:
        return self._set_state(p, "Started", "active")

    def delete_site(self, p: Payload) -> dict:
        site = self._site(p, "pending", "active", "suspended", "deleted")
        server = self._server_of(site.web_server_id, "web server")
        accounts = [u for (u,) in self.conn.execute("SELECT user_name FROM hosted_ftp_accounts WHERE site_id = %s"
                                                    " AND status = 'active' ORDER BY user_name", (site.id,))]
        for user in accounts:       # its FTP accounts first: no local user keeps rights on a deleted site's files
            self._remove_ftp_user(site, user)
        (row,) = self.powershell(server, "iis/remove_site", {"Name": site.name})
        self.conn.execute("UPDATE hosted_sites SET status = 'deleted', deleted_at = coalesce(deleted_at, %s)"
                          " WHERE id = %s", (self.at, site.id))
        return {"site": site.name, "server": server.name, "deleted": bool(row.get("Found")),
                "ftp_accounts_removed": accounts, **({} if row.get("Found") else {"already_absent": True})}

    def change_quota(self, p: Payload) -> dict:
        site = self._site(p, "active", "suspended")
        mb = p.integer("disk_quota_mb", *QUOTA_MB, required=True)
        if not valid_folder(site.physical_path):
            raise JobRejected(f"site {site.name} has no content folder yet (not created)")
        server = self._server_of(site.storage_server_id, "file server")
        (row,) = self.powershell(server, "fsrm/set_quota", {"Path": site.physical_path, "SizeBytes": int64(mb * MIB)})
        self.conn.execute(
            "INSERT INTO hosted_site_quotas AS q (site_id, disk_quota_mb, applied_mb, applied_at, updated_at)"
            " VALUES (%(site)s, %(mb)s, %(mb)s, %(at)s, %(at)s) ON CONFLICT (site_id) DO UPDATE"
            " SET disk_quota_mb = EXCLUDED.disk_quota_mb, applied_mb = EXCLUDED.applied_mb,"
            " applied_at = EXCLUDED.applied_at, updated_at = EXCLUDED.updated_at", {"site": site.id, "mb": mb, "at": self.at})
        return {"site": site.name, "server": server.name, "disk_quota_mb": mb, "created": bool(row.get("Created")),
                "changed": bool(row.get("Changed")), "usage_mb": int(row.get("Usage") or 0) // MIB}

    def _ftp_site(self, site: Site) -> tuple[HostingServer, str]:
        server = self._server_of(site.web_server_id, "web server")
        if not server.ftp_site:
            raise JobRejected(f"web server {server.name} has no FTP site configured (hosting_servers.ftp_site)")
        return server, server.ftp_site

    def create_ftp_account(self, p: Payload) -> dict:
        site = self._site(p, "active", "suspended")
        user = p.text("user", limit=20)
        if not FTP_USER.match(user):
            raise JobRejected(f"FTP user name {user!r} may hold only letters, digits, '_' and '-' (at most 20)")
        password = _password(p)
        home = (p.text("home_folder", required=False, limit=200) or "").strip("\\")
        if not valid_folder(site.physical_path):
            raise JobRejected(f"site {site.name} has no content folder yet (not created)")
        path = site.physical_path + (f"\\{home}" if home else "")
        if not valid_folder(path):          # no '..' climbing out, nothing Windows refuses in a folder name
            raise JobRejected(f"home_folder {home!r} is not a folder inside the site")
        server, ftp_site = self._ftp_site(site)
        taken = self.conn.execute(
            "SELECT s.name FROM hosted_ftp_accounts f JOIN hosted_sites s ON s.id = f.site_id"
            " WHERE s.web_server_id = %s AND lower(f.user_name) = lower(%s) AND f.status = 'active' AND f.site_id <> %s",
            (server.id, user, site.id)).fetchone()
        if taken:
            raise JobRejected(f"FTP user {user} on {server.name} belongs to site {taken[0]}")
        # claimed first (see the module doc): a fresh claim refuses a local user the panel did not make
        fresh = self.conn.execute(
            "INSERT INTO hosted_ftp_accounts AS f (site_id, user_name, home_folder, created_at)"
            " VALUES (%(site)s, %(user)s, %(home)s, %(at)s) ON CONFLICT (site_id, user_name) DO UPDATE"
            " SET status = 'active', deleted_at = NULL, home_folder = EXCLUDED.home_folder,"
            " created_at = EXCLUDED.created_at WHERE f.status = 'deleted' RETURNING id",
            {"site": site.id, "user": user, "home": home, "at": self.at}).fetchone()
        try:
            (row,) = self.powershell(server, "iis/new_ftp_user", {
                "FtpSiteName": ftp_site, "UserName": user, "Password": password, "HomePath": path,
                "RefuseExisting": True if fresh else None})
        except JobRejected:
            if fresh:
                self.conn.execute("DELETE FROM hosted_ftp_accounts WHERE id = %s", (fresh[0],))
            raise
        return {"site": site.name, "server": server.name, "user": user, "home": path, "created": bool(row.get("Created"))}

    def delete_ftp_account(self, p: Payload) -> dict:
        site = self._site(p, "active", "suspended", "deleted")
        user = p.text("user", limit=20)
        if not self.conn.execute("SELECT 1 FROM hosted_ftp_accounts WHERE site_id = %s AND user_name = %s",
                                 (site.id, user)).fetchone():
            raise JobRejected(f"no FTP user {user!r} of site {site.name} in the panel")
        server, found = self._remove_ftp_user(site, user)
        return {"site": site.name, "server": server.name, "user": user, "deleted": found,
                **({} if found else {"already_absent": True})}

    def _remove_ftp_user(self, site: Site, user: str) -> tuple[HostingServer, bool]:
        server, ftp_site = self._ftp_site(site)
        (row,) = self.powershell(server, "iis/remove_ftp_user", {"FtpSiteName": ftp_site, "UserName": user})
        self.conn.execute("UPDATE hosted_ftp_accounts SET status = 'deleted', deleted_at = coalesce(deleted_at, %s)"
                          " WHERE site_id = %s AND user_name = %s", (self.at, site.id, user))
        return server, bool(row.get("Found"))

    # -- databases -----------------------------------------------------------------------------------

    def _db_server(self, p: Payload) -> HostingServer:
        server = self._server(p.text("db_server"), "database", ("mysql", "mssql"))
        if server.engine != "mysql":
            raise JobRejected(f"{server.name} is a SQL Server: customer databases are created on MySQL/MariaDB"
                              " servers only (MSSQL databases are not built in panelflow yet)")
        return server

    def _claim_database(self, server: HostingServer, subscription: int, name: str) -> int:
        """The panel's row of database ``name`` for ``subscription`` — written first (see the module doc)."""
        row = self.conn.execute("SELECT id, subscription_id, status FROM hosted_databases"
                                " WHERE db_server_id = %s AND name = %s", (server.id, name)).fetchone()
        if row is not None and row[2] != "deleted":
            if row[1] != subscription:
                raise JobRejected(f"database {name} on {server.name} belongs to another subscription")
            return row[0]
        if self.database(server, lambda h: h.database_exists(name)):
            raise JobRejected(f"database {name} exists on {server.name} but not in the panel: not adopted")
        claimed = self.conn.execute(
            "INSERT INTO hosted_databases AS d (subscription_id, db_server_id, name, created_at)"
            " VALUES (%(sub)s, %(server)s, %(name)s, %(at)s) ON CONFLICT (db_server_id, name) DO UPDATE"
            " SET subscription_id = EXCLUDED.subscription_id, status = 'active', deleted_at = NULL,"
            " created_at = EXCLUDED.created_at, size_bytes = NULL, size_sampled_at = NULL WHERE d.status = 'deleted'"
            " RETURNING id", {"sub": subscription, "server": server.id, "name": name, "at": self.at}).fetchone()
        if claimed is None:
            raise JobDeferred(f"database {name} on {server.name} was claimed by another job meanwhile")
        return claimed[0]

    def _claim_user(self, server: HostingServer, database_id: int, user: str) -> None:
        row = self.conn.execute("SELECT database_id, status FROM hosted_database_users"
                                " WHERE db_server_id = %s AND user_name = %s", (server.id, user)).fetchone()
        if row is not None and row[1] != "deleted":
            if row[0] != database_id:
                raise JobRejected(f"user {user} on {server.name} belongs to another database")
            return
        if self.database(server, lambda h: h.user_hosts(user)):
            raise JobRejected(f"user {user} exists on {server.name} but not in the panel: not adopted")
        claimed = self.conn.execute(
            "INSERT INTO hosted_database_users AS u (database_id, db_server_id, user_name, created_at)"
            " VALUES (%(db)s, %(server)s, %(user)s, %(at)s) ON CONFLICT (db_server_id, user_name) DO UPDATE"
            " SET database_id = EXCLUDED.database_id, status = 'active', deleted_at = NULL,"
            " created_at = EXCLUDED.created_at WHERE u.status = 'deleted' RETURNING id",
            {"db": database_id, "server": server.id, "user": user, "at": self.at}).fetchone()
        if claimed is None:
            raise JobDeferred(f"user {user} on {server.name} was claimed by another job meanwhile")

    def _create_user(self, server: HostingServer, database_id: int, database: str, user: str,
                     password: str | None) -> bool:
        self._claim_user(server, database_id, user)

        def work(hook: HostedMySqlHook) -> bool:
            created = hook.create_user(user, password)
            hook.grant_database(user, database)
            return created
        return self.database(server, work)

    def create_database(self, p: Payload) -> dict:
        server = self._db_server(p)
        subscription = p.integer("subscription_id", *ROW_ID, required=True)
        name = _name(p, "name", DATABASE_MAX, "database name")
        user = _name(p, "user", USER_MAX, "user name") if p.get("user") is not None else None
        password = _password(p)
        if not self.conn.execute("SELECT 1 FROM subscriptions WHERE id = %s", (subscription,)).fetchone():
            raise JobRejected(f"no subscription {subscription}")
        database_id = self._claim_database(server, subscription, name)
        created = self.database(server, lambda h: h.create_database(name))
        result = {"server": server.name, "database": name, "created": created}
        if user is not None:
            result.update(user=user, user_created=self._create_user(server, database_id, name, user, password))
        return result

    def create_database_user(self, p: Payload) -> dict:
        server = self._db_server(p)
        database = _name(p, "database", DATABASE_MAX, "database name")
        user = _name(p, "user", USER_MAX, "user name")
        password = _password(p)
        row = self.conn.execute("SELECT id FROM hosted_databases WHERE db_server_id = %s AND name = %s"
                                " AND status <> 'deleted'", (server.id, database)).fetchone()
        if row is None:
            raise JobRejected(f"no database {database} on {server.name} in the panel")
        created = self._create_user(server, row[0], database, user, password)
        return {"server": server.name, "database": database, "user": user, "created": created}

    def _drop_panel_user(self, server: HostingServer, user: str) -> int:
        dropped = self.database(server, lambda h: h.drop_user(user))
        self.conn.execute("UPDATE hosted_database_users SET status = 'deleted', deleted_at = coalesce(deleted_at, %s)"
                          " WHERE db_server_id = %s AND user_name = %s", (self.at, server.id, user))
        return dropped

    def delete_database_user(self, p: Payload) -> dict:
        server = self._db_server(p)
        user = _name(p, "user", USER_MAX, "user name")
        row = self.conn.execute("SELECT status FROM hosted_database_users WHERE db_server_id = %s AND user_name = %s",
                                (server.id, user)).fetchone()
        if row is None:
            raise JobRejected(f"no database user {user} on {server.name} in the panel")
        # a row marked deleted was dropped already (it is marked after the drop): a user of that name
        # on the server now is not the panel's, and is left alone
        dropped = self._drop_panel_user(server, user) if row[0] != "deleted" else 0
        return {"server": server.name, "user": user, "dropped": dropped,
                **({} if dropped else {"already_absent": True})}

    def delete_database(self, p: Payload) -> dict:
        server = self._db_server(p)
        name = _name(p, "name", DATABASE_MAX, "database name")
        row = self.conn.execute("SELECT id, status FROM hosted_databases WHERE db_server_id = %s AND name = %s",
                                (server.id, name)).fetchone()
        if row is None:
            raise JobRejected(f"no database {name} on {server.name} in the panel")
        users = [u for (u,) in self.conn.execute(
            "SELECT user_name FROM hosted_database_users WHERE database_id = %s AND status <> 'deleted'"
            " ORDER BY user_name", (row[0],))]
        for user in users:
            self._drop_panel_user(server, user)
        # marked deleted only after the drop: a database of that name there now is not the panel's
        dropped = self.database(server, lambda h: h.drop_database(name)) if row[1] != "deleted" else False
        self.conn.execute("UPDATE hosted_databases SET status = 'deleted', deleted_at = coalesce(deleted_at, %s)"
                          " WHERE id = %s", (self.at, row[0]))
        return {"server": server.name, "database": name, "dropped": dropped, "users_dropped": users,
                **({} if dropped else {"already_absent": True})}

    # -- hostmatic logins ----------------------------------------------------------------------------

    def _login_server(self, p: Payload) -> HostingServer:
        engine = p.text("engine", limit=10)
        if engine not in ("mysql", "mssql"):
            raise JobRejected(f"unknown database engine {engine!r}")
        return self._server(p.text("db_server"), "database", (engine,))

    def hostmatic_rename_database_user(self, p: Payload) -> dict:
        server = self._login_server(p)
        old, new = p.text("old_login", limit=128), p.text("new_login", limit=128)
        if server.engine == "mssql":
            (row,) = self.powershell(server, "mssql/rename_login", {"OldLogin": old, "NewLogin": new})
            return {"server": server.name, "login": new, "renamed": bool(row.get("Renamed"))}

        def work(hook: HostedMySqlHook) -> int:
            renamed = hook.rename_user(old, new)
            if not renamed and not hook.user_hosts(new):
                raise JobRejected(f"neither {old!r} nor {new!r} is a user on {server.name}")
            return renamed
        renamed = self.database(server, work)
        return {"server": server.name, "login": new, "renamed": bool(renamed)}

    def hostmatic_delete_database_user(self, p: Payload) -> dict:
        server = self._login_server(p)
        login = p.text("login", limit=128)
        if server.engine == "mssql":
            (row,) = self.powershell(server, "mssql/drop_login", {"Login": login})
            dropped = bool(row.get("Dropped"))
        else:
            dropped = bool(self.database(server, lambda h: h.drop_user(login)))
        return {"server": server.name, "login": login, "dropped": dropped,
                **({} if dropped else {"already_absent": True})}


def process_general_group_actions(panel_db, interval, params=None, log=None) -> dict:
    """Process general group actions: the ``general`` queue, then the ``hostmatic`` login jobs."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        jobs = _HostingJobs(conn, interval.end, log)
        try:
            general = process_group_actions(panel_db, GENERAL, jobs.general, interval, params, log,
                                            actions=GENERAL_ACTIONS, report=StepReport(), conn=conn)
            hostmatic = process_group_actions(panel_db, HOSTMATIC, jobs.hostmatic, interval, params, log,
                                              actions=HOSTMATIC_ACTIONS, report=StepReport(), conn=conn)
        finally:
            jobs.close()
        # both queues' jobs counted at the top level too: the Threads Manager keeps top-level counts only
        summary = {key: general.get(key, 0) + hostmatic.get(key, 0) for key in ("succeeded", "failed", "retry_later")}
        summary.update(general=general, hostmatic=hostmatic)
        if configured(conn) == 0:
            summary["note"] = NO_SERVERS
    return summary
