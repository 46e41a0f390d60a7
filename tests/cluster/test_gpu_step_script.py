"""benchmarks/gpu_step.py: the CPU path end to end (tiny preset, 3 steps per task), and its input sizing."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

import unip2
from unip2.config import TextConfig
from unip2.model.tokenizer import TextTokenizer
from unip2.precision import resolve_precision
from unip2.tasks import TASKS

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_reports_every_task(tmp_path):
    out = tmp_path / "step.json"
    # One thread: a second OpenMP thread spin-waits for a core the rest of the suite is using.
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--preset", "tiny", "--steps", "3",
                           "--warmup", "0", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["preset"] == "tiny" and report["device"] == "cpu"
    # default.yaml trains at train.precision auto: bf16 where this CPU computes it natively
    assert report["precision"] == resolve_precision("auto", torch.device("cpu")) and report["bf16"] == (report["precision"] == "bf16")
    assert report["peak_measured"] and report["peak_tflops"] > 0
    assert list(report["tasks"]) == list(TASKS)  # default.yaml trains every registered task
    for name, figures in report["tasks"].items():
        assert figures["steps_per_s"] > 0 and figures["tflop_per_step"] > 0, name
        # MFU = counted FLOPs × steps/s ÷ peak (on a busy CPU the measured peak is noisy, so no upper bound)
        assert math.isclose(figures["mfu"], figures["tflop_per_step"] * figures["steps_per_s"] / report["peak_tflops"])
        assert figures["mfu"] > 0 and figures["peak_mem_gib"] > 0, name
        assert math.isfinite(figures["loss"]) and figures["batch_size"] == 8, name
        assert figures["image_size"] == unip2.preset("tiny").image_size, name
        assert f"[gpu_step] {name}" in done.stdout


def test_unknown_task_and_missing_cuda_are_refused(capsys):
    script = load_script()
    assert script.main(["--device", "cpu", "--preset", "tiny", "--tasks", "depth"]) == 2
    assert "unknown task" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert script.main(["--preset", "tiny"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_real_sizes_pad_the_vocabulary_and_label_spaces():
    script = load_script()
    tokenizer = script.padded_tokenizer(TextConfig(vocab_size=600))
    plain = TextTokenizer.from_file(None)
    assert tokenizer.vocab_size == 600 > plain.vocab_size
    ids, _ = tokenizer.encode_batch(["a small red circle"], max_length=16)
    assert (ids == plain.encode_batch(["a small red circle"], max_length=16)[0]).all()  # padding changes no text

    run = script.load_run_config(script.ROOT / "pipelines" / "configs" / "default.yaml", ["model.text.vocab_size=600"])
    model = script.build(run, {"imagenet": ["n01", "n02"], "coco": ["circle"]}, real_sizes=True)
    assert len(model.config.class_names["imagenet"]) == 1000 and len(model.config.class_names["coco"]) == 80
    assert model.config.class_names["imagenet"][:2] == ["n01", "n02"]  # the data's labels keep their indices
    assert model.tokenizer.vocab_size == 600


def test_the_gpu_check_runs_eager_and_compiled_into_one_json(tmp_path):
    """benchmarks/gpu_check.py as a GPU host would run it, here on the CPU with the tiny preset and one task."""
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_check.py"), "--device", "cpu", "--preset", "tiny",
                           "--steps", "1", "--warmup", "0", "--budget-s", "600", "--out", str(out), "--threads", "1",
                           "--tasks", "language_modelling"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert list(report) == ["eager", "compiled"]
    assert [report[mode]["compile"] for mode in report] == [False, True]
    for mode in report.values():
        figures = mode["tasks"]["language_modelling"]
        assert figures["steps_per_s"] > 0 and figures["mfu"] > 0
        assert figures["syncs_per_step"] is None  # counted on CUDA only


def test_an_out_of_memory_is_recorded_in_the_report(tmp_path):
    """A task's out-of-memory becomes its record (the loop then goes on to the next task), kept in the JSON."""
    import torch

    script = load_script()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    record = script.out_of_memory("captioning", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
                                  optimizer, torch.device("cpu"))
    assert record == {"error": "out of memory: CUDA out of memory. Tried to allocate"}
    script.write_report(str(tmp_path / "r.json"), {"preset": "base"}, {"captioning": record})
    assert json.loads((tmp_path / "r.json").read_text())["tasks"]["captioning"] == record
