"""The example's settings: one app (billing) on PostgreSQL at $DATABASE_URL (a URL or a libpq conninfo)."""

import os

from psycopg.conninfo import conninfo_to_dict


def _database() -> dict:
    params = {k: str(v) for k, v in conninfo_to_dict(os.environ["DATABASE_URL"]).items() if v is not None}
    named = {k: params.pop(k, "") for k in ("dbname", "user", "password", "host", "port")}
    return {"ENGINE": "django.db.backends.postgresql", "NAME": named["dbname"], "USER": named["user"],
            "PASSWORD": named["password"], "HOST": named["host"], "PORT": named["port"], "OPTIONS": params}


SECRET_KEY = "example-only-not-a-secret"
DEBUG = False
INSTALLED_APPS = ["billing"]
DATABASES = {"default": _database()}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
