"""Help-desk POP accounts, tickets and their messages (HelpDeskWork, HelpDeskCommand).

A POP account names the Airflow connection (``conn_id``) that holds its server, port, login,
password and TLS settings: no secret sits in these tables. An account either feeds tickets
(HelpDeskWork's parser) or carries staff commands (HelpDeskCommand).

Exactly-once lives in the keys, not in the steps' good behaviour: a mail read twice from a box
(a worker killed between the commit and the POP3 DELE/QUIT) is stored once, because a ticket
message is unique by Message-ID, a command message is logged once by Message-ID, and a rejected
message once per account and SHA-256 of its raw bytes. Every step writes with
``ON CONFLICT DO NOTHING`` against these.

A ticket's subject tag (``[#TCK-000123]``) is derived from its id, never stored: a rerun and the
panel compute the same tag. Deleted tickets stay (``deleted_at``) until HelpDeskWork purges them
after the retention; their messages go with them (``ON DELETE CASCADE``), the command log keeps
its rows (``ticket_id`` set to NULL, ``ticket_tag`` kept).
"""
from alembic import op

revision = "0008"
down_revision = "0007"

DDL = """
CREATE TABLE helpdesk_departments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    reply_from text                                   -- From of the department's acknowledgements (else the account's address)
);

-- One POP3 mailbox. Host, port, login, password and TLS are in the Airflow connection conn_id.
CREATE TABLE helpdesk_pop_accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    conn_id text NOT NULL UNIQUE,                     -- one connection, one box: never read as two accounts
    purpose text NOT NULL DEFAULT 'tickets' CHECK (purpose IN ('tickets', 'commands')),
    address text,                                     -- the box's e-mail address (ours: never answered)
    department_id bigint REFERENCES helpdesk_departments,
    max_messages_per_run integer NOT NULL DEFAULT 200 CHECK (max_messages_per_run > 0),
    enabled boolean NOT NULL DEFAULT true,
    last_polled_at timestamptz,
    last_error text
);

-- Staff: who may send commands, and to whom tickets are assigned or locked.
CREATE TABLE helpdesk_staff (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    can_command boolean NOT NULL DEFAULT true,
    active boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX ux_helpdesk_staff_email ON helpdesk_staff (lower(email));

CREATE TABLE helpdesk_tickets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    department_id bigint REFERENCES helpdesk_departments,
    pop_account_id bigint REFERENCES helpdesk_pop_accounts ON DELETE SET NULL,
    subject text NOT NULL,
    requester_email text NOT NULL,
    requester_name text,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    priority text NOT NULL DEFAULT 'normal' CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    assigned_to bigint REFERENCES helpdesk_staff ON DELETE SET NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    closed_at timestamptz,
    deleted_at timestamptz,                           -- in the trash: purged permanently after the retention
    locked boolean NOT NULL DEFAULT false,
    locked_by bigint REFERENCES helpdesk_staff ON DELETE SET NULL,
    locked_at timestamptz,
    unlock_at timestamptz,                            -- the lock's schedule; NULL: until unlocked by hand
    unlocked_at timestamptz,
    CHECK (locked OR unlock_at IS NULL)
);
CREATE INDEX ix_helpdesk_tickets_deleted ON helpdesk_tickets (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX ix_helpdesk_tickets_unlock ON helpdesk_tickets (unlock_at) WHERE locked AND unlock_at IS NOT NULL;
CREATE INDEX ix_helpdesk_tickets_assigned ON helpdesk_tickets (assigned_to) WHERE assigned_to IS NOT NULL;

-- Every mail of a ticket: read from a box ('in') or sent by us through the outbox ('out'), so a
-- reply to either threads by In-Reply-To / References.
CREATE TABLE helpdesk_ticket_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id bigint NOT NULL REFERENCES helpdesk_tickets ON DELETE CASCADE,
    message_id text NOT NULL UNIQUE,                  -- a mail read twice is stored once
    direction text NOT NULL CHECK (direction IN ('in', 'out')),
    threaded_by text NOT NULL CHECK (threaded_by IN ('new', 'tag', 'in_reply_to', 'references', 'sent')),
    pop_account_id bigint REFERENCES helpdesk_pop_accounts ON DELETE SET NULL,
    from_address text NOT NULL,
    from_name text,
    staff_id bigint REFERENCES helpdesk_staff ON DELETE SET NULL,
    subject text NOT NULL,
    in_reply_to text,
    body_text text NOT NULL,
    sent_at timestamptz,                              -- the mail's Date header, when it has a valid one
    received_at timestamptz NOT NULL,                 -- the run that read (or sent) it
    raw bytea                                         -- as read from the box; NULL for what we sent
);
CREATE INDEX ix_helpdesk_ticket_messages_ticket ON helpdesk_ticket_messages (ticket_id);

-- Mails that could not be taken in (no sender, unparseable …): kept byte for byte with the reason
-- before they leave the box, for an operator.
CREATE TABLE helpdesk_rejected_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pop_account_id bigint NOT NULL REFERENCES helpdesk_pop_accounts,
    raw_sha256 bytea NOT NULL,
    raw bytea NOT NULL,
    reason text NOT NULL,
    message_id text,
    from_header text,
    subject text,
    read_at timestamptz NOT NULL,
    UNIQUE (pop_account_id, raw_sha256)
);

-- Each command mail once, whatever came of it (applied, refused, failed).
CREATE TABLE helpdesk_command_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id text NOT NULL UNIQUE,
    pop_account_id bigint NOT NULL REFERENCES helpdesk_pop_accounts,
    from_address text NOT NULL,
    staff_id bigint REFERENCES helpdesk_staff ON DELETE SET NULL,
    ticket_id bigint REFERENCES helpdesk_tickets ON DELETE SET NULL,
    ticket_tag text,                                  -- kept when the ticket is purged
    subject text NOT NULL,
    commands text NOT NULL,                           -- the command lines as received
    results jsonb NOT NULL DEFAULT '[]',              -- per command: command, outcome, detail
    status text NOT NULL CHECK (status IN ('applied', 'partial', 'failed', 'refused')),
    received_at timestamptz NOT NULL
);
CREATE INDEX ix_helpdesk_command_log_ticket ON helpdesk_command_log (ticket_id) WHERE ticket_id IS NOT NULL;
"""


def upgrade() -> None:
    op.execute(DDL)


DROP = """
DROP TABLE helpdesk_command_log, helpdesk_rejected_messages, helpdesk_ticket_messages, helpdesk_tickets,
    helpdesk_staff, helpdesk_pop_accounts, helpdesk_departments;
"""


def downgrade() -> None:
    op.execute(DROP)
