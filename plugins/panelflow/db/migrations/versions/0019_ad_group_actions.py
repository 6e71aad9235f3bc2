"""AD group actions: auto-add settings, CN/UPN memory, mailbox types and login disables, Hostmatic database users, system alerts

What GroupActionWorkAD and AutoAddUsersInSecurityGroupWork keep beside the AD tables of 0015
(:mod:`panelflow.steps.active_directory.jobs` explains each step).

``ad_group_auto_add_settings`` — the optional details of a security group's "Automatic add users"
setting. The switch itself is ``ad_groups.auto_add_users`` (0015); a group switched on without a
row here adds every enabled user of its organisation. ``user_filter`` is an LDAP filter ANDed to
"users of the organisation's OU" (``(department=Sales)``); ``include_disabled`` adds disabled
accounts too. ``last_*`` record what the last run did (or why it could not).

``ad_user_cn_upn`` — per AD user (directory, objectGUID) the UPN as change_cn_on_upn_change last
saw it, and the CN/DN it left. A UPN differing from this row is a UPN *change*; the sync of
``ad_users`` (0015) overwrites ``user_principal_name`` there, so that column cannot tell a
change from "already seen" — hence this step's own memory. A user seen for the first time is only
recorded (its CN is the administrator's choice until its UPN changes).

``ad_user_mailbox_types`` — the panel's record of the mailbox type behind an AD user (written
where the panel creates or converts a mailbox). Kept here, keyed by (directory, objectGUID),
rather than on the Exchange mailbox tables (0017), whose shape this step must not depend on.
AD's own ``msExchRecipientTypeDetails``, where the directory has the Exchange schema, wins over it.
``ad_mailbox_login_disables`` — each account disable_logins_by_mailbox_type disabled: when, why
(type and where the type came from), and how often (an account someone re-enabled while its
mailbox is still shared is disabled again; re-enabling is never automatic).

``hosting_database_users`` — Hostmatic database logins (MSSQL / MySQL) that belong to an AD user.
A login is named ``login_prefix || ad_sam_account_name`` (``TEST\\jo`` for a Windows login,
``h12_jo`` for a MySQL user): ``login_name`` is generated from those two, so it can never disagree
with the account name it was last renamed to. Unique per engine and server. ``checked_at``:
when rename_delete_hostmatic_db_users last compared the row with AD (oldest first, so a bounded
run still reaches every row in turn).

``system_alerts`` — conditions worth an operator's attention (sync_system_alerts): one *open*
alert per (``alert_type``, ``object_key``) (a partial unique index), ``last_seen_at`` moved on by
every run that still finds the condition, ``resolved_at`` set by the first run that no longer does.
"""
from alembic import op

revision = "0019"
down_revision = "0018"

DDL = r"""
CREATE TABLE ad_group_auto_add_settings (
    group_id bigint PRIMARY KEY REFERENCES ad_groups ON DELETE CASCADE,
    user_filter text,                                 -- an LDAP filter ANDed to the OU's users; NULL: all
    include_disabled boolean NOT NULL DEFAULT false,  -- also add disabled accounts
    last_run_at timestamptz,
    last_added integer,
    last_error text
);

CREATE TABLE ad_user_cn_upn (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    user_principal_name text NOT NULL,                -- as last seen (lower case is not forced: AD keeps case)
    cn text NOT NULL,
    dn text NOT NULL,
    renamed_at timestamptz,                           -- the last run that renamed its CN
    checked_at timestamptz NOT NULL,
    PRIMARY KEY (directory_id, object_guid)
);

CREATE TABLE ad_user_mailbox_types (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    mailbox_type text NOT NULL CHECK (mailbox_type IN ('user', 'shared', 'room', 'equipment', 'linked', 'discovery')),
    updated_at timestamptz NOT NULL,
    checked_at timestamptz,                           -- the last run of disable_logins_by_mailbox_type that looked
    PRIMARY KEY (directory_id, object_guid)
);
CREATE INDEX ix_ad_user_mailbox_types_login ON ad_user_mailbox_types (directory_id, checked_at NULLS FIRST)
    WHERE mailbox_type <> 'user';

CREATE TABLE ad_mailbox_login_disables (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    dn text NOT NULL,
    mailbox_type text NOT NULL,
    type_source text NOT NULL CHECK (type_source IN ('ad', 'panel')),
    first_disabled_at timestamptz NOT NULL,
    disabled_at timestamptz NOT NULL,                 -- the last time this step disabled it
    times integer NOT NULL DEFAULT 1,
    PRIMARY KEY (directory_id, object_guid)
);

CREATE TABLE hosting_database_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    ad_object_guid uuid NOT NULL,                     -- the AD user the login belongs to
    ad_sam_account_name text NOT NULL,                -- the account name the login is named after
    engine text NOT NULL CHECK (engine IN ('mssql', 'mysql')),
    db_server text NOT NULL,                          -- the Hostmatic database server
    login_prefix text NOT NULL DEFAULT '',
    login_name text GENERATED ALWAYS AS (login_prefix || ad_sam_account_name) STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    renamed_at timestamptz,
    checked_at timestamptz,
    UNIQUE (engine, db_server, login_name)
);
CREATE INDEX ix_hosting_database_users_ad ON hosting_database_users (directory_id, ad_object_guid);
CREATE INDEX ix_hosting_database_users_checked ON hosting_database_users (directory_id, checked_at NULLS FIRST, id);

CREATE TABLE system_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_type text NOT NULL,                         -- ad_directory_unreachable, ad_account_locked …
    object_key text NOT NULL,                         -- what it is about: 'directory:3', 'user:<guid>', 'job:42'
    directory_id bigint REFERENCES ad_directories ON DELETE CASCADE,
    severity text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    title text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    opened_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    resolved_at timestamptz,
    CHECK (resolved_at IS NULL OR resolved_at >= opened_at)
);
CREATE UNIQUE INDEX ux_system_alerts_open ON system_alerts (alert_type, object_key) WHERE resolved_at IS NULL;
CREATE INDEX ix_system_alerts_directory ON system_alerts (directory_id) WHERE resolved_at IS NULL;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE system_alerts, hosting_database_users, ad_mailbox_login_disables, ad_user_mailbox_types,"
               " ad_user_cn_upn, ad_group_auto_add_settings")
