"""Pretrained backbone files as users have them load whole through timm's loader, or fail naming what is left out.

Files are written by the test from randomly initialized timm / torchvision models, in each release format:
timm's (``model.safetensors``, ``pytorch_model.bin``: the whole classifier), Microsoft's original Swin release
(``.pth`` with a ``model`` key, downsampling at the end of each stage, buffers included), torchvision's ResNet,
and the backbone files ``unip2.persistence.export_backbone`` writes.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from unip2.model.backbone import Backbone, PartialBackboneWeights

SWIN = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module")
def swin_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.contiguous() for k, v in timm.create_model(SWIN, pretrained=False).state_dict().items()}


def original_swin_release(state: dict[str, torch.Tensor]) -> dict:
    """timm's Swin names → Microsoft's release layout: ``{"model": ...}``, the downsample of stage i+1 stored as
    stage i's, ``head.weight``, and the relative position index buffers the release carries."""
    model = {}
    for key, value in state.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        model[key.replace("head.fc.", "head.")] = value
        if key.endswith("relative_position_bias_table"):
            model[key.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.long)
    return {"model": model}


def source_name(feature_name: str) -> str:
    return re.sub(r"^([^.]+)_(\d+)\.", r"\1.\2.", feature_name)


def assert_all_loaded(backbone: Backbone, source: dict[str, torch.Tensor]) -> None:
    own = backbone.body.state_dict()
    unequal = [k for k, v in own.items() if not torch.equal(v, source[source_name(k)])]
    assert not unequal, f"{len(unequal)} of {len(own)} tensors differ from the file, e.g. {unequal[:3]}"


def build(path, name=SWIN, strict=True, out_indices=(1, 2, 3)) -> Backbone:
    return Backbone(name=name, out_indices=out_indices, image_size=224, pretrained_path=str(path),
                    pretrained_strict=strict)


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_timm_release_files_load_every_swin_tensor(swin_state, tmp_path, file_name):
    path = tmp_path / file_name
    save_file(swin_state, str(path)) if file_name.endswith(".safetensors") else torch.save(swin_state, path)
    backbone = build(path)
    assert len(backbone.body.state_dict()) == 169
    assert_all_loaded(backbone, swin_state)


def test_original_swin_release_loads_every_tensor(swin_state, tmp_path):
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(original_swin_release(swin_state), path)
    assert_all_loaded(build(path), swin_state)


def test_torchvision_resnet_file_loads_into_timm_resnet(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    backbone = build(path, name="resnet18", out_indices=(2, 3, 4))
    own = backbone.body.state_dict()
    assert own and all(torch.equal(v, state[k]) for k, v in own.items())


def test_exported_backbone_file_loads(swin_state, tmp_path):
    torch.manual_seed(3)
    original = Backbone(name=SWIN, out_indices=(1, 2, 3), image_size=224)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in original.body.state_dict().items()}, str(path))
    loaded = build(path)
    assert all(torch.equal(v, original.body.state_dict()[k]) for k, v in loaded.body.state_dict().items())


def test_missing_tensor_fails_naming_it_unless_not_strict(swin_state, tmp_path, capsys):
    partial = {k: v for k, v in swin_state.items() if k != "layers.2.blocks.1.mlp.fc2.weight"}
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    with pytest.raises(PartialBackboneWeights, match=r"leaves 1 of 169 .*layers_2\.blocks\.1\.mlp\.fc2\.weight.*"
                                                     r"pretrained_strict=false"):
        build(path)
    backbone = build(path, strict=False)
    assert "loaded 168/169 tensors" in capsys.readouterr().out
    own = backbone.body.state_dict()
    assert torch.equal(own["layers_2.blocks.1.mlp.fc1.weight"], swin_state["layers.2.blocks.1.mlp.fc1.weight"])


def test_another_architectures_file_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="backbone.pretrained_path"):
        build(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.pretrained_path"):
        build(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("size", [224, 384, 1024])
def test_swin_accepts_every_tasks_image_size(size):
    backbone = Backbone(name=SWIN, out_indices=(1, 2, 3), image_size=512)
    with torch.no_grad():
        maps = backbone(torch.zeros(1, 3, size, size))
    assert [m.shape[-1] for m in maps] == [size // 8, size // 16, size // 32]
    assert [m.shape[1] for m in maps] == backbone.channels
