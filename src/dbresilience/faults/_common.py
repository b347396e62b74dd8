"""What the throwaway servers and the fault proxy share: :func:`free_port`, a wait loop
and the context-manager methods (``with X(...) as x:`` starts it, leaving closes it)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

_F = TypeVar("_F", bound="_Fixture")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(ready: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Call *ready* every *interval* seconds until it returns True (then True) or *timeout*
    seconds have passed (then False). What *ready* raises propagates."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(interval)
    return False


class _Fixture:
    """``__enter__`` calls ``start()`` and returns what it returns; ``__exit__`` calls
    ``close()``."""

    def start(self: _F) -> _F:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _F) -> _F:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
