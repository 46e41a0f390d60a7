"""The sweep's pieces without Ray work: search space from the registry, bad input refused at start,
objective and Pareto arithmetic, trial resources sized so concurrent trials cannot starve Ray Data."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from tune import sweep
from tune.objective import check_metric, loss_progress, metric_key, relative_objective, sweep_metrics
from tune.results import COMPLETED, STOPPED, pareto_set
from tune.search_space import SearchSpace, flat_params, load_search_space, param_space, to_overrides
from tune.progress_report import TRAIN_REPORT
from tune.tuner import SweepSettings, make_scheduler, trial_concurrency
from unip2.config_io import ConfigError
from unip2.run_config import load_run_config
from unip2.tasks import TASKS

SAMPLE_SPACE = Path(__file__).resolve().parents[2] / "tune" / "configs" / "search_space.yaml"


def sample(space: dict) -> dict:
    """One point of a param space: each domain's own sampler."""
    return {k: sample(v) if isinstance(v, dict) else v.sample() for k, v in space.items()}


def test_search_space_comes_from_the_registry_and_becomes_run_overrides():
    run = load_run_config()
    space = param_space(load_search_space(SAMPLE_SPACE), run)
    assert list(space["tasks"]) == list(TASKS)
    assert all(set(entry) == {"omega", "sampling_weight"} for entry in space["tasks"].values())
    assert space["tasks"]["retrieval"]["omega"].categories == [0.5, 1.0, 2.0]
    point = sample(space)
    tuned = load_run_config(None, to_overrides(point))
    for name in TASKS:
        assert tuned.tasks[name].omega == pytest.approx(point["tasks"][name]["omega"])
        assert tuned.tasks[name].sampling_weight == pytest.approx(point["tasks"][name]["sampling_weight"])
    assert 5e-5 <= tuned.optim.lr <= 1e-3 and tuned.optim.lr == pytest.approx(point["optim"]["lr"])
    assert set(flat_params(point)) == {f"tasks.{t}.{k}" for t in TASKS for k in ("omega", "sampling_weight")} | {
        "optim.lr"}


def test_a_run_with_fewer_tasks_searches_only_those():
    run = load_run_config(None, ["tasks={classification: {}, retrieval: {}}"])
    space = param_space(SearchSpace(lr=None), run)
    assert list(space) == ["tasks"] and list(space["tasks"]) == ["classification", "retrieval"]
    retrieval_ranges = load_search_space(SAMPLE_SPACE).tasks["retrieval"]
    with pytest.raises(ConfigError, match="tasks.detection"):  # ranges for a task the run does not train
        param_space(SearchSpace(tasks={"detection": retrieval_ranges}), run)
    assert sweep_metrics(list(run.tasks)) == ["objective", "classification/top1", "retrieval/R@1"]


@pytest.mark.parametrize("text, field", [
    ("omega: {sample: loguniform, low: 2.0, high: 1.0}\n", "omega.high"),
    ("omega: {sample: gaussian, low: 1, high: 2}\n", "omega.sample"),
    ("lr: {sample: loguniform, low: 0, high: 1.0e-3}\n", "lr.low"),
    ("sampling_weight: {sample: choice, values: []}\n", "sampling_weight.values"),
    ("tasks: {depth: {omega: {sample: uniform, low: 1, high: 2}}}\n", "tasks.depth"),
    ("omgea: {sample: uniform, low: 1, high: 2}\n", "omgea"),
])
def test_an_invalid_search_space_file_is_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_search_space(path)


def test_the_command_line_refuses_bad_input_before_starting_anything(tmp_path, capsys):
    bad_space = tmp_path / "space.yaml"
    bad_space.write_text("omega: {sample: uniform, low: 3, high: 1}\n")
    assert sweep.main(["--smoke", "--out", str(tmp_path / "a"), "--space", str(bad_space)]) == 2
    assert "omega.high" in capsys.readouterr().err
    assert sweep.main(["--smoke", "--out", str(tmp_path / "b"), "--metric", "detection/AP99"]) == 2
    error = capsys.readouterr().err
    assert "detection/AP99" in error and metric_key("detection") in error
    assert sweep.main(["--out", str(tmp_path / "c"), "--space", str(tmp_path / "missing.yaml")]) == 2
    assert sweep.main(["--out", str(tmp_path / "d"), "tasks.detection.omega=-1"]) == 2
    assert "tasks.detection.omega" in capsys.readouterr().err
    assert sweep.main(["--out", str(tmp_path / "e"), "scale.num_workers=auto"]) == 2  # every trial: the whole cluster
    assert "scale.num_workers" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_metric_names_come_from_the_registry():
    tasks = list(TASKS)
    assert check_metric("objective", tasks) == "objective"
    for name, task in TASKS.items():
        assert check_metric(f"{name}/{task.metric}", tasks)
    with pytest.raises(ValueError, match="no task of this sweep reports it"):
        check_metric("classification/top7", tasks)


