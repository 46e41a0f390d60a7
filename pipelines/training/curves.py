"""Training curves (per-task loss and speed against step) as a PNG, from the checkpoint's history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict], path: str | Path, validation: list[dict] = ()) -> Path:
    """history: [{"step", "steps_per_s", "loss/<task>": value, ...}] → PNG with one line per task; with
    ``validation`` ([{"step", "val/<task>/<metric>": value, ...}], the validations during training) a third
    panel of the validation metrics."""
    path = Path(path)
    tasks = sorted({key[5:] for entry in history for key in entry if key.startswith("loss/")})
    figure, axes = plt.subplots(1, 3 if validation else 2, figsize=(18 if validation else 12, 4.5))
    loss_axis, speed_axis = axes[0], axes[1]
    if validation:
        metrics = sorted({key for entry in validation for key in entry if key.startswith("val/")})
        for key in metrics:
            points = [(e["step"], e[key]) for e in validation if key in e]
            axes[2].plot([p[0] for p in points], [p[1] for p in points], label=key[4:], marker="o")
        axes[2].set(xlabel="step", ylabel="validation metric", title="validation during training")
        axes[2].legend(fontsize=7)
    for task in tasks:
        points = [(e["step"], e[f"loss/{task}"]) for e in history if f"loss/{task}" in e]
        loss_axis.plot([p[0] for p in points], [p[1] for p in points], label=task, marker=".")
    loss_axis.set(xlabel="step", ylabel="training loss (weighted sum of the task's terms)", yscale="log",
                  title="loss per task")
    loss_axis.legend()
    speed_axis.plot([e["step"] for e in history], [e["steps_per_s"] for e in history], color="gray")
    speed_axis.set(xlabel="step", ylabel="steps / s", title="training speed")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
