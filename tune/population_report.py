"""The files a Population Based Training run writes: ``results.json`` / ``results.md`` (every member: its last
objective and metrics, its whole schedule), ``pbt.png`` (each member's ω_k, s_k and lr over steps, and the
objective) and ``best.yaml`` (the best member's schedule as a run config ``pipelines/train.py`` takes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from tune.objective import OBJECTIVE, metric_key
from tune.pbt_member import MEMBER_FILE, STEP, schedule_overrides
from tune.results import as_number, table_cell
from unip2 import config_io
from unip2.run_config import RunConfig, load_run_config
from unip2.schedules import pieces


def member_rows(grid, tasks: list[str]) -> list[dict]:
    """One row per member that reported, best first (the furthest step, then the highest objective)."""
    rows = []
    for result in grid:
        if not result.metrics or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as directory:
            member = json.loads((Path(directory) / MEMBER_FILE).read_text())
        history = result.metrics_dataframe
        rows.append({"member": _trial_id(result.path), "step": member["step"], "checkpoint": result.checkpoint.path,
                     OBJECTIVE: as_number(result.metrics.get(OBJECTIVE)),
                     **{metric_key(task): as_number(result.metrics.get(metric_key(task))) for task in tasks},
                     "schedule": member["schedule"],
                     "objective_by_step": {int(s): as_number(o) for s, o in zip(history[STEP], history[OBJECTIVE])}
                     if history is not None and STEP in history else {}})
    rows.sort(key=lambda row: (-row["step"], -(row[OBJECTIVE] if row[OBJECTIVE] is not None else -math.inf)))
    return rows


def _trial_id(path: str) -> str:
    """A Tune trial folder (``run_member_<id>_<index>_<params>_<date>``) → ``<id>_<index>``."""
    parts = Path(path).name.split("_")
    return f"{parts[2]}_{parts[3]}" if len(parts) > 3 else Path(path).name


def best_run_config(row: dict, *, config_path: str | None, overrides: list[str], interval: int) -> RunConfig:
    """The base run with the member's whole schedule (and its validations), from step 0."""
    run = load_run_config(config_path, [*overrides, *schedule_overrides(row["schedule"]),
                                        f"train.validate_every={interval}"])
    run.out = None
    return run


def write_outputs(grid, out: Path, *, run: RunConfig, spec, interval: int) -> tuple[list[dict], dict[str, Path]]:
    tasks = list(run.tasks)
    rows = member_rows(grid, tasks)
    files = {"json": out / "results.json", "md": out / "results.md"}
    files["json"].write_text(json.dumps(rows, indent=2, default=str))
    files["md"].write_text(results_markdown(rows, tasks, run.train.steps))
    if rows:
        files["picture"] = draw_schedules(rows, tasks, run.train.steps, out / "pbt.png")
    if rows and rows[0]["step"] == run.train.steps:
        best = best_run_config(rows[0], config_path=spec.config_path, overrides=spec.overrides, interval=interval)
        path = out / "best.yaml"
        path.write_text(f"# The best member ({rows[0]['member']}, objective {rows[0][OBJECTIVE]:.4g}) of the "
                        f"population in {out}: its whole schedule of ω_k, s_k and lr.\n"
                        f"#   python pipelines/train.py --config {path}\n"
                        + yaml.safe_dump(config_io.to_dict(best), sort_keys=False))
        load_run_config(path)  # refuse to leave a file behind that train.py would not accept
        files["best"] = path
    return rows, files


def results_markdown(rows: list[dict], tasks: list[str], steps: int) -> str:
    keys = [metric_key(task) for task in tasks]
    lines = ["# Population Based Training", "",
             f"Members ranked by the objective at their last step (of {steps}); the objective is the mean of each "
             "task's validation metric relative to the uniform run's at the same step.", "",
             "| member | step | objective | " + " | ".join(keys) + " | schedule |",
             "|" + "---|" * (len(keys) + 4)]
    for row in rows:
        changed = {key: value for key, value in row["schedule"].items() if isinstance(value, dict)}
        constant = {key: value for key, value in row["schedule"].items() if not isinstance(value, dict)}
        shown = "; ".join([f"{_short(k)} {_pieces(v)}" for k, v in changed.items()]
                          + [f"{_short(k)} {v:.3g}" for k, v in constant.items()])
        lines.append(f"| {row['member']} | {row['step']} | {table_cell(row[OBJECTIVE])} | "
                     + " | ".join(table_cell(row[key]) for key in keys) + f" | {shown} |")
    return "\n".join(lines) + "\n"


def draw_schedules(rows: list[dict], tasks: list[str], steps: int, path: Path) -> Path:
    """One panel per searched value (each member a step line) and one of the objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({key for row in rows for key in row["schedule"]})
    panels = [*keys, OBJECTIVE]
    columns = 4
    figure, axes = plt.subplots(-(-len(panels) // columns), columns, figsize=(4 * columns, 2.6 * -(-len(panels) // columns)),
                                squeeze=False)
    for axis, key in zip(axes.flat, panels):
        for row in rows:
            if key == OBJECTIVE:
                points = sorted(row["objective_by_step"].items())
                axis.plot([s for s, _ in points], [v for _, v in points], marker="o", label=row["member"])
            elif key in row["schedule"]:
                parts = pieces(row["schedule"][key])
                xs = [start for start, _ in parts] + [steps]
                ys = [value for _, value in parts] + [parts[-1][1]]
                axis.step(xs, ys, where="post", label=row["member"])
        axis.set_title(_short(key), fontsize=9)
        axis.set_xlim(0, steps)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _short(key: str) -> str:
    return key.removeprefix("tasks.").replace(".sampling_weight", " s").replace(".omega", " ω").replace("optim.", "")


def _pieces(schedule: dict) -> str:
    return ", ".join(f"{start}: {value:.3g}" for start, value in pieces(schedule))
