"""The ablation's output: per-table markdown + CSV (mean ± spread over seeds), bar plots, the interference
table and heatmap, and the direction checks against the paper's findings.

Inputs are plain dicts: a trial row is {"variant", "seed", "status", "<task>/<metric>": value, ...} (metrics
as fractions, shown ×100 like the paper); an interference result is ``ablation_interference``'s dict.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tune.ablation_variants import FULL, AblationTable
from unip2.tasks import TASKS

@dataclass(frozen=True)
class Column:
    key: str
    """Trial-row key, ``<task>/<metric>``."""
    label: str
    task: str


def columns(tasks: list[str]) -> list[Column]:
    """The table columns of the base run's ``tasks``: each task's headline metrics, in registry order."""
    return [Column(f"{task}/{headline.metric}", headline.label, task)
            for task in TASKS if task in tasks for headline in TASKS[task].headline_metrics()]


def shown_keys() -> set[str]:
    """Every ``<task>/<metric>`` a table may show."""
    return {column.key for column in columns(list(TASKS))}


@dataclass
class Cell:
    mean: float
    sd: float
    n: int

    def text(self) -> str:
        if self.n == 0:
            return "–"
        spread = f" ± {100 * self.sd:.1f}" if self.n > 1 else ""
        return f"{100 * self.mean:.1f}{spread}"


def cell(values: list[float]) -> Cell:
    """Mean and sample standard deviation (ddof 1) of the finite values; a COCO −1 (no such objects) is dropped."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v >= 0]
    if not finite:
        return Cell(math.nan, math.nan, 0)
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return Cell(float(np.mean(finite)), sd, len(finite))


def aggregate(rows: list[dict], variant: str, cols: list[Column]) -> dict[str, Cell]:
    """Column key → Cell over the completed trials (seeds) of ``variant``."""
    mine = [r for r in rows if r["variant"] == variant and r.get("status") == "completed"]
    return {c.key: cell([r.get(c.key) for r in mine]) for c in cols}


CHANCE_LABEL = "chance (a random training example's answer)"
CHANCE_MARGIN_GOAL = 3.0
"""Every column of a table should be at least this many times its chance level for its differences to mean
something."""


