"""BBSyncWork: sync BlackBerry UEM stats — each server's users and, per user, their devices and state.

Every enabled ``bb_uem_servers`` row is read through its connection
(``panelflow.hooks.blackberry_uem``): all users (paged), then each user's groups and devices. A
server is written only once it was read completely, in one transaction, so a server that fails
half-way leaves last run's picture whole, never a half-updated one (and never marks the unread
users' devices gone).

What is written (``bb_users``, ``bb_devices``, keyed by UEM's GUIDs): a new user or device is
added; one whose synced fields differ is changed (``changed_at``); one no longer listed is gone
(``gone_at``, cleared if it reappears); the rest only get ``synced_at``. The run's clock is
``interval.end``; a server already synced by a later run is left alone, so a backfill never
overwrites newer state with an older clock.

The failure rule is :func:`panelflow.step.for_each`'s, one server an endpoint: an unreachable or
refused server is counted, its error kept on its row, and the others are synced; every server
failing fails the task. No servers configured: nothing to do.
"""

from __future__ import annotations

from datetime import datetime, timezone

from panelflow.step import StepReport, for_each

SERVERS = "SELECT id, name, conn_id, last_synced_at FROM bb_uem_servers WHERE enabled ORDER BY id"
FAILED = "UPDATE bb_uem_servers SET last_error = %s, last_error_at = %s WHERE id = %s"
SYNCED = "UPDATE bb_uem_servers SET last_synced_at = %s, last_error = NULL, last_error_at = NULL WHERE id = %s"

USER_FIELDS = ("username", "display_name", "email", "groups")
DEVICE_FIELDS = ("device_guid", "hardware_model", "hardware_vendor", "os", "os_family", "os_version", "ownership",
                 "enrollment_state", "enrollment_type", "compromised", "out_of_compliance", "client_version",
                 "activated_at", "last_contact_at")


def _cols(fields) -> str:
    return ", ".join(fields)


def _params(fields) -> str:
    return ", ".join(f"%({f})s" for f in fields)


def _sets(fields) -> str:
    return ", ".join(f"{f} = %({f})s" for f in fields)


STAMPS = "%(clock)s, %(clock)s, %(clock)s"  # first_seen_at, changed_at, synced_at of a new row
INSERT_USER = (f"INSERT INTO bb_users (server_id, user_guid, {_cols(USER_FIELDS)}, first_seen_at, changed_at,"
               f" synced_at) VALUES (%(server)s, %(guid)s, {_params(USER_FIELDS)}, {STAMPS}) RETURNING id")
CHANGE_USER = (f"UPDATE bb_users SET {_sets(USER_FIELDS)}, changed_at = %(clock)s, synced_at = %(clock)s,"
               " gone_at = NULL WHERE id = %(id)s")
INSERT_DEVICE = (f"INSERT INTO bb_devices (bb_user_id, user_device_guid, {_cols(DEVICE_FIELDS)}, first_seen_at,"
                 f" changed_at, synced_at) VALUES (%(user)s, %(guid)s, {_params(DEVICE_FIELDS)}, {STAMPS})")
CHANGE_DEVICE = (f"UPDATE bb_devices SET {_sets(DEVICE_FIELDS)}, changed_at = %(clock)s, synced_at = %(clock)s,"
                 " gone_at = NULL WHERE id = %(id)s")
# What the servers' devices look like now, for the run's summary (the stats of the thread's name).
STATS = """
SELECT count(*), count(*) FILTER (WHERE NOT d.compliant), count(*) FILTER (WHERE d.compromised)
FROM bb_devices d JOIN bb_users u ON u.id = d.bb_user_id JOIN bb_uem_servers s ON s.id = u.server_id
WHERE s.enabled AND d.gone_at IS NULL AND u.gone_at IS NULL
"""
TOUCH = "UPDATE {table} SET synced_at = %s WHERE id = ANY(%s)"
GONE = "UPDATE {table} SET gone_at = %s, changed_at = %s, synced_at = %s WHERE id = ANY(%s)"


def sync_blackberry_stats(panel_db, interval, log=None) -> dict:
    """Sync BlackBerry stats: every UEM server's users and their devices, with each device's state."""
    from panelflow.hooks.blackberry_uem import BlackBerryAuthenticationError, BlackBerryError

    clock = datetime.fromtimestamp(interval.end.timestamp(), tz=timezone.utc)
    report = StepReport().zero("users_added", "users_changed", "users_gone", "devices_added", "devices_changed",
                               "devices_gone")

    def reason(exc: BaseException) -> str | None:
        from airflow.exceptions import AirflowNotFoundException

        if isinstance(exc, (BlackBerryError, AirflowNotFoundException, ValueError)):
            kind = "credentials refused" if isinstance(exc, BlackBerryAuthenticationError) else type(exc).__name__
            return f"{kind}: {exc}"
        return None

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        servers = conn.execute(SERVERS).fetchall()
        for_each(servers, lambda s: _sync_server(conn, s, clock, report), report=report, kind="server",
                 name=lambda s: s[1], reason=reason, log=log, what="BlackBerry UEM server",
                 on_failure=lambda s, exc, why: conn.execute(FAILED, (why[:500], clock, s[0])))
        present, not_compliant, compromised = conn.execute(STATS).fetchone()
    return {**report.as_dict(), "devices_present": present, "devices_not_compliant": not_compliant,
            "devices_compromised": compromised}


