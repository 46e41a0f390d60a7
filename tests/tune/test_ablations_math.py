"""The ablation's pieces without Ray: the variant plan, the gradient-effect matrix on hand-made gradients,
the measure on a real tiny model, the tables' aggregation and the direction checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import unip2
from tune import ablation_report as report
from tune.ablation_interference import (InterferenceSettings, collect_task_gradients, gradient_effect_matrix,
                                        interference_summary, measure_interference)
from tune.ablation_variants import FULL, build_plan, variant_overrides, variant_tasks
from unip2.persistence import export_backbone
from unip2.run_config import load_run_config
from unip2.tasks import TASKS

ABLATION_TASKS = ["classification", "detection", "captioning", "retrieval"]


def test_gradient_effect_matrix_hand_made():
    # Task a: always along e0 (norms 1 and 3); b: along e1; c: along −e0 + e1.
    gradients = {"a": torch.tensor([[1.0, 0.0], [3.0, 0.0]]),
                 "b": torch.tensor([[0.0, 2.0], [0.0, 2.0]]),
                 "c": torch.tensor([[-1.0, 1.0], [-1.0, 1.0]])}
    matrix = gradient_effect_matrix(gradients)
    # u_a = e0, ḡ_a = 2 e0; u_b = e1, ḡ_b = 2 e1; u_c = (−1, 1)/√2, ḡ_c = (−1, 1).
    s = 1 / math.sqrt(2)
    expected = np.array([[1.0, 0.0, -1 / (2 * s)],       # δ_ac = (u_a·ḡ_c)/(u_c·ḡ_c) = −1/√2
                         [0.0, 1.0, 1 / (2 * s)],
                         [-s * 2 / 2, s * 2 / 2, 1.0]])  # δ_ca = (u_c·ḡ_a)/(u_a·ḡ_a) = −√2/2
    np.testing.assert_allclose(matrix, expected, atol=1e-9)
    summary = interference_summary(matrix)
    off = expected[~np.eye(3, dtype=bool)]
    assert summary["mean"] == pytest.approx(off.mean())
    assert summary["interference"] == pytest.approx(np.maximum(-off, 0).mean())
    assert summary["negative_share"] == pytest.approx(2 / 6)


def test_gradient_effect_matrix_is_scale_free_and_flags_unused_parameters():
    torch.manual_seed(0)
    gradients = {"a": torch.randn(4, 10), "b": torch.randn(4, 10), "c": torch.zeros(3, 10)}
    matrix = gradient_effect_matrix(gradients)
    np.testing.assert_allclose(np.diag(matrix)[:2], 1.0)
    assert np.isnan(matrix[:, 2]).all()  # nobody's update can be compared with an unused parameter set
    np.testing.assert_allclose(matrix[2, :2], 0.0)  # ...and its own "update" moves nothing
    scaled = gradient_effect_matrix({"a": 5 * gradients["a"], "b": 0.1 * gradients["b"]})
    np.testing.assert_allclose(scaled, matrix[:2, :2], rtol=1e-6)  # δ is invariant to loss scale


def test_plan_covers_the_four_tables():
    plan = build_plan(ABLATION_TASKS, backbone_files={"in1k": "/x.safetensors"})
    keys = [t.key for t in plan.tables]
    assert keys == ["representation", "collaboration", "optimization", "initialization"]
    tables = {t.key: t for t in plan.tables}
    # Every table ends with the full model; the collaboration table has singles, all, leave-one-outs.
    assert all(t.rows[-1][1] == FULL or t.key == "initialization" for t in plan.tables)
    names = [v for _, v in tables["collaboration"].rows]
    assert names == [f"single-{t}" for t in ABLATION_TASKS] + ["all-no_moe"] + \
        [f"without-{t}" for t in ABLATION_TASKS] + [FULL]
    assert [v for _, v in tables["initialization"].rows] == [FULL, "init-classification", "init-file-in1k"]
    assert len(plan.variants) == 17
    order = list(plan.variants)
    assert order.index("init-classification") > order.index("single-classification")
    assert set(TASKS) >= set(ABLATION_TASKS)


def test_variant_overrides_load_as_run_configs():
    base = load_run_config(None, [f"tasks={json.dumps({t: {'batch_size': 4} for t in ABLATION_TASKS})}"])
    plan = build_plan(list(base.tasks))
    for variant in plan.variants.values():
        run = load_run_config(None, [f"tasks={json.dumps({t: {'batch_size': 4} for t in ABLATION_TASKS})}",
                                     *variant_overrides(variant, base, seed=3, backbone_path="/b.safetensors")])
        assert run.train.seed == 3
        assert list(run.tasks) == variant_tasks(variant, base)
        assert all(task.batch_size == 4 for task in run.tasks.values())
    without = load_run_config(None, variant_overrides(plan.variants["without-detection"], base, seed=0))
    assert list(without.tasks) == ["classification", "captioning", "retrieval"]
    assert without.model.decoder.use_moe is False
    global_only = load_run_config(None, variant_overrides(plan.variants["tokens-global"], base, seed=0))
    assert global_only.model.tokens.use_regional is False
    mixed = load_run_config(None, variant_overrides(plan.variants["mixed"], base, seed=0))
    assert (mixed.train.sampling, mixed.train.gather_retrieval, mixed.optim.name) == ("mixed", False, "adamw")
    init = load_run_config(None, variant_overrides(plan.variants["init-classification"], base, seed=0,
                                                   backbone_path="/b.safetensors"))
    assert init.model.backbone.pretrained_path == "/b.safetensors"
    with pytest.raises(ValueError, match="needs the backbone"):
        variant_overrides(plan.variants["init-classification"], base, seed=0)


def test_restricted_plan_keeps_dependencies():
    plan = build_plan(ABLATION_TASKS, only=["init-classification"])
    assert list(plan.variants) == ["single-classification", "init-classification"]
    with pytest.raises(ValueError, match="unknown variant"):
        build_plan(ABLATION_TASKS, only=["nope"])


def test_measure_on_a_real_model_and_exported_backbone(tiny_checkpoint, embedded_data, tmp_path):
    settings = InterferenceSettings(batches=2, batch_size=2, seed=1)
    tasks = ["classification", "captioning"]
    model = unip2.load(tiny_checkpoint)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gradients = collect_task_gradients(model, tasks, embedded_data, settings)
    assert all(g.shape[0] == 2 and torch.isfinite(g).all() and g.abs().sum() > 0 for g in gradients.values())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # learning rate 0
    measured = measure_interference(tiny_checkpoint, embedded_data, tasks, settings)
    matrix = np.asarray(measured["matrix"])
    assert matrix.shape == (2, 2) and np.allclose(np.diag(matrix), 1.0) and np.isfinite(matrix).all()
    assert measured["parameters"] and all(".ffn.w" in n for n in measured["parameters"])
    np.testing.assert_allclose(matrix, gradient_effect_matrix(gradients), rtol=1e-6)  # same rows, same seed

    path = export_backbone(tiny_checkpoint, tmp_path / "backbone.safetensors")
    saved = unip2.load(tiny_checkpoint)  # fresh: train-mode batches move BatchNorm statistics
    config = saved.config
    config.backbone.pretrained_path = str(path)
    torch.manual_seed(123)  # another init than the checkpoint's: only the loaded file can make them equal
    rebuilt = unip2.build_model(config)
    for name, tensor in rebuilt.backbone.body.state_dict().items():
        torch.testing.assert_close(tensor, saved.backbone.body.state_dict()[name])


def test_tables_and_direction_checks(tmp_path):
    rows = []
    for seed, (full, no_moe) in enumerate([(0.30, 0.20), (0.34, 0.18)]):
        rows.append({"variant": FULL, "seed": seed, "status": "completed", "classification/top1": full,
                     "retrieval/i2t_R@1": 0.5, "retrieval/t2i_R@1": 0.4, "detection/bbox_AP": -1.0})
        rows.append({"variant": "all-no_moe", "seed": seed, "status": "completed", "classification/top1": no_moe,
                     "retrieval/i2t_R@1": 0.6, "retrieval/t2i_R@1": 0.41, "detection/bbox_AP": 0.1})
    rows.append({"variant": FULL, "seed": 2, "status": "error"})
    cols = report.columns(["classification", "retrieval", "detection"])
    assert [c.key for c in cols] == ["detection/bbox_AP", "classification/top1", "retrieval/i2t_R@1",
                                     "retrieval/t2i_R@1"]
    cells = report.aggregate(rows, FULL, cols)
    assert cells["classification/top1"].mean == pytest.approx(0.32)
    assert cells["classification/top1"].sd == pytest.approx(np.std([0.30, 0.34], ddof=1))
    assert cells["classification/top1"].n == 2  # the errored seed is not counted
    assert cells["detection/bbox_AP"].n == 0 and cells["detection/bbox_AP"].text() == "–"  # COCO's −1 dropped
    claims = [c for c in report.paper_claims({FULL, "all-no_moe"}, ["classification", "retrieval"])]
    assert [c.better for c in claims] == [FULL]
    verdicts = {v["column"]: v["verdict"] for v in report.check_claim(claims[0], rows, cols)}
    assert verdicts["cls top-1"] == "agrees"
    assert verdicts["i→t R@1"] == "disagrees"
    assert verdicts["t→i R@1"] == "disagrees"  # −1 point with no spread at all
    plan = build_plan(["classification", "retrieval", "detection"], only=[FULL, "all-no_moe"])
    table = next(t for t in plan.tables if t.key == "collaboration")
    markdown = report.table_markdown(table, rows, cols)
    assert "| all tasks with MoE | `full` | 2 | – | 32.0 ± 2.8 | 50.0 ± 0.0 | 40.0 ± 0.0 |" in markdown
    path = report.write_table_csv(table, rows, cols, tmp_path / "t.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:2] == ["setting", "variant"] and "classification/top1/mean" in header
    assert report.plot_table(table, rows, cols, tmp_path / "t.png").stat().st_size > 0


def test_finished_trials_are_reused_unless_evaluated_otherwise(tmp_path):
    from dataclasses import asdict

    from tune.ablations import needs_work, run_dir
    from tune.trial import EvaluationSettings

    settings = EvaluationSettings(max_images=None)
    assert needs_work(tmp_path, FULL, 0, settings)  # never trained
    folder = run_dir(tmp_path, FULL, 0)
    folder.mkdir(parents=True)
    (folder / "trial.json").write_text(json.dumps({"scores": {}}))
    assert needs_work(tmp_path, FULL, 0, settings)  # evaluated with unrecorded (older) settings
    (folder / "trial.json").write_text(json.dumps({"scores": {}, "evaluation_settings": asdict(settings)}))
    assert not needs_work(tmp_path, FULL, 0, settings)
    assert needs_work(tmp_path, FULL, 0, EvaluationSettings(max_images=64))
