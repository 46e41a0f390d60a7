"""How many task requests a replica works on at once, and how many may wait for a turn; beyond that: 503.

The replica refuses the overflow itself, so the refusal is the app's JSON error with ``Retry-After``: Serve's
proxy would answer its own plain-text 503. A refused request costs no parsing or decoding. The deployment's
``max_ongoing_requests`` is set above ``ongoing + queued`` (``serve.app``), so the overflow reaches the replica.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from serve.errors import ApiError

RETRY_AFTER_S = "1"


class Admission:
    """At most ``ongoing`` requests past the door at once; at most ``queued`` waiting (-1: no limit)."""

    def __init__(self, *, ongoing: int, queued: int):
        self.ongoing, self.queued = ongoing, queued
        self.active = 0
        self.waiting = 0
        self.refused = 0
        self._slots = asyncio.Semaphore(ongoing)

    @asynccontextmanager
    async def slot(self):
        if self.active >= self.ongoing and 0 <= self.queued <= self.waiting:
            self.refused += 1
            raise ApiError(503, "server overloaded: too many queued requests", {"Retry-After": RETRY_AFTER_S})
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()

    def stats(self) -> dict:
        return {"ongoing": self.active, "waiting": self.waiting, "refused": self.refused,
                "max_ongoing": self.ongoing, "max_queued": self.queued}
