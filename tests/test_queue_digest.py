"""The parameter digest kept in the write ledger: its text must never change (a retry of a
write applied before an upgrade must still be a duplicate, not a reused key)."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbresilience._queue_base import digest_of


def _old_digest(params: Any) -> str:
    """digest_of as it was when the ledger's first rows were written."""
    text = json.dumps(params, default=str, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.just(float("inf"))
    | st.text()
    | st.binary(max_size=8)
    | st.decimals(allow_nan=False)
    | st.datetimes()
    | st.dates()
    | st.uuids()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(_VALUES, max_size=6).map(tuple) | st.dictionaries(st.text(), _VALUES))
def test_digest_text_unchanged(params: Any) -> None:
    assert digest_of(params) == _old_digest(params)


def test_digest_examples_pinned() -> None:
    # digests written into ledgers by earlier releases
    assert digest_of((1, "v")) == _old_digest((1, "v")) == "ab919b9c047e6945"
    assert digest_of([1, "v"]) == digest_of((1, "v"))  # a journal's replay reads a list back
    assert digest_of({"b": 1, "a": decimal.Decimal("1.50")}) == _old_digest(
        {"a": decimal.Decimal("1.50"), "b": 1}
    )
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert digest_of((when, uuid.UUID(int=7), None)) == _old_digest((when, uuid.UUID(int=7), None))


def test_digest_circular_raises_as_before() -> None:
    params: list[Any] = [1]
    params.append(params)
    with pytest.raises(ValueError, match="Circular reference"):
        _old_digest(params)
    with pytest.raises(ValueError, match="Circular reference"):
        digest_of(params)
