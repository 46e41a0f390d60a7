"""Multi-task training of unip2 on Ray: unmixed sampling, MT-AdamW, Ray Data streaming, Ray Train.

    python pipelines/train.py                                       # embedded data, tiny preset, 2 workers
    python pipelines/train.py train.steps=200 scale.num_workers=1   # key=value overrides
    python pipelines/train.py scale.num_workers=auto train.accumulation_steps=4   # the whole cluster, 4 micro-batches
    python pipelines/train.py --config pipelines/configs/base.yaml --out runs/base
    RAY_ADDRESS=auto python pipelines/train.py --config pipelines/configs/base.yaml   # join a cluster

Re-running with the same ``--out`` resumes from that run's last checkpoint. Writes into the run folder:
``checkpoint/`` (loadable by ``unip2.load``; with the run's ``run_config.yaml``, so
``pipelines/evaluate.py --checkpoint <run>/checkpoint`` finds the data it trained on), ``metrics.json``,
``curves.png``, ``report.md`` and the evaluation files (see ``pipelines/evaluate.py``), and ``logs/``:
the full log of the run (``logs/driver.log``: Ray's own messages on this process; ``logs/ray/``: the local
Ray's session logs, every worker's output among them). The console shows the run's own progress lines only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from pipelines.run import ray_runtime  # (first: sets Ray's environment before ray is imported)
from pipelines.run.cluster_fit import ClusterTooSmall
from pipelines.training.live_metrics import TENSORBOARD, write_evaluation
from pipelines.stage1.encoders import pretrain_if_needed
from pipelines.run.prepare import prepare_run
from pipelines.training.checkpoints import export_model, read_state
from pipelines.training.trackers import log_evaluation
from pipelines.training.trainer import fit
from unip2 import config_io
from unip2.run_config import RunConfig, load_run_config
from unip2.schedules import value_at


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config YAML (see pipelines/configs/)")
    parser.add_argument("--out", help="run folder (default: runs/<timestamp>); an existing one is resumed")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved run config (file, the file it extends, overrides) and exit")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=100")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_config:
        try:
            print(yaml.safe_dump(config_io.to_dict(load_run_config(args.config, args.overrides)), sort_keys=False),
                  end="")
        except (ValueError, KeyError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    started = time.time()
    # The stages, in order: prepare (config, data, Ray) → stage 1 if an encoder needs it → train → evaluate.
    try:  # whatever happens once Ray is up, no process of a local Ray outlives us
        try:
            run, out, data_root = prepare_run(args.config, args.overrides, out=args.out, address=args.address,
                                              keep_logs=True)
        except (ValueError, KeyError, FileNotFoundError) as err:  # config errors name the field
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            run = pretrain_if_needed(run, data_root, out)
            return train_and_evaluate(args, run, out, data_root, started)
        except ClusterTooSmall as err:  # names the resources asked and present
            print(f"error: {err}", file=sys.stderr)
            return 2
        except BaseException:
            print(f"[train] failed; the full log is in {out / 'logs'}", file=sys.stderr, flush=True)
            raise
    finally:
        ray_runtime.disconnect()  # the local Ray's session logs are copied into <run>/logs/ray


def train_and_evaluate(args: argparse.Namespace, run: RunConfig, out: Path, data_root: Path, started: float) -> int:
    print(f"[train] run folder {out}; data {data_root}; tasks {', '.join(run.tasks)}; resolved config "
          f"{out / 'run_config.yaml'}", flush=True)
    scale = run.learning_rate_scale(run.scale.num_workers)
    if scale != 1.0:  # the learning rate follows the global batch (optim.lr_reference_workers)
        print(f"[train] global batch {run.scale.num_workers} workers × {run.train.accumulation_steps} micro-batches: "
              f"peak lr {value_at(run.optim.lr, 0) * scale:.3g} = optim.lr × {scale:g} (linear rule)", flush=True)
    result_checkpoint = fit(run, out=out, data_root=data_root)
    final = export_model(result_checkpoint, out / "checkpoint")
    state = read_state(result_checkpoint)
    from pipelines.training.curves import plot_curves

    plot_curves(state["history"], out / "curves.png", state.get("validation", []))
    summary = {"train_seconds": state["train_seconds"], "validation_seconds": state.get("validation_seconds", 0.0),
               "steps": state["step"],
               "nonfinite_steps": state["nonfinite_steps"], "skipped_images": state["skipped_images"]}
    if not args.no_eval:
        from pipelines.evaluation.pipeline import evaluate

        summary["evaluation"] = evaluate(final, data_root, split="val", tasks=list(run.tasks), out_dir=out,
                                         precision=run.train.precision)
        if run.logging.tensorboard:
            write_evaluation(out / TENSORBOARD, summary["evaluation"], step=state["step"])
        log_evaluation(run, out, summary["evaluation"], step=state["step"])  # MLflow, W&B where turned on
    summary["wall_seconds"] = time.time() - started
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[train] done in {summary['wall_seconds']:.0f} s. Checkpoint: {final}\n"
          f"[train] curves: {out / 'curves.png'}; metrics: {out / 'metrics.json'}; report: {out / 'report.md'}; "
          f"full log: {out / 'logs'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
