"""Shared fixtures: one small embedded dataset, one untrained tiny checkpoint, one local Ray per test run.

Ray is started once for the whole session (not per test) with the environment measured to work on
2-core machines (../shared/RAY_NOTES.md): listeners on 127.0.0.1, no usage stats, fast Train reports.
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
    """One local Ray for the whole test run, 2 CPUs, dashboard off."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread in the test process: Ray workers and data tasks need the other core."""
    import torch

    torch.set_num_threads(1)
