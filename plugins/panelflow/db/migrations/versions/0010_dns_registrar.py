"""Hosted domains' DNS records as last read from the DNS backend, and registrar contacts and status (SynchDNSRecordsWork, DomainNameDataSyncThread).

SynchDNSRecordsWork:

- ``hostmatic_domains``: the domains (of ``domains``) whose zone the Hostmatic DNS backend
  serves, each naming the Airflow connection (type ``dns``) of the backend server that answers
  for it, plus any record names to read beyond the standard ones;
- ``hostmatic_dns_records``: each domain's records as last read completely — one row per
  (domain, owner name, type, value); a read that did not complete changes nothing here;
- ``hostmatic_dns_record_changes``: what each run found added or removed, once per run
  (unique per domain, run's interval end, change and record);
- ``domain_verification_notices``: the "please publish your TXT record" reminders sent to a
  pending domain's contact — one per domain and reminder number, at most three (0, 1, 2).

DomainNameDataSyncThread:

- ``registrar_accounts``: each names the Airflow connection holding the registrar API's URL and
  key — no secrets in tables;
- ``registrar_domains``: per account and domain, the registrar's status, expiry, name servers and
  transfer lock as last read, and whether the registrar still lists it;
- ``registrar_domain_contacts``: the registrant, admin, tech and billing contacts of each.

Record values are unbounded text (DKIM keys, long SPF): the unique indexes hash them.
"""
from alembic import op

from panelflow.db.ddl import conn_id_check

revision = "0010"
down_revision = "0009"

DDL = f"""
CREATE TABLE hostmatic_domains (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain_id bigint NOT NULL UNIQUE REFERENCES domains ON DELETE CASCADE,
    dns_conn_id text NOT NULL DEFAULT 'hostmatic_dns' {conn_id_check("dns_conn_id")},
    extra_names text[] NOT NULL DEFAULT '{{}}',      -- names to read besides the standard ones ('shop', '_sip._udp')
    enabled boolean NOT NULL DEFAULT true,
    last_attempt_at timestamptz,                     -- interval end of the last run that tried it
    last_synced_at timestamptz,                      -- … of the last complete read
    last_error text
);
CREATE INDEX ix_hostmatic_domains_due ON hostmatic_domains (last_attempt_at NULLS FIRST, id) WHERE enabled;

CREATE TABLE hostmatic_dns_records (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain_id bigint NOT NULL REFERENCES hostmatic_domains (domain_id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name = lower(name) AND name !~ '[.]$'),  -- owner name, FQDN without the root dot
    type text NOT NULL CHECK (type IN ('A', 'AAAA', 'MX', 'CNAME', 'TXT', 'SRV', 'NS')),
    value text NOT NULL,
    ttl integer CHECK (ttl >= 0),
    first_seen_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX ux_hostmatic_dns_records ON hostmatic_dns_records (domain_id, name, type, md5(value));

CREATE TABLE hostmatic_dns_record_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain_id bigint NOT NULL REFERENCES hostmatic_domains (domain_id) ON DELETE CASCADE,
    run_at timestamptz NOT NULL,                     -- the run's interval end
    change text NOT NULL CHECK (change IN ('added', 'removed')),
    name text NOT NULL,
    type text NOT NULL,
    value text NOT NULL,
    ttl integer
);
CREATE UNIQUE INDEX ux_hostmatic_dns_record_changes
    ON hostmatic_dns_record_changes (domain_id, run_at, change, name, type, md5(value));
CREATE INDEX ix_hostmatic_dns_record_changes_run ON hostmatic_dns_record_changes (run_at);

CREATE TABLE domain_verification_notices (
    domain_id bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    reminder smallint NOT NULL CHECK (reminder BETWEEN 0 AND 2),
    sent_at timestamptz NOT NULL,                    -- interval end of the run that queued it
    outbox_key text NOT NULL UNIQUE,                 -- email_outbox.dedupe_key of its message
    PRIMARY KEY (domain_id, reminder)
);

CREATE TABLE registrar_accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    conn_id text NOT NULL UNIQUE {conn_id_check("conn_id")},  -- the Airflow connection: API URL and key
    enabled boolean NOT NULL DEFAULT true,
    last_attempt_at timestamptz,
    last_synced_at timestamptz,
    last_error text
);

CREATE TABLE registrar_domains (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES registrar_accounts ON DELETE CASCADE,
    name text NOT NULL CHECK (name = lower(name)),
    domain_id bigint REFERENCES domains ON DELETE SET NULL,  -- the panel's domain of that name, when there is one
    status text,
    expires_at timestamptz,
    nameservers text[] NOT NULL DEFAULT '{{}}',
    locked boolean,
    auto_renew boolean,
    remote_updated_at timestamptz,                   -- the registrar's own "last changed" of the domain
    listed boolean NOT NULL DEFAULT true,            -- false: the registrar's last complete list did not have it
    first_seen_at timestamptz NOT NULL,
    changed_at timestamptz NOT NULL,                 -- interval end of the run that last found a difference
    synced_at timestamptz,                           -- … that last read its detail
    last_error text,
    UNIQUE (account_id, name)
);
CREATE INDEX ix_registrar_domains_name ON registrar_domains (name);
CREATE INDEX ix_registrar_domains_domain ON registrar_domains (domain_id) WHERE domain_id IS NOT NULL;

CREATE TABLE registrar_domain_contacts (
    registrar_domain_id bigint NOT NULL REFERENCES registrar_domains ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('registrant', 'admin', 'tech', 'billing')),
    handle text,
    name text,
    organization text,
    email text,
    phone text,
    street text,
    city text,
    postal_code text,
    state text,
    country text,
    changed_at timestamptz NOT NULL,                 -- interval end of the run that last found a difference
    PRIMARY KEY (registrar_domain_id, role)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE registrar_domain_contacts, registrar_domains, registrar_accounts, domain_verification_notices,"
               " hostmatic_dns_record_changes, hostmatic_dns_records, hostmatic_domains")
