"""Language modelling (the paper's sixth task, Uni-Perceiver's masked-token prediction): text with masked tokens
through the text encoder and g; the output at each masked position is scored against the vocabulary.

Data: any text corpus. By default the captions of the training data (``coco_captions``: one caption drawn per
row); a real corpus is a plain-text file (one document per line) or a Parquet column converted once into a data
folder, in the captions columns so every reader takes it:

    python -m unip2.tasks.language_modelling --text corpus.txt --out DATA_DIR [--name text_corpus]
    python -m unip2.tasks.language_modelling --parquet wiki.parquet --column text --out DATA_DIR
    python pipelines/train.py data.root=DATA_DIR tasks.language_modelling.datasets=[text_corpus]

Masking as RoBERTa's: 15% of each text's tokens chosen (at least one), of them 80% replaced by the mask
token, 10% by a random token, 10% kept. Evaluation masks with a fixed seed and reports the masked-token accuracy
and the perplexity over the masked tokens.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unip2.config import TaskOptions
from unip2.config_io import require
from unip2.tasks.base import Task, local_gather
from unip2.tasks.outputs import MetricContext, TaskOutput
from unip2.tasks.routes import Route, ServeContext, ServeRequest
from unip2.tasks.headlines import Headline

TASK_FLAGS = dict(input_text=True, target_text=True)
MASK_NAMES = ("<mask>", "[MASK]")  # RoBERTa's and BERT's mask tokens
MASK_RATIO = 0.15  # RoBERTa's share of tokens chosen for prediction


@dataclass
class LanguageModellingOptions(TaskOptions):
    """Language modelling's options, saved with the model."""

    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy over the vocabulary."""

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        require(0 <= self.label_smoothing < 1, prefix + "label_smoothing", "must be in [0, 1)")


@dataclass
class FillMaskRequest:
    text: str = field(default="", metadata={"required": True, "min_length": 1, "max_length": 1000,
                                            "description": "text with one or more <mask> tokens"})
    top_k: int = field(default=5, metadata={"ge": 1, "le": 50, "description": "candidates per mask, best first"})


def mask_token_id(tokenizer) -> int:
    """The tokenizer's mask token (``<mask>`` or ``[MASK]``); a tokenizer without one cannot model language."""
    for name in MASK_NAMES:
        ids, _ = tokenizer.encode_batch([name], max_length=8)
        inner = [int(i) for i in ids[0] if int(i) not in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)]
        if len(inner) == 1 and inner[0] in tokenizer.special_ids:
            return inner[0]
    raise ValueError(f"the tokenizer has no mask token ({' or '.join(MASK_NAMES)}): language modelling needs one")


