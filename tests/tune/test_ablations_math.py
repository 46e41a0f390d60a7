"""The ablation's pieces without Ray: the variant plan, the gradient-effect matrix on hand-made gradients,
the measure on a real tiny model, the tables' aggregation and the direction checks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

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
    assert tables["initialization"].rows == [
        ("random", "init-random"), ("supervised classification (stage 1)", FULL), ("+ detection", "init-detection"),
        ("text encoder without MLM pretraining", "init-text-random"), ("backbone file: in1k", "init-file-in1k")]
    assert len(plan.variants) == 19
    assert plan.variants["init-detection"].backbone_from == "single-detection"
    order = list(plan.variants)
    assert order.index("init-detection") > order.index("single-detection")  # trained after its source
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
    assert (mixed.train.sampling, mixed.model.tasks["retrieval"].gather_negatives, mixed.optim.name) == (
        "mixed", False, "adamw")
    init = load_run_config(None, variant_overrides(plan.variants["init-detection"], base, seed=0,
                                                   backbone_path="/b.safetensors"))
    assert init.model.backbone.pretrained_path == "/b.safetensors"
    with pytest.raises(ValueError, match="needs the backbone"):
        variant_overrides(plan.variants["init-detection"], base, seed=0)


def test_initialization_variants_resolve_their_encoders(tmp_path):
    """As a trial resolves them: the base, then stage 1's overrides (as ``run_ablations`` appends them to the
    sweep's), then the variant's; and no trial would run stage 1 itself."""
    from pipelines.stage1.encoders import encoders_to_pretrain
    from tune.ablations import DEFAULT_CONFIG

    image, text = tmp_path / "stage1" / "image" / "model.safetensors", tmp_path / "stage1" / "text"
    stage1 = [f"model.backbone.pretrained_path={image}", f"model.text.pretrained_path={text}"]
    base = load_run_config(DEFAULT_CONFIG, stage1)
    plan = build_plan(list(base.tasks))

    def resolved(name: str):
        overrides = variant_overrides(plan.variants[name], base, seed=0, backbone_path="/det/backbone.safetensors")
        return load_run_config(DEFAULT_CONFIG, [*stage1, *overrides])

    full = resolved(FULL)
    assert (full.model.backbone.pretrained_path, full.model.text.pretrained_path) == (str(image), str(text))
    assert full.optim.backbone_lr_scale < 1.0  # a pretrained backbone trains slower
    random = resolved("init-random")
    assert random.model.backbone.pretrained_path is None and random.model.text.pretrained_path is None
    assert (random.optim.backbone_lr_scale, random.optim.text_lr_scale) == (1.0, 1.0)
    no_mlm = resolved("init-text-random")
    assert no_mlm.model.backbone.pretrained_path == str(image) and no_mlm.model.text.pretrained_path is None
    assert no_mlm.optim.text_lr_scale == 1.0 and no_mlm.optim.backbone_lr_scale == full.optim.backbone_lr_scale
    detection = resolved("init-detection")
    assert detection.model.backbone.pretrained_path == "/det/backbone.safetensors"
    assert detection.model.text.pretrained_path == str(text)
    for name in plan.variants:
        assert encoders_to_pretrain(resolved(name)) == [], name
    # Without pretrain.encoders=[] a trial would run stage 1 again for the encoder set back to random:
    text_reset_only = load_run_config(DEFAULT_CONFIG, [*stage1, "model.text.pretrained_path=null"])
    assert encoders_to_pretrain(text_reset_only) == ["text"]


def test_detection_row_only_with_detection():
    assert "init-detection" not in build_plan(["classification", "retrieval"]).variants
    alone = build_plan(["detection"])
    assert alone.variants["init-detection"].backbone_from == FULL  # the detection-only base run is the source
    initialization = next(t for t in alone.tables if t.key == "initialization")
    assert [v for _, v in initialization.rows] == ["init-random", FULL, "init-detection", "init-text-random"]


def test_restricted_plan_keeps_dependencies():
    plan = build_plan(ABLATION_TASKS, only=["init-detection"])
    assert list(plan.variants) == ["single-detection", "init-detection"]
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
    assert [c.key for c in cols] == ["classification/top1", "detection/bbox_AP", "retrieval/i2t_R@1",
                                     "retrieval/t2i_R@1"]  # the tasks' headlines, in registry order
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
    assert "| all tasks with MoE | `full` | 2 | 32.0 ± 2.8 | – | 50.0 ± 0.0 | 40.0 ± 0.0 |" in markdown
    path = report.write_table_csv(table, rows, cols, tmp_path / "t.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:2] == ["setting", "variant"] and "classification/top1/mean" in header
    assert report.plot_table(table, rows, cols, tmp_path / "t.png").stat().st_size > 0


def test_initialization_checks_mark_our_own():
    rows = [{"variant": variant, "seed": 0, "status": "completed", "detection/bbox_AP": det,
             "retrieval/i2t_R@1": r1, "retrieval/t2i_R@1": r1, "captioning/BLEU-4": b4, "captioning/CIDEr": b4}
            for variant, det, r1, b4 in [("init-random", 0.01, 0.02, 0.10), (FULL, 0.02, 0.05, 0.20),
                                         ("init-detection", 0.04, 0.04, 0.25), ("init-text-random", 0.02, 0.03, 0.22)]]
    cols = report.columns(["detection", "retrieval", "captioning"])
    claims = report.paper_claims({FULL, "init-random", "init-detection", "init-text-random"},
                                 ["detection", "retrieval", "captioning"])
    assert [(c.better, c.worse, c.ours) for c in claims if c.table == "initialization"] == [
        (FULL, "init-random", True), ("init-detection", FULL, False), (FULL, "init-text-random", True)]
    lines = report.claims_markdown(claims, rows, cols, "initialization").splitlines()
    assert lines[0].startswith("- Our own check, not the paper's: pre-trained encoders help every task")
    assert "on 5/5 columns" in lines[0]
    assert lines[1].startswith("- Paper: detection pre-training") and "on 3/3 columns" in lines[1]  # det, B@4, CIDEr
    assert lines[2].startswith("- Our own check, not the paper's: the MLM-pretrained text encoder")
    assert "Measured: agrees in direction on 2/4 columns" in lines[2]  # retrieval ahead, captioning behind
    assert report.checks_heading(claims, "initialization").endswith("(and our own, where marked):")
    assert report.checks_heading(claims, "collaboration") == "Direction checks against the paper:"


def _finished_trial(context, variant: str, seed: int, overrides: list[str], settings) -> Path:
    """A trial folder as a finished run leaves it: the run config it trained with (with the fields the run
    fills in set) and its trial.json."""
    from dataclasses import asdict

    from tune.ablations import run_dir
    from unip2 import config_io
    from unip2.run_config import load_run_config

    folder = run_dir(context.out, variant, seed)
    folder.mkdir(parents=True)
    run = load_run_config(context.spec.config_path, overrides)
    run.out, run.data.root, run.model.class_names = str(folder), "/data/prepared", {"classification": ["a", "b"]}
    config_io.save(run, folder / "run_config.yaml")
    (folder / "trial.json").write_text(json.dumps({"scores": {}, "evaluation_settings": asdict(settings)}))
    return folder


def test_finished_trials_are_reused_unless_evaluated_or_configured_otherwise(tmp_path):
    from tune.ablation_variants import build_plan
    from tune.ablations import (DEFAULT_CONFIG, AblationSpec, TrialContext, needs_work, run_dir, set_aside,
                                stale_training, trial_overrides)
    from tune.trial import EvaluationSettings
    from unip2.run_config import load_run_config

    spec = AblationSpec(config_path=str(DEFAULT_CONFIG), evaluation=EvaluationSettings(max_images=None))
    base = load_run_config(spec.config_path)
    context = TrialContext(out=str(tmp_path), cwd=str(tmp_path), spec=spec,
                           variants=build_plan(list(base.tasks)).variants)
    assert needs_work(context, FULL, 0, base)  # never trained
    folder = _finished_trial(context, FULL, 0, trial_overrides(context, FULL, 0, base), spec.evaluation)
    assert stale_training(context, FULL, 0, base) == []
    assert not needs_work(context, FULL, 0, base)
    context.spec.evaluation = EvaluationSettings(max_images=64)
    assert needs_work(context, FULL, 0, base)  # evaluated with other settings: re-evaluated, not retrained
    assert stale_training(context, FULL, 0, base) == []
    context.spec.evaluation = spec.evaluation

    # The base config changed since the trial trained (here: its step count): the trial trains again and
    # its old folder is kept aside.
    other = _finished_trial(context, FULL, 1, [*trial_overrides(context, FULL, 1, base), "train.steps=99"],
                            spec.evaluation)
    assert stale_training(context, FULL, 1, base) == ["train.steps"]
    assert needs_work(context, FULL, 1, base)
    kept = set_aside(other, ["train.steps"])
    assert not other.exists() and (kept / "trial.json").is_file() and kept.parent == tmp_path / "replaced"

    # A variant built on another trial's backbone: stale once that backbone is exported again after it trained.
    built = next(name for name, v in context.variants.items() if v.backbone_from is not None)
    source = context.variants[built].backbone_from
    trained = _finished_trial(context, built, 0, trial_overrides(context, built, 0, base), spec.evaluation)
    backbone = run_dir(tmp_path, source, 0) / "backbone.safetensors"
    backbone.parent.mkdir(parents=True, exist_ok=True)
    backbone.write_bytes(b"weights")
    os.utime(trained / "run_config.yaml", (1, 1))
    assert stale_training(context, built, 0, base) == [
        "model.backbone.pretrained_path (its source trial trained again)"]
    assert folder.is_dir()



def test_interference_check_compares_moe_with_plain():
    def measured(interference: float, mean: float, seed: int) -> dict:
        return {"seed": seed, "summary": {"mean": mean, "mean_abs": 0.3, "interference": interference,
                                          "negative_share": 0.5}}

    results = {"without MoE": [measured(0.20, -0.10, 0), measured(0.22, -0.12, 1)],
               "with MoE": [measured(0.10, -0.02, 0), measured(0.12, -0.04, 1)]}
    check = report.interference_check(results)
    assert ("interference (mean of max(−δ, 0)) with MoE − without -0.100 (spread 0.020): agrees, "
            "the paper's way in 2/2 seeds paired") in check
    assert "mean δ with MoE − without +0.080 (spread 0.020): agrees" in check
    results["with MoE"] = [measured(0.25, -0.2, 0), measured(0.19, -0.1, 1)]
    assert ("+0.010 (spread 0.045): disagrees (within seed spread), the paper's way in 1/2 seeds paired"
            in report.interference_check(results))
    assert report.interference_check({"without MoE": results["without MoE"], "with MoE": []}) == ""


def test_seeds_and_variants_options():
    from tune.ablations import build_spec, parse_args

    spec = build_spec(parse_args(["--seeds", "3", "--variants", "full, mixed", "train.steps=20"]))
    assert spec.seeds == [0, 1, 2] and spec.variants == ["full", "mixed"] and spec.overrides == ["train.steps=20"]
    with pytest.raises(ValueError, match="--seeds"):
        build_spec(parse_args(["--seeds", "0"]))
