"""Active Directory: organisations, users, lock state, password expiry, staff and RDS links, group-action state (reserved)

The panel manages one or more AD domains (``ad_directories``): each row names the Airflow
connection (``conn_id``, type ``panelflow_active_directory``) that holds the domain controller's
address and the service account, and the managed subtree ``base_dn``. Every OU directly under
``base_dn`` is one hosted **organisation** (a customer's OU, ``ad_organisations``); users and groups
anywhere below an organisation's OU belong to it. No secret is stored here.

Keys. An AD object's stable identity is its ``objectGUID`` (a rename or a move changes its DN,
never its GUID), so users, groups and organisations are unique per ``(directory_id,
object_guid)`` and every sync writes with ``INSERT … ON CONFLICT`` against that key: a rerun
writes the same rows. An object deleted in AD is kept with ``deleted``/``deleted_at`` (the panel
may still show or bill it); one that reappears (a restore from the recycle bin keeps the GUID) is
undeleted.

Watermarks (``ad_sync_state``): per directory and step, the DC's ``highestCommittedUSN`` read
before the step's last completed pass and the DC database it belongs to (``dc_invocation_id``:
USNs are per DC and per database incarnation; a different DC or a restored database means the
watermark means nothing there, and a full pass follows). ``ad_sync_runs`` keeps what each run did
per directory (one row per directory, step and interval end, replaced by a rerun).

Password-expiry notices are unique per directory, user GUID and expiry instant: one e-mail per
expiry, however often the step runs; a password change gives a new expiry and so a new notice.

Staff. The panel's employees live outside this schema (``employee_id`` is not a foreign key, as
in ``credentials``). ``ad_staff`` links an employee to an AD user — by GUID, or by
sAMAccountName until the first sync resolves the GUID — and holds the employee's data as AD
has it (SyncStaffUsersWork). The link lives on the staff row (``ad_user_id``), not on the user:
one place to change, and a user has at most one staff row (unique).

RDS. A user has the Remote Desktop service when it is a member (direct or nested) of its
organisation's RDS group (``ad_organisations.rds_group_dn``), else of the directory's
(``ad_directories.rds_group_dn``), else of the domain's built-in "Remote Desktop Users" group.
``ad_rds_users`` holds who has it (``removed_at`` once they lose it); ``ad_users.rds_enabled``
is the same flag on the user.
"""
from alembic import op

revision = "0015"
down_revision = "0014"

# Users and groups: who they are in AD, and the organisation (OU) they belong to.
AD_PRINCIPAL = """id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    organisation_id bigint REFERENCES ad_organisations ON DELETE SET NULL,
    object_guid uuid NOT NULL,
    object_sid text,
    sam_account_name text"""

# Every synced AD object: kept when deleted in AD, one row per GUID (see Keys above).
SYNCED = """deleted boolean NOT NULL DEFAULT false,
    deleted_at timestamptz,
    synced_at timestamptz,
    UNIQUE (directory_id, object_guid)"""

