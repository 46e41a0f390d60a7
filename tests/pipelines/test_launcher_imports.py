"""A process that launches training (a driver, a Tune trial actor) imports none of the model's code: its Ray Train
workers do. A fresh trial actor would otherwise pay ~3 s of imports (timm, torchvision, transformers, scipy)
before it could start its run."""

import subprocess
import sys

MODEL_CODE = ("timm", "torchvision", "transformers", "scipy.optimize", "unip2.model.generalist", "unip2.pretraining",
              "pipelines.training.loop", "pipelines.stage1.loop", "pipelines.evaluation.pipeline")


def test_launching_training_imports_no_model_code():
    code = ("import sys, tune.trial, pipelines.training.trainer, pipelines.stage1.encoders; "
            f"found = [m for m in {MODEL_CODE!r} if m in sys.modules]; print(found); sys.exit(1 if found else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
