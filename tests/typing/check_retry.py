"""Checked by mypy (not run): with_retry keeps signatures for type checkers."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from typing_extensions import assert_type

import dbresilience as dbr


@dbr.with_retry
def bare(user_id: int, *, name: str = "") -> str:
    return name * user_id


@dbr.with_retry(attempts=5, deadline=2.0)
def configured(user_id: int) -> float:
    return float(user_id)


@dbr.withRetry(idempotent=True)
async def deduct(user_id: int) -> bool:
    return user_id > 0


class Repo:
    @dbr.with_retry
    def get(self, key: str) -> bytes:
        return key.encode()


assert_type(bare(1, name="x"), str)
assert_type(configured(2), float)


async def use_deduct() -> None:
    assert_type(await deduct(3), bool)
    coro: Coroutine[Any, Any, bool] = deduct(4)
    await coro


assert_type(Repo().get("k"), bytes)
policy: dbr.RetryPolicy = dbr.with_retry(attempts=2)
assert_type(policy(configured)(3), float)

bare("wrong")  # type: ignore[arg-type]
configured(1, 2)  # type: ignore[call-arg]
