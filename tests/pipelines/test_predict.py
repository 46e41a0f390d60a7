"""``pipelines/predict.py`` over a folder of images on the local Ray: every image's answer is ``model.predict``'s
(the Serve route's), written with the field's files and a picture; an undecodable file is skipped and counted."""

from __future__ import annotations

import json
import shutil

import pytest
from pycocotools.coco import COCO

import unip2
from pipelines.predict import main


@pytest.fixture(scope="module")
def folder(embedded_raw, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for image in sorted((embedded_raw / "coco" / "val2017").glob("*.jpg"))[:5]:
        shutil.copy(image, folder / image.name)
    (folder / "nested").mkdir()
    shutil.copy(sorted((embedded_raw / "imagenet" / "val").rglob("*.JPEG"))[0], folder / "nested" / "a.JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_the_routes_answers_and_coco_results(ray_local, tiny_checkpoint, folder, tmp_path):
    out = tmp_path / "segment"
    assert main(["--checkpoint", str(tiny_checkpoint), "--task", "instance_segmentation", "--images", str(folder),
                 "--out", str(out), "--precision", "fp32", "--batch-size", "4", "max_detections=3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["predicted"], summary["skipped"]) == (7, 6, {"undecodable": 1})
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(line["task"] == "instance_segmentation" for line in lines)

    model = unip2.load(tiny_checkpoint)
    first = lines[0]
    expected = model.predict(first["file"], task="instance_segmentation", precision="fp32", max_detections=3)
    assert {k: v for k, v in first.items() if k != "file"}.keys() == expected.keys()
    assert first["names"] == expected["names"] and first["masks"] == expected["masks"]

    header = json.loads((out / "images.json").read_text())
    ground = COCO()
    ground.dataset = {**header, "annotations": []}
    ground.createIndex()
    results = ground.loadRes(str(out / "segmentations.json"))  # a COCO results file of those images
    assert len(results.getAnnIds()) == sum(len(line["boxes"]) for line in lines) > 0
    assert (out / "predictions.png").stat().st_size > 0


def test_predict_classification_top_k_and_bad_input(ray_local, tiny_checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "classify"
    assert main(["--checkpoint", str(tiny_checkpoint), "--task", "classification", "--images", f"{folder}/*.jpg",
                 "--out", str(out), "top_k=2"]) == 0
    top_k = json.loads((out / "top_k.json").read_text())
    assert len(top_k) == 5 and all(len(row["top_names"]) == 2 for row in top_k)
    assert main(["--checkpoint", str(tiny_checkpoint), "--task", "classification", "--images", str(folder),
                 "--out", str(out), "top_kk=2"]) == 2
    assert "top_kk" in capsys.readouterr().err
    assert main(["--checkpoint", str(tiny_checkpoint), "--task", "language_modelling", "--images", str(folder),
                 "--out", str(out)]) == 2
