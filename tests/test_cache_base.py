"""What both credential caches share and that does no I/O: key escaping, argument checks.

Hand-written (not generated): the behaviour tests are in tests/test_cache_async.py and, generated
from it, tests/test_cache.py.
"""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience._cache_base import CacheBase, escape_key, unescape_key

TWINS = [dbr.CredentialCache, dbr.AsyncCredentialCache]


@given(st.one_of(st.text(), st.integers()))
def test_key_escaping_is_injective_and_colon_free(key: str | int) -> None:
    """Escaped keys never contain ':' and decode back to the key (so no two keys collide)."""
    escaped = escape_key(key)
    assert ":" not in escaped
    assert unescape_key(escaped) == str(key)
    assert escaped == urllib.parse.quote(str(key), safe="")


@pytest.mark.parametrize("cls", TWINS)
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ttl": 0}, "ttl"),
        ({"maxsize": 0}, "maxsize"),
        ({"jitter": 0.9}, "jitter"),
        ({"namespace": ""}, "namespace"),
        ({"signing_key": b"short"}, "signing_key"),
        ({"stale_ttl": -1}, "stale_ttl"),
    ],
)
def test_bad_cache_arguments(cls: type[CacheBase], kwargs: dict[str, object], name: str) -> None:
    """Invalid configuration fails at construction, on either twin, naming the argument."""
    with pytest.raises(ValueError, match=name):
        cls(None, **kwargs)  # type: ignore[arg-type]


def test_a_read_in_flight_across_a_flush_is_not_kept() -> None:
    """The generation guard survives emptying its record: a value read before flush_memory(),
    or before the invalidation record overflowed and was emptied, is not kept."""
    cache = CacheBase(None, maxsize=1)
    since = cache._since()
    cache.flush_memory()
    cache._remember("7", 1, since)
    assert cache._lookup("7") is None
    since = cache._since()
    for key in "abcde":  # more than 4 * maxsize invalidations: the record is emptied
        cache._forget(key)
    cache._remember("7", 1, since)
    assert cache._lookup("7") is None
    cache._remember("7", 1, cache._since())
    assert cache._lookup("7") is not None


@pytest.mark.parametrize("signing_key", [None, b"k" * 32])
def test_values_that_are_not_json_are_a_type_error(signing_key: bytes | None) -> None:
    """Sets, objects, circular and too-deep values: TypeError naming the type (or the depth),
    signed or not."""
    cache = CacheBase(None, signing_key=signing_key)
    circular: list[object] = []
    circular.append(circular)
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    for value, named in (({1, 2}, "set"), (object(), "object"), (circular, "deep"), (deep, "deep")):
        with pytest.raises(TypeError, match=named):
            cache._encode("7", value)
