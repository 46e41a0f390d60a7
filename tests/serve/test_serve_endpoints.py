"""Every endpoint over real HTTP against the Serve app on the local Ray (tiny untrained checkpoint).

One app for the module: started once, shut down at the end so later modules get the CPUs back.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from json_close import close
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

APP = "serve-endpoints"


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base_url(ray_local, tiny_checkpoint, embedded_data):
    from serve.app import AppArgs, build_app
    from serve.local_run import run_local, stop_local

    # fp32: the answers below are compared across batch compositions to 1e-4, which bf16's rounding does not
    # promise (the other Serve tests run the default precision, bf16 where the CPU has it).
    args = AppArgs(checkpoint=str(tiny_checkpoint), gallery=str(embedded_data), gallery_split="val",
                   model_num_cpus=0.5, ingress_num_cpus=0.25, max_batch_size=8, precision="fp32")
    url = run_local(build_app(args), name=APP)
    yield url
    stop_local()


def scene(width: int, height: int, seed: int, fmt: str = "PNG") -> bytes:
    """A generated picture: a few filled shapes on a plain background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        box = (x0, y0, x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(embedded_raw) -> dict[str, bytes]:
    coco = sorted((embedded_raw / "coco" / "val2017").glob("*.jpg"))
    return {"wide_png": scene(200, 150, 0), "tall_jpeg": scene(97, 131, 1, "JPEG"), "coco": coco[0].read_bytes(),
            "coco2": coco[1].read_bytes()}


def upload(base_url: str, path: str, image: bytes | None = None, files=(), **fields):
    """multipart/form-data: the image as a file, lists as JSON strings."""
    data = {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in fields.items()}
    parts = list(files) + ([("image", ("image", image, "application/octet-stream"))] if image is not None else [])
    return requests.post(base_url + path, files=parts, data=data, timeout=60)


def as_json(base_url: str, path: str, image: bytes, **fields):
    return requests.post(base_url + path, json={"image": base64.b64encode(image).decode(), **fields}, timeout=60)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# ------------------------------------------------------------------------ preprocessing (no Ray)
def test_served_images_are_preprocessed_with_the_settings_the_checkpoint_records(tiny_checkpoint, tmp_path):
    from serve.preprocessing import Preprocessor
    from unip2.tasks import TASKS

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["tasks"]["classification"]["image_size"] = 64
    config["tasks"]["captioning"].update(image_size=128, max_text_length=20)
    (folder / "config.json").write_text(json.dumps(config))
    preprocessor = Preprocessor.from_checkpoint(folder, threads=1)
    image = scene(200, 150, 0)
    sizes = {name: preprocessor.run(name, image)["images"].shape for name, task in TASKS.items()
             if any(route.images != "none" for route in task.routes)}  # the tasks served with an image
    assert sizes == {"classification": (1, 3, 64, 64), "detection": (1, 3, 96, 96),
                     "instance_segmentation": (1, 3, 96, 96), "captioning": (1, 3, 128, 128),
                     "retrieval": (1, 3, 96, 96)}


# ---------------------------------------------------------------------------- health and docs
def test_health_readiness_tasks_and_docs(base_url):
    from unip2.tasks import TASKS

    assert ok(requests.get(base_url + "/healthz")) == {"status": "ok"}
    ready = ok(requests.get(base_url + "/readyz"))
    assert ready["status"] == "ready" and ready["device"] == "cpu" and ready["gallery_size"] == 8
    description = ok(requests.get(base_url + "/v1/tasks"))
    tasks = description["tasks"]
    assert set(tasks) == set(TASKS)
    assert tasks["detection"]["endpoint"] == "/v1/detect" and len(tasks["detection"]["class_names"]) > 0
    # The untrained checkpoint records no task settings: every task at the model's defaults.
    assert {(t["image_size"], t["max_text_length"]) for t in tasks.values()} == {(96, 32)}
    assert description["pixel_mean"] == [0.485, 0.456, 0.406] and len(description["pixel_std"]) == 3
    docs = requests.get(base_url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = ok(requests.get(base_url + "/openapi.json"))["paths"]
    for path in ("/v1/classify", "/v1/detect", "/v1/segment", "/v1/caption", "/v1/retrieve/text",
                 "/v1/retrieve/image"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}, path


# ------------------------------------------------------------------------------- every task
def test_classify_top_k_and_open_vocabulary(base_url, images):
    result = ok(upload(base_url, "/v1/classify", images["wide_png"], top_k=3))
    assert result["task"] == "classification" and len(result["top_names"]) == 3
    assert result["top_scores"] == sorted(result["top_scores"], reverse=True)
    assert result["score"] == result["top_scores"][0]
    names = ["a cat", "a dog", "a teapot"]
    result = ok(upload(base_url, "/v1/classify", images["coco"], class_names=names, top_k=5))
    assert len(result["top_names"]) == 3 and set(result["top_names"]) == set(names)
    assert sum(result["top_scores"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("key", ["wide_png", "tall_jpeg"])
def test_detect_boxes_are_in_input_pixels(base_url, images, key):
    width, height = Image.open(io.BytesIO(images[key])).size
    result = ok(upload(base_url, "/v1/detect", images[key], max_detections=7, score_threshold=0.0))
    assert result["task"] == "detection" and 0 < len(result["boxes"]) <= 7
    assert len(result["labels"]) == len(result["names"]) == len(result["scores"]) == len(result["boxes"])
    for x, y, w, h in result["boxes"]:
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3
    assert result["scores"] == sorted(result["scores"], reverse=True)
    cutoff = result["scores"][len(result["scores"]) // 2]
    strict = ok(upload(base_url, "/v1/detect", images[key], max_detections=7, score_threshold=cutoff))
    assert all(score > cutoff for score in strict["scores"]) and len(strict["boxes"]) < len(result["boxes"])
    vocabulary = ok(upload(base_url, "/v1/detect", images[key], class_names=["kite", "boat"]))
    assert set(vocabulary["names"]) <= {"kite", "boat"}


def test_segment_masks_are_rle_at_input_size(base_url, images):
    width, height = Image.open(io.BytesIO(images["wide_png"])).size
    result = ok(upload(base_url, "/v1/segment", images["wide_png"], max_detections=4))
    assert result["task"] == "instance_segmentation" and len(result["masks"]) == len(result["boxes"]) > 0
    for rle in result["masks"]:
        assert rle["size"] == [height, width] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert decoded.shape == (height, width)


def test_caption_with_beams(base_url, images):
    result = ok(upload(base_url, "/v1/caption", images["coco"], beam_size=2, max_length=8))
    assert result["task"] == "captioning" and isinstance(result["caption"], str)
    assert 1 <= len(result["beams"]) <= 2 and result["beams"][0]["caption"] == result["caption"]
    assert all(isinstance(beam["score"], float) for beam in result["beams"])


def test_retrieve_text_ranks_every_candidate(base_url, images):
    texts = ["a red circle", "two blue squares", "a green star", "nothing at all"]
    result = ok(upload(base_url, "/v1/retrieve/text", images["coco"], texts=texts))
    ranked = result["results"]
    assert sorted(r["index"] for r in ranked) == [0, 1, 2, 3]
    assert [r["text"] for r in ranked] == [texts[r["index"]] for r in ranked]
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


def test_fill_mask_a_text_only_route(base_url):
    result = ok(requests.post(base_url + "/v1/fill_mask", json={"text": "a red <mask> at the center", "top_k": 3},
                              timeout=60))
    assert result["task"] == "language_modelling" and isinstance(result["text"], str)
    (mask,) = result["masks"]
    assert len(mask["candidates"]) == 3 and all(0 <= c["score"] <= 1 for c in mask["candidates"])
    refused = requests.post(base_url + "/v1/fill_mask", json={"text": "nothing to fill"}, timeout=60)
    assert refused.status_code == 422 and "<mask>" in refused.json()["error"]["message"]
    assert requests.post(base_url + "/v1/fill_mask", json={"top_k": 3}, timeout=60).status_code == 422


def test_retrieve_image_from_uploads_and_from_the_indexed_gallery(base_url, images, embedded_data):
    from unip2.data.manifest import read_table

    gallery = [("images", (name, images[name], "image/png")) for name in ("wide_png", "tall_jpeg", "coco")]
    uploaded = ok(upload(base_url, "/v1/retrieve/image", files=gallery, text="a red circle", top_k=2))
    assert uploaded["gallery"] == "uploaded" and len(uploaded["results"]) == 2
    assert {r["index"] for r in uploaded["results"]} <= {0, 1, 2}
    indexed = ok(requests.post(base_url + "/v1/retrieve/image", json={"text": "a red circle", "top_k": 5}))
    ids = set(read_table(embedded_data, "coco_captions", "val", columns=["image_id"]).column("image_id").to_pylist())
    assert indexed["gallery"] == "indexed" and len(indexed["results"]) == 5
    assert {r["image_id"] for r in indexed["results"]} <= ids
    scores = [r["score"] for r in indexed["results"]]
    assert scores == sorted(scores, reverse=True)


# ------------------------------------------------------------------ same answer, any way asked
REQUESTS = [("/v1/classify", "coco", {"top_k": 3}), ("/v1/detect", "wide_png", {"max_detections": 5}),
            ("/v1/segment", "tall_jpeg", {"max_detections": 3}), ("/v1/caption", "coco2", {"beam_size": 2}),
            ("/v1/retrieve/text", "coco", {"texts": ["a red circle", "a blue star"]}),
            ("/v1/classify", "tall_jpeg", {"class_names": ["cat", "dog", "bird"]})]


@pytest.mark.parametrize("path,key,fields", REQUESTS, ids=[f"{p}-{k}" for p, k, _ in REQUESTS])
def test_upload_and_base64_give_the_same_answer(base_url, images, path, key, fields):
    assert ok(upload(base_url, path, images[key], **fields)) == ok(as_json(base_url, path, images[key], **fields))


def test_gallery_upload_and_base64_give_the_same_answer(base_url, images):
    names = ("wide_png", "tall_jpeg", "coco")
    gallery = [("images", (name, images[name], "image/png")) for name in names]
    uploaded = ok(upload(base_url, "/v1/retrieve/image", files=gallery, text="two blue squares", top_k=3))
    as_base64 = ok(requests.post(base_url + "/v1/retrieve/image", timeout=60, json={
        "text": "two blue squares", "top_k": 3, "images": [base64.b64encode(images[n]).decode() for n in names]}))
    # The three images may be batched differently on the two calls: equal up to float rounding.
    assert [r["index"] for r in uploaded["results"]] == [r["index"] for r in as_base64["results"]]
    np.testing.assert_allclose([r["score"] for r in uploaded["results"]],
                               [r["score"] for r in as_base64["results"]], rtol=1e-4)


def assert_same_answer(a: dict, b: dict) -> None:
    """Equal up to float rounding: a batch of other requests may change the last bits of a score, and
    may swap two detections whose scores tie to within that rounding."""
    assert a.keys() == b.keys() and a["task"] == b["task"]
    if "boxes" in a:
        assert len(a["boxes"]) == len(b["boxes"])
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-7)
        found = {(label, tuple(np.round(box, 1))) for label, box in zip(b["labels"], b["boxes"])}
        cutoff = min(a["scores"]) if a["scores"] else 0.0
        for label, box, score in zip(a["labels"], a["boxes"], a["scores"]):
            tie = abs(score - cutoff) <= 1e-4 * score
            assert (label, tuple(np.round(box, 1))) in found or tie
        for rle_a, rle_b in zip(a.get("masks", []), b.get("masks", [])):
            assert rle_a["size"] == rle_b["size"]
    elif "top_names" in a:
        assert a["top_names"] == b["top_names"]
        np.testing.assert_allclose(a["top_scores"], b["top_scores"], rtol=1e-4, atol=1e-7)
    elif "caption" in a:
        assert a["caption"] == b["caption"] and len(a["beams"]) == len(b["beams"])
        np.testing.assert_allclose([x["score"] for x in a["beams"]], [x["score"] for x in b["beams"]], rtol=1e-4)
    else:
        assert [r["text"] for r in a["results"]] == [r["text"] for r in b["results"]]
        np.testing.assert_allclose([r["score"] for r in a["results"]], [r["score"] for r in b["results"]], rtol=1e-4)


def test_concurrent_mixed_tasks_each_get_their_own_answer(base_url, images):
    before = ok(requests.get(base_url + "/v1/stats"))["batches"]
    jobs = [REQUESTS[i % len(REQUESTS)] for i in range(24)]
    sequential = [ok(upload(base_url, path, images[key], **fields)) for path, key, fields in jobs]
    with ThreadPoolExecutor(max_workers=24) as pool:
        concurrent = list(pool.map(lambda job: ok(upload(base_url, job[0], images[job[1]], **job[2])), jobs))
    for expected, got in zip(sequential, concurrent):
        assert_same_answer(expected, got)
    after = ok(requests.get(base_url + "/v1/stats"))["batches"]
    sent = {"classification": 8, "detection": 4, "instance_segmentation": 4, "captioning": 4, "retrieval": 4}
    for task, count in sent.items():
        assert after[task]["requests"] - before[task]["requests"] == 2 * count, task
    assert max(stats["largest"] for stats in after.values()) > 1, "concurrent requests were never batched"


# -------------------------------------------------------------------------------- recovery
def test_a_killed_model_replica_is_replaced(base_url, images):
    import ray

    expected = ok(upload(base_url, "/v1/classify", images["coco"]))
    replica = ok(requests.get(base_url + "/v1/stats"))["replica"]
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = requests.get(base_url + "/readyz", timeout=30)
        assert response.status_code in (200, 503), response.text
        stats = requests.get(base_url + "/v1/stats", timeout=30)
        if response.status_code == 200 and stats.status_code == 200 and stats.json()["replica"] != replica:
            break
        time.sleep(0.5)
    else:
        pytest.fail("no new model replica within 120 s")
    assert ok(upload(base_url, "/v1/classify", images["coco"])) == expected


# ------------------------------------------------------------------------- model.predict (no Serve)
def test_model_predict_returns_what_each_route_returns(base_url, tiny_checkpoint, images):
    import unip2
    from unip2.tasks.preprocessing import UndecodableImage

    model = unip2.load(tiny_checkpoint)
    picture = Image.open(io.BytesIO(images["coco"]))
    cases = [("classification", "/v1/classify", {"top_k": 3}),
             ("detection", "/v1/detect", {"max_detections": 5}),
             ("instance_segmentation", "/v1/segment", {"max_detections": 3}),
             ("captioning", "/v1/caption", {}),
             ("retrieval", "/v1/retrieve/text", {"texts": ["a red circle", "two blue squares"]})]
    for task, path, options in cases:
        served = ok(upload(base_url, path, images["coco"], **options))
        for given in (images["coco"], picture, np.asarray(picture.convert("RGB"))):  # bytes, PIL, array
            predicted = model.predict(given, task=task, precision="fp32", **options)
            if isinstance(given, bytes):
                assert close(predicted, served), (path, predicted, served)
            else:  # a PIL image or an array is sent as PNG: the same pixels, not the same file
                assert predicted["task"] == task and predicted.keys() == served.keys(), path
    listed = model.predict([images["coco"], images["coco2"]], task="classification", precision="fp32", top_k=2)
    assert [r["top_names"] for r in listed] == [ok(upload(base_url, "/v1/classify", image, top_k=2))["top_names"]
                                                for image in (images["coco"], images["coco2"])]
    filled = model.predict(task="language_modelling", text="a red <mask> circle", precision="fp32")
    assert close(filled, ok(requests.post(base_url + "/v1/fill_mask", json={"text": "a red <mask> circle"}, timeout=60)))
    with pytest.raises(UndecodableImage, match="image 1"):
        model.predict([images["coco"], b"not an image"], task="classification")
    with pytest.raises(ValueError, match="not \\['top_kk'\\]"):
        model.predict(images["coco"], task="classification", top_kk=3)
