"""GroupActionWorkAD step 5: Hostmatic database logins follow their AD users' renames and deletions.

Hostmatic database logins (MSSQL Windows logins ``DOMAIN\\sam``, MySQL users ``prefix_sam``:
``hosting_database_users``, 0019) are named after their AD user's sAMAccountName. Each row's AD user
is looked up by objectGUID in the whole domain: renamed → the row takes the new name; gone (not
found anywhere in the domain) → the row is deleted. **The database servers themselves are not
touched here**: each rename or delete queues exactly one group action for the hosting backend
(``group_action_jobs``, backend ``hostmatic``: ``rename_database_user`` / ``delete_database_user``,
payload with the server, engine and old/new login), written in the same statement that changes the
row, so a rerun (the row already changed) queues nothing more. A new name already used on that
server, or a MySQL name longer than 32 characters, is reported and the row left as it was.
"""

from __future__ import annotations

import uuid

from panelflow.step import StepReport

from ._backend import Directory, chunks, copy, each_directory, guid_or

HOSTMATIC_BACKEND = "hostmatic"
MYSQL_USER_MAX = 32

_HOSTMATIC_BATCH = """
SELECT id, ad_object_guid FROM hosting_database_users WHERE directory_id = %s
ORDER BY checked_at NULLS FIRST, id LIMIT %s
"""

_HOSTMATIC_RENAME = """
WITH renamed AS (
    UPDATE hosting_database_users h
    SET ad_sam_account_name = t.sam, renamed_at = %(at)s, checked_at = %(at)s
    FROM hosting_database_users old, tmp_hostmatic_ad t
    WHERE old.id = h.id AND h.id = ANY(%(ids)s) AND h.directory_id = %(directory)s
      AND h.ad_object_guid = t.object_guid AND h.ad_sam_account_name IS DISTINCT FROM t.sam
      AND (h.engine <> 'mysql' OR length(h.login_prefix || t.sam) <= %(mysql_max)s)
      AND NOT EXISTS (SELECT 1 FROM hosting_database_users o
                      WHERE o.engine = h.engine AND o.db_server = h.db_server
                        AND o.login_name = h.login_prefix || t.sam AND o.id <> h.id)
    RETURNING h.id, h.engine, h.db_server, h.ad_object_guid, old.login_name AS old_login, h.login_name AS new_login,
              old.ad_sam_account_name AS old_sam, h.ad_sam_account_name AS new_sam
), queued AS (
    INSERT INTO group_action_jobs (backend, action, payload, priority)
    SELECT %(backend)s, 'rename_database_user',
           jsonb_build_object('database_user_id', id, 'engine', engine, 'db_server', db_server,
                              'old_login', old_login, 'new_login', new_login, 'ad_object_guid', ad_object_guid,
                              'old_sam_account_name', old_sam, 'new_sam_account_name', new_sam,
                              'directory_id', %(directory)s::bigint),
           %(priority)s
    FROM renamed ORDER BY id
    RETURNING id
)
SELECT count(*) FROM queued
"""

_HOSTMATIC_NOT_RENAMED = """
SELECT h.id, h.engine, h.db_server, h.login_name, h.login_prefix || t.sam
FROM hosting_database_users h JOIN tmp_hostmatic_ad t ON t.object_guid = h.ad_object_guid
WHERE h.id = ANY(%(ids)s) AND h.directory_id = %(directory)s AND h.ad_sam_account_name IS DISTINCT FROM t.sam
"""

_HOSTMATIC_DELETE = """
WITH gone AS (
    DELETE FROM hosting_database_users h WHERE h.id IN (
        SELECT id FROM hosting_database_users
        WHERE directory_id = %(directory)s AND ad_object_guid = ANY(%(guids)s)
        ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
    RETURNING h.id, h.engine, h.db_server, h.login_name, h.ad_object_guid, h.ad_sam_account_name
), queued AS (
    INSERT INTO group_action_jobs (backend, action, payload, priority)
    SELECT %(backend)s, 'delete_database_user',
           jsonb_build_object('database_user_id', id, 'engine', engine, 'db_server', db_server,
                              'login', login_name, 'ad_object_guid', ad_object_guid,
                              'sam_account_name', ad_sam_account_name, 'directory_id', %(directory)s::bigint),
           %(priority)s
    FROM gone ORDER BY id
    RETURNING id
)
SELECT count(*) FROM queued
"""


