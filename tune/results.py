"""A sweep's output files: ``results.csv`` / ``results.md`` (one row per trial), ``sweep.png`` (per-task
metrics of every trial, Pareto set highlighted) and ``best.yaml`` (a run config ``pipelines/train.py`` takes).

A row is a flat dict: ``trial``, ``status`` (completed / stopped early (ASHA) / unfinished (interrupted,
resumable) / error), the sweep metrics (``objective`` and ``<task>/<metric>``), the trial's parameters
(``tasks.<task>.omega``, ..., ``optim.lr``), ``iterations`` (results reported) and the trial's times.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import yaml

from tune.objective import OBJECTIVE, metric_key, sweep_metrics
from tune.search_space import flat_params, to_overrides
from unip2 import config_io
from unip2.run_config import load_run_config

COMPLETED, STOPPED, UNFINISHED, ERROR = "completed", "stopped early", "unfinished", "error"
TIMES = ("train_s", "eval_s", "trial_wall_s")


def trial_rows(results, tasks: list[str], states: dict[str, str]) -> list[dict]:
    """One row per trial of a Tune ``ResultGrid``; ``states``: trial id → Tune status as saved in the
    experiment state (TERMINATED, ERROR, or RUNNING / PENDING for a trial an interruption cut short)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial = metrics.get("trial_id") or Path(result.path).name
        state = states.get(trial, "PENDING")
        if result.error is not None or state == "ERROR":
            status = f"{ERROR}: {type(result.error).__name__}" if result.error is not None else ERROR
        elif state == "TERMINATED":
            status = COMPLETED if OBJECTIVE in metrics else STOPPED  # ASHA stopped it
        else:
            status = UNFINISHED
        row = {"trial": trial, "status": status}
        row |= {key: metrics.get(key) for key in sweep_metrics(tasks)}
        row |= flat_params(result.config)
        row["iterations"] = metrics.get("training_iteration")
        row |= {key: metrics.get(key) for key in TIMES}
        if row["trial_wall_s"] is None:  # stopped before its final report: Tune's clock
            row["trial_wall_s"] = metrics.get("time_total_s")
        row["params"] = result.config
        rows.append(row)
    return rows


def baseline_row(baseline: dict) -> dict:
    """The uniform-weight reference as a table row (objective 1 by definition)."""
    return {"trial": "baseline", "status": COMPLETED, OBJECTIVE: 1.0, **baseline["scores"],
            **flat_params(baseline["params"]), "iterations": None, "train_s": baseline["train_s"],
            "eval_s": baseline["eval_s"], "trial_wall_s": baseline["wall_s"], "params": baseline["params"]}


def ranked(rows: list[dict], metric: str) -> list[dict]:
    """Completed trials first, best ``metric`` first; then the others in their order."""
    done = [r for r in rows if r["status"] == COMPLETED and as_number(r.get(metric)) is not None]
    rest = [r for r in rows if r not in done]
    return sorted(done, key=lambda r: -r[metric]) + rest


def pareto_set(rows: list[dict], keys: list[str]) -> list[str]:
    """Trials of the completed rows that no other completed row beats on every key (higher is better)."""
    points = [(r["trial"], [as_number(r.get(k)) or 0.0 for k in keys]) for r in rows if r["status"] == COMPLETED]
    front = []
    for name, p in points:
        dominated = any(all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p)) for _, q in points)
        if not dominated:
            front.append(name)
    return front


def columns(rows: list[dict], tasks: list[str]) -> list[str]:
    params = sorted({k for r in rows for k in r if k.startswith(("tasks.", "optim."))})
    return ["trial", "status", *sweep_metrics(tasks), *params, "iterations", *TIMES]


