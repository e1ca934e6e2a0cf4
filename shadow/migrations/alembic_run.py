"""Alembic, run for shadow in its own process (the project's ``env.py`` and revisions are the user's code).

    python -m shadow.migrations.alembic_run -c alembic.ini sql FROM:TO      # the revisions' SQL (offline mode)
    python -m shadow.migrations.alembic_run -c alembic.ini upgrade REV      # online, on $DATABASE_URL
    python -m shadow.migrations.alembic_run -c alembic.ini roundtrip TO BACK  # upgrade TO, then downgrade to BACK

The database is ``$DATABASE_URL`` (what shadow hands an action: its shadow), given to alembic as ``sqlalchemy.url``
with psycopg 3 as the driver, and left in the environment for an ``env.py`` that reads it itself.
"""

from __future__ import annotations

import argparse
import os
import sys


def sqlalchemy_url(dsn: str) -> str:
    """A libpq DSN (URL or ``key=value`` conninfo) as SQLAlchemy's psycopg (3) dialect names it."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    named = {k: params.pop(k, None) for k in ("user", "password", "host", "port", "dbname")}
    url = URL.create("postgresql+psycopg", username=named["user"], password=named["password"],
                     host=named["host"], port=int(named["port"]) if named["port"] else None,
                     database=named["dbname"], query=params)
    return url.render_as_string(hide_password=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shadow.migrations.alembic_run")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("verb", choices=("sql", "upgrade", "roundtrip"))
    parser.add_argument("revisions", nargs="+")
    args = parser.parse_args(argv)

    from alembic import command
    from alembic.config import Config

    config = Config(args.config)
    url = os.environ.get("DATABASE_URL") or ""
    if url:
        config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    if args.verb == "sql":
        command.upgrade(config, args.revisions[0], sql=True)
    elif args.verb == "upgrade":
        command.upgrade(config, args.revisions[0])
    else:
        to, back = args.revisions[0], args.revisions[1]
        command.upgrade(config, to)
        command.downgrade(config, back)
    return 0


if __name__ == "__main__":
    sys.exit(main())