class LanguageModelling(Task):
    name = "language_modelling"
    dataset = "coco_captions"
    eval_columns = ("captions",)
    candidate_family = "vocabulary"
    metric = "accuracy"
    pretrains = "text"  # stage 1: the text encoder as a masked language model (RoBERTa's objective)
    headlines = (Headline("accuracy", "MLM acc", "masked-token accuracy", default_run_goal=">= 0.8",
                          benchmark_key="default_run_lm_accuracy"),)
    Options = LanguageModellingOptions
    routes = (Route("/v1/fill_mask", "The most likely tokens at each <mask> of a text", FillMaskRequest,
                    images="none", answer="answer_fill_mask", shows="text",
                    example={"text": "a red <mask> at the top left"}),)

    # ------------------------------------------------------------------------------------ data
    def preprocess(self, batch, *, image_size, tokenizer, train, rng, max_text_length=32):
        """Rows of ``captions`` (one drawn per row in training, the first otherwise) → masked ``input_ids``,
        ``attention_mask`` and ``targets`` (the original id at masked positions, -100 elsewhere), all B×L."""
        texts = [str(captions[int(rng.integers(len(captions)))] if train else captions[0])
                 for captions in batch["captions"]]
        ids, mask = tokenizer.encode_batch(texts, max_text_length)
        inputs, targets = mask_tokens(ids, mask, tokenizer, rng, MASK_RATIO)
        return {"input_ids": inputs, "attention_mask": mask, "targets": targets,
                "image_id": np.asarray(batch.get("image_id", np.arange(len(texts))), dtype=np.int64)}

    # ------------------------------------------------------------------------------ model
    def features(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """B×L masked text → B×L×D decoder outputs (bidirectional)."""
        tokens = model.encode_text(input_ids, attention_mask)
        attributes = model.attributes(tokens, token_text=True, **TASK_FLAGS)
        return model.decode(tokens, attributes, padding_mask=attention_mask == 0)["tokens"]

    def candidate_count(self, model) -> int:
        return model.tokenizer.vocab_size

    def vocabulary(self, model) -> torch.Tensor:
        ids = model.constant("vocabulary_ids", lambda: torch.arange(model.tokenizer.vocab_size))
        return model.encode_vocabulary(ids, token_is_target=True, **TASK_FLAGS)

    def logits(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (N×V scores at the N masked positions, their N target ids)."""
        chosen = batch["targets"] != -100
        features = self.features(model, batch["input_ids"], batch["attention_mask"])[chosen]  # N×D
        return model.score(features, self.vocabulary(model), self.candidate_family), batch["targets"][chosen]

    def loss(self, model, batch, *, gather=local_gather):
        logits, targets = self.logits(model, batch)
        smoothing = self.options(model).label_smoothing
        return {"loss_mlm": F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)}

    def pretrain_loss(self, encoders, batch):
        targets = batch["targets"]
        logits = encoders.encoder("text")(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen = targets != -100
        loss = F.cross_entropy(logits[chosen].float(), targets[chosen])
        return loss, (logits.detach()[chosen].argmax(-1) == targets[chosen]).sum(), chosen.sum()

    def loss_weights(self, model):
        return {"loss_mlm": 1.0}

    @torch.no_grad()
    def predict(self, model, batch, **options: Any) -> list[dict]:
        """Per row: masked tokens predicted right, masked tokens, and their summed negative log-likelihood."""
        chosen = batch["targets"] != -100
        logits, targets = self.logits(model, batch)
        log_probs = logits.float().log_softmax(-1)
        right = (log_probs.argmax(-1) == targets).cpu()
        nll = -log_probs.gather(1, targets[:, None])[:, 0].cpu()
        rows = chosen.nonzero()[:, 0].cpu()
        return [{"image_id": int(image_id), "correct": int(right[rows == row].sum()),
                 "masked": int((rows == row).sum()), "nll": float(nll[rows == row].sum())}
                for row, image_id in enumerate(batch["image_id"])]

    def evaluate(self, output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
        masked = sum(p["masked"] for p in output.predictions)
        correct = sum(p["correct"] for p in output.predictions)
        nll = sum(p["nll"] for p in output.predictions)
        return {"accuracy": correct / max(masked, 1), "perplexity": math.exp(nll / max(masked, 1)),
                "masked_tokens": masked, "num_texts": len(output.predictions)}, {}

    # ------------------------------------------------------------------------------- serving
    @torch.no_grad()
    def answer_fill_mask(self, model, requests: list[ServeRequest], context: ServeContext) -> list:
        """Each request's text (``<mask>`` for each token to fill) → the text with the best tokens filled in,
        and each mask's top-k tokens with their probabilities."""
        tokenizer, device = model.tokenizer, model.pixel_mean.device
        mask_id = mask_token_id(tokenizer)
        mask_text = tokenizer.decode([mask_id]) or MASK_NAMES[0]
        texts = [r.params["text"].replace(MASK_NAMES[0], mask_text) for r in requests]
        ids, attention = tokenizer.encode_batch(texts, model.config.task_input_settings(self.name).max_text_length)
        ids_t, attention_t = torch.as_tensor(ids, device=device), torch.as_tensor(attention, device=device)
        probs = model.score(self.features(model, ids_t, attention_t), self.vocabulary(model),
                            self.candidate_family).float().softmax(-1).cpu()
        results = []
        for row, request in enumerate(requests):
            positions = [int(i) for i in np.flatnonzero(ids[row] == mask_id)]
            if not positions:
                results.append(ValueError(f"text: no {MASK_NAMES[0]} token to fill"))
                continue
            filled, masks = ids[row].copy(), []
            for position in positions:
                scores, tokens = probs[row, position].topk(request.params["top_k"])
                filled[position] = int(tokens[0])
                masks.append({"position": position, "candidates": [
                    {"token": tokenizer.decode([int(t)]), "score": float(s)} for s, t in zip(scores, tokens)]})
            results.append({"text": tokenizer.decode(filled[attention[row] == 1]), "masks": masks})
        return results


def mask_tokens(ids: np.ndarray, attention: np.ndarray, tokenizer, rng: np.random.Generator,
                ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """RoBERTa's masking of B×L ids → (masked inputs, targets: the original id where chosen, else -100)."""
    special = np.isin(ids, list(tokenizer.special_ids)) | (attention == 0)
    inputs, targets = ids.copy(), np.full_like(ids, -100)
    mask_id = mask_token_id(tokenizer)
    for row in range(ids.shape[0]):
        candidates = np.flatnonzero(~special[row])
        if candidates.size == 0:
            continue
        count = max(1, int(round(ratio * candidates.size)))
        chosen = rng.choice(candidates, size=count, replace=False)
        targets[row, chosen] = ids[row, chosen]
        action = rng.random(count)
        inputs[row, chosen[action < 0.8]] = mask_id
        randomized = chosen[(action >= 0.8) & (action < 0.9)]
        inputs[row, randomized] = rng.integers(0, tokenizer.vocab_size, size=randomized.size)
    return inputs, targets


# ------------------------------------------------------------------------------- a real corpus
def write_corpus(texts: list[str], out: str | Path, name: str = "text_corpus", rows_per_shard: int = 10000) -> Path:
    """Texts → the ``train`` split of dataset ``name`` in the data folder ``out`` (its manifest updated), in the
    captions columns (no image: one text per row as its one caption)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unip2.data.manifest import load_manifest, write_manifest
    from unip2.data.parquet_schema import SCHEMAS

    out = Path(out)
    manifest = load_manifest(out)
    if name in manifest["datasets"]:
        raise FileExistsError(f"dataset {name!r} is already in {out}; choose another --name")
    schema, folder = SCHEMAS[LanguageModelling.dataset], out / name / "train"
    folder.mkdir(parents=True)
    texts = [t.strip() for t in texts if t.strip()]
    files = []
    for shard, start in enumerate(range(0, len(texts), rows_per_shard)):
        part = texts[start:start + rows_per_shard]
        columns = {"image": pa.nulls(len(part), pa.binary()), "image_id": pa.array(range(start, start + len(part))),
                   "file_name": pa.array([""] * len(part)), "width": pa.array([0] * len(part), pa.int32()),
                   "height": pa.array([0] * len(part), pa.int32()), "captions": pa.array([[t] for t in part])}
        path = folder / f"part-{shard:05d}.parquet"
        pq.write_table(pa.table(columns, schema=schema), path)
        files.append(f"{name}/train/{path.name}")
    manifest["datasets"][name] = {"splits": {"train": {"rows": len(texts), "files": files}}}
    write_manifest(out, manifest)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Add a text corpus to a data folder for language modelling.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="plain-text file, one document per line")
    source.add_argument("--parquet", help="Parquet file holding the texts")
    parser.add_argument("--column", default="text", help="the Parquet column of the texts")
    parser.add_argument("--out", required=True, help="data folder (holding manifest.json)")
    parser.add_argument("--name", default="text_corpus", help="dataset name in the folder")
    args = parser.parse_args(argv)
    if args.text:
        texts = Path(args.text).read_text(encoding="utf-8").splitlines()
    else:
        import pyarrow.parquet as pq

        texts = [str(t) for t in pq.read_table(args.parquet, columns=[args.column]).column(args.column).to_pylist()]
    folder = write_corpus(texts, args.out, args.name)
    print(f"[language_modelling] {args.name}: {len(texts)} texts → {folder}")


if __name__ == "__main__":
    main()