def test_objective_is_the_mean_ratio_to_the_baseline():
    baseline = {"a/x": 0.5, "b/y": 0.0}
    assert relative_objective(baseline, baseline, floor=0.05) == pytest.approx(1.0)
    assert relative_objective({"a/x": 0.95, "b/y": 0.05}, baseline, floor=0.05) == pytest.approx((1.0 / 0.55 + 2) / 2)
    assert relative_objective({"a/x": math.nan}, baseline, floor=0.05) == pytest.approx((0.05 / 0.55 + 1) / 2)
    assert loss_progress({"loss/a": 1.0, "loss/b": 4.0}, {"loss/a": 2.0, "loss/c": 1.0}) == pytest.approx(2.0)
    assert loss_progress({"loss/b": 4.0}, {"loss/a": 2.0}) is None


def test_pareto_set_keeps_the_non_dominated_completed_trials():
    rows = [{"trial": "p", "status": COMPLETED, "x": 1.0, "y": 0.0},
            {"trial": "q", "status": COMPLETED, "x": 0.0, "y": 1.0},
            {"trial": "r", "status": COMPLETED, "x": 0.5, "y": 0.5},
            {"trial": "s", "status": COMPLETED, "x": 0.4, "y": 0.4},
            {"trial": "t", "status": STOPPED, "x": 9.0, "y": 9.0}]
    assert pareto_set(rows, ["x", "y"]) == ["p", "q", "r"]


def test_trials_are_sized_to_leave_a_cpu_for_ray_data():
    smoke = load_run_config(None, sweep.SMOKE_RUN)
    settings = SweepSettings(samples=2)
    assert trial_concurrency(smoke, settings, {"CPU": 2.0}) == 2
    assert trial_concurrency(smoke, SweepSettings(samples=8), {"CPU": 4.0}) == 6
    assert trial_concurrency(smoke, SweepSettings(samples=1), {"CPU": 2.0}) == 1
    with pytest.raises(ConfigError, match="concurrency"):
        trial_concurrency(smoke, SweepSettings(samples=4, concurrency=3), {"CPU": 2.0})
    default = load_run_config()  # 2 workers × (0.5 + 0.5 loader CPUs): one such trial leaves no CPU for Ray Data
    with pytest.raises(ConfigError, match="scale.cpus_per_worker"):
        trial_concurrency(default, settings, {"CPU": 2.0})
    gpu = load_run_config(None, ["scale.num_workers=2", "scale.use_gpu=true"])
    assert trial_concurrency(gpu, SweepSettings(samples=8), {"CPU": 64.0, "GPU": 8.0}) == 4


def test_asha_rungs_follow_train_reports_also_for_a_resumed_trial():
    run = load_run_config(None, sweep.SMOKE_RUN)  # 8 steps, a report every 4: reports 1, 2, then the final
    scheduler = make_scheduler(run, SweepSettings())
    fresh, resumed = SimpleNamespace(trial_id="fresh"), SimpleNamespace(trial_id="resumed")
    for trial in (fresh, resumed):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, fresh, {TRAIN_REPORT: 1, "progress": 1.2}) == "CONTINUE"
    # Resumed from its step-4 checkpoint, its first result is Train's report 2 (Tune's iteration 1): judged on
    # the rung of report 2, where nobody is yet, not against the fresh trial's report 1.
    assert scheduler.on_trial_result(None, resumed, {TRAIN_REPORT: 2, "progress": 1.0}) == "CONTINUE"
    # The final (evaluation) result carries no report number: never a rung, never a stop.
    assert scheduler.on_trial_result(None, fresh, {"progress": 0.1, "objective": 1.0}) == "CONTINUE"
    assert scheduler.on_trial_result(None, fresh, {TRAIN_REPORT: 2, "progress": 0.9}) == "STOP"  # below 1.0
