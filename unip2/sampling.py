"""The deterministic training plan: which task every worker trains at each step, and which rows it reads.

Everything is a pure function of (seed, step, rank), so a resumed run repeats no step, skips none, and
draws the same task sequence and the same rows as an uninterrupted run — with no sampler state to save.

* **unmixed** (the paper): one task k ~ Categorical(s) per step, the same on every rank.
* **mixed** (Uni-Perceiver v1, for the ablation): each rank draws its own task.

s may change at given steps (a piecewise-constant schedule, ``unip2.schedules``): step t's task is drawn from one
uniform number of its own (seed, rank, t) against the s in force at t, so the draws before a change do not depend
on what comes after it — a run that copies another's checkpoint at step t and goes on with other values from t
(Population Based Training's exploit) has the same past as the run it copied. With one piece the draws equal
``Generator.choice``'s.

Data order: task k's rows form one endless stream; rank r reads stream positions r, r+W, r+2W, ...
(so ranks never overlap, also in mixed mode). Position g lies in epoch g // N at offset g % N of that
epoch's permutation. A permutation shuffles whole windows of ``window`` consecutive rows and the rows
inside each window, so a reader touches only a few Parquet shards at a time.

Elastic runs (the worker count W changes at a restart): ``anchor_at(step)`` records, per task, the next
unread stream position and the draws so far; a plan built with that ``anchor`` and the new W continues
each task's stream exactly there, so a resize neither repeats nor skips a row. With W unchanged the
anchored plan reads exactly the rows of the unanchored one. Only unmixed runs can be resized (in mixed
mode the task draws themselves depend on W).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class TrainingPlan:
    """Task and row schedule of a run.

    tasks: task names in a fixed order; ratios: normalized s_k (same order), or a schedule of them as
    [(first step, ratios), ...] pieces (the first at step 0); batch_sizes: per-worker batch of each task;
    num_rows: rows in each task's training split.
    """

    def __init__(self, *, tasks: list[str], ratios: list[float] | list[tuple[int, list[float]]],
                 batch_sizes: dict[str, int],
                 num_rows: dict[str, int], num_workers: int, total_steps: int, seed: int,
                 mode: str = "unmixed", window: int = 4096, anchor: dict | None = None):
        if mode not in ("unmixed", "mixed"):
            raise ValueError(f"train.sampling must be 'unmixed' or 'mixed', got {mode!r}")
        ratio_pieces = list(ratios) if ratios and isinstance(ratios[0], tuple) else [(0, list(ratios))]
        if ratio_pieces[0][0] != 0:
            raise ValueError(f"the sampling schedule must start at step 0, got {ratio_pieces[0][0]}")
        for _, piece in ratio_pieces:
            if not np.isclose(sum(piece), 1.0):
                raise ValueError(f"sampling ratios must sum to 1, got {piece}")
        for task in tasks:
            if num_rows.get(task, 0) <= 0:
                raise ValueError(f"tasks.{task}: the task has no training data")
        self.tasks = list(tasks)
        self.ratio_pieces = [(int(start), np.asarray(piece, dtype=np.float64)) for start, piece in ratio_pieces]
        self.ratios = self.ratio_pieces[0][1]
        self.batch_sizes, self.num_rows = dict(batch_sizes), dict(num_rows)
        self.num_workers, self.total_steps, self.seed = num_workers, total_steps, seed
        self.mode, self.window = mode, window
        if anchor is not None and mode != "unmixed":
            raise ValueError("train.sampling: only unmixed runs can change their worker count")
        # Per task: stream position and draw count at the anchor step (all zero = the run's start).
        self._anchor_positions = {t: int((anchor or {}).get("positions", {}).get(t, 0)) for t in tasks}
        self._anchor_draws = {t: int((anchor or {}).get("draws", {}).get(t, 0)) for t in tasks}
        ranks = 1 if mode == "unmixed" else num_workers
        # task_index[r, t]: the task rank r trains at step t (row 0 serves every rank when unmixed).
        uniform = np.stack([np.random.default_rng([seed, 7919, r]).random(total_steps) for r in range(ranks)])
        self._task_index = np.empty((ranks, total_steps), dtype=np.int64)
        ends = [start for start, _ in self.ratio_pieces[1:]] + [total_steps]
        for (start, piece), end in zip(self.ratio_pieces, ends):
            cdf = np.cumsum(piece)
            cdf /= cdf[-1]
            self._task_index[:, start:end] = cdf.searchsorted(uniform[:, start:end], side="right")
        # draws_before[r, t]: how many earlier steps of rank r drew the same task as step t.
        self._draws_before = np.zeros_like(self._task_index)
        for r in range(ranks):
            for k in range(len(tasks)):
                hits = self._task_index[r] == k
                self._draws_before[r, hits] = np.arange(hits.sum())

    def _row(self, rank: int) -> int:
        return 0 if self.mode == "unmixed" else rank

    def task_at(self, step: int, rank: int = 0) -> str:
        return self.tasks[self._task_index[self._row(rank), step]]

    def rows_at(self, step: int, rank: int) -> tuple[str, np.ndarray]:
        """(task, row ids of that task's training split) that ``rank`` reads at ``step``."""
        row = self._row(rank)
        task = self.tasks[self._task_index[row, step]]
        batch = self.batch_sizes[task]
        first = (int(self._draws_before[row, step]) - self._anchor_draws[task]) * batch
        if first < 0:
            raise ValueError(f"step {step} lies before the plan's anchor")
        positions = (self._anchor_positions[task]
                     + np.arange(first, first + batch, dtype=np.int64) * self.num_workers + rank)
        n = self.num_rows[task]
        epochs, offsets = positions // n, positions % n
        rows = np.empty_like(positions)
        for epoch in np.unique(epochs):
            hit = epochs == epoch
            rows[hit] = self.permutation(task, int(epoch))[offsets[hit]]
        return task, rows

    def anchor_at(self, step: int) -> dict:
        """Per task, the next unread stream position and the draws made before ``step`` (unmixed only):
        what a plan with another worker count needs to continue every stream at ``step``."""
        if self.mode != "unmixed":
            raise ValueError("train.sampling: only unmixed runs can change their worker count")
        drawn = self.task_counts(0, step)
        return {"step": int(step), "num_workers": self.num_workers,
                "draws": drawn,
                "positions": {task: self._anchor_positions[task]
                              + (drawn[task] - self._anchor_draws[task]) * self.batch_sizes[task] * self.num_workers
                              for task in self.tasks}}

    def task_counts(self, rank: int = 0, steps: int | None = None) -> dict[str, int]:
        drawn = self._task_index[self._row(rank), :steps]
        return {task: int((drawn == k).sum()) for k, task in enumerate(self.tasks)}

    def permutation(self, task: str, epoch: int) -> np.ndarray:
        return _windowed_permutation(self.num_rows[task], self.window, self.seed, self.tasks.index(task), epoch)


@lru_cache(maxsize=32)
def _windowed_permutation(n: int, window: int, seed: int, task_index: int, epoch: int) -> np.ndarray:
    """A permutation of range(n): windows of ``window`` rows in shuffled order, rows shuffled inside."""
    rng = np.random.default_rng([seed, 104729, task_index, epoch])
    starts = np.arange(0, n, window)
    parts = [start + rng.permutation(min(window, n - start)) for start in rng.permutation(starts)]
    permutation = np.concatenate(parts)
    permutation.setflags(write=False)
    return permutation