def table_markdown(table: AblationTable, rows: list[dict], cols: list[Column],
                   chance: dict[str, float] | None = None) -> str:
    """The table; with ``chance`` (``ablation_chance.chance_levels``), a chance row and each column's lowest
    row as a multiple of it."""
    lines = [f"### {table.title}", "",
             "| setting | variant | seeds | " + " | ".join(c.label for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for label, variant in table.rows:
        cells = aggregate(rows, variant, cols)
        seeds = max((c.n for c in cells.values()), default=0)
        lines.append(f"| {label} | `{variant}` | {seeds} | " + " | ".join(cells[c.key].text() for c in cols) + " |")
    if chance:
        lines.append(f"| {CHANCE_LABEL} | – | – | "
                     + " | ".join(_chance_text(chance[c.key]) if c.key in chance else "–" for c in cols) + " |")
        margins = chance_margins(table, rows, cols, chance)
        if margins:
            short = f" (< {CHANCE_MARGIN_GOAL:g}×)"
            lines += ["", "Lowest row ÷ chance: " + "; ".join(
                f"{label} {_times(margin)}" + ("" if round(margin, 6) >= CHANCE_MARGIN_GOAL else short)
                for label, margin in margins.items())]
    return "\n".join(lines) + "\n"


def chance_margins(table: AblationTable, rows: list[dict], cols: list[Column],
                   chance: dict[str, float]) -> dict[str, float]:
    """Column label → the lowest row mean of the table divided by the column's chance level (columns with a
    chance level and at least one measured row)."""
    margins = {}
    for column in cols:
        if chance.get(column.key) is None:
            continue
        means = [aggregate(rows, variant, [column])[column.key] for _, variant in table.rows]
        measured = [c.mean for c in means if c.n]
        if measured:
            margins[column.label] = min(measured) / chance[column.key] if chance[column.key] > 0 else math.inf
    return margins


def _chance_text(level: float) -> str:
    """×100 like the table; small levels (detection's) with enough digits to be nonzero."""
    return f"{100 * level:.1f}" if 100 * level >= 0.1 else f"{100 * level:.1g}"


def _times(margin: float) -> str:
    return "∞×" if math.isinf(margin) else (f"{margin:,.0f}×" if margin >= 100 else f"{margin:.1f}×")


def write_table_csv(table: AblationTable, rows: list[dict], cols: list[Column], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "variant"] + [f"{c.key}/{stat}" for c in cols for stat in ("mean", "sd", "n")])
        for label, variant in table.rows:
            cells = aggregate(rows, variant, cols)
            writer.writerow([label, variant] + [v for c in cols for v in
                                                (cells[c.key].mean, cells[c.key].sd, cells[c.key].n)])
    return path


def plot_table(table: AblationTable, rows: list[dict], cols: list[Column], path: Path,
               chance: dict[str, float] | None = None) -> Path:
    """Grouped bars: one group per column, one bar per row (mean over seeds, error bar = sd); with ``chance``, a
    dashed line over each group at its column's chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(7.0, 1.6 * len(cols) + 2), 4.2))
    width = 0.8 / max(1, len(table.rows))
    x = np.arange(len(cols))
    for index, (label, variant) in enumerate(table.rows):
        cells = aggregate(rows, variant, cols)
        means = [100 * cells[c.key].mean if cells[c.key].n else 0.0 for c in cols]
        sds = [100 * cells[c.key].sd if cells[c.key].n > 1 else 0.0 for c in cols]
        axis.bar(x + (index - (len(table.rows) - 1) / 2) * width, means, width, yerr=sds, capsize=2, label=label)
    with_chance = [(index, chance[c.key]) for index, c in enumerate(cols) if chance and c.key in chance]
    for drawn, (index, level) in enumerate(with_chance):
        axis.hlines(100 * level, index - 0.45, index + 0.45, colors="black", linestyles="dashed",
                    label="chance" if drawn == 0 else None)  # one legend entry
    axis.set_xticks(x, [c.label for c in cols])
    axis.set_ylabel("validation metric ×100 (mean ± sd over seeds)")
    axis.set_title(table.title, fontsize=10)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------ direction checks
@dataclass(frozen=True)
class Claim:
    """The paper finds variant ``better`` ahead of ``worse`` on the columns of ``tasks`` (or, with ``ours``,
    we expect it to)."""

    table: str
    statement: str
    better: str
    worse: str
    tasks: tuple[str, ...] | None = None
    """Tasks whose columns are compared; None = every column both variants have."""
    ours: bool = False
    """Our own expectation, not a finding of the paper (shown as such)."""


def paper_claims(variants: set[str], tasks: list[str]) -> list[Claim]:
    """The findings the paper draws from its tables (and our own checks, ``ours``), for the variants that
    were trained."""
    claims = [
        Claim("representation", "regional tokens help captioning and retrieval (global + regional vs global)",
              FULL, "tokens-global", ("captioning", "retrieval")),
        Claim("representation", "global tokens help classification (global + regional vs regional)",
              FULL, "tokens-regional", ("classification",)),
        Claim("collaboration", "the conditional MoE helps every task (all tasks with vs without MoE)",
              FULL, "all-no_moe"),
        Claim("optimization", "gathered features help retrieval (unmixed + gather vs unmixed)",
              "unmixed-gather", "unmixed", ("retrieval",)),
        Claim("optimization", "MT-AdamW helps every task (+ MT-AdamW vs unmixed + gather)", FULL, "unmixed-gather"),
        Claim("initialization", "pre-trained encoders help every task (stage 1 vs random init; the paper has no "
              "random row, only pre-trainings compared with each other)", FULL, "init-random", ours=True),
        Claim("initialization", "detection pre-training of the image encoder helps further, most on detection and "
              "captioning (+ detection vs stage 1)", "init-detection", FULL, ("detection", "captioning")),
        Claim("initialization", "the MLM-pretrained text encoder helps retrieval and captioning (stage 1 vs the "
              "text encoder without MLM pretraining)", FULL, "init-text-random", ("retrieval", "captioning"),
              ours=True),
    ]
    for task in ("retrieval", "captioning"):
        claims.append(Claim("collaboration", f"without MoE, joint training hurts {task} (single task vs all tasks)",
                            f"single-{task}", "all-no_moe", (task,)))
    return [c for c in claims if c.better in variants and c.worse in variants
            and (c.tasks is None or any(t in tasks for t in c.tasks))]


def direction_verdict(diff: float, spread: float, *, paper_way: bool) -> str:
    """"agrees" / "disagrees" with the paper by the direction of ``diff`` ("no difference" at 0), with
    "(within seed spread)" when |diff| ≤ spread."""
    verdict = "no difference" if diff == 0 else "agrees" if paper_way else "disagrees"
    return verdict + (" (within seed spread)" if diff != 0 and abs(diff) <= spread else "")


def check_claim(claim: Claim, rows: list[dict], cols: list[Column]) -> list[dict]:
    """One verdict per compared column: diff = mean(better) − mean(worse), spread = √(sd_b² + sd_w²);
    "agrees"/"disagrees" by the sign of diff ("no difference" at 0), "(within seed spread)" when |diff| ≤ spread."""
    better, worse = aggregate(rows, claim.better, cols), aggregate(rows, claim.worse, cols)
    verdicts = []
    for column in cols:
        if claim.tasks is not None and column.task not in claim.tasks:
            continue
        b, w = better[column.key], worse[column.key]
        if b.n == 0 or w.n == 0:
            continue
        diff = b.mean - w.mean
        spread = math.sqrt(b.sd ** 2 + w.sd ** 2)
        verdict = direction_verdict(diff, spread, paper_way=diff > 0)
        verdicts.append({"column": column.label, "better": b.mean, "worse": w.mean, "diff": diff,
                         "spread": spread, "verdict": verdict})
    return verdicts


def checks_heading(claims: list[Claim], table: str) -> str:
    own = any(c.ours for c in claims if c.table == table)
    return f"Direction checks against the paper{' (and our own, where marked)' if own else ''}:"


def claims_markdown(claims: list[Claim], rows: list[dict], cols: list[Column], table: str) -> str:
    lines = []
    for claim in (c for c in claims if c.table == table):
        verdicts = check_claim(claim, rows, cols)
        if not verdicts:
            continue
        agree = sum(v["verdict"].startswith("agrees") for v in verdicts)
        parts = "; ".join(f"{v['column']} {100 * v['diff']:+.1f} (spread {100 * v['spread']:.1f}): {v['verdict']}"
                          for v in verdicts)
        source, measured = ("Our own check, not the paper's", "Measured") if claim.ours else ("Paper", "Ours")
        lines.append(f"- {source}: {claim.statement}. {measured}: agrees in direction on {agree}/{len(verdicts)} "
                     f"columns — {parts}.")
    return "\n".join(lines) + ("\n" if lines else "")


# ----------------------------------------------------------------------------------- interference
def interference_markdown(results: dict[str, list[dict]]) -> str:
    """results: {setting ("without MoE" / "with MoE"): [one measure_interference dict per seed]} → the mean
    δ matrix of each setting and its off-diagonal summary."""
    lines = []
    for setting, measured in results.items():
        if not measured:
            continue
        tasks = measured[0]["tasks"]
        matrix = mean_matrix(measured)
        lines += [f"#### {setting} (mean over {len(measured)} seed(s); rows: task updated, columns: loss measured)",
                  "", "| δ | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for i, task in enumerate(tasks):
            lines.append(f"| {task} | " + " | ".join(_number(matrix[i, j]) for j in range(len(tasks))) + " |")
        summaries = [m["summary"] for m in measured]
        stats = {key: cell_stats([s[key] for s in summaries]) for key in summaries[0]}
        lines += ["", "off-diagonal: " + ", ".join(f"{key} {value}" for key, value in stats.items()), ""]
    return "\n".join(lines)


def interference_check(results: dict[str, list[dict]]) -> str:
    """The paper's claim on the δ matrices: the conditional MoE reduces interference, i.e. the off-diagonal
    interference (mean of max(−δ, 0)) is lower with MoE than without; same verdict words as the tables."""
    without, with_moe = results.get("without MoE") or [], results.get("with MoE") or []
    if not without or not with_moe:
        return ""
    lines = []
    for key, label in (("interference", "interference (mean of max(−δ, 0))"), ("mean", "mean δ")):
        a = [m["summary"][key] for m in with_moe if math.isfinite(m["summary"][key])]
        b = [m["summary"][key] for m in without if math.isfinite(m["summary"][key])]
        if not a or not b:
            continue
        diff = float(np.mean(a) - np.mean(b))
        spread = math.sqrt(_variance(a) + _variance(b))
        lower_is_better = key == "interference"
        verdict = direction_verdict(diff, spread, paper_way=diff < 0 if lower_is_better else diff > 0)
        lines.append(f"{label} with MoE − without {diff:+.3f} (spread {spread:.3f}): {verdict}"
                     + _paired_seeds(without, with_moe, key, lower_is_better))
    if not lines:
        return ""
    return "- Paper: the conditional MoE reduces task interference. Ours: " + "; ".join(lines) + ".\n"


def _paired_seeds(without: list[dict], with_moe: list[dict], key: str, lower_is_better: bool) -> str:
    """How many seeds move the paper's way, comparing the two models trained with the same seed (same data
    order and initial draw of the shared weights)."""
    plain = {m["seed"]: m["summary"][key] for m in without if "seed" in m}
    pairs = [(m["summary"][key], plain[m["seed"]]) for m in with_moe if m.get("seed") in plain]
    pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return ""
    agreeing = sum((a < b) if lower_is_better else (a > b) for a, b in pairs)
    return f", the paper's way in {agreeing}/{len(pairs)} seeds paired"


def _variance(values: list[float]) -> float:
    return float(np.var(values, ddof=1)) if len(values) > 1 else 0.0


def write_interference_csv(results: dict[str, list[dict]], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "seed_index", "updated_task", "measured_task", "delta"])
        for setting, measured in results.items():
            for index, result in enumerate(measured):
                for i, a in enumerate(result["tasks"]):
                    for j, b in enumerate(result["tasks"]):
                        writer.writerow([setting, index, a, b, result["matrix"][i][j]])
    return path


def plot_interference(results: dict[str, list[dict]], path: Path) -> Path:
    """One heatmap per setting (mean δ over seeds), a shared diverging scale centred on 0 and fitted to the
    off-diagonal values (the diagonal is 1 by definition and drawn grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: v for k, v in results.items() if v}
    figure, axes = plt.subplots(1, len(shown), figsize=(5.6 * len(shown), 4.8), squeeze=False,
                                constrained_layout=True)
    matrices = {k: mean_matrix(v) for k, v in shown.items()}
    off = [abs(x) for m in matrices.values() for i, row in enumerate(m) for j, x in enumerate(row)
           if i != j and math.isfinite(x)]
    limit = max([0.05, *off])
    colours = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    image = None
    for index, (axis, (setting, matrix)) in enumerate(zip(axes[0], matrices.items())):
        tasks = shown[setting][0]["tasks"]
        masked = np.ma.masked_where(np.eye(len(tasks), dtype=bool) | ~np.isfinite(matrix), matrix)
        image = axis.imshow(masked, cmap=colours, vmin=-limit, vmax=limit)
        axis.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        axis.set_yticks(range(len(tasks)), tasks, fontsize=8)
        axis.set_xlabel("loss of task j")
        if index == 0:
            axis.set_ylabel("update of task i")
        axis.set_title(f"δ_ij {setting}", fontsize=10)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                dark = i != j and math.isfinite(matrix[i, j]) and abs(matrix[i, j]) > 0.6 * limit
                axis.text(j, i, _number(matrix[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if dark else "black")
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8, label="normalized gradient effect δ (<0: interference)")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def mean_matrix(measured: list[dict]) -> np.ndarray:
    return np.nanmean(np.stack([np.asarray(m["matrix"], dtype=float) for m in measured]), axis=0)


def cell_stats(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    if len(finite) == 1:
        return f"{finite[0]:.3f}"
    return f"{np.mean(finite):.3f} ± {np.std(finite, ddof=1):.3f}"


def write_trial_csv(rows: list[dict], cols: list[Column], path: Path) -> Path:
    keys = ["variant", "seed", "status", *(c.key for c in cols), "train_s", "eval_s", "trial_wall_s", "run_dir"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    return path


def _number(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "–"
