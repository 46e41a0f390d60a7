"""The training plan: unmixed/mixed task draws, frequencies, disjoint and complete row coverage."""

import numpy as np
import pytest

from unip2.sampling import TrainingPlan


def make_plan(mode="unmixed", workers=2, steps=3000, window=7):
    return TrainingPlan(tasks=["a", "b", "c"], ratios=[0.5, 0.3, 0.2], batch_sizes={"a": 4, "b": 3, "c": 5},
                        num_rows={"a": 40, "b": 33, "c": 17}, num_workers=workers, total_steps=steps, seed=3,
                        mode=mode, window=window)


def test_unmixed_every_rank_trains_the_same_task_and_frequencies_match():
    plan = make_plan()
    for step in range(200):
        assert plan.task_at(step, 0) == plan.task_at(step, 1)
    counts = plan.task_counts()
    freqs = np.array([counts[t] for t in ("a", "b", "c")]) / 3000
    assert np.allclose(freqs, [0.5, 0.3, 0.2], atol=0.03)


def test_mixed_ranks_draw_independently():
    plan = make_plan("mixed")
    differ = sum(plan.task_at(s, 0) != plan.task_at(s, 1) for s in range(300))
    assert differ > 100


@pytest.mark.parametrize("mode", ["unmixed", "mixed"])
def test_every_epoch_reads_every_row_exactly_once_across_ranks(mode):
    plan = make_plan(mode)
    stream = {t: {} for t in "abc"}  # task -> {stream position: row}
    draws = {(t, r): 0 for t in "abc" for r in range(2)}
    for step in range(900):
        for rank in range(2):
            task, rows = plan.rows_at(step, rank)
            batch = plan.batch_sizes[task]
            for j, row in enumerate(rows):
                position = (draws[task, rank] * batch + j) * 2 + rank
                assert position not in stream[task]  # no two reads of one stream position
                stream[task][position] = int(row)
            draws[task, rank] += 1
    for task, by_position in stream.items():
        n = plan.num_rows[task]
        for epoch in range(2):
            rows = [by_position[p] for p in range(epoch * n, (epoch + 1) * n)]
            assert sorted(rows) == list(range(n)), (task, epoch)
        assert [by_position[p] for p in range(n)] != [by_position[p] for p in range(n, 2 * n)]


def test_plan_is_a_pure_function_of_seed_and_step():
    one, two = make_plan(), make_plan()
    for step in (0, 17, 999, 2999):
        for rank in range(2):
            t1, r1 = one.rows_at(step, rank)
            t2, r2 = two.rows_at(step, rank)
            assert t1 == t2 and np.array_equal(r1, r2)


def test_a_task_without_rows_is_refused():
    with pytest.raises(ValueError, match="tasks.b"):
        TrainingPlan(tasks=["a", "b"], ratios=[0.5, 0.5], batch_sizes={"a": 1, "b": 1}, num_rows={"a": 3, "b": 0},
                     num_workers=1, total_steps=10, seed=0)


def make_anchored(workers, anchor):
    return TrainingPlan(tasks=["a", "b", "c"], ratios=[0.5, 0.3, 0.2], batch_sizes={"a": 4, "b": 3, "c": 5},
                        num_rows={"a": 40, "b": 33, "c": 17}, num_workers=workers, total_steps=3000, seed=3,
                        window=7, anchor=anchor)


def stream_rows(plan, steps, workers):
    """{task: [row, ...]} in stream order: at each step the ranks' batches interleave rank-fastest."""
    out = {t: [] for t in "abc"}
    for step in steps:
        batches = [plan.rows_at(step, rank) for rank in range(workers)]
        task = batches[0][0]
        for j in range(plan.batch_sizes[task]):
            out[task].extend(int(rows[j]) for _, rows in batches)
    return out


def test_an_anchored_plan_with_the_same_workers_reads_the_same_rows():
    plan = make_plan(workers=2)
    anchored = make_anchored(2, plan.anchor_at(411))
    for step in (411, 500, 2999):
        for rank in range(2):
            assert np.array_equal(plan.rows_at(step, rank)[1], anchored.rows_at(step, rank)[1])


@pytest.mark.parametrize("before,after", [(2, 1), (2, 3), (1, 4)])
def test_a_resize_neither_repeats_nor_skips_a_stream_position(before, after):
    """Rows before a resize at step 300 with ``before`` workers, then after it with ``after``: together
    every task's stream is read in order: position g is row permutation(g // n)[g % n], as in any run."""
    plan = make_plan(workers=before)
    resized = make_anchored(after, plan.anchor_at(300))
    assert resized.anchor_at(300)["positions"] == plan.anchor_at(300)["positions"]
    first, second = stream_rows(plan, range(300), before), stream_rows(resized, range(300, 900), after)
    for task in "abc":
        n = plan.num_rows[task]
        joined = first[task] + second[task]
        epochs = len(joined) // n + 1
        stream = np.concatenate([plan.permutation(task, epoch) for epoch in range(epochs)])
        assert joined == stream[:len(joined)].tolist(), task
        assert len(joined) > 2 * n  # the resize happened mid-stream, after whole epochs


def test_mixed_runs_cannot_be_anchored():
    with pytest.raises(ValueError, match="train.sampling"):
        make_plan("mixed").anchor_at(10)
