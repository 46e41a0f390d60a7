"""``report.md``: our numbers in the layout of the paper's Table 6, beside its BASE and LARGE rows,
then every metric of every task.

The paper's rows are copied from Uni-Perceiver v2 (CVPR 2023) Table 6, all without task-specific
fine-tuning; its Flickr30k columns are zero-shot, and so are ours (``retrieval_flickr30k``: retrieval on
the data's Flickr30k test split, which no run trains on). Our numbers come from other data (by default
the embedded shapes world) and other hardware: the report says so next to the comparison. Metrics are
shown ×100 like the paper's (CIDEr included, so 116.9 is pycocoevalcap's 1.169).
"""

from __future__ import annotations

from pathlib import Path

from unip2.tasks import TASKS

COLUMNS = ("params", "IN-1k top-1", "COCO box AP", "COCO mask AP", "COCO caption B@4", "CIDEr",
           "COCO i→t R@1", "F30k i→t R@1", "COCO t→i R@1", "F30k t→i R@1")
PAPER_ROWS = {
    "Uni-Perceiver v2 BASE (Swin-B), paper": ("308M", 86.3, 58.6, 50.6, 35.4, 116.9, 71.8, 88.1, 55.6, 73.8),
    "Uni-Perceiver v2 LARGE (Swin-L), paper": ("446M", 87.2, 61.9, 53.6, 36.5, 122.5, 75.0, 89.3, 58.5, 79.6),
}


def paper_columns() -> dict[str, tuple[str, str, bool]]:
    """Table 6 column → (task, metric key, zero-shot), from the tasks' headlines; a column no task fills is not
    measured here."""
    filled = {}
    for name, task in TASKS.items():
        for headline in task.headline_metrics():
            if headline.paper_column:
                filled[headline.paper_column] = (name, headline.metric, False)
            if headline.zero_shot_paper_column:
                filled[headline.zero_shot_paper_column] = (name, headline.metric, True)
    return filled


def measured(metrics: dict, task: str, key: str, zero_shot: bool):
    """A metric of ``evaluate``'s result: the task's own split's, or its zero-shot evaluation's."""
    if zero_shot:
        entry = next((k for k, where in metrics.get("zero_shot", {}).items() if where["task"] == task), None)
    else:
        entry = task
    return metrics.get(entry, {}).get(key) if entry else None


def write_report(metrics: dict, path: str | Path, *, data_description: str) -> Path:
    """Write the report of one ``evaluate`` result (the content of metrics.json) to ``path``."""
    checkpoint = Path(metrics["checkpoint"]).name if metrics["checkpoint"] else "the model in memory"
    ours = [_millions(metrics.get("parameters"))]
    filled = paper_columns()
    for column in COLUMNS[1:]:
        value = measured(metrics, *filled[column]) if column in filled else None
        ours.append("–" if value is None else f"{100 * value:.1f}")
    lines = [
        f"# Evaluation of `{checkpoint}` on the {metrics['split']} split",
        "",
        f"Measured on **{data_description}** ({metrics['data']}), not on the paper's ImageNet / COCO / "
        "Flickr30k, with other hardware: the paper's rows are shown for the layout and scale only, "
        "the numbers are **not comparable**.",
        "",
        "## Table 6 layout",
        "",
        "| model | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
        f"| ours: `{checkpoint}` (measured on {data_description}) | " + " | ".join(ours) + " |",
    ]
    for name, values in PAPER_ROWS.items():
        lines.append(f"| {name} (COCO / ImageNet / Flickr30k) | " + " | ".join(str(v) for v in values) + " |")
    zero_shot = metrics.get("zero_shot", {})
    lines += ["", "Ours ×100 like the paper; – = not measured (no data for the task on this split). F30k: "
              "retrieval on the Flickr30k test split, zero-shot (never trained on), as in the paper; – when the "
              "data has no Flickr30k test split.", "", "## All metrics", ""]
    for task in TASKS:
        entries = [(task, "")] if task in metrics else []
        entries += [(key, f" (zero-shot: {where['dataset']} {where['split']} split)")
                    for key, where in zero_shot.items() if where["task"] == task and key in metrics]
        for key, note in entries:
            lines += [f"### {key}{note}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {name} | {_number(value)} |" for name, value in metrics[key].items()]
            lines.append("")
    lines += ["## Run", "",
              f"- checkpoint: `{metrics['checkpoint']}`",
              f"- annotations: instances `{metrics['annotations']['instances']}`, captions "
              f"`{metrics['annotations']['captions']}` (caption references: the split's `captions` column)",
              f"- images skipped (undecodable), per task: {metrics['skipped_images'] or 'none'}",
              f"- tasks not evaluated: {metrics['skipped_tasks'] or 'none'}",
              f"- candidate names replaced (label space → count): {metrics['candidate_names'] or 'none'}",
              f"- wall time: {metrics['wall_time_s']} s", ""]
    if "predictions" in metrics.get("files", {}):
        lines += ["![predictions](predictions.png)", ""]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path


def _millions(count: int | None) -> str:
    return "–" if count is None else f"{count / 1e6:.1f}M"


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
