"""Connection strings: parsing, redaction, and handing them to libpq tools without exposing the password."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shadow.errors import BadInput


def parse(dsn: str) -> dict[str, Any]:
    try:
        return {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception as exc:  # psycopg raises ProgrammingError with the libpq message — which may quote the password
        raise BadInput("not a valid PostgreSQL connection string (check its syntax: key=value pairs or a "
                       "postgresql:// URL with percent-encoded special characters)") from exc


def redact(dsn: str) -> str:
    """The DSN as a URL without its password — safe for reports and logs."""
    try:
        params = parse(dsn)
    except BadInput:
        return "<invalid dsn>"
    return to_url({k: v for k, v in params.items() if "password" not in k})


def to_url(params: dict[str, Any]) -> str:
    user = params.get("user")
    password = params.get("password")
    auth = ""
    if user:
        auth = quote(str(user), safe="")
        if password:
            auth += ":" + quote(str(password), safe="")
        auth += "@"
    host = params.get("host") or "localhost"
    if "/" in str(host):
        netloc, extra = "", {"host": host}
    else:
        netloc, extra = str(host) + (f":{params['port']}" if params.get("port") else ""), {}
    query = {k: v for k, v in params.items() if k not in ("user", "password", "host", "port", "dbname")}
    query.update(extra)
    if "/" in str(host) and params.get("port"):
        query["port"] = params["port"]
    url = f"postgresql://{auth}{netloc}/{quote(str(params.get('dbname') or ''), safe='')}"
    if query:
        url += "?" + "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in sorted(query.items()))
    return url


def libpq_env(dsn: str) -> tuple[str, dict[str, str]]:
    """A DSN without the password (for a tool's command line, visible in ``ps``) and the env carrying it."""
    params = parse(dsn)
    password = params.pop("password", None)
    env = {"PGPASSWORD": str(password)} if password else {}
    return make_conninfo(**params), env


def pg_env(dsn: str) -> dict[str, str]:
    """libpq's PG* variables for a DSN (for an action with exactly one postgres target)."""
    params = parse(dsn)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "dbname": "PGDATABASE", "sslmode": "PGSSLMODE"}
    return {var: str(params[key]) for key, var in names.items() if params.get(key) is not None}


def connect_error(exc: BaseException, password: Any = None) -> str:
    """Why libpq could not connect, on one line: every line of its message is kept (the OS's or the server's
    reason — "Connection refused", "password authentication failed" — and libpq's hint), each line's runs of
    spaces and tabs collapsed, the lines joined with "; ", and the password never quoted."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    text = "; ".join(line for line in lines if line) or type(exc).__name__
    text = re.sub(r"^connection failed: ", "", text)
    return text.replace(str(password), "***") if password else text