DDL = f"""
CREATE TABLE ad_directories (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    conn_id text NOT NULL,                            -- Airflow connection: DC host, port, TLS, service account
    base_dn text NOT NULL,                            -- the managed subtree; each OU directly under it is an organisation
    enabled boolean NOT NULL DEFAULT true,
    rds_group_dn text,                                -- default RDS group (NULL: the domain's built-in Remote Desktop Users)
    dns_domain text,                                  -- from the DC (rootDSE ldapServiceName / dnsHostName), for display
    last_synced_at timestamptz,                       -- the last completed user sync (SyncADUsersWork)
    last_error text,
    last_error_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conn_id, base_dn)
);

CREATE TABLE ad_organisations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    dn text NOT NULL,
    name text NOT NULL,                               -- the OU's name (ou)
    description text,
    customer_id bigint REFERENCES customers ON DELETE SET NULL,   -- set by the panel, never by a sync
    rds_group_dn text,                                -- this organisation's RDS group (overrides the directory's)
    upn_suffixes text[] NOT NULL DEFAULT '{{}}',        -- the OU's uPNSuffixes
    when_changed timestamptz,
    usn_changed bigint,
    extended jsonb NOT NULL DEFAULT '{{}}',             -- counts (users, enabled, locked, mailboxes …), update_ad_extended_data
    extended_updated_at timestamptz,
    {SYNCED}
);
CREATE INDEX ix_ad_organisations_dn ON ad_organisations (directory_id, lower(dn));
CREATE INDEX ix_ad_organisations_customer ON ad_organisations (customer_id) WHERE customer_id IS NOT NULL;

CREATE TABLE ad_users (
    {AD_PRINCIPAL},
    user_principal_name text,
    cn text,
    dn text NOT NULL,
    display_name text,
    given_name text,
    surname text,
    mail text,
    user_account_control integer,
    enabled boolean NOT NULL DEFAULT true,            -- not ACCOUNTDISABLE (0x2)
    password_never_expires boolean NOT NULL DEFAULT false,   -- DONT_EXPIRE_PASSWORD (0x10000)
    locked boolean NOT NULL DEFAULT false,            -- msDS-User-Account-Control-Computed & 0x10
    lockout_time timestamptz,                         -- when it was locked out (NULL: not locked)
    password_last_set timestamptz,
    password_expires_at timestamptz,                  -- msDS-UserPasswordExpiryTimeComputed (NULL: never)
    when_created timestamptz,
    when_changed timestamptz,
    usn_changed bigint,
    extended jsonb NOT NULL DEFAULT '{{}}',             -- telephoneNumber, title, department … (update_ad_extended_data)
    extended_synced_at timestamptz,                   -- NULL: not read yet by update_ad_extended_data
    services_synced_at timestamptz,                   -- NULL: not read yet by sync_ad_user_services
    rds_enabled boolean NOT NULL DEFAULT false,
    {SYNCED}
);
CREATE INDEX ix_ad_users_organisation ON ad_users (organisation_id);
CREATE INDEX ix_ad_users_sam ON ad_users (directory_id, lower(sam_account_name));
CREATE INDEX ix_ad_users_upn ON ad_users (directory_id, lower(user_principal_name));
CREATE INDEX ix_ad_users_locked ON ad_users (directory_id) WHERE locked;

CREATE TABLE ad_groups (
    {AD_PRINCIPAL},
    cn text,
    dn text NOT NULL,
    mail text,
    description text,
    group_type integer,
    security_enabled boolean GENERATED ALWAYS AS (group_type IS NOT NULL AND (group_type & x'80000000'::int) <> 0) STORED,
    auto_add_users boolean NOT NULL DEFAULT false,    -- panel setting: AutoAddUsersInSecurityGroupWork adds the organisation's users
    when_changed timestamptz,
    usn_changed bigint,
    extended jsonb NOT NULL DEFAULT '{{}}',
    {SYNCED}
);
CREATE INDEX ix_ad_groups_organisation ON ad_groups (organisation_id);
CREATE INDEX ix_ad_groups_dn ON ad_groups (directory_id, lower(dn));

-- Direct members as the group's member attribute lists them (users, groups, contacts, computers),
-- by GUID: a member need not be a synced user (it may live outside the managed subtree).
CREATE TABLE ad_group_members (
    group_id bigint NOT NULL REFERENCES ad_groups ON DELETE CASCADE,
    member_guid uuid NOT NULL,
    member_dn text NOT NULL,
    PRIMARY KEY (group_id, member_guid)
);
CREATE INDEX ix_ad_group_members_member ON ad_group_members (member_guid);

CREATE TABLE ad_upn_suffixes (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    suffix text NOT NULL,                             -- lower case
    source text NOT NULL CHECK (source IN ('domain', 'forest', 'organisation')),
    organisation_id bigint REFERENCES ad_organisations ON DELETE CASCADE,
    synced_at timestamptz,
    PRIMARY KEY (directory_id, suffix)
);

CREATE TABLE ad_rds_users (
    user_id bigint PRIMARY KEY REFERENCES ad_users ON DELETE CASCADE,
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    rds_group_dn text NOT NULL,                       -- the group that gives it (the organisation's or the directory's)
    account_enabled boolean NOT NULL,
    since timestamptz NOT NULL,                       -- first run that saw it with the service (this time)
    removed_at timestamptz,                           -- NULL: has the service
    synced_at timestamptz NOT NULL
);

-- Services a user has as AD shows them (sync_ad_user_services); one row per user and service.
CREATE TABLE ad_user_services (
    user_id bigint NOT NULL REFERENCES ad_users ON DELETE CASCADE,
    service text NOT NULL CHECK (service IN ('mailbox', 'mail_user', 'rds', 'vpn', 'lync')),
    detail jsonb NOT NULL DEFAULT '{{}}',
    since timestamptz NOT NULL,
    synced_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, service)
);

CREATE TABLE ad_staff (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    employee_id bigint NOT NULL,                      -- the panel's employee (outside this schema)
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    ad_object_guid uuid,                              -- the link: the GUID, or
    ad_sam_account_name text,                         -- the account name until the GUID is known
    ad_user_id bigint UNIQUE REFERENCES ad_users ON DELETE SET NULL,
    display_name text,
    first_name text,
    last_name text,
    mail text,
    phone text,
    mobile text,
    title text,
    department text,
    company text,
    office text,
    employee_number text,                             -- AD employeeID
    account_enabled boolean,
    link_status text NOT NULL DEFAULT 'pending' CHECK (link_status IN ('pending', 'linked', 'unmatched')),
    synced_at timestamptz,
    UNIQUE (employee_id, directory_id),
    CHECK (ad_object_guid IS NOT NULL OR ad_sam_account_name IS NOT NULL)
);

CREATE TABLE ad_password_expiry_notices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    password_expires_at timestamptz NOT NULL,
    mail text NOT NULL,
    dedupe_key text NOT NULL,                         -- the email_outbox message's key
    queued_at timestamptz NOT NULL,                   -- the run's interval end
    UNIQUE (directory_id, object_guid, password_expires_at)
);

-- Per directory and step: the USN watermark the next incremental pass starts after.
CREATE TABLE ad_sync_state (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    step text NOT NULL,
    usn_watermark bigint,
    dc_invocation_id uuid,
    last_full_at timestamptz,
    last_synced_at timestamptz,
    PRIMARY KEY (directory_id, step)
);

CREATE TABLE ad_sync_runs (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    step text NOT NULL,
    interval_end timestamptz NOT NULL,
    mode text NOT NULL CHECK (mode IN ('full', 'incremental', 'live')),
    usn_from bigint,
    usn_to bigint,
    counts jsonb NOT NULL DEFAULT '{{}}',
    error text,
    finished_at timestamptz NOT NULL,
    PRIMARY KEY (directory_id, step, interval_end)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("""
DROP TABLE ad_sync_runs, ad_sync_state, ad_password_expiry_notices, ad_staff, ad_user_services, ad_rds_users,
           ad_upn_suffixes, ad_group_members, ad_groups, ad_users, ad_organisations, ad_directories;
""")
