"""When will the model thread be free? The adaptive wait of the batch queues comes from this estimate.

``@serve.batch`` forms the next batch as soon as a first request arrives, even while the previous batch
still computes; with ``batch_wait_timeout_s=0`` that gave batches of 1–3 under load (16 concurrent
clients), and with a fixed timeout every lone request waits the whole timeout. Waiting until the model
is expected to be free (all batches already formed included) gives both: no wait when idle, and under
load each batch takes every request that arrived while the model was busy.
"""

from __future__ import annotations

import time


class ModelClock:
    """Expected end of the work submitted to the (single) model thread, from each kind's mean duration."""

    def __init__(self, *, smoothing: float = 0.3):
        self.smoothing = smoothing
        self.mean_s: dict[str, float] = {}
        self.expected_end = 0.0
        self.pending = 0

    def submitted(self, kind: str) -> None:
        now = time.perf_counter()
        self.pending += 1
        self.expected_end = max(now, self.expected_end) + self.mean_s.get(kind, 0.0)

    def finished(self, kind: str, seconds: float) -> None:
        """One submitted call ended after ``seconds`` of computing (0: it failed; the mean is kept)."""
        self.pending -= 1
        previous = self.mean_s.get(kind)
        if seconds > 0:
            self.mean_s[kind] = seconds if previous is None else previous + self.smoothing * (seconds - previous)
        if self.pending == 0:
            self.expected_end = time.perf_counter()

    def wait_s(self, cap_s: float) -> float:
        """How long a newly arrived request should wait for companions: until the model is free, ≤ cap."""
        return min(cap_s, max(0.0, self.expected_end - time.perf_counter()))
