"""Exchange mailboxes, permissions, forwarding, OWA policies, connectors, spam filters, remote domains (reserved)

What the Exchange group actions (GroupActionWorkEx) and the permission/forwarding sync
(GroupActionWorkMailBoxPermissions) read and write; ``panelflow.steps.exchange`` documents the rules.

- ``exchange_organizations``: a hosted Exchange tenant — the panel customer's organisational unit on
  one Exchange organisation (reached through ``exchange_servers``, 0016), with its address book
  policy, address lists and offline address book, and its accepted domains (the scope of its spam
  transport rules).
- ``exchange_mailboxes``: every mailbox the panel manages, with the panel's desired values
  (quotas, OWA policy) and what Exchange last reported (GUID, database, forwarding, addresses).
  ``status``: ``pending`` (an action is queued), ``active``, ``disabled`` (suspended: protocols off,
  account disabled), ``recycle_bin`` (removed: a disconnected mailbox kept in its database since
  ``deleted_at``), ``deleted`` (purged from the database at ``purged_at``), ``failed`` (creation
  failed). ``previous_status`` is the status the panel had before it set ``pending``: restored when
  the queued action fails.
- ``exchange_mailbox_permissions``: full access (Get-MailboxPermission), send as (the AD "Send As"
  extended right), send on behalf (GrantSendOnBehalfTo) — as Exchange names the trustee.
- ``exchange_owa_policies``: OWA mailbox policies the panel defines (``pending`` → ``created``).
- ``exchange_send_connectors`` / ``exchange_remote_domains``: every connector / remote domain
  Exchange reports (``observed``), and the ones the panel wants (``managed``, with desired values).
- ``exchange_spam_filter_settings``: one row per organisation whose spam filtering the panel manages.
"""
from alembic import op

revision = "0017"
down_revision = "0016"

