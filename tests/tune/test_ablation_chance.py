"""Chance levels of the ablation columns: the exact formulas on hand-made inputs, and every column measured on the
test run's embedded data the way the trials are scored."""

from __future__ import annotations

import random

import pytest

from tune import ablation_report as report
from tune.ablation_chance import chance_levels
from unip2.eval.chance import caption_chance, classification_chance, retrieval_chance, transplanted_objects
from tune.ablation_variants import FULL, build_plan


def test_classification_chance_follows_the_training_label_shares():
    assert classification_chance([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(0.25)
    # a training set of 3:1 labels, validated on label 0 only: a random training label is right 3 times in 4
    assert classification_chance([0, 0, 0, 1], [0, 0]) == pytest.approx(0.75)


def test_retrieval_chance_of_a_random_ranking():
    levels = retrieval_chance([5, 5, 5, 5])
    assert levels == {"i2t_R@1": pytest.approx(0.25), "t2i_R@1": pytest.approx(0.25)}
    # an image with more captions is more often right by chance (image→text); text→image is 1 / images
    assert retrieval_chance([3, 1])["i2t_R@1"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert retrieval_chance([3, 1])["t2i_R@1"] == pytest.approx(0.5)


def test_caption_chance_is_perfect_when_every_caption_is_the_same():
    caption = "a small red circle at the top left"
    references = {1: [caption] * 3, 2: [caption] * 3}
    same = caption_chance([caption], references)
    assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    other = caption_chance(["two blue squares on the left side"], references)
    assert other["BLEU-4"] < 0.01 and other["CIDEr"] < 0.01


def test_transplanted_objects_are_scaled_to_the_validation_image():
    val = [{"image_id": 7, "width": 200, "height": 100}]
    train = [{"image_id": 1, "width": 100, "height": 100, "boxes": [[10, 20, 30, 40]], "category_ids": [13]}]
    (result,) = transplanted_objects(val, train, random.Random(0))
    assert result["image_id"] == 7 and result["category_id"] == 13
    assert result["bbox"] == pytest.approx([20, 20, 60, 40])  # COCO (x, y, w, h), x and w doubled


def test_chance_levels_on_the_embedded_data(embedded_data):
    tasks = ["classification", "detection", "captioning", "retrieval"]
    levels = chance_levels(embedded_data, tasks, max_images=8)
    assert set(levels) == {"classification/top1", "detection/bbox_AP", "retrieval/i2t_R@1", "retrieval/t2i_R@1",
                           "captioning/BLEU-4", "captioning/CIDEr"}
    assert levels["retrieval/t2i_R@1"] == pytest.approx(1 / 8)  # the first 8 captioned images
    assert 0.0 < levels["classification/top1"] < 0.5
    assert 0.0 <= levels["detection/bbox_AP"] < 0.05  # another image's objects rarely land on this one's
    assert 0.0 < levels["captioning/BLEU-4"] < 1.0 and levels["captioning/CIDEr"] > 0.0
    assert set(chance_levels(embedded_data, ["classification"])) == {"classification/top1"}


def test_tables_show_the_chance_row_and_each_columns_margin(tmp_path):
    rows = [{"variant": v, "seed": s, "status": "completed", "classification/top1": top1, "retrieval/i2t_R@1": 0.05,
             "retrieval/t2i_R@1": 0.02} for v, top1 in ((FULL, 0.9), ("all-no_moe", 0.3)) for s in (0, 1)]
    cols = report.columns(["classification", "retrieval"])
    table = next(t for t in build_plan(["classification", "retrieval"], only=[FULL, "all-no_moe"]).tables
                 if t.key == "collaboration")
    chance = {"classification/top1": 0.1, "retrieval/i2t_R@1": 0.01, "retrieval/t2i_R@1": 0.01}
    markdown = report.table_markdown(table, rows, cols, chance)
    assert f"| {report.CHANCE_LABEL} | – | – | 10.0 | 1.0 | 1.0 |" in markdown
    # the lowest row decides: all-no_moe's 30 % is 3× the 10 % chance; t→i at 2× is flagged
    assert "Lowest row ÷ chance: cls top-1 3.0×; i→t R@1 5.0×; t→i R@1 2.0× (< 3×)" in markdown
    assert "chance" not in report.table_markdown(table, rows, cols)
    assert report.plot_table(table, rows, cols, tmp_path / "t.png", chance).stat().st_size > 0
