"""One lifecycle for every resource: unopened, open, closed, and open again.

``Pool``, ``WriteQueue``, ``CredentialCache``, ``RedisBreakerState`` and their asyncio twins
follow the same rules (httpx's ``ClientState`` is the model):

- the constructor validates and starts nothing: ``state`` is ``UNOPENED``;
- ``open()`` (``await open()``) starts the resource and returns it; on an open resource it does
  nothing and returns it too; ``with`` / ``async with`` opens and closes;
- ``close()`` (``await aclose()`` on the asyncio twins, which keep ``close`` as an alias) stops
  it; on a resource that is not open it does nothing;
- a closed resource may be opened again, and then behaves as a new one would (what it had
  in memory is gone; what it keeps elsewhere, a journal or Redis, is still there).
"""

from __future__ import annotations

import enum

__all__ = ["Lifecycle", "ResourceState"]


class ResourceState(enum.Enum):
    """Where a resource is in its lifecycle (``resource.state``)."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Lifecycle:
    """The ``state`` every resource reports; the twins move it in ``open`` and ``close``."""

    _state: ResourceState = ResourceState.UNOPENED
    _epoch: int = 0  # bumped by open and close: background workers of an earlier opening stop

    @property
    def state(self) -> ResourceState:
        """``UNOPENED`` until :meth:`open`, ``OPEN`` until closed, then ``CLOSED``."""
        return self._state

    @property
    def _is_open(self) -> bool:
        return self._state is ResourceState.OPEN

    def _running(self, epoch: int) -> bool:
        """Whether a background worker started by the opening numbered *epoch* should go on."""
        return self._epoch == epoch and self._state is ResourceState.OPEN
