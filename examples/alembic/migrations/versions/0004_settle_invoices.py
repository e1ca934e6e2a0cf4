"""settle paid invoices — its downgrade forgets the status it changed

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

shadow_expect = {
    "must": ["add column public.invoices.settled_at", "update rows public.invoices"],
    "rows": {"public.invoices": {"updated": "<= 500", "inserted": 0, "deleted": 0}},
}


def upgrade() -> None:
    op.add_column("invoices", sa.Column("settled_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE invoices SET status = 'settled', settled_at = '2026-12-01' WHERE status = 'paid'")


def downgrade() -> None:
    # The bug: settled invoices stay 'settled' (should go back to 'paid'). Only a round trip on real data sees it.
    op.drop_column("invoices", "settled_at")
