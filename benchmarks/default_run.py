"""Wall time and peak memory of ``python pipelines/train.py`` (the default run), as a user runs it.

    python benchmarks/default_run.py [--steps 100] [--no-eval]

Runs the command in a subprocess (from the repository root, into a scratch run folder) and polls its
whole process tree — the driver, the local Ray it starts (GCS, raylet, workers, Ray Data actors) — every
``interval`` seconds. Memory is the sum of each process's proportional set size (PSS, from
``/proc/<pid>/smaps_rollup``: pages shared between processes, such as the object store, counted once
overall), falling back to RSS where PSS cannot be read. Must run with no Ray of this process's own
running (the command starts its own).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_table import result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WALL = ("default_run_s", "`python pipelines/train.py` wall time", "reported")
PEAK = ("default_run_peak_mb", "`python pipelines/train.py` peak memory (process tree, PSS)", "reported")


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


def run_and_measure(command: list[str], *, cwd: Path, interval: float = 0.5, log: Path | None = None) -> dict:
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


def run(*, steps: int | None = None, evaluate: bool = True, interval: float = 0.5) -> list[dict]:
    """→ [wall time row, peak memory row]. ``steps`` None = the default 600."""
    overrides = [f"train.steps={steps}"] if steps else []
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "pipelines/train.py", "--out", str(Path(scratch) / "run"), *overrides]
        if not evaluate:
            command.append("--no-eval")
        log = Path(scratch) / "train.log"
        measured = run_and_measure(command, cwd=ROOT, interval=interval, log=log)
        tail = log.read_text()[-3000:]
    if measured["returncode"] != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {measured['returncode']}:\n{tail}")
    shown = " ".join(["python pipelines/train.py", *overrides, *([] if evaluate else ["--no-eval"])])
    details = {"command": shown, "steps": steps or 600, "evaluate": evaluate, **measured,
               "note": f"`{shown}`" + ("" if steps is None else f" (quick: {steps} of the default 600 steps)")
                       + f"; {measured['peak_processes']} processes at the peak"}
    return [result(WALL[0], measure=WALL[1], ours=measured["wall_s"], baseline=None, ratio=measured["wall_s"],
                   goal=WALL[2], unit="s", details=details),
            result(PEAK[0], measure=PEAK[1], ours=measured["peak_mb"], baseline=None, ratio=measured["peak_mb"],
                   goal=PEAK[2], unit="MB", details={**details, "note": "PSS summed over the driver, Ray and its workers, "
                                                                       f"polled every {interval} s"})]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="train.steps (default: the run's 600)")
    parser.add_argument("--no-eval", action="store_true")
    args = parser.parse_args(argv)
    for row in run(steps=args.steps, evaluate=not args.no_eval):
        print({k: v for k, v in row.items() if k != "details"})


if __name__ == "__main__":
    main()
