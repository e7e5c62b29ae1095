"""A bound on an expensive endpoint: a few at a time, a short queue, 429 beyond it.

Lineage lookups read records and Metaflow's metadata in worker threads that share the GIL with the
event loop: unbounded, a flood of them slows every inference. Throttled, a flood costs its senders
429s and the loop a bounded share.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tritonflow.serving.errors import TooManyRequests


class Throttle:
    def __init__(self, what: str, concurrency: int, queue: int) -> None:
        self.what = what
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Run the body in a slot; raises TooManyRequests when every slot and the queue are taken."""
        if self._slots.locked() and self._waiting >= self._queue:
            raise TooManyRequests(self.what, retry_after=1)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
