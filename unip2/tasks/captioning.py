"""Image captioning: image tokens + previous words → next word scored against the candidate vocabulary.

The candidates are the tokenizer's whole vocabulary, or the tokens of the training captions (``tasks.captioning.vocabulary``). Training is teacher-forced over every position in one
pass: the text stream is causal (text token i sees the image and text tokens ≤ i) in both the text
encoder and the shared decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from unip2.config import TaskOptions
from unip2.config_io import ConfigError, require
from unip2.data.caption_vocabulary import training_caption_token_ids
from unip2.model.decoder import prefix_causal_mask
from unip2.eval import caption_metrics, load_coco_caption_references, write_coco_results
from unip2.eval.chance import caption_chance
from unip2.tasks.base import Task, local_gather
from unip2.tasks.outputs import MetricContext, TaskOutput
from unip2.tasks.routes import Route
from unip2.tasks.captioned_images import preprocess_captioned_images
from unip2.tasks.beam_search import beam_search
from unip2.tasks.headlines import Headline

TASK_FLAGS = dict(input_image=True, input_text=True, target_text=True)


@dataclass
class CaptioningOptions(TaskOptions):
    """Captioning's options, saved with the model."""

    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy over the candidate tokens."""
    max_length: int = 32
    """Longest generated caption, in tokens."""
    beam_size: int = 1
    """Default beam size for caption decoding (1 = greedy)."""
    vocabulary: Literal["full", "training_captions"] = "full"
    """The candidate words, each encoded by the text encoder and g at every training step and scored at every
    position. ``full``: every token of the tokenizer (50,265 for roberta-base); ``training_captions``: only the
    tokens that occur in the training captions, plus the end token (``token_ids``, found when a training run
    starts), so no other token is ever generated. Measured with BASE's text encoder and decoder (vocabulary
    encoding + scoring, forward + backward, batch 2 × 20 tokens, one CPU thread): each candidate costs 1.02
    GFLOP, ~6 ms and ~1.5 MB of activations, so all 50,265 tokens take ~5 min a captioning step, 10,000 tokens ~1
    min (``benchmarks/caption_vocabulary.py``, docs/benchmarks.md); encoded in one batch they would hold ~77 GB, in
    chunks (``model.candidate_chunk_tokens``) they hold one chunk's activations and the K×D embeddings."""
    token_ids: list[int] = field(default_factory=list)
    """The candidate token ids under ``vocabulary: training_captions``: a training run fills them from its
    training captions (``unip2.data.caption_vocabulary``) and they are saved with the model, so inference scores
    the same set. Empty under ``full``. A target token outside them (captions of other data) is left out of the
    loss."""

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        require(0 <= self.label_smoothing < 1, prefix + "label_smoothing", "must be in [0, 1)")
        require(self.max_length >= 2, prefix + "max_length", "must be >= 2")
        require(self.beam_size >= 1, prefix + "beam_size", "must be >= 1")
        require(self.vocabulary == "training_captions" or not self.token_ids, prefix + "token_ids",
                "only used with vocabulary: training_captions")
        require(len(set(self.token_ids)) == len(self.token_ids) and all(i >= 0 for i in self.token_ids),
                prefix + "token_ids", "must be distinct token ids >= 0")


def candidate_ids(options: CaptioningOptions, tokenizer) -> torch.Tensor:
    """The candidate token ids (K, sorted): the whole vocabulary, or ``token_ids``."""
    if options.vocabulary == "full":
        return torch.arange(tokenizer.vocab_size)
    ids = sorted(options.token_ids)
    field_name = "tasks.captioning.token_ids"
    if not ids:
        raise ValueError(f"{field_name}: empty under vocabulary: training_captions; a training run fills it from "
                         "its training captions (unip2.data.caption_vocabulary)")
    if ids[-1] >= tokenizer.vocab_size:
        raise ValueError(f"{field_name}: id {ids[-1]} is outside the tokenizer's {tokenizer.vocab_size} tokens")
    if tokenizer.eos_id not in ids:
        raise ValueError(f"{field_name}: the end token (id {tokenizer.eos_id}) is missing, so no caption could end")
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class CaptionRequest:
    beam_size: int | None = field(default=None, metadata={
        "ge": 1, "le": 10, "description": "default: the checkpoint's beam size"})
    max_length: int | None = field(default=None, metadata={"ge": 2, "le": 128, "description": "most tokens generated"})


