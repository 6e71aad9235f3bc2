"""The FAB roles and users of the compose deployment, from the environment.

``docker-compose.yaml`` runs the FAB auth manager: the simple one keeps plaintext passwords in a
file and Airflow documents it as for development only. Its ``init`` service runs
``python -m panelflow.auth_roles`` after ``airflow db migrate`` (which creates FAB's tables): the
API server syncs FAB's built-in roles itself only when it starts, and a user must exist with a
role before anyone can sign in, so both are done here, before any component starts.

Three roles match the work: FAB's **Admin** (everything) and **Viewer** (read only; plus reading
the plugin list, which the UI's navigation needs to show the Threads Manager), and our **Operator** — what running the threads needs and nothing that changes how Airflow
itself is set up: trigger, pause/unpause, clear/retry task instances, backfills, and in the
Threads Manager Run now, Enable/Disable, Interval and Enable Logging (the page checks DAG edit
and DAG-run create, the same permissions Airflow's REST API checks). No connections, variables,
pools or configuration: an operator changes a thread's interval through the page, which validates
it, never by editing the ``panelflow_overrides`` Variable; nor may an operator delete a DAG's
history.

Idempotent: a re-run leaves what is right alone, resets a password that no longer matches the
environment (so rotating one is editing the secret and re-running init), gives each user exactly
its role back, and brings the Operator role back to exactly this definition. It never deletes a
user: one renamed in the environment leaves the old name behind (delete it in Security › Users).
Passwords exist only in the environment (``PANELFLOW_<ROLE>_PASSWORD``); nothing is written or
printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

OPERATOR = "Operator"


def page_permissions() -> list[tuple[str, str]]:
    """What a reader needs beyond FAB's Viewer to find the Threads Manager: Airflow's UI builds
    its navigation, plugin entries included, from ``GET /api/v2/plugins``, which FAB grants only
    to Op and Admin — without it the entry is missing for Viewer and Operator (the page's own
    URL would still work). The plugin list holds names and class paths, no secret."""
    from airflow.providers.fab.www.security import permissions as p

    return [(p.ACTION_CAN_READ, p.RESOURCE_PLUGIN)]


def operator_permissions() -> list[tuple[str, str]]:
    """FAB's Viewer permissions plus the ones running threads needs (see the module docstring)."""
    from airflow.providers.fab.auth_manager.security_manager.override import FabAirflowSecurityManagerOverride as Sm
    from airflow.providers.fab.www.security import permissions as p

    run_the_work = [
        (p.ACTION_CAN_EDIT, p.RESOURCE_DAG),  # pause/unpause; the page's Interval and Enable Logging
        (p.ACTION_CAN_CREATE, p.RESOURCE_DAG_RUN),  # trigger (Run now), backfill runs
        (p.ACTION_CAN_EDIT, p.RESOURCE_DAG_RUN),  # mark a run success/failed
        (p.ACTION_CAN_CREATE, p.RESOURCE_TASK_INSTANCE),
        (p.ACTION_CAN_EDIT, p.RESOURCE_TASK_INSTANCE),  # clear / retry / mark task instances
        (p.ACTION_CAN_EDIT, p.RESOURCE_HITL_DETAIL),  # answer a task waiting for a human
        (p.ACTION_CAN_CREATE, p.RESOURCE_BACKFILL),
        (p.ACTION_CAN_EDIT, p.RESOURCE_BACKFILL),  # pause, unpause, cancel a backfill
        (p.ACTION_CAN_READ, p.RESOURCE_AUDIT_LOG),  # who changed an interval, who ran what
        (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_AUDIT_LOG),
    ]
    return list(dict.fromkeys([*Sm.VIEWER_PERMISSIONS, *page_permissions(), *run_the_work]))


@dataclass(frozen=True)
class Account:
    role: str
    username: str
    password: str
    email: str


# environment prefix → FAB role; the admin is required (without one nobody can manage users)
ACCOUNTS = {"PANELFLOW_ADMIN": "Admin", "PANELFLOW_OPERATOR": OPERATOR, "PANELFLOW_VIEWER": "Viewer"}


def accounts_from_env(env: dict[str, str]) -> list[Account]:
    """The users to have, from ``<PREFIX>_USERNAME`` / ``_PASSWORD`` / ``_EMAIL``; an account with
    no password is not wanted (the operator and viewer are optional), the admin must have one."""
    found, problems = [], []
    for prefix, role in ACCOUNTS.items():
        password = env.get(f"{prefix}_PASSWORD", "")
        if not password:
            if role == "Admin":
                problems.append(f"{prefix}_PASSWORD is not set: the deployment needs an admin")
            continue
        username = env.get(f"{prefix}_USERNAME") or role.lower()
        email = env.get(f"{prefix}_EMAIL") or f"{username}@panelflow.invalid"
        found.append(Account(role, username, password, email))
    names = [a.username.lower() for a in found]
    if len(set(names)) != len(names):
        problems.append(f"two roles share a username: {names}")
    if problems:
        raise SystemExit("; ".join(problems))
    return found


def sync_roles(sm) -> None:
    """FAB's built-in roles as the API server would sync them (it only ever adds permissions, so
    what is added here stays), Viewer with the page's navigation entry, Operator exactly as defined."""
    sm.sync_roles()
    wanted = operator_permissions()
    sm.bulk_sync_roles([{"role": "Viewer", "perms": page_permissions()}, {"role": OPERATOR, "perms": wanted}])
    role = sm.find_role(OPERATOR)
    for perm in list(role.permissions):
        if (perm.action.name, perm.resource.name) not in wanted:
            sm.remove_permission_from_role(role, perm)


def sync_user(sm, account: Account) -> str:
    """Create the user, or put an existing one back to its role, e-mail and password."""
    from werkzeug.security import check_password_hash

    role = sm.find_role(account.role)
    user = sm.find_user(username=account.username)
    if user is None:
        sm.add_user(account.username, account.username, account.role, account.email, role, account.password)
        return "created"
    changed = []
    if [r.name for r in user.roles] != [account.role]:
        user.roles = [role]
        changed.append("role")
    if user.email != account.email:
        user.email = account.email
        changed.append("email")
    if not user.active:
        user.active = True
        changed.append("active")
    if changed and not sm.update_user(user):
        raise SystemExit(f"could not update user {account.username}")
    if not (user.password and check_password_hash(user.password, account.password)):
        if not sm.reset_password(user.id, account.password):
            raise SystemExit(f"could not set the password of {account.username}")
        changed.append("password")
    return f"updated ({', '.join(changed)})" if changed else "unchanged"


def main() -> None:
    from airflow.utils.providers_configuration_loader import providers_configuration_loaded

    accounts = accounts_from_env(dict(os.environ))  # refuse before touching the DB

    @providers_configuration_loaded
    def run() -> None:
        from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

        with get_application_builder() as appbuilder:
            appbuilder.add_permissions(update_perms=True)  # the views' own permissions, as sync-perm does
            sync_roles(appbuilder.sm)
            for account in accounts:
                print(f"{account.role} user {account.username}: {sync_user(appbuilder.sm, account)}")

    run()


if __name__ == "__main__":
    main()
