"""Keeping passwords out of what people read: reprs, messages, log lines, command output.

One place decides what a secret looks like, so every repr and the command line hide the same
things the same way:

- :func:`redact_url` for a URL we hold (Redis, PostgreSQL): the password of ``user:password@``
  (the whole user part when it has no user name, as in ``redis://:pw@host``) and every query
  parameter whose name looks secret (``password``, ``sslpassword``, ``token`` …) become ``***``;
- :func:`redact_params` for connection parameters (a pool's ``kwargs=``);
- :func:`redact_text` for text we did not write (a driver's error message): ``key=value`` pairs
  with a secret-looking key, URL credentials, and every secret we know literally.
- :func:`secrets_of` finds the passwords in a DSN, well-formed or not, for ``redact_text``.

Pure and bounded: no I/O, and every pattern has a bounded quantifier, so a hostile string
costs time linear in its length.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from dbresilience._errors import require

__all__ = [
    "MASK",
    "check_redis_url",
    "looks_secret",
    "redact_error",
    "redact_params",
    "redact_text",
    "redact_url",
    "secrets_of",
]

MASK = "***"

# Parts of a parameter name that say its value is a credential.
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "credential", "apikey", "api_key")

# A user name we may show: nothing that could be the start of a password or of a path.
_SAFE_USER = re.compile(r"[A-Za-z0-9._~%+-]{1,128}")
# key=value (also key = 'quoted value'): the key starts where no key character precedes it, so
# tries at different positions never re-read the same key; the value is bounded.
_PAIR = re.compile(
    r"(?<![\w.-])([\w.-]{1,64})(\s{0,8}=\s{0,8})"
    r"('(?:[^'\\]|\\.){0,512}'|\"[^\"]{0,512}\"|[^\s&;,'\"]{1,512})"
)
# scheme://userinfo@ in free text
_URL_USERINFO = re.compile(r"(?<![\w+.-])([A-Za-z][\w+.-]{0,31}://)([^\s/@]{1,512})@")


def looks_secret(name: str) -> bool:
    """True when a parameter called *name* (``password``, ``sslpassword``, ``pass%77ord`` …)
    holds a credential."""
    key = urllib.parse.unquote_plus(name).lower()
    return any(word in key for word in _SECRET_WORDS)


def _redact_query(query: str) -> str:
    parts = []
    for part in re.split(r"([&;])", query):
        key, sep, _ = part.partition("=")
        parts.append(f"{key}={MASK}" if sep and looks_secret(key) else part)
    return "".join(parts)


def redact_url(url: str) -> str:
    """*url* with its credentials replaced by ``***``; scheme, user name, host, port, path and
    harmless parameters kept. Anything between ``://`` and the last ``@`` is taken for
    credentials, so a password holding ``/``, ``?`` or ``#`` is hidden too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    head = f"{scheme}://" if sep else ""
    userinfo, at, tail = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon and _SAFE_USER.fullmatch(user):
            head += f"{user}:{MASK}@"
        else:
            head += f"{MASK}@"
    else:
        tail = rest
    path, qmark, query = tail.partition("?")
    if qmark:
        return f"{head}{path}?{_redact_query(query)}"
    return head + path


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """*params* with the value of every secret-looking key replaced by ``***``."""
    return {key: MASK if looks_secret(str(key)) else value for key, value in params.items()}


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """*text* with every *secrets* value (as is and percent-encoded), every ``key=value`` pair
    whose key looks secret and every URL's credentials replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
            text = text.replace(form, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _PAIR.sub(
        lambda m: f"{m.group(1)}{m.group(2)}{MASK}" if looks_secret(m.group(1)) else m.group(0),
        text,
    )


def redact_error(exc: BaseException, secrets: Iterable[str] = (), default: str = "") -> str:
    """The first line of ``str(exc)`` (*default* when it is empty) through :func:`redact_text`:
    what a command-line tool may print of an error (later lines may quote a statement)."""
    lines = str(exc).splitlines()
    return redact_text(lines[0] if lines else default, secrets)


def secrets_of(dsn: str) -> list[str]:
    """The passwords *dsn* holds, whether or not it parses: the values of secret-looking
    parameters, a URL's ``user:password@`` part and ``?password=`` values, percent-decoded
    and as written."""
    found: list[str] = []
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # malformed: read it by hand below
        params = {}
    found += [str(v) for k, v in params.items() if looks_secret(k) and v]
    _, sep, rest = dsn.partition("://")
    if sep:
        userinfo, at, tail = rest.rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
        for part in re.split(r"[&;?]", tail if at else rest):
            key, eq, value = part.partition("=")
            if eq and looks_secret(key):
                found.append(value)
    for match in _PAIR.finditer(dsn):
        if looks_secret(match.group(1)):
            found.append(match.group(3).strip("'\""))
    decoded = [urllib.parse.unquote(s) for s in found]
    return [s for s in dict.fromkeys(found + decoded) if s]


def check_redis_url(name: str, url: str, owner: str) -> str:
    """*url* if redis-py can parse it, else ``ValueError`` naming *name* and never quoting the
    URL: redis-py's own message may hold part of the password (``Port could not be cast to
    integer value as '…'`` for a password with ``#`` in it). Without redis-py,
    :class:`MissingExtra` naming ``owner(name=...)`` and the extra to install."""
    require("redis", extra="redis", what=f"{owner}({name}=...)")
    from redis.connection import parse_url

    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # redis-py ships it untyped
        valid = True
    except (ValueError, TypeError):
        valid = False
    if not valid:  # raised outside the except block: nothing of redis-py's message is chained
        raise ValueError(
            f"{name} is not a Redis URL redis-py can use ({redact_url(url)}); "
            "percent-encode special characters in the password"
        )
    return url
