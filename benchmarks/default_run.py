"""Wall time, peak memory and validation metrics of ``python pipelines/train.py`` (the default run), as a user
runs it, against the goals of the default run.

    python benchmarks/default_run.py                 # stage 1 from the repository's cache (trained first if absent)
    python benchmarks/default_run.py --fresh         # as on a fresh machine: data and stage 1 made from nothing

A run that trains stage 1 reports ``default_run_fresh_s`` (goal ≤ 15 min), one that finds it cached
``default_run_s`` (goal ≤ 10 min).
    python benchmarks/default_run.py [--steps 100] [--no-eval] [--out runs/measured]
    python benchmarks/default_run.py --config pipelines/configs/long.yaml --out runs/long   # goal: ≤ 1 h, fresh

Goals (2 cores): ≤ 10 min with stage 1 cached, ≤ 15 min fresh; on the embedded validation split top-1 ≥ 0.90,
box AP ≥ 0.50, mask AP ≥ 0.40, CIDEr ≥ 1.5, R@1 ≥ 0.50 both ways, masked-token accuracy ≥ 0.80 (metric goals
apply to the full run only; a ``--steps`` run reports them).

Runs the command in a subprocess (from the repository root, into a scratch run folder) and polls its
whole process tree — the driver, the local Ray it starts (GCS, raylet, workers, Ray Data actors) — every
``interval`` seconds. Memory is the sum of each process's proportional set size (PSS, from
``/proc/<pid>/smaps_rollup``: pages shared between processes, such as the object store, counted once
overall), falling back to RSS where PSS cannot be read. Must run with no Ray of this process's own
running (the command starts its own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_table import result  # noqa: E402
from unip2.tasks.headlines import Headline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WALL = ("default_run_s", "`python pipelines/train.py` wall time", "<= 600")
FRESH_GOAL = "<= 900"
LONG_GOAL = "<= 3600"  # any other config (pipelines/configs/long.yaml): its whole run within an hour; metrics reported
PEAK = ("default_run_peak_mb", "`python pipelines/train.py` peak memory (process tree, PSS)", "reported")


def goal_metrics() -> list[tuple[str, Headline]]:
    """(task, headline) of every headline metric the default run has a goal for (declared in the task's file)."""
    from unip2.tasks import TASKS

    return [(name, headline) for name, task in TASKS.items() for headline in task.headline_metrics()
            if headline.default_run_goal and headline.benchmark_key]


def _children() -> dict[int, list[int]]:
    """Parent pid → child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and parentheses
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def process_memory_kb(pid: int) -> int:
    """PSS of ``pid`` in kB (RSS if smaps_rollup is unreadable); 0 once it is gone."""
    for path, field in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith(field):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


# Reading smaps_rollup walks each process's page tables in the kernel: polled every 0.5 s, a dozen multi-GB Ray
# processes cost the poller ~15 % of a core, taken from the run it measures.
POLL_INTERVAL_S = 2.0


def run_and_measure(command: list[str], *, cwd: Path, interval: float = POLL_INTERVAL_S,
                    log: Path | None = None) -> dict:
    """Run ``command``; → {"wall_s", "peak_mb", "peak_processes", "returncode"}."""
    sink = open(log, "w") if log else subprocess.DEVNULL
    start = time.perf_counter()
    try:
        process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        peak_kb, peak_processes = 0, 0
        while process.poll() is None:
            pids = tree_pids(process.pid)
            total = sum(process_memory_kb(pid) for pid in pids)
            if total > peak_kb:
                peak_kb, peak_processes = total, len(pids)
            time.sleep(interval)
        wall = time.perf_counter() - start
    finally:
        if log:
            sink.close()
    return {"wall_s": wall, "peak_mb": peak_kb / 1024, "peak_processes": peak_processes,
            "returncode": process.returncode}


def run(*, steps: int | None = None, evaluate: bool = True, fresh: bool = False, interval: float = POLL_INTERVAL_S,
        out: str | Path | None = None, config: str | None = None) -> list[dict]:
    """→ [wall time row, peak memory row, one row per metric]. ``steps`` None = the default run's own;
    ``fresh``: an empty cache folder, so the embedded data and stage 1 are made inside the measured time;
    ``out``: keep the run folder there (default: a scratch folder, removed); ``config``: a run config other than
    the default (rows keyed ``<config name>_run_*``, wall goal ≤ 1 h, metrics reported)."""
    overrides = ([f"--config={config}"] if config else []) + ([f"train.steps={steps}"] if steps else [])
    with tempfile.TemporaryDirectory() as scratch:
        cache = [f"data.cache_dir={Path(scratch) / 'cache'}"] if fresh else []
        run_dir = Path(out).resolve() if out else Path(scratch) / "run"
        command = [sys.executable, "pipelines/train.py", "--out", str(run_dir), *overrides, *cache]
        if not evaluate:
            command.append("--no-eval")
        log = Path(scratch) / "train.log"
        measured = run_and_measure(command, cwd=ROOT, interval=interval, log=log)
        console = log.read_text()
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if measured["returncode"] != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {measured['returncode']}:\n{console[-3000:]}")
    return result_rows(measured, metrics, console, steps=steps, evaluate=evaluate, fresh=fresh, config=config,
                       interval=interval)


def result_rows(measured: dict, metrics: dict, console: str, *, steps: int | None = None, evaluate: bool = True,
                fresh: bool = False, config: str | None = None, interval: float = POLL_INTERVAL_S) -> list[dict]:
    """The rows of one measured run: its wall time and peak memory (``run_and_measure``), its ``metrics.json``
    and console (which says whether stage 1 was trained inside the run), against the goals that apply."""
    overrides = ([f"--config={config}"] if config else []) + ([f"train.steps={steps}"] if steps else [])
    prefix = "default_run" if config is None else f"{Path(config).stem}_run"
    shown = " ".join(["python pipelines/train.py", *overrides, *([] if evaluate else ["--no-eval"])])
    made = "[pretrain] stage 1 done" in console  # stage 1 trained inside the measured time: the fresh goal applies
    stage1 = "stage 1 trained in the run" if made else "stage 1 from the cache"
    details = {"command": shown, "steps": steps, "evaluate": evaluate, "fresh": fresh, **measured,
               "note": f"`{shown}`" + ("" if steps is None else f" (quick: {steps} steps)")
                       + f"; {'fresh cache: data and ' if fresh else ''}{stage1}; "
                       f"{measured['peak_processes']} processes at the peak"}
    wall_goal = "reported" if steps is not None else LONG_GOAL if config else FRESH_GOAL if made else WALL[2]
    metric_goal = (lambda goal: goal) if steps is None and config is None else (lambda goal: "reported")
    script = "train.py" + (f" --config={config}" if config else "")
    rows = [result(WALL[0].replace("default_run", prefix) + ("_fresh" if made else ""),
                   measure=WALL[1].replace("train.py", script) + (" (stage 1 trained in it)" if made else ""),
                   ours=measured["wall_s"], baseline=None, ratio=measured["wall_s"], goal=wall_goal, unit="s",
                   details=details),
            result(PEAK[0].replace("default_run", prefix),
                   measure=PEAK[1].replace("train.py", script), ours=measured["peak_mb"], baseline=None,
                   ratio=measured["peak_mb"], goal=PEAK[2], unit="MB",
                   details={**details,
                            "note": f"PSS summed over the driver, Ray and its workers, polled every {interval} s"})]
    for task, headline in goal_metrics():
        value = metrics.get(task, {}).get(headline.metric)
        rows.append(result(headline.benchmark_key.replace("default_run", prefix), measure=headline.said, ours=value,
                           baseline=None, ratio=value, goal=metric_goal(headline.default_run_goal), unit="",
                           details={"command": shown}))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="train.steps (default: the default run's own)")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="empty cache: data and stage 1 inside the wall time")
    parser.add_argument("--out", help="keep the run folder here (default: a scratch folder)")
    parser.add_argument("--config", help="a run config other than the default (e.g. pipelines/configs/long.yaml)")
    args = parser.parse_args(argv)
    for row in run(steps=args.steps, evaluate=not args.no_eval, fresh=args.fresh, out=args.out, config=args.config):
        print({k: v for k, v in row.items() if k != "details"})


if __name__ == "__main__":
    main()
