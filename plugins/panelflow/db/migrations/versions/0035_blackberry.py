"""BlackBerry UEM: servers, users, devices and their state.

BBSyncWork reads each BlackBerry UEM server's REST API (users, their groups, each user's devices)
and keeps here what a provider reports on and bills: who has which devices, in what state.

- ``bb_uem_servers``: one row per UEM server (tenant), written by the panel's BlackBerry settings
  page: a name and the Airflow connection (``conn_id``) that holds its API URL, tenant GUID and the
  API account. BBSyncWork writes only ``last_synced_at`` (the clock of the run that last read the
  whole server) and ``last_error``/``last_error_at``.
- ``bb_users``: the server's users, by UEM's user GUID, written by BBSyncWork. ``groups`` are the
  names of the UEM groups the user is a direct member of. ``changed_at`` moves only when a synced
  field changed; ``gone_at`` is set when a complete read no longer lists the user (and cleared if
  the user comes back), so history and device counts survive a user's removal.
- ``bb_devices``: each user's devices (UEM's *userDevice*: one activation of one device for one
  user), by the userDevice GUID, written by BBSyncWork: hardware (model, OS, ownership), its state
  (enrollment state and type, compromised, the out-of-compliance reasons — none: compliant), its
  activation and last contact. Same ``changed_at``/``gone_at`` rules as users; a device is marked
  gone only when its user's device list was read in a complete sync.
"""
from alembic import op

revision = "0035"
down_revision = "0034"

DDL = """
CREATE TABLE bb_uem_servers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    conn_id text NOT NULL UNIQUE,
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_synced_at timestamptz,
    last_error text,
    last_error_at timestamptz
);

CREATE TABLE bb_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    server_id bigint NOT NULL REFERENCES bb_uem_servers ON DELETE CASCADE,
    user_guid text NOT NULL,
    username text NOT NULL,
    display_name text,
    email text,
    groups text[] NOT NULL DEFAULT '{}',
    first_seen_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,
    synced_at timestamptz NOT NULL,
    gone_at timestamptz,
    UNIQUE (server_id, user_guid)
);

CREATE TABLE bb_devices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bb_user_id bigint NOT NULL REFERENCES bb_users ON DELETE CASCADE,
    user_device_guid text NOT NULL,
    device_guid text,
    hardware_model text,
    hardware_vendor text,
    os text,
    os_family text,
    os_version text,
    ownership text,                                   -- UEM's: CORPORATE, PERSONAL …
    enrollment_state text,
    enrollment_type text[] NOT NULL DEFAULT '{}',
    compromised boolean,
    out_of_compliance text[] NOT NULL DEFAULT '{}',  -- UEM's reasons; empty: compliant
    compliant boolean GENERATED ALWAYS AS (cardinality(out_of_compliance) = 0) STORED,
    client_version text,
    activated_at timestamptz,
    last_contact_at timestamptz,
    first_seen_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,
    synced_at timestamptz NOT NULL,
    gone_at timestamptz,
    UNIQUE (bb_user_id, user_device_guid)
);
CREATE INDEX ix_bb_devices_present ON bb_devices (bb_user_id) WHERE gone_at IS NULL;
"""

DROP = "DROP TABLE bb_devices, bb_users, bb_uem_servers;"


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
