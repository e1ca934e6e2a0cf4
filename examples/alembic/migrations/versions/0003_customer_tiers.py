"""customer tiers: a column, and a data migration that fills it

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Customers who paid 1,000.00 or more become gold: a handful, never a rewrite of the table.
shadow_expect = {
    "must": ["add column public.customers.tier", "update rows public.customers"],
    "rows": {"public.customers": {"updated": "<= 50", "inserted": 0, "deleted": 0}},
}


def upgrade() -> None:
    op.add_column("customers", sa.Column("tier", sa.Text, nullable=False, server_default="standard"))
    op.execute("UPDATE customers SET tier = 'gold' WHERE id IN (SELECT customer_id FROM invoices "
               "WHERE status = 'paid' GROUP BY customer_id HAVING sum(amount_cents) >= 100000)")


def downgrade() -> None:
    op.drop_column("customers", "tier")
