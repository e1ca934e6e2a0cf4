"""What a report may show of production's data: values of secret-looking columns never leave shadow.

Sample rows (a few changed rows per table, before and after) are the only place where reports carry row values.
A column's values are replaced by :data:`MARKER` when its name looks secret (:data:`SECRET_WORDS`, a
case-insensitive substring) or matches one of the plan's ``policy.redact`` globs — ``password_hash``,
``*_token``, ``public.users.email`` or ``users.phone``. The adapter redacts secret-looking columns as soon as it
reads a row; the report model applies the plan's globs as well, so every format (JSON, Markdown, HTML, JUnit)
shows what the model shows and nothing more.

:func:`mask_secrets` does the same for text (an action's log, a git error): every secret value handed over by an
endpoint is replaced, also in its percent-encoded forms.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

MARKER = "[redacted]"
SECRET_WORDS = ("password", "passwd", "passphrase", "pwd", "secret", "token", "api_key", "apikey", "access_key",
                "private_key", "credential", "ssn", "credit_card", "card_number", "cvv")


def _norm(name: str) -> str:
    return name.replace('"', "").lower().replace("-", "_").replace(" ", "_")


def looks_secret(column: str) -> bool:
    name = _norm(column)
    return any(word in name for word in SECRET_WORDS)


def is_redacted(table: str, column: str, patterns: Iterable[str] = ()) -> bool:
    """Whether ``column`` of ``table`` (``schema.table``, maybe quoted) must not be shown.

    A pattern with a dot matches ``schema.table.column`` or ``table.column``; one without matches the column name.
    """
    if looks_secret(column):
        return True
    col = _norm(column)
    qualified = f"{_norm(table)}.{col}"
    short = qualified.split(".", 1)[1] if qualified.count(".") > 1 else qualified
    for pattern in patterns:
        p = _norm(pattern)
        if "." in p:
            if fnmatch.fnmatchcase(qualified, p) or fnmatch.fnmatchcase(short, p):
                return True
        elif fnmatch.fnmatchcase(col, p):
            return True
    return False


def row(table: str, values: Mapping[str, Any] | None, patterns: Iterable[str] = ()) -> dict[str, Any] | None:
    """``values`` (column → value) with every redacted column's value replaced by :data:`MARKER`."""
    if values is None:
        return None
    patterns = tuple(patterns)
    return {c: MARKER if v is not None and is_redacted(table, c, patterns) else v for c, v in values.items()}


def rows_detail(table: str, detail: dict[str, Any], patterns: Iterable[str] = ()) -> dict[str, Any]:
    """A ``rows`` change's detail with its sample rows (and, when a key column is redacted, sample keys) redacted."""
    samples = detail.get("sample_rows")
    if not samples:
        return detail
    patterns = tuple(patterns)
    out = dict(detail)
    out["sample_rows"] = [{**s, "key": row(table, s.get("key"), patterns), "before": row(table, s.get("before"), patterns),
                           "after": row(table, s.get("after"), patterns)} for s in samples]
    key_columns = {c for s in samples for c in (s.get("key") or {})}
    if any(is_redacted(table, c, patterns) for c in key_columns) and detail.get("sample_keys"):
        out["sample_keys"] = [MARKER] * len(detail["sample_keys"])
    return out


def content_lines(lines: list[Any]) -> list[Any]:
    """A content diff with every line that names a secret-looking field replaced by :data:`MARKER`."""
    return [f"{MARKER} (a line naming a secret-looking field)" if looks_secret(str(line)) else line for line in lines]


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret — also as it appears percent-encoded inside a URL — with ***."""
    from urllib.parse import quote

    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                text = text.replace(form, "***")
    return text


def mask_secret_looking(text: str) -> str:
    """``text`` with every run that looks like a secret value — an API key, a token, a password hash, a base64
    secret (:func:`shadow.errors.excerpt`'s test) — replaced by :data:`MARKER`; for text whose columns or fields
    are not known (a query's computed values, an action's output)."""
    from shadow.errors import _WORDISH, _secretish  # one test of what looks secret, shared with error excerpts

    return _WORDISH.sub(lambda m: MARKER if _secretish(m.group()) else m.group(), text)


_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)")
_KEYWORD_PASSWORD = re.compile(r"(\b\w*(?:password|passwd|pwd)\w*\s*[=:]\s*)('(?:[^'\\]|\\.)*'|\"[^\"]*\"|\S+)", re.I)


def mask_dsn_passwords(text: str) -> str:
    """``text`` with the password of every connection string in it masked: ``postgres://u:***@h/db``,
    ``password=***`` (also ``PGPASSWORD=***``)."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", text))


def mask_output(text: str) -> str:
    """An action's output as an agent may read it: DSN passwords and secret-looking values masked."""
    return mask_secret_looking(mask_dsn_passwords(text))
