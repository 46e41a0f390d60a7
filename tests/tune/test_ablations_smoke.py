"""``python tune/ablations.py --smoke`` on the test run's local Ray: two variants as Tune trials, the tables,
the interference matrices with and without MoE, and a re-run that reuses the finished trials."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from tune import ablations
from tune.ablation_variants import FULL


@pytest.fixture(scope="module")
def smoke(ray_local, embedded_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations") / "smoke"
    started = time.time()
    code = ablations.main(["--smoke", "--out", str(out), f"data.root={embedded_data}"])
    wall = time.time() - started
    print(f"\nablation smoke: {wall:.0f} s\n" + (out / "report.md").read_text())
    return code, out


def test_smoke_trains_both_variants_and_writes_the_tables(smoke):
    code, out = smoke
    assert code == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sorted((r["variant"], r["status"]) for r in rows) == [("all-no_moe", "completed"), (FULL, "completed")]
    for row in rows:
        assert 0.0 <= float(row["classification/top1"]) <= 1.0
        assert float(row["captioning/CIDEr"]) >= 0.0
        config = (out / "trials" / f"{row['variant']}-seed0" / "run_config.yaml").read_text()
        assert ("use_moe: false" in config) == (row["variant"] == "all-no_moe")
    for key in ("representation", "collaboration", "optimization", "initialization"):
        assert (out / f"table_{key}.md").is_file() and (out / f"table_{key}.png").stat().st_size > 0
        header = (out / f"table_{key}.csv").read_text().splitlines()[0]
        assert header.startswith("setting,variant,classification/top1/mean")  # the headlines, registry order
    collaboration = (out / "table_collaboration.md").read_text()
    assert "| all tasks | `all-no_moe` | 1 |" in collaboration
    assert "| all tasks with MoE | `full` | 1 |" in collaboration
    assert "conditional MoE helps every task" in collaboration  # the direction check ran
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == summary["trials"] == 2 and summary["wall_s"] > 0
    assert summary["chance"]["retrieval/t2i_R@1"] == pytest.approx(1 / 8)  # --smoke evaluates 8 images
    assert "chance (a random training example's answer)" in collaboration and "Lowest row ÷ chance" in collaboration


def test_smoke_measures_interference_with_and_without_moe(smoke):
    _, out = smoke
    measured = json.loads((out / "interference.json").read_text())
    assert set(measured) == {"without MoE", "with MoE"}
    for setting, results in measured.items():
        (result,) = results
        matrix = np.asarray(result["matrix"], dtype=float)
        assert matrix.shape == (len(result["tasks"]),) * 2 == (4, 4)
        np.testing.assert_allclose(np.diag(matrix), 1.0)
        assert all(".ffn.w" in name for name in result["parameters"])
    sizes = {s: r[0]["num_parameters"] for s, r in measured.items()}
    assert sizes["with MoE"] > sizes["without MoE"]  # every expert's weights vs one dense FFN
    assert (out / "interference.png").stat().st_size > 0
    assert len((out / "interference.csv").read_text().splitlines()) == 1 + 2 * 16


def test_rerun_reuses_finished_trials(smoke, embedded_data):
    _, out = smoke
    before = (out / "trials" / f"{FULL}-seed0" / "trial.json").stat().st_mtime
    grids = sorted((out / "tune").iterdir())
    assert ablations.main(["--smoke", "--out", str(out), "--interference-batches", "0",
                           f"data.root={embedded_data}"]) == 0
    assert (out / "trials" / f"{FULL}-seed0" / "trial.json").stat().st_mtime == before
    assert sorted((out / "tune").iterdir()) == grids  # no Tune grid started: nothing trained or evaluated


def test_rerun_with_another_config_trains_again_and_keeps_the_old_run(smoke, embedded_data):
    _, out = smoke
    old_trial = json.loads((out / "trials" / f"{FULL}-seed0" / "trial.json").read_text())
    assert ablations.main(["--smoke", "--variants", FULL, "--out", str(out), "--interference-batches", "0",
                           f"data.root={embedded_data}", "optim.lr=2.0e-4"]) == 0
    (kept,) = (out / "replaced").iterdir()
    assert kept.name.startswith(f"{FULL}-seed0-")
    assert json.loads((kept / "trial.json").read_text()) == old_trial
    assert "lr: 0.0002" in (out / "trials" / f"{FULL}-seed0" / "run_config.yaml").read_text()
    assert (out / "trials" / f"{FULL}-seed0" / "trial.json").is_file()


def test_bad_variant_is_refused_before_training(ray_local, tmp_path, capsys):
    assert ablations.main(["--smoke", "--variants", "full,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert not (tmp_path / "x" / "trials").exists()
