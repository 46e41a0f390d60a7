"""Where a request's time goes inside the replica, sent back as a ``Server-Timing`` header.

    Server-Timing: admit;dur=0.01, read;dur=1.52, parse;dur=0.62, decode;dur=1.90, queue;dur=0.35,
                   model;dur=17.80, encode;dur=0.21, replica;dur=22.41

Parts, in order (milliseconds): ``admit`` waiting for a request slot (``serve.admission``), ``read`` receiving
the body (the replica pulls it from Serve's proxy), ``parse`` the form or JSON, the fields and the image
headers, ``decode`` the task's preprocess on the decode threads,
``queue`` waiting in the route's batch queue until the model thread starts the batch, ``model`` the batch's
computation (shared by the batch's requests), ``encode`` from the batch's end to the rendered JSON;
``replica`` is their sum. A client's total minus ``replica`` is what Serve's proxy and the network cost
(``benchmarks/serve_latency.py`` reports both).
"""

from __future__ import annotations

import time

HEADER = "Server-Timing"


class RequestTiming:
    """Consecutive parts of one request, each from the previous mark to the next."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.parts: dict[str, float] = {}

    def mark(self, part: str, at: float | None = None) -> None:
        """Close ``part`` now (or at ``at``, a ``time.perf_counter()`` reading taken on another thread)."""
        now = time.perf_counter() if at is None else at
        self.parts[part] = self.parts.get(part, 0.0) + max(0.0, now - self.last)
        self.last = max(self.last, now)

    def header(self) -> str:
        parts = {**self.parts, "replica": self.last - self.start}
        return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in parts.items())


def parse_header(value: str) -> dict[str, float]:
    """A ``Server-Timing`` value → {part: milliseconds} (parts without a duration are left out)."""
    parts = {}
    for item in value.split(","):
        name, _, duration = item.strip().partition(";dur=")
        if name and duration:
            parts[name] = float(duration)
    return parts