class Captioning(Task):
    name = "captioning"
    dataset = "coco_captions"
    metric = "CIDEr"
    preset_options = {"tiny": {"max_length": 24}}
    legacy_options = {"caption_label_smoothing": "label_smoothing", "caption_max_length": "max_length",
                      "caption_beam_size": "beam_size", "caption_vocabulary": "vocabulary",
                      "caption_token_ids": "token_ids"}
    headlines = (Headline("BLEU-4", "cap B@4", "caption BLEU-4", paper_column="COCO caption B@4"),
                 Headline("CIDEr", "CIDEr", "caption CIDEr", paper_column="CIDEr", default_run_goal=">= 1.5",
                          benchmark_key="default_run_cider"))
    Options = CaptioningOptions
    eval_columns = ("captions",)
    candidate_family = "vocabulary"
    routes = (Route("/v1/caption", "A caption and the beams with their scores", CaptionRequest, shows="text"),)

    def preprocess(self, batch, *, image_size, tokenizer, train, rng, max_text_length=32):
        return preprocess_captioned_images(batch, image_size=image_size, tokenizer=tokenizer, train=train, rng=rng,
                                           max_text_length=max_text_length)

    def fill_options(self, options: CaptioningOptions, *, data_root, datasets, train_rows, tokenizer) -> None:
        """Under ``vocabulary: training_captions``, the candidate tokens of the training captions (once)."""
        if options.vocabulary != "training_captions" or options.token_ids:
            return
        if train_rows == 0:
            raise ConfigError("model.tasks.captioning.vocabulary", f"training_captions needs training captions, and "
                                                                  f"{' + '.join(datasets)} has no 'train' rows")
        options.token_ids = training_caption_token_ids(data_root, datasets, tokenizer)

    def check(self, model) -> None:
        self.candidates(model)

    def candidates(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(K candidate token ids, each vocabulary id's index among them or -100), made once per model."""
        ids = model.constant("caption_ids", lambda: candidate_ids(self.options(model), model.tokenizer))

        def index() -> torch.Tensor:
            positions = torch.full((model.tokenizer.vocab_size,), -100, dtype=torch.long)
            positions[ids.cpu()] = torch.arange(len(ids))
            return positions

        return ids, model.constant("caption_index", index)

    def vocabulary(self, model) -> torch.Tensor:
        return model.encode_vocabulary(self.candidates(model)[0], token_is_target=True, **TASK_FLAGS)

    def candidate_count(self, model) -> int:
        return len(candidate_ids(self.options(model), model.tokenizer))

    def next_word_features(self, model, image_tokens, image_attributes, input_ids, attention_mask):
        """Decoder outputs at every text position: B×L×D (position i predicts token i+1)."""
        text = model.encode_text(input_ids, attention_mask, causal=True)
        text_attributes = model.attributes(text, token_text=True, causal=True, **TASK_FLAGS)
        tokens = torch.cat([image_tokens, text], dim=1)
        attributes = image_attributes + text_attributes
        padding = torch.cat([torch.zeros(image_tokens.shape[:2], dtype=torch.bool, device=text.device),
                             attention_mask == 0], dim=1)
        mask = prefix_causal_mask(image_tokens.shape[1], text.shape[1], padding)
        out = model.decode(tokens, attributes, padding_mask=padding, attention_mask=mask)["tokens"]
        return out[:, image_tokens.shape[1]:]

    def loss(self, model, batch, *, gather=local_gather):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.shape[1] < 2:
            raise ValueError("captioning needs at least one word after <s>")
        encoding = model.encode_image(batch["images"])
        image_tokens, image_attributes = model.image_sequence(encoding, **TASK_FLAGS)
        features = self.next_word_features(model, image_tokens, image_attributes, ids[:, :-1], mask[:, :-1])
        logits = model.score(features, self.vocabulary(model), self.candidate_family)  # B×(L-1)×K
        # Token ids → their index among the K candidates (-100, left out, for a token that is none).
        targets = self.candidates(model)[1][ids[:, 1:]].masked_fill(mask[:, 1:] == 0, -100)
        smoothing = self.options(model).label_smoothing
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                               label_smoothing=smoothing)
        return {"loss_caption": loss}

    def loss_weights(self, model):
        return {"loss_caption": 1.0}

    @torch.no_grad()
    def predict(self, model, batch, *, beam_size: int | None = None, max_length: int | None = None,
                **options: Any) -> list[dict]:
        tokenizer = model.tokenizer
        options = self.options(model)
        beam_size, max_length = beam_size or options.beam_size, max_length or options.max_length
        candidate_token_ids = self.candidates(model)[0]
        encoding = model.encode_image(batch["images"])
        image_tokens, image_attributes = model.image_sequence(encoding, **TASK_FLAGS)
        vocabulary = self.vocabulary(model)

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """N×t token-id prefixes → N×V log-probabilities over token ids (-inf for non-candidates)."""
            mask = torch.ones_like(prefixes)
            features = self.next_word_features(model, image_tokens[rows], image_attributes, prefixes, mask)
            log_probs = model.score(features[:, -1], vocabulary, self.candidate_family).float().log_softmax(-1)  # N×K
            by_token = log_probs.new_full((log_probs.shape[0], tokenizer.vocab_size), float("-inf"))
            return by_token.index_copy_(1, candidate_token_ids, log_probs)

        banned = tuple(i for i in tokenizer.special_ids if i != tokenizer.eos_id)
        beams = beam_search(step, batch_size=image_tokens.shape[0], bos_id=tokenizer.bos_id,
                            eos_id=tokenizer.eos_id, max_length=max_length, beam_size=beam_size,
                            banned_ids=banned, device=image_tokens.device)
        results = []
        for image_id, row in zip(batch["image_id"], beams):
            texts = [(tokenizer.decode(ids), score) for ids, score in row]
            results.append({"image_id": int(image_id), "caption": texts[0][0] if texts else "",
                            "beams": [{"caption": t, "score": s} for t, s in texts]})
        return results

    def chance_levels(self, data):
        if not data.has(self.dataset, "train", data.split):
            return {}
        evaluated = data.evaluated(self.dataset, ["image_id", "captions"])
        captions_file = data.annotation_file("captions")  # the references the evaluation reads, where it has them
        references = (load_coco_caption_references(captions_file, [r["image_id"] for r in evaluated]) if captions_file
                      else {int(r["image_id"]): list(r["captions"]) for r in evaluated})
        training = [c for r in data.training(self.dataset, ["captions"]) for c in r["captions"]]
        return caption_chance(training, references, draws=data.draws)

    def prediction_files(self, answers, files, out):
        """``captions.json``: COCO caption results, with each image's file name."""
        path = write_coco_results([{"image_id": i, "file_name": file, "caption": answer["caption"]}
                                   for i, (file, answer) in enumerate(zip(files, answers))],
                                  Path(out) / "captions.json")
        return {"captions": path}

    def evaluate(self, output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
        """BLEU / METEOR / ROUGE-L / CIDEr against the rows' reference captions; ``captions.json`` (COCO results)."""
        captions = [{"image_id": int(p["image_id"]), "caption": p["caption"]} for p in output.predictions]
        path = write_coco_results(captions, context.out_dir / "captions.json")
        predictions = {c["image_id"]: c["caption"] for c in captions}
        references = {int(p["image_id"]): refs for p, refs in zip(output.predictions, output.annotations["captions"])}
        return caption_metrics(predictions, references, meteor=context.meteor), {"captions": str(path)}
