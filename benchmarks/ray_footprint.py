"""CPU taken by Ray's own processes while the default run trains, and the training step rate.

    python benchmarks/ray_footprint.py                                  # this tree, one run
    python benchmarks/ray_footprint.py --steps 100 --rounds 2 --out /tmp/footprint.json
    git archive <commit> | tar -x -C /tmp/unip2-before                  # an earlier tree to compare with
    python benchmarks/ray_footprint.py --baseline /tmp/unip2-before --rounds 2   # alternates: ours, baseline, ...
    python benchmarks/ray_footprint.py --variant defaults:RAY_TRAIN_METRICS_ENABLED=1,RAY_enable_metrics_collection=1

Each run is ``python pipelines/train.py --no-eval train.steps=N train.log_every=10 ...`` (the default run's
config, shortened) of a source tree, in a subprocess with its own local Ray, on the default run's data. Every
second the CPU time of each process of its tree (``/proc/<pid>/stat``: the driver, GCS, raylet, the dashboard
and agents, Ray's workers and actors) is read. The training window runs from the first to the last
``[train] step`` line; a process's share is its CPU seconds in the window over the window's seconds (100 % =
one core), summed per process name (Ray titles its workers ``ray::<actor class>``). Groups: ``driver``;
``training`` (RayTrainWorker); ``data loading`` (Ray Data's MapWorker actors and tasks); ``Ray helpers``:
everything else (system processes, Train's controller and helper actors, Ray Data's coordinator actors, idle
workers). The step rate is the steps between the first and the last progress line over the seconds between
them. Beside the window's shares, the CPU seconds of the whole run per group (start-up and imports included:
what ``ps``'s %CPU averages over a process's life). ``--variant NAME:KEY=VALUE,...`` adds runs of this tree
with those environment variables set (e.g. Ray's defaults in place of pipelines/run/ray_runtime.py's). Must run
with no Ray of this process's own (each run starts its own).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.default_run import tree_pids  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
STEP_LINE = re.compile(r"\[train\] step (\d+)/(\d+)")
GROUPS = (("training", re.compile(r"^RayTrainWorker")), ("data loading", re.compile(r"^(MapWorker|ReadFiles|Map\()")))


def process_name(pid: int, driver: int) -> str | None:
    """``driver``, the actor / task class of a Ray worker (``ray::Name`` titles), else the program's name."""
    if pid == driver:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return None
    if not args:
        return None
    title = re.match(r"ray::([A-Za-z_][\w]*(\([^ ]*\))?)", args[0])
    if title:
        return title.group(1)
    scripts = [Path(a).name for a in args[1:3] if a.endswith(".py")]
    if scripts:  # python .../log_monitor.py, .../dashboard.py, .../agent/main.py
        return scripts[0] if scripts[0] != "main.py" else Path(args[1]).parent.name + "/main.py"
    return Path(args[0]).name


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after the name


def group_of(name: str) -> str:
    if name == "driver":
        return "driver"
    return next((group for group, pattern in GROUPS if pattern.search(name)), "Ray helpers")


