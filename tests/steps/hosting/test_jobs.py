"""GroupActionWorkGeneral: databases and users on a real MariaDB 10.11 (``mariadbd``, one per module), IIS
sites, FSRM quotas and SQL Server logins at the PSRP boundary (the real PsrpHook/pypsrp build each
CreatePipeline; the recorded endpoint decodes script and parameters and answers as our scripts print).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pymysql
import pytest

from panelflow.steps.hosting.jobs import process_general_group_actions

from .conftest import interval

INJECTION_DB = "x`; DROP DATABASE mysql; --"
INJECTION_SITE = "x'; Remove-Website -Name *; '"
PASSWORD = "Tr0ub4dor&3 horse"


def run(hosting, params=None):
    return process_general_group_actions(hosting.db, interval(), params)


@pytest.fixture
def db01(hosting, hosting_mariadb):
    """DB01: the real MariaDB as a hosted_mysql server; the module's databases and users are dropped after."""
    server = hosting.server("DB01", "database", "mysql", hosting_mariadb.connection_uri())
    yield server
    for (name,) in hosting_mariadb.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME"
                                           " NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')"):
        hosting_mariadb.execute("DROP DATABASE `" + name.replace("`", "``") + "`")
    for user, host in hosting_mariadb.execute("SELECT User, Host FROM mysql.user WHERE User NOT IN"
                                              " ('root', 'mariadb.sys')"):
        hosting_mariadb.execute("DROP USER %s@%s", (user, host))