DDL = """
CREATE TABLE exchange_organizations (
    id bigserial PRIMARY KEY,
    customer_id bigint REFERENCES customers ON DELETE SET NULL,       -- the panel customer (tenant)
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers,   -- the server its cmdlets run on
    name text NOT NULL UNIQUE,
    organizational_unit text NOT NULL UNIQUE,      -- DN of the tenant's OU (New-Mailbox -OrganizationalUnit)
    accepted_domains text[] NOT NULL DEFAULT '{}',
    address_book_policy text,
    global_address_list text,
    address_list text,
    room_address_list text,
    offline_address_book text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE exchange_owa_policies (
    id bigserial PRIMARY KEY,
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers,
    organization_id bigint REFERENCES exchange_organizations ON DELETE CASCADE,   -- NULL: shared by all
    name text NOT NULL,
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),  -- Set-OwaMailboxPolicy parameters
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'created', 'failed')),
    exchange_guid uuid,
    created_on_exchange_at timestamptz,
    last_error text,
    UNIQUE (exchange_server_id, name)
);

CREATE TABLE exchange_mailboxes (
    id bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES exchange_organizations,
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers,
    database text,                                 -- mailbox database name
    exchange_guid uuid UNIQUE,                     -- ExchangeGuid (= the store's MailboxGuid)
    primary_smtp_address text NOT NULL,
    alias text NOT NULL,
    display_name text NOT NULL,
    user_principal_name text,
    mailbox_type text NOT NULL DEFAULT 'user' CHECK (mailbox_type IN ('user', 'shared', 'room', 'equipment')),
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'active', 'disabled', 'recycle_bin', 'deleted', 'failed')),
    previous_status text CHECK (previous_status IN ('active', 'disabled', 'recycle_bin', 'failed')),
    status_changed_at timestamptz,
    issue_warning_quota_mb integer CHECK (issue_warning_quota_mb > 0),          -- NULL: unlimited
    prohibit_send_quota_mb integer CHECK (prohibit_send_quota_mb > 0),
    prohibit_send_receive_quota_mb integer CHECK (prohibit_send_receive_quota_mb > 0),
    use_database_quota_defaults boolean NOT NULL DEFAULT true,
    size_bytes bigint,                             -- TotalItemSize, from the mailbox statistics sync
    email_addresses text[] NOT NULL DEFAULT '{}',  -- every SMTP address, primary first
    forwarding_smtp_address text,
    forwarding_address text,                       -- a recipient in the organisation, as Exchange names it
    deliver_to_mailbox_and_forward boolean NOT NULL DEFAULT false,
    forwarding_synced_at timestamptz,
    owa_policy_id bigint REFERENCES exchange_owa_policies ON DELETE SET NULL,   -- desired
    owa_policy_applied text,                       -- the policy name last set on Exchange
    owa_policy_applied_at timestamptz,
    spam_settings_applied_at timestamptz,
    permissions_synced_at timestamptz,
    deleted_at timestamptz,
    purged_at timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ux_exchange_mailboxes_address ON exchange_mailboxes (lower(primary_smtp_address))
    WHERE status <> 'deleted';
CREATE INDEX ix_exchange_mailboxes_org ON exchange_mailboxes (organization_id, status);
CREATE INDEX ix_exchange_mailboxes_recycle ON exchange_mailboxes (deleted_at, id) WHERE status = 'recycle_bin';

CREATE TABLE exchange_mailbox_permissions (
    id bigserial PRIMARY KEY,
    mailbox_id bigint NOT NULL REFERENCES exchange_mailboxes ON DELETE CASCADE,
    permission text NOT NULL CHECK (permission IN ('FullAccess', 'SendAs', 'SendOnBehalf', 'Other')),
    trustee text NOT NULL,
    access_rights text[] NOT NULL DEFAULT '{}',
    is_inherited boolean NOT NULL DEFAULT false,
    deny boolean NOT NULL DEFAULT false,
    synced_at timestamptz                          -- when Exchange last reported it different (or it was granted)
);
CREATE UNIQUE INDEX ux_exchange_mailbox_permissions ON exchange_mailbox_permissions
    (mailbox_id, permission, lower(trustee), deny);

CREATE TABLE exchange_send_connectors (
    id bigserial PRIMARY KEY,
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers ON DELETE CASCADE,
    name text NOT NULL,
    managed boolean NOT NULL DEFAULT false,        -- the panel wants it as desired_* say
    desired_smart_hosts text[],
    desired_address_spaces text[],
    desired_enabled boolean NOT NULL DEFAULT true,
    desired_port integer NOT NULL DEFAULT 25 CHECK (desired_port BETWEEN 1 AND 65535),
    source_transport_servers text[],               -- NULL: the exchange_servers row's own server
    present boolean NOT NULL DEFAULT false,        -- seen on Exchange by the last sync
    exchange_guid uuid,
    smart_hosts text[],
    address_spaces text[],
    enabled boolean,
    port integer,
    dns_routing_enabled boolean,
    smart_host_auth_mechanism text,
    status text NOT NULL DEFAULT 'observed' CHECK (status IN ('observed', 'pending', 'in_sync', 'failed')),
    synced_at timestamptz,
    last_error text,
    UNIQUE (exchange_server_id, name),
    CHECK (NOT managed OR (cardinality(desired_smart_hosts) > 0 AND cardinality(desired_address_spaces) > 0))
);

CREATE TABLE exchange_spam_filter_settings (
    organization_id bigint PRIMARY KEY REFERENCES exchange_organizations ON DELETE CASCADE,
    scl_delete_threshold smallint CHECK (scl_delete_threshold BETWEEN 0 AND 9),      -- NULL: that action off
    scl_reject_threshold smallint CHECK (scl_reject_threshold BETWEEN 0 AND 9),
    scl_quarantine_threshold smallint CHECK (scl_quarantine_threshold BETWEEN 0 AND 9),
    scl_junk_threshold smallint CHECK (scl_junk_threshold BETWEEN 0 AND 9),
    allowed_senders text[] NOT NULL DEFAULT '{}',
    blocked_senders text[] NOT NULL DEFAULT '{}',
    allowed_domains text[] NOT NULL DEFAULT '{}',
    blocked_domains text[] NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'failed')),
    applied_at timestamptz,
    applied_rules jsonb,                           -- the transport rules as Exchange reported them
    last_error text
);

CREATE TABLE exchange_remote_domains (
    id bigserial PRIMARY KEY,
    exchange_server_id bigint NOT NULL REFERENCES exchange_servers ON DELETE CASCADE,
    name text NOT NULL,                            -- the panel's name for a managed one, else Exchange's
    domain_name text NOT NULL,
    managed boolean NOT NULL DEFAULT false,
    desired_settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(desired_settings) = 'object'),
    present boolean NOT NULL DEFAULT false,
    exchange_guid uuid,
    settings jsonb,                                -- as Exchange reported them (Set-RemoteDomain names)
    is_internal boolean,
    status text NOT NULL DEFAULT 'observed' CHECK (status IN ('observed', 'pending', 'in_sync', 'failed')),
    synced_at timestamptz,
    last_error text
);
-- Exchange keys a remote domain by its domain (one per domain); the name is only a label
CREATE UNIQUE INDEX ux_exchange_remote_domains_domain ON exchange_remote_domains (exchange_server_id, lower(domain_name));

-- the latest job of a mailbox (correct_mailbox_statuses)
CREATE INDEX ix_group_action_jobs_exchange_mailbox ON group_action_jobs ((payload ->> 'mailbox_id'), id)
    WHERE backend = 'exchange';
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_group_action_jobs_exchange_mailbox")
    op.execute("DROP TABLE exchange_remote_domains, exchange_spam_filter_settings, exchange_send_connectors,"
               " exchange_mailbox_permissions, exchange_mailboxes, exchange_owa_policies, exchange_organizations")
