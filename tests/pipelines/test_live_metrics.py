"""The TensorBoard callback's event file: each report is on disk when the callback returns (the run may end
right after its last report, with nothing left to flush it)."""

from __future__ import annotations

import math

from event_files import scalars
from pipelines.training.live_metrics import TensorBoardLog, write_evaluation


def test_each_report_is_readable_as_soon_as_it_is_written(tmp_path):
    log = TensorBoardLog(tmp_path / "tensorboard")
    for step in (5, 6, 8, 10):
        log.after_report(None, [{"step": step, "loss/captioning": 1.0 / step, "lr": 1e-4, "nan": math.nan,
                                 "resumed": True}, {"step": step, "loss/captioning": 99.0}], checkpoint=None)
        logged = scalars(tmp_path / "tensorboard")  # read while the writer is still open
        assert sorted(logged["loss/captioning"]) == [s for s in (5, 6, 8, 10) if s <= step]
    assert abs(logged["loss/captioning"][10] - 0.1) < 1e-7  # rank 0's numbers (stored as float32)
    assert set(logged) == {"loss/captioning", "lr"}  # neither the step, a non-finite number, nor a flag


def test_the_evaluation_goes_beside_the_live_file_under_its_task(tmp_path):
    TensorBoardLog(tmp_path).after_report(None, [{"step": 3, "lr": 0.5}], checkpoint=None)
    write_evaluation(tmp_path, {"classification": {"top1": 0.75}, "note": "not numbers"}, step=3)
    assert scalars(tmp_path) == {"lr": {3: 0.5}, "eval/classification/top1": {3: 0.75}}
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
