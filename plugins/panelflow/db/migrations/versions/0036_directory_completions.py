"""Active Directory completions: contacts, the backup of users and Exchange objects for a restore,
orphan users, and what the fill-in step wrote.

The model. AD stays the source of truth; these tables are the panel's copy of what a restore or an
operator needs once AD (or Exchange) has lost it. Every object is keyed by its stable identity
(``objectGUID`` in AD, the object's ``Guid`` in Exchange) and written with ``INSERT … ON CONFLICT``
against that key, so a rerun leaves exactly one row.

Tables and their producers:

- ``ad_contacts``: the mail contacts (``objectClass=contact``) under each directory's managed
  subtree, kept when deleted in AD (``deleted``), as ``ad_users`` are. Producer: SyncFromBackendWork
  step 3 (``panelflow.steps.active_directory.contacts.sync_ad_contacts``).
- ``ad_user_backups``: per AD user, everything needed to recreate it (names, UPN, addresses,
  extended attributes, group memberships) as last seen; ``removed_at`` once it is gone from AD, the
  row itself kept for a restore. Producer: SyncMissingDataWork step 1
  (``…active_directory.missing_data.sync_missing_ad_user_data``), a full compare that writes only
  missing or changed rows.
- ``exchange_backups``: per Exchange mailbox, distribution list and mail contact of a hosted
  organisation (``exchange_organizations``), its definition as the Exchange cmdlets print it (a
  distribution list with its members and owners); ``gone_at`` once a complete listing of its
  organisation no longer shows it. Producer: SyncMissingDataWork step 2
  (``panelflow.steps.exchange.missing_data.sync_missing_exchange_data``), which also puts every
  distribution list that went away into ``recovery_distribution_lists`` (0011) — the rows
  ProvisioningWork 42–43 notify about and purge. ``recovery_distribution_lists.exchange_guid`` with
  the list's ``deleted_at`` (its backup's ``gone_at``) makes that insert once per disappearance;
  rows the panel itself writes leave it NULL.
- ``ad_orphan_users``: AD users under a managed subtree that belong to no panel customer (see
  ProvisioningWork 40, ``…active_directory.orphans.remove_orphan_ad_users``): when first and last
  seen so, and what was done (``disabled_at``, ``deleted_at``); ``cleared_at`` once it is no orphan.
- ``ad_user_fills``: the values ProvisioningWork 46 (``…active_directory.user_fill``) wrote into an
  empty ``mail`` or ``employeeID``, once per user and attribute: the audit trail of a write the
  panel made on its own.
"""
from alembic import op

revision = "0036"
down_revision = "0035"

DDL = """
CREATE TABLE ad_contacts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    organisation_id bigint REFERENCES ad_organisations ON DELETE SET NULL,
    object_guid uuid NOT NULL,
    dn text NOT NULL,
    cn text,
    display_name text,
    given_name text,
    surname text,
    mail text,
    target_address text,                              -- where mail to the contact goes (SMTP:…)
    company text,
    telephone_number text,
    when_changed timestamptz,
    usn_changed bigint,
    deleted boolean NOT NULL DEFAULT false,
    deleted_at timestamptz,
    synced_at timestamptz,
    UNIQUE (directory_id, object_guid)
);
CREATE INDEX ix_ad_contacts_organisation ON ad_contacts (organisation_id);

CREATE TABLE ad_user_backups (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    organisation_id bigint REFERENCES ad_organisations ON DELETE SET NULL,
    sam_account_name text,
    user_principal_name text,
    dn text NOT NULL,
    data jsonb NOT NULL,                              -- attribute → value(s), member_of: group DNs
    backed_up_at timestamptz NOT NULL,                -- the run that last wrote data
    removed_at timestamptz,                           -- the run that no longer found it in AD
    PRIMARY KEY (directory_id, object_guid)
);

CREATE TABLE exchange_backups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES exchange_organizations ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('mailbox', 'distribution_list', 'contact')),
    guid uuid NOT NULL,                               -- Exchange's Guid (mailbox: ExchangeGuid)
    name text NOT NULL,
    primary_smtp_address text,
    definition jsonb NOT NULL,
    backed_up_at timestamptz NOT NULL,
    gone_at timestamptz,                              -- a complete listing no longer had it
    UNIQUE (organization_id, kind, guid)
);
CREATE INDEX ix_exchange_backups_gone ON exchange_backups (gone_at) WHERE gone_at IS NOT NULL;

ALTER TABLE recovery_distribution_lists ADD COLUMN exchange_guid uuid;
CREATE UNIQUE INDEX ux_recovery_distribution_lists_exchange ON recovery_distribution_lists (exchange_guid, deleted_at)
    WHERE exchange_guid IS NOT NULL;

CREATE TABLE ad_orphan_users (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    dn text NOT NULL,
    sam_account_name text,
    reason text NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    disabled_at timestamptz,                          -- disabled by ProvisioningWork 40 (setting allowed it)
    deleted_at timestamptz,                           -- deleted by it (a later run, setting allowed it)
    cleared_at timestamptz,                           -- no orphan any more (moved, linked to a customer)
    PRIMARY KEY (directory_id, object_guid)
);

CREATE TABLE ad_user_fills (
    directory_id bigint NOT NULL REFERENCES ad_directories ON DELETE CASCADE,
    object_guid uuid NOT NULL,
    attribute text NOT NULL CHECK (attribute IN ('mail', 'employeeID')),
    value text NOT NULL,
    source text NOT NULL,
    filled_at timestamptz NOT NULL,
    PRIMARY KEY (directory_id, object_guid, attribute)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("""
DROP INDEX ux_recovery_distribution_lists_exchange;
ALTER TABLE recovery_distribution_lists DROP COLUMN exchange_guid;
DROP TABLE ad_user_fills, ad_orphan_users, exchange_backups, ad_user_backups, ad_contacts;
""")
