"""Connection poolers (PgBouncer, Supavisor) between the pool and PostgreSQL: no I/O here.

``pooler=`` on :class:`~dbresilience.Pool`, :class:`~dbresilience.AsyncPool` and the SQLAlchemy
engines says what sits in front of the server:

- ``None``: nothing; PostgreSQL itself answers (no detection);
- ``"session"``: a pooler in session mode: one server connection per client connection for as
  long as it stays open; startup ``options`` are refused, so the server-side timeouts are set
  with ``SET`` on each new connection (the pooler's ``server_reset_query`` clears them when the
  client leaves);
- ``"transaction"``: a pooler in transaction mode: consecutive transactions of one client
  connection may run on different server connections, shared with other clients. No startup
  ``options``, no server-side prepared statements (``prepare_threshold=None``; ``prepare=True``
  is refused), no session state (see :func:`session_state_use`), and the server-side timeouts
  only as ``SET LOCAL`` inside :meth:`~dbresilience.Pool.transaction` (sent with ``BEGIN``, in
  the same round trip), which ends with the transaction and cannot reach another client;
- ``"auto"`` (the default): ``None`` until a cheap, reliable signal says a pooler is there,
  then ``"transaction"`` (the safe choice: it is correct in session mode too). The signals: the
  server refused the startup parameter ``options`` (PostgreSQL accepts it; PgBouncer does not),
  or the backend pid the server announced at startup differs from ``pg_backend_pid()`` (a pooler
  answers with its own cancel key; asked with the round trip each new connection makes anyway).

Which mode is in use, and why, is logged (``dbresilience.pool``, INFO; WARNING when detected).
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql

from dbresilience._errors import SessionStateUnsupported

__all__ = [
    "POOLER_CHOICES",
    "check_query",
    "rejected_startup_parameter",
    "session_state_use",
]

#: what ``pooler=`` accepts besides ``None``
POOLER_CHOICES = ("auto", "session", "transaction")

# Statements that need the server session to outlive the transaction, matched on the text as
# the server parses it (see _code_of: no comments, literals emptied, dollar quotes as statement
# boundaries). Each alternative is anchored to the start of a statement (or of a PL/pgSQL
# statement: after BEGIN, THEN, ELSE, LOOP) or to a call, and nothing in it can backtrack far.
_SESSION_STATE = re.compile(
    r"""
    (?:^|;|\b(?:begin|then|else|loop)\b)\s*(?P<listen>listen|unlisten)\b
    | (?P<advisory>\bpg_(?:try_)?advisory_(?:un)?lock(?:_shared|_all)?\s*\()
    | (?P<temp>\bcreate\s+(?:(?:global|local)\s+)?(?:temp|temporary)\s+(?:table|view|sequence)\b
      | \binto\s+(?:temp|temporary)\b
      | \bon\s+commit\s+preserve\s+rows\b)
    | (?:^|;|\b(?:begin|then|else|loop)\b)\s*
      (?P<set>set\s+(?!local\b|transaction\b|constraints\b)(?:session\s+)?\w)
    | (?P<settings>\bupdate\s+(?:only\s+)?(?:pg_catalog\s*\.\s*)?pg_settings\b)
    | (?:^|;)\s*(?P<prepare>prepare\s+\w)
    | (?P<hold>\bwith\s+hold\b)
    """,
    re.IGNORECASE | re.VERBOSE,
)
_WHAT = {
    "listen": "LISTEN/UNLISTEN (notifications need a session of their own)",
    "advisory": "a session-level advisory lock (use pg_advisory_xact_lock in a transaction)",
    "temp": "a temporary table (it lives in one server session)",
    "set": "a session-wide SET (use SET LOCAL inside transaction())",
    "settings": "a session-wide SET (use SET LOCAL inside transaction())",
    "set_config": "set_config(..., false), a session-wide SET (pass true inside transaction())",
    "prepare": "PREPARE (a named statement lives in one server session)",
    "hold": "a WITH HOLD cursor (it outlives its transaction)",
}
# Comments, literals, quoted names and dollar quotes: what the server does not parse as SQL
# words. E'...' takes backslash escapes; a dollar-quoted body (DO, a function) is code.
_TOKEN = re.compile(
    r"""--[^\n]*|/\*|(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'?|'(?:[^']|'')*'?|"(?:[^"]|"")*"?"""
    r"""|(?<![\w$])\$(?:[A-Za-z_]\w*)?\$""",
    re.DOTALL,
)
_COMMENT = re.compile(r"/\*|\*/")
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.IGNORECASE)
_CHECKED: dict[str | bytes, str | None] = {}  # query text (or bytes) -> what it needs
_MISS = object()
_MAX_CHECKED = 4096


def _skip_comment(text: str, pos: int) -> int:
    """The end of the (nested) block comment whose ``/*`` ends at *pos*."""
    depth = 1
    while depth:
        m = _COMMENT.search(text, pos)
        if m is None:
            return len(text)
        depth += 1 if m.group() == "/*" else -1
        pos = m.end()
    return pos


