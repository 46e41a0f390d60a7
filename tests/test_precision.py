"""``train.precision``: auto picks bf16 where the hardware computes it natively; the fp32 islands hold under bf16
autocast (scores, box math, losses), and every task trains in bf16 with losses close to fp32's."""

import numpy as np
import pytest
import torch

import unip2
from unip2 import precision
from unip2.config_io import ConfigError
from unip2.data.row_reader import RowReader
from unip2.precision import autocast, resolve_precision
from unip2.run_config import load_run_config
from unip2.tasks import TASKS
from unip2.training_setup import TaskLoss

CPU = torch.device("cpu")


def test_auto_follows_the_cpu_flags(monkeypatch):
    native = bool(precision.cpu_bf16_flags())
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())  # a CPU without AVX512-BF16 or AMX
    assert resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(ValueError, match="train.precision: bf16 asked"):
        resolve_precision("bf16", CPU)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert resolve_precision("bf16", CPU) == "bf16"


def test_the_config_field_is_checked_and_the_old_one_upgraded():
    assert load_run_config().train.precision == "auto"
    with pytest.raises(ConfigError) as err:
        load_run_config(overrides=["train.precision=fp16"])
    assert err.value.field == "train.precision"
    # A run config saved before train.precision existed (train.bf16) still loads.
    assert load_run_config(overrides=["train.bf16=false"]).train.precision == "fp32"
    assert load_run_config(overrides=["train.bf16=true"]).train.precision == "auto"


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return unip2.build_model(tiny_config)


def test_scores_and_boxes_stay_fp32_under_autocast(model):
    a, b = torch.randn(3, 32), torch.randn(5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.score(a, b, "category")
        encoding = model.encode_image(torch.rand(2, 3, 64, 64))
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, model.score(a, b, "category"), rtol=1e-5, atol=1e-5)
    assert encoding.proposals["boxes"].dtype == torch.float32


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_trains_in_bf16_close_to_fp32(name, model, embedded_data):
    task = TASKS[name]
    reader = RowReader(embedded_data, task.dataset, "train")
    batch = task.collate(task.preprocess(reader.read(np.arange(4)), image_size=model.config.image_size,
                                         tokenizer=model.tokenizer, train=True, rng=np.random.default_rng(0)))
    losses = {}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)  # the same dropout and denoising noise in both
        model.zero_grad(set_to_none=True)
        with autocast(mode, CPU):
            loss, _ = TaskLoss(model)(name, batch)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss), mode
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), mode
        losses[mode] = float(loss.detach())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05), losses
