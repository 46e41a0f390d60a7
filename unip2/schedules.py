"""Piecewise-constant schedules of a run's task balance (ω_k, s_k).

A value is a number (the same at every step) or ``{step: value}`` pieces: each value holds from its step until
the next piece's; the first piece starts at step 0. Keys may be strings of digits (JSON keys are strings).

    value_at({0: 1.0, 500: 2.0}, 499)   # → 1.0
    value_at({0: 1.0, 500: 2.0}, 500)   # → 2.0
    pieces(3.0)                         # → [(0, 3.0)]
"""

from __future__ import annotations

import bisect
from typing import Union

Schedule = Union[float, dict[int, float]]
"""A number, or {first step: value} pieces."""


def pieces(schedule: Schedule) -> list[tuple[int, float]]:
    """The schedule as sorted (first step, value) pieces."""
    if isinstance(schedule, dict):
        return sorted((int(step), float(value)) for step, value in schedule.items())
    return [(0, float(schedule))]


def value_at(schedule: Schedule, step: int) -> float:
    """The value in force at ``step``."""
    parts = pieces(schedule)
    starts = [start for start, _ in parts]
    return parts[max(bisect.bisect_right(starts, step) - 1, 0)][1]


def change_steps(schedules: list[Schedule]) -> list[int]:
    """Every step at which one of ``schedules`` starts a piece (0 included), sorted."""
    return sorted({start for schedule in schedules for start, _ in pieces(schedule)} | {0})


def problem(schedule: Schedule) -> str | None:
    """Why ``schedule`` is not a valid positive schedule, or None."""
    parts = pieces(schedule)
    if not parts:
        return "a schedule needs at least one piece"
    if parts[0][0] != 0:
        return f"the first piece must start at step 0, not {parts[0][0]}"
    if any(start < 0 for start, _ in parts):
        return "steps must be >= 0"
    if any(not value > 0 for _, value in parts):
        return "must be > 0 at every step"
    return None


def with_piece(schedule: Schedule, step: int, value: float) -> Schedule:
    """``schedule`` up to ``step``, then ``value`` from ``step`` on (later pieces dropped); a number when nothing
    changes. What an exploited population member trains on: its donor's past, its own values from now."""
    kept = [(start, old) for start, old in pieces(schedule) if start < step]
    if kept and kept[-1][1] == value:
        merged = kept
    else:
        merged = kept + [(step, float(value))]
    return merged[0][1] if len(merged) == 1 else {start: old for start, old in merged}