def _sync_server(conn, server, clock: datetime, report: StepReport) -> None:
    from panelflow.hooks.blackberry_uem import BlackBerryUemHook

    server_id, _name, conn_id, last_synced = server
    if last_synced is not None and last_synced > clock:
        report.add("servers_synced_later")  # a later run already wrote newer state
        return
    with BlackBerryUemHook(conn_id) as hook:
        read = []
        for page in hook.user_pages():
            for user in page:
                read.append((user, sorted(set(hook.user_groups(user.guid))), hook.user_devices(user.guid)))
    with conn.transaction():
        _write(conn, server_id, read, clock, report)
        conn.execute(SYNCED, (clock, server_id))


def _write(conn, server_id: int, read, clock: datetime, report: StepReport) -> None:
    """The server's complete read against what is stored: added, changed, unchanged, gone."""
    stored_users = {row[0]: row[1:] for row in conn.execute(
        f"SELECT user_guid, id, gone_at, {_cols(USER_FIELDS)} FROM bb_users WHERE server_id = %s", (server_id,))}
    stored_devices = {(row[0], row[1]): row[2:] for row in conn.execute(
        f"SELECT d.bb_user_id, d.user_device_guid, d.id, d.gone_at, {_cols('d.' + f for f in DEVICE_FIELDS)}"
        " FROM bb_devices d JOIN bb_users u ON u.id = d.bb_user_id WHERE u.server_id = %s", (server_id,))}
    untouched_users: list[int] = []
    untouched_devices: list[int] = []
    seen_users, seen_devices = set(), set()
    for user, groups, devices in read:
        values = {"username": user.username, "display_name": user.display_name, "email": user.email, "groups": groups}
        user_id = _upsert(conn, stored_users.get(user.guid), values, USER_FIELDS, untouched_users, report, "users",
                          insert=lambda: conn.execute(INSERT_USER, {**values, "server": server_id, "guid": user.guid,
                                                                    "clock": clock}).fetchone()[0],
                          change=lambda row_id: conn.execute(CHANGE_USER, {**values, "id": row_id, "clock": clock}))
        seen_users.add(user.guid)
        for device in devices:
            fields = {f: getattr(device, f) for f in DEVICE_FIELDS}
            fields["enrollment_type"] = list(device.enrollment_type)
            fields["out_of_compliance"] = list(device.out_of_compliance)
            key = (user_id, device.guid)
            seen_devices.add(key)
            _upsert(conn, stored_devices.get(key), fields, DEVICE_FIELDS, untouched_devices, report, "devices",
                    insert=lambda: conn.execute(INSERT_DEVICE, {**fields, "user": user_id, "guid": device.guid,
                                                                "clock": clock}),
                    change=lambda row_id: conn.execute(CHANGE_DEVICE, {**fields, "id": row_id, "clock": clock}))
    gone_users = [row[0] for guid, row in stored_users.items() if guid not in seen_users and row[1] is None]
    gone_devices = [row[0] for key, row in stored_devices.items() if key not in seen_devices and row[1] is None]
    for table, ids in (("bb_users", gone_users), ("bb_devices", gone_devices)):
        if ids:
            conn.execute(GONE.format(table=table), (clock, clock, clock, ids))
    for table, ids in (("bb_users", untouched_users), ("bb_devices", untouched_devices)):
        if ids:
            conn.execute(TOUCH.format(table=table), (clock, ids))
    report.add("users_gone", len(gone_users))
    report.add("devices_gone", len(gone_devices))
    report.add("users_read", len(read))
    report.add("devices_read", sum(len(devices) for _, _, devices in read))


def _upsert(conn, stored, values: dict, fields, untouched: list[int], report: StepReport, kind: str, *, insert, change):
    """Insert a new row, change one whose fields (or presence) differ, else note it untouched; its id."""
    if stored is None:
        report.add(f"{kind}_added")
        return insert()
    row_id, gone_at, *old = stored
    if gone_at is not None or any(_norm(o) != _norm(values[f]) for o, f in zip(old, fields)):
        report.add(f"{kind}_changed")
        change(row_id)
    else:
        untouched.append(row_id)
    return row_id


def _norm(value):
    """Stored and read values compared alike (arrays come back as lists, moments as aware datetimes)."""
    return list(value) if isinstance(value, (list, tuple)) else value