def write_csv(rows: list[dict], tasks: list[str], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(rows, tasks), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def markdown_table(rows: list[dict], tasks: list[str]) -> str:
    """Trial, status, objective, each task's metric, ω/s per task, lr, trial time: a compact table."""
    keys = ["trial", "status", *sweep_metrics(tasks)]
    keys += [k for k in columns(rows, tasks) if k.startswith(("tasks.", "optim."))] + ["trial_wall_s"]
    short = {k: k.removeprefix("tasks.").replace(".sampling_weight", ".s").replace(".omega", ".ω") for k in keys}
    lines = ["| " + " | ".join(short[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(table_cell(row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], tasks: list[str], path: Path, *, metric: str) -> Path:
    """Left: every task's headline metric, one line per trial (Pareto set in colour, baseline dashed);
    right: each trial's sweep ``metric``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [metric_key(t) for t in tasks]
    trials = [r for r in rows if r["trial"] != "baseline" and r["status"] == COMPLETED]
    front = set(pareto_set(trials, keys))
    figure, (lines, bars) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    x = list(range(len(keys)))
    for row in trials:
        values = [as_number(row.get(k)) or 0.0 for k in keys]
        if row["trial"] in front:
            lines.plot(x, values, "o-", linewidth=2, label=f"{row['trial']} (Pareto)")
        else:
            lines.plot(x, values, "o-", color="0.7", linewidth=1)
    for row in rows:
        if row["trial"] == "baseline":
            lines.plot(x, [as_number(row.get(k)) or 0.0 for k in keys], "k--", linewidth=1.5, label="baseline ω=s=1")
    lines.set_xticks(x, [k.replace("/", "\n") for k in keys], fontsize=8)
    lines.set_ylabel("validation metric")
    lines.set_title("per-task metrics of every trial (Pareto set in colour)")
    lines.legend(fontsize=7)
    shown = [r for r in rows if as_number(r.get(metric)) is not None]
    colours = ["tab:orange" if r["trial"] in front else ("black" if r["trial"] == "baseline" else "0.6") for r in shown]
    bars.barh([r["trial"] for r in shown], [r[metric] for r in shown], color=colours)
    bars.invert_yaxis()
    bars.set_xlabel(metric)
    bars.tick_params(axis="y", labelsize=7)
    bars.set_title(f"{metric} per trial")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_outputs(rows: list[dict], tasks: list[str], out: Path, *, metric: str, config_path: str | None,
                  overrides: list[str]) -> dict[str, Path]:
    """``results.csv``, ``results.md``, ``sweep.png`` and (once a trial completed) ``best.yaml`` in ``out``."""
    files = {"csv": write_csv(rows, tasks, out / "results.csv"), "md": out / "results.md"}
    files["md"].write_text(markdown_table(rows, tasks))
    files["plot"] = plot(rows, tasks, out / "sweep.png", metric=metric)
    best = best_row(rows, metric)
    if best is not None:
        files["best"] = write_best_config(best, config_path=config_path, overrides=overrides,
                                          path=out / "best.yaml", metric=metric, sweep_dir=out)
    return files


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The completed trial (not the baseline) with the highest ``metric``, if any."""
    trials = ranked([r for r in rows if r["trial"] != "baseline"], metric)
    if trials and trials[0]["status"] == COMPLETED and as_number(trials[0].get(metric)) is not None:
        return trials[0]
    return None


def write_best_config(row: dict, *, config_path: str | None, overrides: list[str], path: Path,
                      metric: str, sweep_dir: Path) -> Path:
    """The base run config with the best trial's parameters, as YAML that ``load_run_config`` takes."""
    run = load_run_config(config_path, [*overrides, *to_overrides(row["params"])])
    run.out = None  # a new run folder, not the trial's
    header = (f"# Best trial {row['trial']} of the sweep in {sweep_dir} ({metric} = {row[metric]:.4g}).\n"
              f"#   python pipelines/train.py --config {path}\n")
    path.write_text(header + yaml.safe_dump(config_io.to_dict(run), sort_keys=False))
    load_run_config(path)  # refuse to leave a file behind that train.py would not accept
    return path


def as_number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def table_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)
