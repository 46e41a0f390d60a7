"""One benchmark's result and the files every run writes: ``results.json`` and ``results.md``.

Every benchmark returns ``result(...)``: a dict ``{key, measure, ours, baseline, ratio, goal, unit, met,
details}``. ``ratio`` is the figure the issue names (ours / baseline for the ratios; a difference in ms for
``serve_overhead_ms``; the plain value for reported-only figures); ``goal`` is a string such as ``">= 1.0"``
or ``"reported"``; ``met`` is None when there is no goal.
"""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path

_COMPARE = {">=": operator.ge, "<=": operator.le}


def goal_met(value: float | None, goal: str) -> bool | None:
    """Whether ``value`` meets ``goal`` (">= x" / "<= x"); None for "reported" or a missing value."""
    parts = goal.split()
    if len(parts) != 2 or parts[0] not in _COMPARE or value is None or not math.isfinite(value):
        return None
    return bool(_COMPARE[parts[0]](value, float(parts[1])))


def result(key: str, *, measure: str, ours: float | None, baseline: float | None, ratio: float | None,
           goal: str, unit: str, details: dict | None = None) -> dict:
    """A benchmark row; ``unit`` names the unit of ``ours`` and ``baseline``."""
    return {"key": key, "measure": measure, "ours": ours, "baseline": baseline, "ratio": ratio, "goal": goal,
            "unit": unit, "met": goal_met(ratio, goal), "details": details or {}}


def failed(key: str, *, measure: str, goal: str, error: str) -> dict:
    """The row of a benchmark that raised: no figures, the error in ``details``."""
    row = result(key, measure=measure, ours=None, baseline=None, ratio=None, goal=goal, unit="")
    row["details"]["error"] = error
    return row


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.3g}"


def markdown_table(rows: list[dict]) -> str:
    """| measure | ours | baseline | ratio | goal | met | — one line per row, units beside the figures."""
    lines = ["| key | measure | ours | baseline | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        unit = f" {row['unit']}" if row["unit"] and row["ours"] is not None else ""
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        if "error" in row["details"]:
            met = "error"
        lines.append(f"| `{row['key']}` | {row['measure']} | {_number(row['ours'])}{unit} | "
                     f"{_number(row['baseline'])}{unit if row['baseline'] is not None else ''} | "
                     f"{_number(row['ratio'])} | {row['goal']} | {met} |")
    return "\n".join(lines)


def write_results(rows: list[dict], out: str | Path, *, meta: dict) -> tuple[Path, Path]:
    """``results.json``: every key's figure at the top level, then ``rows`` (full) and ``meta``;
    ``results.md``: the table, each row's notes and the run's ``meta``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {row["key"]: row["ratio"] for row in rows}
    json_path = out / "results.json"
    json_path.write_text(json.dumps({**figures, "rows": rows, "meta": meta}, indent=2, default=str))
    notes = [f"- `{row['key']}`: {row['details']['note']}" for row in rows if row["details"].get("note")]
    notes += [f"- `{row['key']}` failed: {row['details']['error']}" for row in rows if row["details"].get("error")]
    md = [markdown_table(rows), ""]
    if notes:
        md += ["Notes:", "", *notes, ""]
    md += ["Run: " + ", ".join(f"{k}={v}" for k, v in meta.items()), ""]
    md_path = out / "results.md"
    md_path.write_text("\n".join(md))
    return json_path, md_path
