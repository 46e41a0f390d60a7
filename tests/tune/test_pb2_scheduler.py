"""``tune/pbt.py --scheduler pb2``: the scheduler ``make_scheduler`` builds drives Ray Tune's PB2 over the run's
whole search space (ω_k, s_k of every task, lr) on the test run's local Ray. Members here are toy functions with
checkpoints (the member trainable itself is the one PBT runs, tested in test_pbt_quick.py): the worst member copies
a better one's checkpoint, its new values come from PB2's bandit inside the search space's bounds, and nobody is
copied at the last step."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import ray.cloudpickle
import ray.tune
from ray.tune.schedulers import TrialScheduler

from tune.objective import OBJECTIVE
from tune.pbt_member import STEP
from tune.population import PbtSettings, PbtSpec, make_scheduler
from tune.search_space import SearchSpace, flat_params, param_space
from unip2.run_config import load_run_config

STEPS, INTERVAL, MEMBERS = 6, 2, 2
# Tune's advice to reuse actors: members are never reused on purpose (tune/population.py filters it the same way).
# Other libraries' advice and notices while PB2 fits its Gaussian process (Tune's reuse-actors hint, scikit-learn's
# kernel bounds on a handful of points, SciPy's deprecation of an option Ray's PB2 passes).
pytestmark = [pytest.mark.filterwarnings("ignore:Consider boosting PBT performance"),
              pytest.mark.filterwarnings("ignore:The optimal value found for dimension"),
              pytest.mark.filterwarnings("ignore:scipy.optimize. The .disp. and .iprint. options:DeprecationWarning")]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Tune's actors cannot import a test module


def toy_member(config: dict) -> None:
    """Objective: how close every value is to 1 (so members differ); the checkpoint carries the step and the
    ids of the members whose checkpoints this one went on from."""
    state = {"step": 0, "lineage": []}
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = json.loads((Path(directory) / "state.json").read_text())
    values = flat_params(config)
    objective = -sum((value - 1.0) ** 2 for value in values.values())
    trial = ray.tune.get_context().get_trial_id()
    while state["step"] < STEPS:
        state = {"step": state["step"] + INTERVAL, "lineage": [*state["lineage"], trial]}
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "state.json").write_text(json.dumps(state))
            ray.tune.report({STEP: state["step"], OBJECTIVE: objective, "lineage": ",".join(state["lineage"]),
                             **{f"value/{key}": value for key, value in values.items()}},
                            checkpoint=ray.tune.Checkpoint.from_directory(directory))


@pytest.fixture(scope="module")
def population(ray_local, tmp_path_factory):
    run = load_run_config(None, [f"train.steps={STEPS}", "scale.num_workers=1"])
    spec = PbtSpec(settings=PbtSettings(population=MEMBERS, scheduler="pb2", quantile_fraction=0.5, seed=0))
    scheduler = make_scheduler(spec, run, INTERVAL)
    grid = ray.tune.Tuner(
        ray.tune.with_resources(toy_member, {"CPU": 0.1}),
        param_space=param_space(spec.space, run),
        tune_config=ray.tune.TuneConfig(num_samples=MEMBERS, scheduler=scheduler, reuse_actors=False),
        run_config=ray.tune.RunConfig(storage_path=str(tmp_path_factory.mktemp("pb2")), verbose=0),
    ).fit()
    return run, spec, scheduler, grid


def test_the_worst_member_copies_a_better_one_and_pb2_picks_its_values_within_the_bounds(population):
    run, spec, _, grid = population
    assert not grid.errors and len(grid) == MEMBERS
    histories = [result.metrics_dataframe for result in grid]
    assert all(history[STEP].max() == STEPS for history in histories)
    copied = [result for result in grid if len(set(result.metrics["lineage"].split(","))) > 1]
    assert copied, "no member went on from another's checkpoint"
    bounds = _leaves(param_space(spec.space, run))
    for history in histories:
        for key, domain in bounds.items():
            assert history[f"value/{key}"].between(domain.lower * (1 - 1e-6), domain.upper * (1 + 1e-6)).all(), key


def test_nobody_is_copied_at_the_last_step(population):
    _, _, scheduler, _ = population
    assert scheduler.on_trial_result(None, None, {STEP: STEPS, OBJECTIVE: -100.0}) == TrialScheduler.CONTINUE


def test_pb2_searches_the_sweeps_space():
    """Every searched key gets PB2 bounds, nested like the config PB2 fills."""
    run = load_run_config(None, [])
    space = SearchSpace()
    scheduler = make_scheduler(PbtSpec(settings=PbtSettings(scheduler="pb2")), run, 25)
    searched = _leaves(param_space(space, run))
    assert _leaves(scheduler._hyperparam_bounds) == {key: [d.lower, d.upper] for key, d in searched.items()}


def _leaves(tree: dict, prefix: str = "") -> dict:
    """Nested dict → {"a.b.c": leaf}, the keys ``flat_params`` gives."""
    leaves = {}
    for key, value in tree.items():
        leaves |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return leaves