def rename_delete_hostmatic_db_users(panel_db, interval, params=None, log=None) -> dict:
    """Step 5 of GroupActionWorkAD: Hostmatic database logins follow their AD users' renames and
    deletions in the panel DB; the servers' side is queued for the ``hostmatic`` backend (see the
    module's doc). Params: ``hostmatic_users_per_run`` (2000), ``hostmatic_delete_batch`` (500),
    ``hostmatic_job_priority`` (5)."""
    params = params or {}
    at = interval.end
    per_run = int(params.get("hostmatic_users_per_run", 2000))
    batch = int(params.get("hostmatic_delete_batch", 500))
    priority = int(params.get("hostmatic_job_priority", 5))
    report = StepReport()
    for key in ("checked", "renamed", "deleted", "jobs_queued"):
        report.add(key, 0)

    def work(conn, directory: Directory, hook) -> None:
        rows = conn.execute(_HOSTMATIC_BATCH, (directory.id, per_run)).fetchall()
        if not rows:
            return
        ids = [r[0] for r in rows]
        guids = sorted({r[1] for r in rows})
        report.add("checked", len(ids))
        # the whole domain: a user moved out of the managed subtree still exists
        nc = hook.root_dse()["defaultNamingContext"]
        names: dict[uuid.UUID, str] = {}
        seen: set[uuid.UUID] = set()
        unsure: set[uuid.UUID] = set()       # a chunk whose answer had an unreadable entry proves no deletion
        for chunk in chunks(guids):
            for entry in hook.search(nc, f"(&(objectClass=user){guid_or(chunk)})", ("objectGUID", "sAMAccountName")):
                try:
                    guid, sam = entry.guid(), entry.text("sAMAccountName")
                except ValueError as exc:
                    report.skip(str(exc), entry.dn)
                    unsure.update(chunk)
                    continue
                seen.add(guid)
                if sam:
                    names[guid] = sam
                else:
                    report.skip("the user has no sAMAccountName", entry.dn)
        gone = [g for g in guids if g not in seen and g not in unsure]
        args = {"at": at, "ids": ids, "directory": directory.id, "backend": HOSTMATIC_BACKEND, "priority": priority,
                "mysql_max": MYSQL_USER_MAX}
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE tmp_hostmatic_ad (object_guid uuid PRIMARY KEY, sam text) ON COMMIT DROP")
            copy(conn, "tmp_hostmatic_ad", ("object_guid", "sam"), names.items())
            (renamed,) = conn.execute(_HOSTMATIC_RENAME, args).fetchone()
            for db_id, engine, server, login, wanted in conn.execute(_HOSTMATIC_NOT_RENAMED, args).fetchall():
                reason = (f"{wanted!r} is longer than {MYSQL_USER_MAX} characters" if engine == "mysql"
                          and len(wanted) > MYSQL_USER_MAX else f"{wanted!r} is already a login on {engine} {server}")
                report.skip(f"not renamed: {reason}", f"database user {db_id} ({login})")
            conn.execute("UPDATE hosting_database_users SET checked_at = %s WHERE id = ANY(%s)", (at, ids))
        report.add("renamed", renamed)
        report.add("jobs_queued", renamed)
        deleted = 0
        for _ in range(-(-len(ids) // batch) + 1 if gone else 0):     # every row of a gone user, in batches
            with conn.transaction():
                (n,) = conn.execute(_HOSTMATIC_DELETE, {"directory": directory.id, "guids": gone, "batch": batch,
                                                        "backend": HOSTMATIC_BACKEND, "priority": priority}).fetchone()
            deleted += n
            if n < batch:
                break
        report.add("deleted", deleted)
        report.add("jobs_queued", deleted)
        if log is not None and (renamed or deleted):
            log.info("directory %s: %s database users renamed, %s deleted", directory.name, renamed, deleted)

    each_directory(panel_db, report, log, work)
    return report.as_dict()

