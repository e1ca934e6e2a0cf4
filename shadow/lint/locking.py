"""What the lint knows about locks and sessions: which statements take a heavy lock, LOCK TABLE's mode, what
refuses to run inside a transaction block, where a block opens and closes, and lock_timeout / statement_timeout."""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.tokens import Token

from shadow.lint.facts import QUALIFIED, STRINGS, Facts, fold_name
from shadow.sqlsplit import Statement

TIMEOUT_WHY = {
    "lock_timeout": "queued behind a long transaction, it blocks every later query on the table until it gets the lock",
    "statement_timeout": "a slow statement holds its lock for as long as it runs",
}


# REINDEX [ ( options ) ] { INDEX | TABLE | SCHEMA | DATABASE } name, without CONCURRENTLY (SYSTEM cannot be
# reindexed concurrently: not flagged, since the hint would be refused)
REINDEX = re.compile(rf"^REINDEX (?:\( (?:(?!CONCURRENTLY\b)[^)])* \) )?(INDEX|TABLE|SCHEMA|DATABASE) "
                     rf"(?!CONCURRENTLY\b)({QUALIFIED})")
_LOCK = re.compile(rf"^LOCK (?:TABLE )?(.*?)(?: IN ((?:ACCESS |ROW )?(?:SHARE|EXCLUSIVE)(?: UPDATE EXCLUSIVE| ROW "
                   rf"EXCLUSIVE)?) MODE)?(?: NOWAIT)?$")
# What PostgreSQL refuses inside a transaction block ("… cannot run inside a transaction block").
NO_BLOCK = re.compile(r"^(?:(?:CREATE|DROP) (?:UNIQUE )?INDEX CONCURRENTLY\b|REINDEX\b.*\bCONCURRENTLY\b"
                      r"|REINDEX (?:\( .*? \) )?(?:DATABASE|SYSTEM)\b|VACUUM\b|CLUSTER$"
                      r"|(?:CREATE|DROP) (?:DATABASE|TABLESPACE)\b|ALTER SYSTEM\b|DISCARD ALL\b"
                      r"|ALTER TABLE .*\bDETACH PARTITION .*\bCONCURRENTLY\b)")


def lock_table(facts: Facts) -> tuple[list[str], str] | None:
    """``([tables], mode)`` of a LOCK statement; its mode is ACCESS EXCLUSIVE unless it names another."""
    if facts.words[:1] != ("LOCK",) or not (m := _LOCK.match(facts.text)):
        return None
    names = [fold_name(re.sub(r"^ONLY | \*$", "", n.strip())) for n in m.group(1).split(" , ")]
    return names, m.group(2) or "ACCESS EXCLUSIVE"


def block_after(facts: Facts, block: Statement | None) -> Statement | None:
    """The BEGIN of the transaction block open after this statement (None: none is)."""
    text = facts.text
    if re.match(r"^(?:BEGIN|START TRANSACTION)\b", text):
        return block or facts.statement
    if re.match(r"^(?:COMMIT|END|ABORT|ROLLBACK)\b(?! (?:TO|PREPARED)\b)(?!.*\bAND CHAIN\b)", text) or \
            text.startswith("PREPARE TRANSACTION"):
        return None
    return block


def takes_heavy_lock(facts: Facts) -> bool:
    """Whether the statement waits for, then holds, a lock that blocks other sessions' reads or writes."""
    tree, kind = facts.tree, facts.kind
    if facts.words[:2] in (("ALTER", "TABLE"), ("ALTER", "INDEX")) or isinstance(tree, exp.TruncateTable):
        return True
    if isinstance(tree, exp.Drop):
        return kind in ("TABLE", "VIEW", "SCHEMA", "TRIGGER") or kind == "INDEX" and not tree.args.get("concurrently")
    if isinstance(tree, exp.Create):
        return kind == "TRIGGER" or kind == "INDEX" and not tree.args.get("concurrently")
    return bool(re.match(r"^(?:LOCK|CLUSTER|VACUUM .*\bFULL\b|REINDEX (?!.*\bCONCURRENTLY\b)"
                         r"|REFRESH MATERIALIZED VIEW (?!CONCURRENTLY\b))", facts.text))


def timeout_settings(facts: Facts) -> dict[str, bool]:
    """What a statement does to lock_timeout / statement_timeout: set it (True), or turn it off (False)."""
    t, w, out = facts.tokens, facts.words, {}
    names = ("lock_timeout", "statement_timeout")
    if w[:1] == ("SET",):
        i = 2 if w[1:2] in (("SESSION",), ("LOCAL",)) else 1
        if i + 2 < len(t) and t[i].text.lower() in names and w[i + 1] in ("=", "TO"):
            out[t[i].text.lower()] = not _disables(t[i + 2])
    elif w[:1] == ("RESET",) and len(t) > 1:
        out.update({n: False for n in names if t[1].text.lower() in (n, "all")})
    else:  # SELECT set_config('lock_timeout', '5s', false)
        for i, token in enumerate(t[:-4]):
            if token.text.lower() == "set_config" and t[i + 2].token_type in STRINGS and t[i + 2].text in names:
                out[t[i + 2].text] = not _disables(t[i + 4])
    return out


def _disables(value: Token) -> bool:
    # 0 (in any unit) turns the timeout off; so does DEFAULT unless the server's configuration sets one, which a
    # static check cannot know.
    return bool(re.fullmatch(r"\s*(?:0+(?:\.0*)?\s*[a-z]*|default)\s*", value.text.lower()))
