"""How fast can a backbone learn the embedded classification task from random init, on its own?

    python docs/default_run/backbone_probe.py --steps 1000 --out docs/default_run/backbone_probe.json

A plain classifier (timm backbone → global average pool → linear, AdamW, no multi-task, no decoder) on the
embedded ImageNet-format split, with the classification task's own decode and augmentation. Its top-1 after
N steps bounds what the generalist's classification can reach in a run that gives the task about N/5 steps
of the same batch size (the other tasks train the backbone too, but on other objectives).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from unip2.data.embedded import ensure_embedded_data
from unip2.data.row_reader import RowReader
from unip2.tasks import TASKS

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def probe(name: str, root: Path, *, steps: int, batch: int, lr: float, image_size: int, seed: int) -> dict:
    torch.manual_seed(seed)
    body = timm.create_model(name, features_only=True, pretrained=False)
    head = nn.Linear(body.feature_info.channels()[-1], 12)
    optimizer = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=lr)
    task, rng = TASKS["classification"], np.random.default_rng(seed)
    train, val = RowReader(root, "imagenet", "train"), RowReader(root, "imagenet", "val")

    def logits(images: torch.Tensor) -> torch.Tensor:
        return head(body((images.float() / 255 - MEAN) / STD)[-1].mean((2, 3)))

    def batch_of(reader: RowReader, rows, train_mode: bool) -> dict:
        raw = reader.read(rows)
        return task.collate(task.preprocess(raw, image_size=image_size, tokenizer=None, train=train_mode, rng=rng))

    started, curve = time.time(), []
    for step in range(steps):
        data = batch_of(train, rng.integers(0, train.num_rows, batch), True)
        loss = F.cross_entropy(logits(data["images"]), data["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(float(loss.detach()))
    seconds = time.time() - started
    body.eval()
    with torch.no_grad():
        data = batch_of(val, np.arange(val.num_rows), False)
        top1 = float((logits(data["images"]).argmax(-1) == data["labels"]).float().mean())
    return {"backbone": name, "steps": steps, "batch": batch, "lr": lr, "val_top1": round(top1, 4),
            "final_loss_mean_last_50": round(float(np.mean(curve[-50:])), 4), "train_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["convnext_atto", "resnet10t"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--cache-dir", default=".cache/unip2", help="where the embedded data lives (data.cache_dir)")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = ensure_embedded_data(args.cache_dir)
    results = [probe(name, root, steps=args.steps, batch=args.batch, lr=args.lr, image_size=args.image_size, seed=0)
               for name in args.backbones]
    for row in results:
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
