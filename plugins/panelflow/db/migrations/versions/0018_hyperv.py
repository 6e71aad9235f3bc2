"""Hyper-V hosts, VMs, disks, inventory and stats, server stats (reserved)

Revision ID: 0018
Revises: 0017
"""
from alembic import op  # noqa: F401

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