class Sampler:
    """Samples CPU ticks per process of a tree; the window is opened and closed from outside."""

    def __init__(self, root: int, interval: float):
        self.root, self.interval = root, interval
        self.last: dict[int, tuple[str, int]] = {}  # pid → (name, ticks) at the latest sample
        self.window_ticks: dict[str, int] = defaultdict(int)
        self.in_window = False
        self.stop = threading.Event()
        self.lock = threading.Lock()  # the sampling thread and the line reader both sample

    def sample(self) -> None:
        with self.lock:
            self._sample()

    def _sample(self) -> None:
        for pid in tree_pids(self.root):
            ticks = cpu_ticks(pid)
            name = process_name(pid, self.root)
            if ticks is None or name is None:
                continue
            previous = self.last.get(pid)
            if self.in_window and previous is not None:
                self.window_ticks[name] += ticks - previous[1]
            self.last[pid] = (name, ticks)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def measure(tree: Path, data_root: Path, *, steps: int, log_every: int, interval: float,
            env: dict[str, str] | None = None) -> dict:
    """One training run of ``tree``'s ``pipelines/train.py`` (``env`` added to the environment); → CPU per
    process name and group, step rate."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "pipelines/train.py", "--no-eval", "--out", str(Path(scratch) / "run"),
                   f"data.root={data_root}", f"train.steps={steps}", f"train.log_every={log_every}",
                   f"train.checkpoint_every={max(steps // 2, 1)}"]
        environment = {**os.environ, **(env or {}), "PYTHONPATH": str(tree)}
        load_start = os.getloadavg()
        process = subprocess.Popen(command, cwd=tree, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        sampler = Sampler(process.pid, interval)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        marks: dict[int, float] = {}  # step → when its progress line arrived (first copy)
        lines = []
        for line in process.stdout:
            lines.append(line)
            match = STEP_LINE.search(line)
            if not match or int(match.group(1)) in marks:
                continue
            with sampler.lock:  # the window opens and closes on a fresh sample
                sampler._sample()
                marks[int(match.group(1))] = time.perf_counter()
                sampler.in_window = int(match.group(1)) < steps
        process.wait()
        sampler.stop.set()
        thread.join()
    if process.returncode != 0 or len(marks) < 2:
        raise RuntimeError(f"{' '.join(command)} (in {tree}) exited with {process.returncode}:\n"
                           + "".join(lines[-40:]))
    first, last = min(marks), max(marks)
    window = marks[last] - marks[first]
    shares = {name: 100 * ticks / TICKS_PER_S / window for name, ticks in sampler.window_ticks.items()}
    groups: dict[str, float] = defaultdict(float)
    for name, share in shares.items():
        groups[group_of(name)] += share
    run_cpu: dict[str, float] = defaultdict(float)  # each process's CPU seconds since it started
    for name, ticks in sampler.last.values():
        run_cpu[group_of(name)] += ticks / TICKS_PER_S
    return {"tree": str(tree), "env": env or {}, "steps_per_s": (last - first) / window, "window_s": window,
            "run_cpu_s": dict(run_cpu),
            "steps": [first, last], "groups_pct": dict(groups),
            "processes_pct": dict(sorted(shares.items(), key=lambda item: -item[1])),
            "console_lines": len(lines), "load_start": load_start, "load_end": os.getloadavg()}


def summary_line(label: str, row: dict) -> str:
    groups = row["groups_pct"]
    helpers = ", ".join(f"{name} {share:.1f}" for name, share in row["processes_pct"].items()
                        if group_of(name) == "Ray helpers" and share >= 0.5)
    return (f"{label}: {row['steps_per_s']:.2f} steps/s over {row['window_s']:.0f} s; CPU % of one core: "
            f"driver {groups.get('driver', 0):.1f}, Ray helpers {groups.get('Ray helpers', 0):.1f} "
            f"({helpers}), training {groups.get('training', 0):.0f}, data loading {groups.get('data loading', 0):.0f}; "
            f"{row['console_lines']} console lines; load {row['load_start'][0]:.1f} → {row['load_end'][0]:.1f}; "
            f"CPU s over the whole run: driver {row['run_cpu_s'].get('driver', 0):.0f}, "
            f"Ray helpers {row['run_cpu_s'].get('Ray helpers', 0):.0f}")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` → (name, {key: value})."""
    name, _, settings = text.partition(":")
    pairs = [item.split("=", 1) for item in settings.split(",") if item]
    if not name or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME:KEY=VALUE,...")
    return name, dict(pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="train.steps of each run")
    parser.add_argument("--log-every", type=int, default=10, help="train.log_every: the step lines that time it")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each tree, alternating")
    parser.add_argument("--baseline", type=Path, help="another source tree (e.g. an earlier commit's, via git archive)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help="NAME:KEY=VALUE,...: also run this tree with these environment variables")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between CPU samples")
    parser.add_argument("--out", type=Path, help="write every run's figures here (JSON)")
    args = parser.parse_args(argv)
    from benchmarks.run_inputs import embedded_data

    data_root = embedded_data()
    runs_of = {"ours": (ROOT, {})}
    if args.baseline:
        runs_of["baseline"] = (args.baseline.resolve(), {})
    runs_of.update({name: (ROOT, env) for name, env in args.variant})
    runs = []
    for round_index in range(args.rounds):
        for label, (tree, env) in runs_of.items():
            row = measure(tree, data_root, steps=args.steps, log_every=args.log_every, interval=args.interval,
                          env=env)
            runs.append({"label": label, "round": round_index + 1, **row})
            print(summary_line(f"[footprint] round {round_index + 1} {label}", row), flush=True)
            if args.out:
                args.out.write_text(json.dumps(runs, indent=2) + "\n")
    for label in runs_of:
        mine = [r for r in runs if r["label"] == label]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        print(f"[footprint] {label}, mean of {len(mine)}: {mean([r['steps_per_s'] for r in mine]):.2f} steps/s; "
              f"driver {mean([r['groups_pct'].get('driver', 0) for r in mine]):.1f} %, Ray helpers "
              f"{mean([r['groups_pct'].get('Ray helpers', 0) for r in mine]):.1f} % of one core", flush=True)


if __name__ == "__main__":
    main()
