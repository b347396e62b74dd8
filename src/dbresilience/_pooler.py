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

# Statements that need the server session to outlive the transaction. Each alternative is
# anchored to the start of a statement or to a call, and nothing in it can backtrack far.
_SESSION_STATE = re.compile(
    r"""
    (?:^|;)\s*(?P<listen>listen|unlisten)\b
    | (?P<advisory>\bpg_(?:try_)?advisory_(?:un)?lock(?:_shared|_all)?\s*\()
    | (?P<temp>\bcreate\s+(?:(?:global|local)\s+)?(?:temp|temporary)\s+(?:table|view|sequence)\b
      | \binto\s+(?:temp|temporary)\b
      | \bon\s+commit\s+preserve\s+rows\b)
    | (?:^|;)\s*(?P<set>set\s+(?!local\b|transaction\b|constraints\b)(?:session\s+)?\w)
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
    "prepare": "PREPARE (a named statement lives in one server session)",
    "hold": "a WITH HOLD cursor (it outlives its transaction)",
}
_CHECKED: dict[str | bytes, str | None] = {}  # query text (or bytes) -> what it needs
_MISS = object()
_MAX_CHECKED = 4096
_SCAN = 65536


def session_state_use(text: str) -> str | None:
    """What session state the SQL *text* relies on (a sentence naming it), or ``None``.

    LISTEN, session advisory locks, temporary tables, session-wide ``SET``, ``PREPARE`` and
    ``WITH HOLD`` cursors: in transaction mode each would land on whichever server connection
    the pooler picked, and stay there for another client (or be gone at the next statement).
    Only the first 64 KiB are read; results are remembered for the 4096 texts seen first.
    """
    found = _CHECKED.get(text, False)
    if found is not False:
        return found  # type: ignore[return-value]  # str | None once remembered
    match = _SESSION_STATE.search(text[:_SCAN])
    what = _WHAT[match.lastgroup or "set"] if match else None
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