def databases(mariadb):
    return [r[0] for r in mariadb.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY 1")]


def users(mariadb):
    return mariadb.execute("SELECT User, Host FROM mysql.user WHERE User NOT IN ('root', 'mariadb.sys') ORDER BY 1")


def test_a_database_job_creates_a_database_and_a_user_who_can_log_in_once(hosting, hosting_mariadb, db01):
    sub = hosting.subscriptions[0]
    job = hosting.job("general", "create_database", {"db_server": "db01", "subscription_id": sub, "name": "acme_shop",
                                                     "user": "acme_app", "password": PASSWORD})
    summary = run(hosting)

    assert summary["general"]["succeeded"] == 1 and "note" not in summary
    action, status, result, error, payload = hosting.jobs()[job]
    assert (status, error) == ("succeeded", None)
    assert result == {"server": "DB01", "database": "acme_shop", "created": True, "user": "acme_app",
                      "user_created": True}
    assert "password" not in payload                                   # the secret left with the job
    assert PASSWORD not in json.dumps(summary)
    with hosting_mariadb.connect("acme_app", PASSWORD, "acme_shop") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        cur.execute("SELECT DATABASE(), CURRENT_USER()")
        assert cur.fetchone() == ("acme_shop", "acme_app@%")
        with pytest.raises(pymysql.err.OperationalError, match="denied"):
            cur.execute("CREATE DATABASE other")
    assert hosting.sql("SELECT subscription_id, name, status FROM hosted_databases") == [(sub, "acme_shop", "active")]
    assert hosting.sql("SELECT user_name, status FROM hosted_database_users") == [("acme_app", "active")]

    before = (databases(hosting_mariadb), users(hosting_mariadb),
              hosting_mariadb.execute("SHOW GRANTS FOR 'acme_app'@'%'"))
    hosting.rerun(job)                                                 # the same job again: no password now
    run(hosting)
    action, status, result, error, _ = hosting.jobs()[job]
    assert (status, result["created"], result["user_created"]) == ("succeeded", False, False)
    assert (databases(hosting_mariadb), users(hosting_mariadb),
            hosting_mariadb.execute("SHOW GRANTS FOR 'acme_app'@'%'")) == before
    with hosting_mariadb.connect("acme_app", PASSWORD, "acme_shop"):  # the password was not touched
        pass
    assert hosting.sql("SELECT count(*) FROM hosted_databases") == [(1,)]


def test_a_delete_job_drops_the_database_and_its_users(hosting, hosting_mariadb, db01):
    sub = hosting.subscriptions[0]
    hosting.job("general", "create_database", {"db_server": "DB01", "subscription_id": sub, "name": "blog",
                                               "user": "blog_rw", "password": PASSWORD})
    hosting.job("general", "create_database_user", {"db_server": "DB01", "database": "blog", "user": "blog_ro",
                                                    "password": PASSWORD + "2"})
    run(hosting)
    assert users(hosting_mariadb) == [("blog_ro", "%"), ("blog_rw", "%")]
    delete = hosting.job("general", "delete_database", {"db_server": "DB01", "name": "blog"})
    run(hosting)

    assert hosting.jobs()[delete][1:4] == ("succeeded", {"server": "DB01", "database": "blog", "dropped": True,
                                                         "users_dropped": ["blog_ro", "blog_rw"]}, None)
    assert "blog" not in databases(hosting_mariadb) and users(hosting_mariadb) == []
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        hosting_mariadb.connect("blog_rw", PASSWORD)
    assert hosting.sql("SELECT status, deleted_at IS NOT NULL FROM hosted_databases") == [("deleted", True)]
    assert hosting.sql("SELECT user_name, status FROM hosted_database_users ORDER BY 1") == [
        ("blog_ro", "deleted"), ("blog_rw", "deleted")]

    hosting.rerun(delete)
    run(hosting)
    assert hosting.jobs()[delete][1:3] == ("succeeded", {"server": "DB01", "database": "blog", "dropped": False,
                                                         "users_dropped": [], "already_absent": True})


def test_a_worker_killed_mid_job_leaves_one_database_and_one_user(hosting, hosting_mariadb, db01):
    """Killed after the panel row was claimed (before the server was asked), and killed after the server
    did the work (before the job was marked): each run finishes what the killed one began, once."""
    from psycopg.types.json import Jsonb

    from panelflow.steps.hosting.jobs import process_general_group_actions as step

    sub = hosting.subscriptions[0]
    payload = {"db_server": "DB01", "subscription_id": sub, "name": "half_done", "user": "half_user",
               "password": PASSWORD}
    claimed = hosting.job("general", "create_database", payload)
    hosting.sql("INSERT INTO hosted_databases (subscription_id, db_server_id, name) VALUES (%s, %s, 'half_done')",
                (sub, db01))
    done = hosting.job("general", "create_database", {**payload, "name": "all_done", "user": "all_user"})
    step(hosting.db, interval())
    assert hosting.jobs()[claimed][2]["created"] is True              # the claimed row's database was made
    # now both were "killed": still running, the second one before its password was removed
    hosting.sql("UPDATE group_action_jobs SET status = 'running', payload = %s, started_at = %s, finished_at = NULL"
                " WHERE id = %s", (Jsonb({**payload, "name": "all_done", "user": "all_user"}),
                                   interval().end, done))
    hosting.sql("UPDATE group_action_jobs SET status = 'running', started_at = %s WHERE id = %s",
                (interval().end, claimed))
    later = interval(interval().end + timedelta(hours=2))
    summary = step(hosting.db, later)

    assert summary["general"]["reclaimed"] == 2 and summary["general"]["succeeded"] == 2
    state = hosting.jobs()
    assert state[claimed][2]["created"] is False and state[done][2] == {
        "server": "DB01", "database": "all_done", "created": False, "user": "all_user", "user_created": False}
    assert [d for d in databases(hosting_mariadb) if d.endswith("_done")] == ["all_done", "half_done"]
    assert users(hosting_mariadb) == [("all_user", "%"), ("half_user", "%")]
    assert hosting.sql("SELECT name, count(*) FROM hosted_databases GROUP BY name ORDER BY name") == [
        ("all_done", 1), ("half_done", 1)]
    for user in ("all_user", "half_user"):
        with hosting_mariadb.connect(user, PASSWORD):
            pass


def test_hostile_names_are_refused_and_foreign_objects_never_adopted(hosting, hosting_mariadb, db01):
    sub = hosting.subscriptions[0]
    hosting_mariadb.execute("CREATE DATABASE someone_elses")
    jobs = {
        "injection": hosting.job("general", "create_database", {"db_server": "DB01", "subscription_id": sub,
                                                                "name": INJECTION_DB}),
        "user_injection": hosting.job("general", "create_database", {
            "db_server": "DB01", "subscription_id": sub, "name": "fine", "user": "u'@'%' --", "password": PASSWORD}),
        "foreign": hosting.job("general", "create_database", {"db_server": "DB01", "subscription_id": sub,
                                                              "name": "someone_elses"}),
        "no_server": hosting.job("general", "create_database", {"db_server": "DB09", "subscription_id": sub,
                                                                "name": "x"}),
    }
    summary = run(hosting)

    state = hosting.jobs()
    assert summary["general"]["failed"] == 4
    assert state[jobs["injection"]][1:4] == (
        "failed", None, f"database name {INJECTION_DB!r} may hold only letters, digits and '_' (at most 64 characters)")
    assert state[jobs["user_injection"]][3].startswith("user name \"u'@'%' --\" may hold only")
    assert state[jobs["foreign"]][3] == "database someone_elses exists on DB01 but not in the panel: not adopted"
    assert state[jobs["no_server"]][3] == "no database hosting server 'DB09'"
    assert databases(hosting_mariadb) == ["information_schema", "mysql", "performance_schema", "someone_elses", "sys"]
    assert hosting.sql("SELECT count(*) FROM hosted_databases") == [(0,)]


def test_hostmatic_jobs_rename_and_drop_mysql_users_on_the_server(hosting, hosting_mariadb, db01):
    hosting_mariadb.execute("CREATE USER 'h12_jo'@'%%' IDENTIFIED BY %s", (PASSWORD,))
    hosting_mariadb.execute("CREATE USER 'h12_al'@'%%' IDENTIFIED BY %s", (PASSWORD,))
    # the payloads GroupActionWorkAD step 5 (active_directory/hostmatic.py) queues
    rename = hosting.job("hostmatic", "rename_database_user", {
        "database_user_id": 1, "engine": "mysql", "db_server": "DB01", "old_login": "h12_jo",
        "new_login": "h12_joanna", "old_sam_account_name": "jo", "new_sam_account_name": "joanna", "directory_id": 1})
    delete = hosting.job("hostmatic", "delete_database_user", {
        "database_user_id": 2, "engine": "mysql", "db_server": "DB01", "login": "h12_al", "sam_account_name": "al",
        "directory_id": 1})
    missing = hosting.job("hostmatic", "rename_database_user", {
        "engine": "mysql", "db_server": "DB01", "old_login": "h12_nobody", "new_login": "h12_none"})
    summary = run(hosting)

    assert summary["hostmatic"]["succeeded"] == 2 and summary["hostmatic"]["failed"] == 1
    assert (summary["succeeded"], summary["failed"]) == (summary["general"]["succeeded"] + 2,
                                                         summary["general"]["failed"] + 1)   # both queues
    state = hosting.jobs()
    assert state[rename][2] == {"server": "DB01", "login": "h12_joanna", "renamed": True}
    assert state[delete][2] == {"server": "DB01", "login": "h12_al", "dropped": True}
    assert state[missing][3] == "neither 'h12_nobody' nor 'h12_none' is a user on DB01"
    assert users(hosting_mariadb) == [("h12_joanna", "%")]
    with hosting_mariadb.connect("h12_joanna", PASSWORD):
        pass

    hosting.rerun(rename, delete)                                      # done already: nothing changes
    run(hosting)
    state = hosting.jobs()
    assert state[rename][1:3] == ("succeeded", {"server": "DB01", "login": "h12_joanna", "renamed": False})
    assert state[delete][1:3] == ("succeeded", {"server": "DB01", "login": "h12_al", "dropped": False,
                                                "already_absent": True})
    assert users(hosting_mariadb) == [("h12_joanna", "%")]


def test_hostmatic_sql_server_logins_go_as_parameters(hosting, recorded_powershell):
    hosting.server("SQL01", "database", "mssql", recorded_powershell.connection("sql01.hosting.example"))
    recorded_powershell.answer("mssql/rename_login", [{"Login": "TEST\\joanna", "Renamed": True}])
    recorded_powershell.answer("mssql/drop_login", [{"Login": "TEST\\al]; DROP LOGIN sa; --", "Dropped": True}])
    rename = hosting.job("hostmatic", "rename_database_user", {"engine": "mssql", "db_server": "SQL01",
                                                              "old_login": "TEST\\jo", "new_login": "TEST\\joanna"})
    drop = hosting.job("hostmatic", "delete_database_user", {"engine": "mssql", "db_server": "SQL01",
                                                            "login": "TEST\\al]; DROP LOGIN sa; --"})
    run(hosting)

    assert [(c.script, c.conn_host, c.parameters) for c in recorded_powershell.sent] == [
        ("mssql/rename_login", "sql01.hosting.example", {"OldLogin": "TEST\\jo", "NewLogin": "TEST\\joanna"}),
        ("mssql/drop_login", "sql01.hosting.example", {"Login": "TEST\\al]; DROP LOGIN sa; --"}),
    ]
    assert all(c.is_script and "DROP LOGIN sa" not in c.command for c in recorded_powershell.sent)
    state = hosting.jobs()
    assert state[rename][1:3] == ("succeeded", {"server": "SQL01", "login": "TEST\\joanna", "renamed": True})
    assert state[drop][1] == "succeeded"


NEW_SITE = {"Name": "acme.example", "Id": 7, "State": "Started", "PhysicalPath": r"D:\Sites\acme.example",
            "ApplicationPool": "acme.example", "Bindings": ["http *:80:acme.example"], "Created": True}


def test_sites_are_created_suspended_and_deleted_on_iis_with_exact_parameters(hosting, recorded_powershell):
    web = hosting.server("WEB01", "web", "iis", recorded_powershell.connection("web01.hosting.example"),
                         content_root=r"D:\Sites")
    site = hosting.site("acme.example", web)
    hostile = hosting.site(INJECTION_SITE, web, status="active", iis_site_id=9, physical_path=r"D:\Sites\x")
    recorded_powershell.answer("iis/new_site", [NEW_SITE])
    recorded_powershell.answer("iis/set_site_state", lambda sent: [{
        "Name": sent.parameters["Name"], "Id": 7, "State": sent.parameters["State"], "ApplicationPool": "acme.example",
        "PreviousState": "Started", "Changed": True}])
    recorded_powershell.answer("iis/remove_site", lambda sent: [{"Name": sent.parameters["Name"], "Id": 7,
                                                                "Found": True, "AppPoolRemoved": True}])
    create = hosting.job("general", "create_site", {"site_id": site}, priority=1)
    suspend = hosting.job("general", "suspend_site", {"site_id": site}, priority=2)
    injection = hosting.job("general", "suspend_site", {"site_id": hostile}, priority=3)
    run(hosting)

    assert [(c.script, c.conn_host, c.parameters) for c in recorded_powershell.sent] == [
        ("iis/new_site", "web01.hosting.example", {"Name": "acme.example", "HostName": "acme.example",
                                                   "PhysicalPath": r"D:\Sites\acme.example", "AppPool": "acme.example"}),
        ("iis/set_site_state", "web01.hosting.example", {"Name": "acme.example", "State": "Stopped"}),
        ("iis/set_site_state", "web01.hosting.example", {"Name": INJECTION_SITE, "State": "Stopped"}),
    ]
    hostile_call = recorded_powershell.sent[2]
    assert hostile_call.is_script and "Remove-Website -Name *" not in hostile_call.command
    assert hostile_call.clixml.count("Remove-Website -Name *") == 1    # once: the parameter's value
    state = hosting.jobs()
    assert [state[j][1] for j in (create, suspend, injection)] == ["succeeded"] * 3
    assert state[create][2] == {"site": "acme.example", "server": "WEB01", "iis_site_id": 7, "created": True,
                                "state": "Started"}
    assert hosting.sql("SELECT iis_site_id, physical_path, app_pool, status FROM hosted_sites WHERE id = %s",
                       (site,)) == [(7, r"D:\Sites\acme.example", "acme.example", "suspended")]

    recorded_powershell.sent.clear()
    delete = hosting.job("general", "delete_site", {"site_id": site})
    hosting.rerun(create)            # a create rerun after suspension: the site is not pending or active
    run(hosting)
    assert [(c.script, c.parameters) for c in recorded_powershell.sent] == [
        ("iis/remove_site", {"Name": "acme.example"})]
    state = hosting.jobs()
    assert state[create][1:4:2] == ("failed", "site acme.example is suspended")
    assert state[delete][2] == {"site": "acme.example", "server": "WEB01", "deleted": True, "ftp_accounts_removed": []}
    assert hosting.sql("SELECT status, deleted_at FROM hosted_sites WHERE id = %s", (site,)) == [
        ("deleted", interval().end)]


def test_unsuspending_starts_a_suspended_site_and_refuses_a_deleted_one(hosting, recorded_powershell):
    web = hosting.server("WEB01", "web", "iis", recorded_powershell.connection("web01.hosting.example"))
    site = hosting.site("acme.example", web, status="suspended", physical_path=r"D:\Sites\acme.example", iis_site_id=7)
    gone = hosting.site("gone.example", web, status="active", physical_path=r"D:\Sites\gone.example", iis_site_id=8)
    hosting.sql("UPDATE hosted_sites SET status = 'deleted', deleted_at = %s WHERE id = %s", (interval().end, gone))
    recorded_powershell.answer("iis/set_site_state", [{"Name": "acme.example", "Id": 7, "State": "Started",
                                                       "ApplicationPool": "acme.example", "PreviousState": "Stopped",
                                                       "Changed": True}])
    start = hosting.job("general", "unsuspend_site", {"site_id": site})
    refused = hosting.job("general", "unsuspend_site", {"site_id": gone})
    run(hosting)

    assert [c.parameters for c in recorded_powershell.sent] == [{"Name": "acme.example", "State": "Started"}]
    state = hosting.jobs()
    assert state[start][2] == {"site": "acme.example", "server": "WEB01", "state": "Started", "changed": True}
    assert state[refused][1:4:2] == ("failed", "site gone.example is deleted")
    assert hosting.sql("SELECT name, status FROM hosted_sites ORDER BY id") == [("acme.example", "active"),
                                                                               ("gone.example", "deleted")]


def test_a_quota_change_sets_the_fsrm_quota_of_the_content_folder(hosting, recorded_powershell):
    web = hosting.server("WEB01", "web", "iis", recorded_powershell.connection("web01.hosting.example"))
    files = hosting.server("FS01", "file", "windows", recorded_powershell.connection("fs01.hosting.example"))
    site = hosting.site("acme.example", web, status="active", physical_path=r"E:\Sites\acme.example",
                        iis_site_id=7, file_server=files)
    recorded_powershell.answer("fsrm/set_quota", [{"Path": r"E:\Sites\acme.example", "Size": 2048 * 1024 ** 2,
                                                   "Usage": 300 * 1024 ** 2, "SoftLimit": False, "Created": True,
                                                   "Changed": False}])
    job = hosting.job("general", "change_quota", {"site_id": site, "disk_quota_mb": 2048})
    run(hosting)

    (call,) = recorded_powershell.sent
    assert (call.script, call.conn_host, call.parameters) == (
        "fsrm/set_quota", "fs01.hosting.example", {"Path": r"E:\Sites\acme.example", "SizeBytes": 2048 * 1024 ** 2})
    assert hosting.jobs()[job][2] == {"site": "acme.example", "server": "FS01", "disk_quota_mb": 2048, "created": True,
                                      "changed": False, "usage_mb": 300}
    assert hosting.sql("SELECT disk_quota_mb, applied_mb, applied_at FROM hosted_site_quotas") == [
        (2048, 2048, interval().end)]


def test_ftp_accounts_are_local_users_published_on_the_ftp_site_once(hosting, recorded_powershell):
    web = hosting.server("WEB01", "web", "iis", recorded_powershell.connection("web01.hosting.example"))
    hosting.sql("UPDATE hosting_servers SET ftp_site = 'Hosting FTP' WHERE id = %s", (web,))
    site = hosting.site("acme.example", web, status="active", physical_path=r"D:\Sites\acme.example", iis_site_id=7)
    recorded_powershell.answer("iis/new_ftp_user", lambda sent: [{
        "UserName": sent.parameters["UserName"], "FtpSite": "Hosting FTP", "HomePath": sent.parameters["HomePath"],
        "Created": "Password" in sent.parameters}])
    recorded_powershell.answer("iis/new_ftp_user", error="A local user 'Administrator' exists on WEB01 already",
                               when=lambda sent: sent.parameters["UserName"] == "Administrator")
    recorded_powershell.answer("iis/remove_ftp_user", lambda sent: [{
        "UserName": sent.parameters["UserName"], "FtpSite": "Hosting FTP", "Found": True}])
    create = hosting.job("general", "create_ftp_account", {"site_id": site, "user": "acme-ftp", "password": PASSWORD,
                                                           "home_folder": "wwwroot"}, priority=1)
    foreign = hosting.job("general", "create_ftp_account", {"site_id": site, "user": "Administrator",
                                                            "password": PASSWORD}, priority=2)
    climbing = hosting.job("general", "create_ftp_account", {"site_id": site, "user": "up", "password": PASSWORD,
                                                             "home_folder": "..\\..\\Windows"}, priority=3)
    run(hosting)

    assert [(c.script, c.parameters) for c in recorded_powershell.sent] == [
        ("iis/new_ftp_user", {"FtpSiteName": "Hosting FTP", "UserName": "acme-ftp", "Password": PASSWORD,
                              "HomePath": r"D:\Sites\acme.example\wwwroot", "RefuseExisting": True}),
        ("iis/new_ftp_user", {"FtpSiteName": "Hosting FTP", "UserName": "Administrator", "Password": PASSWORD,
                              "HomePath": r"D:\Sites\acme.example", "RefuseExisting": True}),
    ]
    state = hosting.jobs()
    assert state[create][1:3] == ("succeeded", {"site": "acme.example", "server": "WEB01", "user": "acme-ftp",
                                                "home": r"D:\Sites\acme.example\wwwroot", "created": True})
    assert "password" not in state[create][4]
    assert state[foreign][1:4:2] == ("failed", "WEB01: A local user 'Administrator' exists on WEB01 already")
    assert state[climbing][1:4:2] == ("failed", "home_folder '..\\\\..\\\\Windows' is not a folder inside the site")
    assert hosting.sql("SELECT user_name, home_folder, status FROM hosted_ftp_accounts") == [
        ("acme-ftp", "wwwroot", "active")]                             # the refused claim was taken back

    recorded_powershell.sent.clear()
    hosting.rerun(create)                          # finished: no password any more, the user is there
    run(hosting)
    assert [c.parameters for c in recorded_powershell.sent] == [
        {"FtpSiteName": "Hosting FTP", "UserName": "acme-ftp", "HomePath": r"D:\Sites\acme.example\wwwroot"}]
    assert hosting.jobs()[create][1:3] == ("succeeded", {"site": "acme.example", "server": "WEB01", "user": "acme-ftp",
                                                         "home": r"D:\Sites\acme.example\wwwroot", "created": False})

    recorded_powershell.sent.clear()
    recorded_powershell.answer("iis/remove_site", [{"Name": "acme.example", "Id": 7, "Found": True,
                                                    "AppPoolRemoved": True}])
    delete = hosting.job("general", "delete_site", {"site_id": site})
    run(hosting)
    assert [(c.script, c.parameters) for c in recorded_powershell.sent] == [
        ("iis/remove_ftp_user", {"FtpSiteName": "Hosting FTP", "UserName": "acme-ftp"}),
        ("iis/remove_site", {"Name": "acme.example"})]
    assert hosting.jobs()[delete][2]["ftp_accounts_removed"] == ["acme-ftp"]
    assert hosting.sql("SELECT status FROM hosted_ftp_accounts") == [("deleted",)]


def test_an_unreachable_web_server_puts_the_job_back(hosting, recorded_powershell):
    web = hosting.server("WEB01", "web", "iis", recorded_powershell.connection("web01.hosting.example"),
                         content_root=r"D:\Sites")
    site = hosting.site("acme.example", web)
    recorded_powershell.answer("iis/new_site", timeout=True)
    job = hosting.job("general", "create_site", {"site_id": site})
    summary = run(hosting)

    assert summary["general"]["retry_later"] == 1
    assert hosting.jobs()[job][1] == "pending"
    assert hosting.sql("SELECT status FROM hosted_sites") == [("pending",)]


def test_nothing_configured_is_a_summary_not_a_failure(hosting):
    job = hosting.job("general", "create_database", {"db_server": "DB01", "subscription_id": hosting.subscriptions[0],
                                                     "name": "shop"})
    summary = run(hosting)

    assert summary["note"] == "no hosting servers configured"
    assert hosting.jobs()[job][1:4:2] == ("failed", "no database hosting server 'DB01'")
    assert run(hosting)["general"]["claimed"] == 0


def test_the_hosting_threads_run_green_on_demo_data(hosting, migrated_panel_db, sql):
    """``make run``'s demo data has customers and subscriptions but no hosting server: every hosting
    step of this package succeeds and says so."""
    from panelflow.dev.demo import load_demo
    from panelflow.steps.hosting.disk_quotas import sync_disk_quota_usage
    from panelflow.steps.hosting.white_label import apply_white_label_bindings

    sql("TRUNCATE currencies, providers RESTART IDENTITY CASCADE")      # the demo brings its own
    load_demo(migrated_panel_db, customers=5)
    for step in (process_general_group_actions, sync_disk_quota_usage, apply_white_label_bindings):
        summary = step(hosting.db, interval())
        assert summary["note"] == "no hosting servers configured", step.__name__
        assert summary.get("skipped", {}) == {}
