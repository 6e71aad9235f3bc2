"""Registrars over EPP: accounts, domain and contact state, poll messages, the iNET name-server policy.

DomainNameDataSyncThread reads each registrar account over EPP (RFC 5730–5734) instead of a REST
API; what EPP gives, and what it does not, shapes these columns:

- EPP has no "list my domains" command. An account names the zones its EPP server registers
  (``registrar_accounts.zones``: ``{my, com.my}``); the panel's domains under them are probed with
  ``domain:info``, and those the account sponsors become ``registrar_domains`` rows. A probe that
  found the domain absent or another client's is kept in ``registrar_probes`` so it is repeated
  weekly, not every run. Domains also arrive by transfer (a poll message).
- A domain has several statuses (RFC 5731 §2.3: ``ok``, ``clientHold``,
  ``serverTransferProhibited`` …): ``registrar_domains.statuses`` holds them, and ``status`` (the
  text ProvisioningWork 13 copies to ``domains.registrar_status``) is them sorted and joined by a
  space. ``sponsor`` is the sponsoring client id at the last read (another client's: transferred
  away), ``roid`` the registry's object id, ``registered_at``/``transferred_at`` crDate/trDate.
  ``remote_updated_at`` (0010) holds upDate; ``locked`` (0010) is a client or server transfer
  prohibition. ``auto_renew`` stays NULL: EPP does not say.
- ``registrar_poll_messages``: each poll message applied, once per (account, message id). The row
  is written in the transaction that applies the message and the message is acknowledged only
  after that commits, so a crash between the commit and the ack re-reads a message whose row
  exists: it is acknowledged without being applied twice. ``acked_at`` is set when the server
  confirmed the ack. Rows go after 180 days (``POLL_MESSAGE_DAYS``, the sync's bounded retention delete):
  a registry never hands out an acknowledged message again.
- ProvisioningWork 36 ("Set NSA registrar for iNET"): an account whose ``registrar`` is ``inet``
  and whose ``nameservers`` is set has those name servers enforced on its listed domains with
  ``domain:update``. ``registrar_nameserver_updates`` keeps each update sent — one per domain and
  difference (the name servers found → the ones wanted, both sorted): a rerun, or a registry that
  refused (its result code and message are kept), never sends the same difference twice.

No secrets here: the EPP password and certificates live in the account's Airflow connection.
"""
from alembic import op

revision = "0031"
down_revision = "0030"

_HOSTNAMES = r"::text = lower({0}::text) AND {0}::text !~ '[.]([,}}]|$)'"

DDL = f"""
ALTER TABLE registrar_accounts
    ADD COLUMN registrar text CHECK (registrar ~ '^[a-z0-9_-]{{1,40}}$'),  -- who runs the account: 'inet', …
    ADD COLUMN zones text[] NOT NULL DEFAULT '{{}}' CHECK (zones{_HOSTNAMES.format('zones')}),
    ADD COLUMN nameservers text[] CHECK (nameservers IS NULL OR (cardinality(nameservers) BETWEEN 2 AND 13
                                         AND nameservers{_HOSTNAMES.format('nameservers')}));

ALTER TABLE registrar_domains
    ADD COLUMN statuses text[] NOT NULL DEFAULT '{{}}',
    ADD COLUMN roid text,
    ADD COLUMN sponsor text,                        -- clID sponsoring it at the last read
    ADD COLUMN registered_at timestamptz,           -- crDate
    ADD COLUMN transferred_at timestamptz;          -- trDate

CREATE TABLE registrar_probes (
    account_id bigint NOT NULL REFERENCES registrar_accounts ON DELETE CASCADE,
    name text NOT NULL CHECK (name = lower(name)),
    probed_at timestamptz NOT NULL,                 -- interval end of the run that probed it
    outcome text NOT NULL CHECK (outcome IN ('not_found', 'not_sponsored')),
    PRIMARY KEY (account_id, name)
);

CREATE TABLE registrar_poll_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES registrar_accounts ON DELETE CASCADE,
    msg_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('transfer', 'change', 'pending', 'other')),
    domain text,
    queued_at timestamptz,
    message text,
    detail jsonb NOT NULL DEFAULT '{{}}',           -- the transfer's or change's fields
    outcome text NOT NULL,                          -- what applying it did (transferred_in, deleted, updated …)
    applied_at timestamptz NOT NULL,                -- interval end of the run that applied it
    acked_at timestamptz,                           -- … whose ack the server confirmed
    UNIQUE (account_id, msg_id)
);
CREATE INDEX ix_registrar_poll_messages_applied ON registrar_poll_messages (applied_at);

CREATE TABLE registrar_nameserver_updates (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    registrar_domain_id bigint NOT NULL REFERENCES registrar_domains ON DELETE CASCADE,
    found text[] NOT NULL,                          -- sorted
    wanted text[] NOT NULL,                         -- sorted
    requested_at timestamptz NOT NULL,              -- interval end of the run that sent it
    result_code integer NOT NULL,                   -- the server's EPP result code
    result text,
    server_transaction text,                        -- svTRID
    UNIQUE (registrar_domain_id, found, wanted)
);
"""

DROP = """
DROP TABLE registrar_nameserver_updates, registrar_poll_messages, registrar_probes;
ALTER TABLE registrar_domains DROP COLUMN transferred_at, DROP COLUMN registered_at, DROP COLUMN sponsor,
    DROP COLUMN roid, DROP COLUMN statuses;
ALTER TABLE registrar_accounts DROP COLUMN nameservers, DROP COLUMN zones, DROP COLUMN registrar;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute(DROP)
