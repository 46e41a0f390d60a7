"""Two JSON answers compared with a tolerance on their numbers."""

from __future__ import annotations


def close(a, b, tolerance: float = 1e-4) -> bool:
    """Equal JSON, numbers to ``tolerance`` (a replica and the test's process may sum in another order)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tolerance * max(1.0, abs(a))
    return a == b
