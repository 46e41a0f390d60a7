"""Shared fixtures: one small embedded dataset, one untrained tiny checkpoint, one local Ray per test run.

Ray is started once for the whole session (not per test) with the environment measured to work on
2-core machines (../shared/RAY_NOTES.md): listeners on 127.0.0.1, no usage stats, fast Train reports.

``make test`` runs two pytest processes (pytest-xdist, ``--dist loadgroup``): every test on that Ray runs in one
of them, so there is still one Ray; each other module runs whole in either, beside it. A distributed test spends much
of its time waiting on processes to start (Ray's workers, Serve, subprocess runs), which leaves the cores to the other
process: the CPUs were idle 32 % of a serial run, 10 % of a parallel one.
"""

from __future__ import annotations

import os

# Before anything imports ray: these are read when Ray starts its processes.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402

SHARED_RAY = "shared_ray"


def pytest_itemcollected(item):
    """Under ``--dist loadgroup``: the tests using ``ray_local`` form one group, each other module one group (set as
    each test is collected, before xdist reads the groups)."""
    if getattr(item.config.option, "loadgroup", False):  # set in xdist's workers for --dist loadgroup
        group = SHARED_RAY if "ray_local" in item.fixturenames else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def embedded_raw(tmp_path_factory):
    """A small shapes-world dataset in the real formats (COCO, ImageNet folders, Karpathy COCO and Flickr30k)."""
    from unip2.data.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("embedded") / "raw"
    generate(out, SyntheticConfig(train_images=48, val_images=16, cls_train_per_class=4, cls_val_per_class=2,
                                  flickr_images=12))
    return out


@pytest.fixture(scope="session")
def embedded_data(embedded_raw, tmp_path_factory):
    """The small dataset converted to Parquet (the folder holding manifest.json)."""
    from unip2.data.prepare import prepare

    out = tmp_path_factory.mktemp("embedded") / "parquet"
    prepare(out=out, coco=embedded_raw / "coco", imagenet=embedded_raw / "imagenet",
            karpathy=embedded_raw / "coco" / "dataset_coco.json", rows_per_shard=20, progress_interval_s=3600,
            flickr30k=(embedded_raw / "flickr30k" / "dataset_flickr30k.json",
                       embedded_raw / "flickr30k" / "flickr30k-images"))
    return out


@pytest.fixture(scope="session")
def tiny_config(embedded_data):
    """The tiny preset with the embedded data's class names."""
    import unip2
    from unip2.data.manifest import load_manifest

    config = unip2.preset("tiny")
    config.class_names = dict(load_manifest(embedded_data)["class_names"])
    return config


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_config, tmp_path_factory):
    """An untrained tiny model saved with ``unip2.save`` (seeded, so every run builds the same one)."""
    import torch

    import unip2

    torch.manual_seed(0)
    return unip2.save(unip2.build_model(tiny_config), tmp_path_factory.mktemp("checkpoint") / "model")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test run, 2 CPUs, dashboard off (its processes ask no other Ray's dashboard:
    ``pipelines.run.ray_runtime.NO_STATE_API``)."""
    import ray

    from pipelines.run.ray_runtime import spawning_local_ray

    with spawning_local_ray():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread in the test process: Ray workers and data tasks need the other core."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def web_shards(tmp_path_factory):
    """Web image-text pairs as img2dataset writes them (``--output_format webdataset``): per shard
    ``NNNNN.tar`` ({key}.jpg + {key}.txt and/or {key}.json), ``NNNNN.parquet`` and ``NNNNN_stats.json``.

    Folder ``web``: 00003.tar (captions in .txt, and in .json as img2dataset writes both), 00004.tar
    (captions only in .json, plus a corrupt jpg, a sample without caption, one with a blank caption);
    folder ``web_more``: 00005.tar (.json captions). Returns {"web", "web_more", "captions": {image_id:
    caption} of the usable samples, "skipped": {reason: count}}.
    """
    import io
    import json
    import tarfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("web_shards")
    captions: dict[int, str] = {}

    def jpeg() -> bytes:
        size = (int(rng.integers(40, 72)), int(rng.integers(40, 72)))
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
        return buffer.getvalue()

    def write_shard(folder, shard: int, samples: list[dict]) -> None:
        folder.mkdir(exist_ok=True)
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for sample in samples:
                for extension, data in sample["files"].items():
                    info = tarfile.TarInfo(f"{sample['key']}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        pq.write_table(pa.table({"key": [s["key"] for s in samples], "status": ["success"] * len(samples)}),
                       folder / f"{shard:05d}.parquet")
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(samples), "successes": len(samples)}))

    def sample(shard: int, index: int, caption: str | None, *, txt: bool, image: bytes | None = None) -> dict:
        key = f"{shard:05d}{index:04d}"  # img2dataset: shard id + index in the shard
        meta = {"url": f"https://example.com/{key}.jpg", "key": key, "status": "success", "width": 64}
        files = {"jpg": image if image is not None else jpeg()}
        if caption is not None:
            meta["caption"] = caption
        files["json"] = json.dumps(meta, indent=4).encode()
        if txt:
            files["txt"] = (caption or "").encode()
        if caption and caption.strip() and image is None:
            captions[int(key)] = caption.strip()
        return {"key": key, "files": files}

    write_shard(root / "web", 3, [sample(3, i, f"a photo of web thing {i}", txt=True) for i in range(8)])
    write_shard(root / "web", 4, [sample(4, i, f"a json caption number {i} ", txt=False) for i in range(6)] + [
        sample(4, 6, "corrupt bytes", txt=True, image=b"\xff\xd8 not a jpeg"),
        sample(4, 7, None, txt=False),
        sample(4, 8, "   ", txt=True)])
    write_shard(root / "web_more", 5, [sample(5, i, f"one more pair {i}", txt=False) for i in range(6)])
    return {"web": root / "web", "web_more": root / "web_more", "captions": captions,
            "skipped": {"empty_caption": 1, "missing_caption": 1, "undecodable_image": 1}}

