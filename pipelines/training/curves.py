"""Training curves (per-task loss and speed against step) as a PNG, from the checkpoint's history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """history: [{"step", "steps_per_s", "loss/<task>": value, ...}] → PNG with one line per task."""
    path = Path(path)
    tasks = sorted({key[5:] for entry in history for key in entry if key.startswith("loss/")})
    figure, (loss_axis, speed_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
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
