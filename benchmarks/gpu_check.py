"""The GPU check of the full-size step, ready to run: BASE per task, eager and compiled, one JSON.

    python benchmarks/gpu_check.py --out gpu_check.json                  # one GPU, ~8 minutes, BASE, bf16
    python benchmarks/gpu_check.py --device cpu --preset tiny --steps 1 --budget-s 300 --out check.json   # anywhere

Runs ``benchmarks/gpu_step.py`` twice, each in a fresh process (compile off, then on) with half of
``--budget-s`` and ``--steps`` timed steps per task, and writes ``{"eager": report, "compiled": report}`` after
each, so a run cut short keeps the first half. Each report holds per task: steps/s, ms/step, peak memory, MFU
(against the peak of the precision the step runs in), host-device syncs per step (CUDA), or the error that task
met (out of memory, budget spent). Extra arguments go to both runs (e.g. ``train.activation_checkpointing=true``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEP_SCRIPT = Path(__file__).resolve().parent / "gpu_step.py"
MODES = {"eager": [], "compiled": ["--compile"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON written")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per task and mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per task and mode (compiles)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time, split by mode")
    args, extra = parser.parse_known_args(argv)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode, flags in MODES.items():
            out = Path(folder) / f"{mode}.json"
            command = [sys.executable, str(STEP_SCRIPT), "--device", args.device, "--preset", args.preset,
                       "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--budget-s", str(args.budget_s / len(MODES)), "--out", str(out), *flags, *extra]
            print(f"[gpu_check] {mode}: {' '.join(command[1:])}", flush=True)
            done = subprocess.run(command, timeout=args.budget_s * 2)
            report[mode] = json.loads(out.read_text()) if out.exists() else {}
            if done.returncode != 0:
                report[mode]["error"] = f"gpu_step.py exited with {done.returncode}"
            Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if all("error" not in r for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
