"""Schedules of ω_k and s_k: pieces in force at a step, the run config's `{step: value}` form, and a training plan
whose past does not depend on its future (what a resumed run and Population Based Training's exploit rely on)."""

import numpy as np
import pytest

from unip2 import config_io
from unip2.config_io import ConfigError
from unip2.run_config import load_run_config
from unip2.sampling import TrainingPlan
from unip2.schedules import change_steps, problem, value_at, with_piece


def test_a_value_holds_from_its_step_until_the_next_piece():
    schedule = {0: 1.0, 500: 2.0, 900: 0.5}
    assert [value_at(schedule, s) for s in (0, 499, 500, 899, 900, 10_000)] == [1.0, 1.0, 2.0, 2.0, 0.5, 0.5]
    assert value_at(3.0, 123) == 3.0
    assert value_at({"0": 1.0, "10": 4.0}, 10) == 4.0  # JSON's string keys
    assert change_steps([2.0, {0: 1.0, 300: 2.0}, {0: 1.0, 100: 3.0}]) == [0, 100, 300]


def test_bad_schedules_are_named():
    assert problem({10: 1.0}) == "the first piece must start at step 0, not 10"
    assert problem({0: 1.0, 5: 0.0}) == "must be > 0 at every step"
    assert problem(0.0) == "must be > 0 at every step"
    assert problem({0: 1.0, 5: 2.0}) is None


def test_a_new_piece_keeps_the_past_and_drops_the_future():
    assert with_piece({0: 1.0, 200: 2.0, 400: 3.0}, 300, 5.0) == {0: 1.0, 200: 2.0, 300: 5.0}
    assert with_piece(1.0, 300, 1.0) == 1.0  # nothing changes: stays a number
    assert with_piece(1.0, 0, 2.0) == 2.0
    assert with_piece(1.0, 300, 2.0) == {0: 1.0, 300: 2.0}


def test_the_run_config_takes_numbers_or_pieces_and_round_trips(tmp_path):
    run = load_run_config(None, ["tasks.detection.omega={0: 1.0, 4: 3}", "tasks.captioning.sampling_weight={0: 2, 6: 1}"])
    assert run.tasks["detection"].omega == {0: 1.0, 4: 3.0}
    assert run.omegas(3)["detection"] == 1.0 and run.omegas(4)["detection"] == 3.0
    assert run.balance_changes() == [0, 4, 6]
    others = len(run.tasks) - 1  # every other task keeps its default weight 1
    assert run.sampling_ratios(5)["captioning"] == pytest.approx(2 / (2 + others))
    assert run.sampling_ratios(6)["captioning"] == pytest.approx(1 / (1 + others))
    config_io.save(run, tmp_path / "run.yaml")  # keys become strings in the file; they load as steps again
    again = load_run_config(tmp_path / "run.yaml")
    assert again.tasks["detection"].omega == {0: 1.0, 4: 3.0}
    assert again.ratio_pieces() == run.ratio_pieces()


@pytest.mark.parametrize("override, field", [
    ("tasks.detection.omega={3: 1.0}", "tasks.detection.omega"),
    ("tasks.retrieval.sampling_weight={0: 1.0, 5: -1}", "tasks.retrieval.sampling_weight"),
    ("tasks.retrieval.sampling_weight={0: 1.0, late: 2}", "tasks.retrieval.sampling_weight"),
])
def test_bad_schedules_in_a_run_config_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    assert err.value.field == field


def plan(ratios, steps=2000, workers=2, anchor=None):
    return TrainingPlan(tasks=["a", "b", "c"], ratios=ratios, batch_sizes={"a": 4, "b": 3, "c": 5},
                        num_rows={"a": 40, "b": 33, "c": 17}, num_workers=workers, total_steps=steps, seed=5,
                        anchor=anchor)


def test_one_piece_draws_what_a_constant_plan_drew():
    constant = plan([0.5, 0.3, 0.2])
    expected = np.random.default_rng([5, 7919, 0]).choice(3, size=2000, p=[0.5, 0.3, 0.2])
    assert [constant.task_at(s) for s in range(2000)] == [["a", "b", "c"][i] for i in expected]
    pieces = plan([(0, [0.5, 0.3, 0.2])])
    assert all(pieces.rows_at(s, r)[1].tolist() == constant.rows_at(s, r)[1].tolist()
               for s in range(300) for r in range(2))


def test_a_change_at_step_t_leaves_every_earlier_step_as_it_was_and_follows_the_new_ratios_after():
    old = plan([0.5, 0.3, 0.2])
    changed = plan([(0, [0.5, 0.3, 0.2]), (1000, [0.1, 0.1, 0.8])])
    for step in range(1000):  # the same tasks and rows before the change: a copied checkpoint's past
        for rank in range(2):
            task, rows = old.rows_at(step, rank)
            assert changed.rows_at(step, rank)[0] == task and changed.rows_at(step, rank)[1].tolist() == rows.tolist()
    after = changed.task_counts(0, 2000)
    before = changed.task_counts(0, 1000)
    share_c = (after["c"] - before["c"]) / 1000
    assert share_c == pytest.approx(0.8, abs=0.05)
    # Each task's stream continues where its draws left it: no row is skipped or repeated at the change.
    anchored = plan([(0, [0.5, 0.3, 0.2]), (1000, [0.1, 0.1, 0.8])], anchor=changed.anchor_at(1000))
    assert all(anchored.rows_at(s, r)[1].tolist() == changed.rows_at(s, r)[1].tolist()
               for s in range(1000, 1100) for r in range(2))
