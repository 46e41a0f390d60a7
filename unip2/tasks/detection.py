"""Object detection: RPN proposals, each regional token's decoder output scored against category names.

Score of a detection = objectness × class probability; boxes come from the RPN. **Decision**: the
decoder sees all Q regional tokens of an image in one sequence (plus global tokens as context), so
proposals can attend to each other; each proposal's output is its representation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unip2.config import TaskOptions
from unip2.config_io import require
from unip2.model.box_ops import box_cxcywh_to_xyxy
from unip2.model.proposal_criterion import ProposalCriterion
from unip2.eval import coco_eval, to_coco_results, write_coco_results
from unip2.eval.chance import detection_chance
from unip2.tasks.base import Task, image_batch, image_ids, local_gather, object_array
from unip2.tasks.outputs import MetricContext, TaskOutput
from unip2.tasks.routes import Route
from unip2.tasks.preprocessing import decode_image, decode_rle, encode_rle, letterbox, letterbox_mask
from unip2.tasks.headlines import Headline

TASK_FLAGS = dict(input_image=True, target_category=True)
MASK_STRIDE = 4  # target masks are stored at 1/4 of the input size, like the mask logits


@dataclass
class DetectionOptions(TaskOptions):
    """Detection's (and instance segmentation's) options, saved with the model."""

    max_per_image: int = 100
    """Detections kept per image after scoring (objectness × class probability)."""
    category_weight: float = 2.0
    """Loss weight of the category cross-entropy on matched proposals (beside the RPN's weights)."""

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        require(self.max_per_image >= 1, prefix + "max_per_image", "must be >= 1")
        require(self.category_weight >= 0, prefix + "category_weight", "must be >= 0")


@dataclass
class DetectRequest:
    class_names: list[str] | None = field(default=None, metadata={
        "min_length": 1, "max_length": 1000, "item_max_length": 200,
        "description": "open vocabulary; default: the checkpoint's names"})
    score_threshold: float = field(default=0.0, metadata={
        "ge": 0.0, "le": 1.0, "description": "drop detections scoring at or below it"})
    max_detections: int | None = field(default=None, metadata={
        "ge": 1, "le": 1000, "description": "default: the checkpoint's limit"})


class Detection(Task):
    name = "detection"
    dataset = "coco_instances"
    label_space = "coco"
    metric = "bbox_AP"
    preset_options = {"tiny": {"max_per_image": 20}}
    legacy_options = {"detection_max_per_image": "max_per_image", "detection_category_weight": "category_weight"}
    headlines = (Headline("bbox_AP", "det AP", "box AP", paper_column="COCO box AP", default_run_goal=">= 0.5",
                          benchmark_key="default_run_box_ap"),)
    Options = DetectionOptions
    with_masks = False
    iou_types = ("bbox",)
    """COCOeval runs, in order; the first names the headline metric."""
    results_file = "detections.json"
    routes = (Route("/v1/detect", "Boxes (x, y, w, h in input pixels), labels, scores", DetectRequest,
                    shows="instances", example={"max_detections": 10}),)

    def __init__(self):
        self._criteria: dict[int, ProposalCriterion] = {}

    # ------------------------------------------------------------------------------------ data
    def preprocess(self, batch, *, image_size, tokenizer, train, rng, max_text_length=32):
        annotated = "boxes" in batch
        images, boxes, labels, masks, scales, sizes = [], [], [], [], [], []
        for row in range(len(batch["image"])):
            image = decode_image(batch["image"][row])
            width, height = image.size
            canvas, scale = letterbox(image, image_size)
            if annotated:
                row_boxes, row_labels, row_masks = self._targets(batch, row, scale, image_size, height, width)
                if train and rng.random() < 0.5:
                    self._flip(canvas, row_boxes, row_masks, round(width * scale), image_size)
                boxes.append(row_boxes)
                labels.append(row_labels)
                masks.append(row_masks)
            images.append(canvas)
            scales.append(scale)
            sizes.append((height, width))
        out = {"images": image_batch(images), "image_id": image_ids(batch),
               "scale": np.asarray(scales, dtype=np.float32), "orig_size": np.asarray(sizes, dtype=np.int64)}
        if annotated:
            out["boxes"], out["labels"] = object_array(boxes), object_array(labels)
            if self.with_masks:
                out["masks"] = object_array(masks)
        return out

    def _targets(self, batch, row, scale, image_size, height, width):
        """One row's annotations on the letterboxed canvas: cxcywh boxes in [0, 1], labels, 1/4-size masks."""
        row_boxes = np.asarray(list(batch["boxes"][row]), dtype=np.float32).reshape(-1, 4) * scale
        keep = ((np.asarray(batch["iscrowd"][row], dtype=np.int64) == 0)
                & (row_boxes[:, 2] >= 1) & (row_boxes[:, 3] >= 1))
        row_boxes = row_boxes[keep]
        centre = row_boxes[:, :2] + row_boxes[:, 2:] / 2
        row_boxes = (np.concatenate([centre, row_boxes[:, 2:]], axis=1) / image_size).astype(np.float32)
        row_labels = np.asarray(batch["labels"][row], dtype=np.int64)[keep]
        side = image_size // MASK_STRIDE
        row_masks = np.zeros((0, side, side), np.uint8)
        if self.with_masks:
            counts = [c for c, k in zip(batch["masks"][row], keep) if k]
            if counts:
                row_masks = np.stack([letterbox_mask(decode_rle(c, height, width), scale, image_size, MASK_STRIDE)
                                      for c in counts])
        return row_boxes, row_labels, row_masks

    @staticmethod
    def _flip(canvas, boxes, masks, content: int, image_size: int) -> None:
        """Horizontal flip in place, within the letterboxed content so padding stays bottom/right."""
        canvas[:, :content] = canvas[:, :content][:, ::-1]
        boxes[:, 0] = content / image_size - boxes[:, 0]
        content_masks = round(content / MASK_STRIDE)
        masks[:, :, :content_masks] = masks[:, :, :content_masks][:, :, ::-1]

    # ----------------------------------------------------------------------------------- model
    def criterion(self, model) -> ProposalCriterion:
        key = id(model.config.proposals)
        if key not in self._criteria:
            self._criteria[key] = ProposalCriterion.from_config(model.config.proposals)
        return self._criteria[key]

    def proposal_features(self, model, encoding) -> torch.Tensor:
        """Decoder output of every proposal: B×Q×D (global tokens join as context)."""
        tokens = encoding.regional
        attributes = model.attributes(tokens, token_image=True, token_regional=True, **TASK_FLAGS)
        if encoding.global_tokens is not None:
            context = encoding.global_tokens
            tokens = torch.cat([tokens, context], dim=1)
            attributes = attributes + model.attributes(context, token_image=True, token_global=True, **TASK_FLAGS)
        out = model.decode(tokens, attributes)["tokens"]
        return out[:, :encoding.regional.shape[1]]

    def candidates(self, model, names: list[str]) -> torch.Tensor:
        return model.encode_texts(names, token_is_target=True, **TASK_FLAGS)

    def targets(self, batch) -> list[dict[str, torch.Tensor]]:
        targets = []
        for index, boxes in enumerate(batch["boxes"]):
            target = {"boxes": boxes.float(), "labels": batch["labels"][index]}
            if self.with_masks:
                target["masks"] = batch["masks"][index].float()
            targets.append(target)
        return targets

    def loss(self, model, batch, *, gather=local_gather):
        targets = self.targets(batch)
        # Only the mask losses read every layer's masks: detection alone skips them.
        encoding = model.encode_image(batch["images"], targets=targets, layer_masks=self.with_masks)
        terms, indices = self.criterion(model)(encoding.proposals, targets)
        features = self.proposal_features(model, encoding)
        logits = model.score(features, self.candidates(model, self.class_names(model)), self.candidate_family)  # B×Q×K
        matched_logits = torch.cat([logits[b, src] for b, (src, _) in enumerate(indices)])
        matched_labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)])
        if matched_labels.numel():
            terms["loss_category"] = F.cross_entropy(matched_logits.float(), matched_labels)
        else:  # no objects in the whole batch: keep the graph (and DDP's gradient set) intact
            terms["loss_category"] = logits.sum() * 0.0
        return terms

    def loss_weights(self, model):
        weights = dict(self.criterion(model).weights())
        weights["loss_category"] = self.options(model).category_weight
        return weights

    # ------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, model, batch, *, class_names: list[str] | None = None, score_threshold: float = 0.0,
                max_detections: int | None = None, **options: Any) -> list[dict]:
        names = self.class_names(model, class_names)
        limit = max_detections or self.options(model).max_per_image
        encoding = model.encode_image(batch["images"])
        probs = model.score(self.proposal_features(model, encoding), self.candidates(model, names),
                            self.candidate_family).float().softmax(-1)
        scores = probs * encoding.proposals["objectness"].float().sigmoid().unsqueeze(-1)  # B×Q×K
        image_size = batch["images"].shape[-1]
        results = []
        for b in range(scores.shape[0]):
            flat = scores[b].flatten()
            top_scores, top = flat.topk(min(limit, flat.numel()))
            keep = top_scores > score_threshold
            top_scores, top = top_scores[keep], top[keep]
            query, label = top // len(names), top % len(names)
            scale = float(batch["scale"][b])
            height, width = (int(v) for v in batch["orig_size"][b])
            xyxy = box_cxcywh_to_xyxy(encoding.proposals["boxes"][b, query].float()) * image_size / scale
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
            result = {"image_id": int(batch["image_id"][b]),
                      "boxes": torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1).tolist(),  # x y w h
                      "labels": label.tolist(), "names": [names[int(i)] for i in label],
                      "scores": top_scores.tolist()}
            if self.with_masks:
                result["masks"] = self.masks_to_rle(encoding.proposals["masks"][b, query], image_size, scale,
                                                    height, width)
            results.append(result)
        return results

    # ------------------------------------------------------------------------------ evaluation
    def chance_levels(self, data):
        instances = data.annotation_file("instances")
        if self.with_masks or not instances or not data.has(self.dataset, "train", data.split):
            return {}  # box AP only: no chance level of mask AP is defined
        columns = ["image_id", "width", "height", "boxes", "category_ids"]
        return {"bbox_AP": detection_chance(data.evaluated(self.dataset, columns), data.training(self.dataset, columns),
                                            instances, draws=data.draws)}

    def missing_evaluation_data(self, manifest: dict, dataset: str, split: str) -> str | None:
        reason = super().missing_evaluation_data(manifest, dataset, split)
        if reason is None and not manifest.get("annotations", {}).get("instances", {}).get(split):
            return f"no COCO instances annotation file for split {split!r} in the manifest"
        return reason

    def prediction_files(self, answers, files, out):
        """COCO results (``detections.json`` / ``segmentations.json``; category id = the label's index among the
        candidate names) and ``images.json``, the COCO ``images`` and ``categories`` they refer to."""
        names = {int(label): name for answer in answers for label, name in zip(answer["labels"], answer["names"])}
        results = write_coco_results(to_coco_results([{"image_id": i, **answer} for i, answer in enumerate(answers)],
                                                     range(max(names, default=-1) + 1)),
                                     Path(out) / self.results_file)
        images = Path(out) / "images.json"
        images.write_text(json.dumps({"images": [{"id": i, "file_name": file} for i, file in enumerate(files)],
                                      "categories": [{"id": i, "name": n} for i, n in sorted(names.items())]}))
        return {self.results_file.removesuffix(".json"): results, "images": images}

    def evaluate(self, output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
        """COCOeval (pycocotools) of the predictions against the split's instances file. Predicted names are
        relabelled into the data's classes by name; detections of other names are dropped and counted."""
        predictions, dropped = _to_data_labels(output.predictions, context.data_class_names[self.label_space])
        path = write_coco_results(to_coco_results(predictions, context.category_ids),
                                  context.out_dir / self.results_file)
        image_ids = [int(p["image_id"]) for p in predictions]
        metrics: dict = {}
        for iou_type in self.iou_types:
            scores = coco_eval(context.annotation_files["instances"], path, iou_type, image_ids=image_ids)
            metrics |= {f"{iou_type}_{name}": value for name, value in scores.items()}
        metrics |= {"num_images": len(image_ids), "dropped_detections": dropped}
        return metrics, {self.results_file.removesuffix(".json"): str(path)}

    @staticmethod
    def masks_to_rle(logits: torch.Tensor, image_size: int, scale: float, height: int, width: int) -> list[dict]:
        """N×Hm×Wm mask logits on the letterboxed canvas → COCO RLE at the original image size."""
        if logits.shape[0] == 0:
            return []
        canvas = F.interpolate(logits.float().unsqueeze(1), size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
        content = canvas[:, :, :max(1, round(height * scale)), :max(1, round(width * scale))]
        full = F.interpolate(content, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return [encode_rle((mask > 0).cpu().numpy()) for mask in full]


def _to_data_labels(predictions: list[dict], data_names: list[str]) -> tuple[list[dict], int]:
    """Detections relabelled by name into the data's classes; those of unknown names removed."""
    index = {name: i for i, name in enumerate(data_names)}
    relabelled, dropped = [], 0
    for prediction in predictions:
        keep = [i for i, name in enumerate(prediction["names"]) if name in index]
        dropped += len(prediction["names"]) - len(keep)
        entry = {"image_id": prediction["image_id"],
                 "boxes": [prediction["boxes"][i] for i in keep],
                 "labels": [index[prediction["names"][i]] for i in keep],
                 "scores": [prediction["scores"][i] for i in keep]}
        if "masks" in prediction:
            entry["masks"] = [prediction["masks"][i] for i in keep]
        relabelled.append(entry)
    return relabelled, dropped
