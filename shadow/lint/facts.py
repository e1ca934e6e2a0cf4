"""Reading one statement: its tokens (comments dropped, string literals masked), and a tree when sqlglot has a useful
one; then what the statement names — the tables it writes, indexes, creates, reads, and the actions of an ALTER TABLE.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from shadow.errors import SqlError, excerpt
from shadow.sqlsplit import Statement
from shadow.sqlsyntax import check_alter_table, check_shape, comma_parts, parse_error, quotable, unreadable


@dataclass(frozen=True)
class Facts:
    statement: Statement
    tree: exp.Expression | None  # None: an opaque Command, or a command sqlglot does not model
    tokens: tuple[Token, ...]
    words: tuple[str, ...]  # one per token: keywords upper-cased, quoted identifiers re-quoted, strings masked
    unchecked: str | None = None  # why its syntax could not be checked (it is not refused: the rehearsal runs it)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def kind(self) -> str:
        return str(self.tree.args.get("kind") or "").upper() if self.tree is not None else ""


STRINGS = {TokenType.STRING, TokenType.NATIONAL_STRING, TokenType.RAW_STRING, TokenType.HEREDOC_STRING,
           TokenType.BYTE_STRING, TokenType.BIT_STRING, TokenType.HEX_STRING, TokenType.UNICODE_STRING}

# The first words of PostgreSQL's SQL commands (https://www.postgresql.org/docs/current/sql-commands.html).
# Anything else is a typo, whatever sqlglot makes of it (it reads a bare word as a column).
_PG_COMMANDS = frozenset(
    "ABORT ALTER ANALYZE ANALYSE BEGIN CALL CHECKPOINT CLOSE CLUSTER COMMENT COMMIT COPY CREATE DEALLOCATE DECLARE "
    "DELETE DISCARD DO DROP END EXECUTE EXPLAIN FETCH GRANT IMPORT INSERT LISTEN LOAD LOCK MERGE MOVE NOTIFY PREPARE "
    "REASSIGN REFRESH REINDEX RELEASE RESET REVOKE ROLLBACK SAVEPOINT SECURITY SELECT SET SHOW START TABLE TRUNCATE "
    "UNLISTEN UPDATE VACUUM VALUES WITH (".split())
# Commands sqlglot does not model: it rejects valid forms (CLUSTER t USING i, NOTIFY ch, 'x', REASSIGN OWNED …) or
# reads them as an expression. They are read from their tokens only, and never reported as parse errors.
_UNMODELLED = frozenset(
    "ABORT CHECKPOINT CLOSE CLUSTER COPY DEALLOCATE DECLARE DISCARD END EXECUTE FETCH IMPORT LISTEN LOAD MOVE NOTIFY "
    "PREPARE REASSIGN RELEASE SAVEPOINT SECURITY START UNLISTEN".split())


def analyse(st: Statement, start_col: int) -> Facts:
    try:
        tokens = _tokenize(st.text)
        words = tuple(_word(t) for t in tokens)
        if not words:
            return Facts(st, None, tokens, words)
        if words[0] not in _PG_COMMANDS:
            first = f"{excerpt(tokens[0].text)!r}" if st.quote else "its first word"
            raise SqlError(f"cannot parse the SQL (line {st.line}, column {start_col}): {first} does not "
                           "start an SQL command", file=st.file, line=st.line, statement=quotable(st))
        check_shape(st, tokens, words)
        unchecked = check_alter_table(st, tokens, words)
        if words[0] in _UNMODELLED:
            return Facts(st, None, tokens, words)
        with _quiet_sqlglot():
            trees = [t for t in sqlglot.parse(_without_index_only(st.text, tokens, words), read=Postgres)
                     if t is not None]
    except ParseError as exc:
        raise parse_error(st, exc, start_col) from exc
    except TokenError as exc:  # its message quotes the source at length, and names no line or column
        tokenizer = Postgres().tokenizer()
        with suppress(TokenError):
            tokenizer.tokenize(st.text)
        if error := unreadable(st, tokenizer.tokens):  # the tokens read before the one that failed
            raise error from exc
        return Facts(st, None, (), (), unchecked="its text could not be cut into SQL words")
    tree = trees[0] if len(trees) == 1 and isinstance(trees[0], exp.Expression) else None
    return Facts(st, None if isinstance(tree, exp.Command) else tree, tokens, words, unchecked)


def _without_index_only(text: str, tokens: Sequence[Token], words: Sequence[str]) -> str:
    """``CREATE INDEX … ON ONLY t`` with ONLY blanked: sqlglot rejects ONLY there, PostgreSQL takes it (an index on a
    partitioned table alone, the first step of building one partition by partition). The words keep ONLY."""
    if words[:1] == ("CREATE",) and "INDEX" in words[1:4]:
        for i in range(len(words) - 1):
            if words[i] == "ON" and words[i + 1] == "ONLY":
                only = tokens[i + 1]
                return text[: only.start] + " " * (only.end + 1 - only.start) + text[only.end + 1:]
    return text


def _tokenize(text: str) -> tuple[Token, ...]:
    tokens = Postgres().tokenize(text)
    # sqlglot keeps everything after a "command" keyword (VACUUM, LOCK, REINDEX, REFRESH, DO, CALL …) as one raw
    # string; read that remainder as SQL too, or "VACUUM FULL t" would look like "VACUUM ''".
    if (len(tokens) == 2 and tokens[0].token_type in Postgres.tokenizer_class.COMMANDS
            and tokens[1].token_type == TokenType.STRING):
        rest = text.find(tokens[1].text, tokens[0].end + 1)
        if rest >= 0:
            # blanked, not cut: the remainder's tokens keep their offsets (and lines) in the statement's text
            try:
                return (tokens[0], *Postgres().tokenize(re.sub(r"[^\n]", " ", text[:rest]) + text[rest:]))
            except TokenError:
                pass
    return tuple(tokens)


def _word(token: Token) -> str:
    if token.token_type in STRINGS:
        return "''"
    if token.token_type == TokenType.IDENTIFIER:
        return '"' + token.text.replace('"', '""') + '"'
    return token.text.upper()


@contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    # sqlglot logs a warning for every statement it keeps as an opaque Command; here that is expected and handled.
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# Names in the word stream: a quoted or plain identifier, optionally qualified ("A . B").
IDENT = r'(?:"(?:[^"]|"")*"|[\w$]+)'
QUALIFIED = rf"{IDENT}(?: \. {IDENT})*"


def fold_name(words: str) -> str:
    """``PUBLIC . "Users"`` → ``public.Users``: PostgreSQL folds unquoted names to lower case."""
    parts = re.findall(r'"((?:[^"]|"")*)"|([\w$]+)', words)
    return ".".join(quoted.replace('""', '"') if quoted else plain.lower() for quoted, plain in parts)


def table_name(table: exp.Table) -> str:
    parts = [table.args.get(k) for k in ("catalog", "db", "this")]
    return ".".join(p.this if p.args.get("quoted") else p.name.lower() for p in parts if isinstance(p, exp.Identifier))


def label(facts: Facts) -> str:
    """``CREATE UNIQUE INDEX CONCURRENTLY``, ``ALTER TABLE``, ``VACUUM ANALYZE``: how to name the statement."""
    words = [w for w in facts.words[:5] if re.fullmatch(r"[A-Z_]+", w)]
    if "CONCURRENTLY" in words:
        return " ".join(words[: words.index("CONCURRENTLY") + 1])
    return " ".join(words[:2])


# --- ALTER TABLE, from the tokens ----------------------------------------------------------------------------------

_ALTER_HEAD = re.compile(rf"^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?({QUALIFIED})(?: \*)? ?")


def alter_table(facts: Facts) -> tuple[str, list[str]] | None:
    """``(table, actions)`` of an ALTER TABLE, each action as its words joined by spaces."""
    if facts.words[:2] != ("ALTER", "TABLE"):
        return None
    joined = [" ".join(facts.words[a:b]) for a, b in comma_parts(facts.words)]
    if not (m := _ALTER_HEAD.match(joined[0])):
        return None
    return fold_name(m.group(1)), [a for a in (joined[0][m.end():], *joined[1:]) if a]


# --- what a statement names -------------------------------------------------------------------------------------


def index_table(facts: Facts) -> str | None:
    """The table a CREATE INDEX indexes."""
    tree = facts.tree
    if isinstance(tree, exp.Create) and facts.kind == "INDEX":
        return next(iter(target_names(tree)), None)
    return None


def on_only(facts: Facts) -> bool:
    return bool(re.search(r" ON ONLY ", facts.text))


def drop_names(tree: exp.Drop) -> list[str]:
    return [table_name(t) for t in tree.args.get("tables") or tree.expressions if isinstance(t, exp.Table)]


def target_names(tree: exp.Expression) -> list[str]:
    return [table_name(t) for t in target_tables(tree)]


def target_tables(tree: exp.Expression) -> list[exp.Table]:
    """The tables a statement writes: INSERT/UPDATE/DELETE/MERGE/TRUNCATE targets, what CREATE TABLE/VIEW/INDEX
    creates or indexes, what DROP TABLE/VIEW drops."""
    kind = str(tree.args.get("kind") or "").upper()
    if isinstance(tree, exp.TruncateTable) or isinstance(tree, exp.Drop) and kind in ("TABLE", "VIEW"):
        nodes = list(tree.args.get("tables") or tree.expressions)
    elif isinstance(tree, exp.Create) and kind == "INDEX" and isinstance(tree.this, exp.Index):
        nodes = [tree.this.args.get("table")]
    elif isinstance(tree, exp.Create) and kind in ("TABLE", "VIEW") or isinstance(
            tree, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        nodes = [tree.this]
    else:
        return []
    # INSERT INTO t (a, b) and CREATE TABLE t (…) wrap the table in a Schema
    nodes = [n.this if isinstance(n, exp.Schema) else n for n in nodes]
    return [n for n in nodes if isinstance(n, exp.Table) and isinstance(n.this, exp.Identifier)]


def same_table(a: str, b: str) -> bool:
    """Whether two names as :func:`shadow.lint.touched` gives them mean the same table: equal, or one unqualified
    and the last parts equal (a migration runs with one search_path, so ``users`` is taken to be ``public.users``)."""
    return a == b or ("." not in a or "." not in b) and a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def named_in(name: str, created: set[str]) -> bool:
    return any(same_table(name, c) for c in created)


def creates(facts: Facts) -> set[str]:
    """Names of the tables, views, indexes and schemas a statement creates (IF NOT EXISTS may create nothing)."""
    tree = facts.tree
    if not isinstance(tree, exp.Create) or tree.args.get("exists"):
        return set()
    node = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    if facts.kind in ("TABLE", "VIEW", "SCHEMA") and isinstance(node, exp.Table):
        return {table_name(node)}
    if facts.kind == "INDEX" and isinstance(node, exp.Index) and isinstance(node.this, exp.Identifier):
        return {node.this.this if node.this.args.get("quoted") else node.this.name.lower()}
    return set()


def reads_and_writes(facts: Facts) -> tuple[set[str], set[str]]:
    """``(reads, writes)`` of an analysed statement (see :func:`shadow.lint.touched`)."""
    tree = facts.tree
    if alter := alter_table(facts):
        table, actions = alter
        schema = table.rsplit(".", 1)[0] + "." if "." in table else ""
        renamed = {schema + fold_name(m.group(1)) for a in actions if (m := re.match(rf"^RENAME TO ({IDENT})", a))}
        reads = {fold_name(m.group(1)) for m in re.finditer(rf"\bREFERENCES ({QUALIFIED})", facts.text)}
        return reads, {table} | renamed
    if tree is None:
        m = re.match(rf"^REFRESH MATERIALIZED VIEW (?:CONCURRENTLY )?({QUALIFIED})", facts.text)
        return set(), {fold_name(m.group(1))} if m else set()
    targets = target_tables(tree)
    if isinstance(tree, exp.Drop) or isinstance(tree, exp.Create) and facts.kind not in ("TABLE", "VIEW", "INDEX"):
        return set(), {table_name(t) for t in targets}
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    reads = {table_name(t) for t in tree.find_all(exp.Table)
             if isinstance(t.this, exp.Identifier) and not any(t is target for target in targets)
             and not (not t.args.get("db") and t.name.lower() in ctes)}
    return reads, {table_name(t) for t in targets}
