"""Rehearsing a migration tool's revisions one by one on production's copy (``shadow alembic``)."""