def _code_of(text: str) -> str:
    """*text* with comments as a space, string literals as ``''``, quoted names as plain words
    and dollar-quote delimiters as ``;``, so keywords are matched where the server reads them."""
    if not any(c in text for c in "-/'\"$"):
        return text
    out: list[str] = []
    pos = 0
    while (m := _TOKEN.search(text, pos)) is not None:
        out.append(text[pos : m.start()])
        tok = m.group()
        pos = m.end()
        if tok.startswith("--"):
            out.append(" ")
        elif tok == "/*":
            pos = _skip_comment(text, pos)
            out.append(" ")
        elif tok.startswith('"'):
            out.append(re.sub(r"\W", "_", tok.strip('"')))
        elif tok.startswith("$"):
            out.append(";")
        else:
            out.append(" '' ")
    out.append(text[pos:])
    return "".join(out)


def _session_set_config(code: str) -> bool:
    """True when *code* calls ``set_config`` with a third argument other than ``true``."""
    for m in _SET_CONFIG.finditer(code):
        depth, args, start = 0, [], m.end()
        for i in range(m.end(), len(code)):
            c = code[i]
            if c == "(":
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            elif c in ",)" and not depth:
                args.append(code[start:i].strip().lower())
                start = i + 1
                if c == ")":
                    break
        if len(args) != 3 or args[2] != "true":
            return True
    return False


_ON_COMMIT_DROP = re.compile(r"\bon\s+commit\s+drop\b", re.IGNORECASE)


def _dropped_at_commit(code: str, match: re.Match[str]) -> bool:
    """True for ``CREATE TEMP TABLE … ON COMMIT DROP``: it ends with its transaction."""
    if match.lastgroup != "temp" or not match.group().lower().startswith("create"):
        return False
    end = code.find(";", match.end())
    return _ON_COMMIT_DROP.search(code, match.end(), end if end >= 0 else len(code)) is not None


def session_state_use(text: str) -> str | None:
    """What session state the SQL *text* relies on (a sentence naming it), or ``None``.

    LISTEN, session advisory locks, temporary tables, session-wide ``SET`` (also
    ``set_config(..., false)`` and ``UPDATE pg_settings``), ``PREPARE`` and ``WITH HOLD``
    cursors (a temporary table ``ON COMMIT DROP`` is not: it ends with its transaction): in
    transaction mode each would land on whichever server connection the pooler
    picked, and stay there for another client (or be gone at the next statement). Comments are
    skipped and literals ignored; a function that sets session state inside, or PL/pgSQL's
    ``EXECUTE`` of a string, is not seen. Results are remembered for the 4096 texts seen first.
    """
    found = _CHECKED.get(text, False)
    if found is not False:
        return found  # type: ignore[return-value]  # str | None once remembered
    code = _code_of(text)
    match = next(
        (m for m in _SESSION_STATE.finditer(code) if not _dropped_at_commit(code, m)), None
    )
    if match:
        what: str | None = _WHAT[match.lastgroup or "set"]
    elif "set_config" in code.lower() and _session_set_config(code):
        what = _WHAT["set_config"]
    else:
        what = None
    if len(_CHECKED) < _MAX_CHECKED:
        _CHECKED[text] = what
    return what


def _text_of(query: Any, context: Any) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes | bytearray | memoryview):
        return bytes(query).decode("utf-8", "replace")
    if isinstance(query, sql.Composable):
        return query.as_string(context)
    return str(query)


def check_query(query: Any, context: Any, prepare: bool | None) -> None:
    """Raise :class:`~dbresilience.SessionStateUnsupported` when *query* (or ``prepare=True``)
    needs a server session of its own, which a transaction pooler does not give.

    On every statement in transaction mode, so a query seen before costs one dict lookup."""
    if prepare:
        raise SessionStateUnsupported(
            "prepare=True asks for a server-side prepared statement, which a pooler in "
            "transaction mode cannot keep (pooler='transaction')"
        )
    if type(query) is str or type(query) is bytes:
        what = _CHECKED.get(query, _MISS)
        if what is None:
            return
        if what is _MISS:
            what = session_state_use(_text_of(query, context))
            if len(_CHECKED) < _MAX_CHECKED:
                _CHECKED[query] = what
    else:
        what = session_state_use(_text_of(query, context))
    if what is not None:
        raise SessionStateUnsupported(
            f"refused: {what}; a pooler in transaction mode (pooler='transaction') shares "
            "server sessions between clients. Use a direct connection or a session-mode pooler "
            "for it (pooler='session')"
        )


def rejected_startup_parameter(exc: BaseException) -> bool:
    """True when *exc* says the server refused a startup parameter (PgBouncer: ``unsupported
    startup parameter: options``): a pooler answered, not PostgreSQL."""
    try:
        text = str(exc)[:4096].lower()
    except Exception:  # foreign __str__
        return False
    return "unsupported startup parameter" in text
