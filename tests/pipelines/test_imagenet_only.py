"""The commonest real dataset alone: a data folder converted from an ImageNet-format split only trains with the
default recipe. Stage 1 pretrains the image encoder alone (the text encoder's task has no rows there, which the
run says), then the generalist trains on classification."""

import json

from pipelines.stage1.encoders import pretrain_if_needed
from pipelines.run.prepare import prepare_run
from pipelines.training.trainer import fit
from unip2.data.manifest import load_manifest
from unip2.data.prepare import prepare

SMALL = ["scale.num_workers=2", "scale.cpus_per_worker=0.5", "data.loader_cpus=0.25", "optim.warmup_steps=1",
         "model.proposals.num_queries=12", "model.image_size=64", "tasks={classification: {batch_size: 4}}",
         "pretrain.image_steps=2", "pretrain.image_batch_size=4", "train.steps=2", "train.log_every=1",
         "train.checkpoint_every=2"]


def test_an_imagenet_only_folder_trains_with_stage_1_on_the_image_encoder_alone(ray_local, embedded_raw, tmp_path,
                                                                              capsys):
    data = tmp_path / "imagenet-only"
    prepare(out=data, imagenet=embedded_raw / "imagenet", progress_interval_s=3600)
    assert set(load_manifest(data)["datasets"]) == {"imagenet"}

    run, out, root = prepare_run(None, [*SMALL, f"data.root={data}", f"data.cache_dir={tmp_path / 'cache'}"],
                                 out=str(tmp_path / "run"))
    assert run.pretrain.encoders == ["image", "text"]  # the default recipe asks for both
    run = pretrain_if_needed(run, root, out)
    console = capsys.readouterr().out
    assert "[pretrain] the text encoder starts from random weights: its stage-1 task (language_modelling) has no " \
           "training rows" in console
    assert "pretraining the image encoder (2 steps)" in console
    assert run.model.backbone.pretrained_path and run.model.text.pretrained_path is None

    checkpoint = fit(run, out=out, data_root=root)
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["step"] == 2
    assert {key for entry in state["history"] for key in entry if key.startswith("loss/")} == {"loss/classification"}
