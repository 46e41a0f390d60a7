"""Evaluation metrics of the five tasks (numpy, pycocotools, pycocoevalcap; no model code).

- classification: ``classification_metrics`` → top1 / top5.
- detection, instance segmentation: ``to_coco_results`` → ``write_coco_results`` → ``coco_eval``
  (COCOeval "bbox" / "segm") → AP, AP50, AP75, APs, APm, APl.
- captioning: ``caption_metrics`` → BLEU-1..4, METEOR, ROUGE-L, CIDEr; references from
  ``load_coco_caption_references``.
- retrieval: ``retrieval_metrics`` → i2t / t2i R@1, 5, 10 and rsum.

All scores are fractions (CIDEr on pycocoevalcap's scale, ~1.0 for a good model).
"""

from __future__ import annotations

from unip2.eval.caption_scores import caption_metrics, load_coco_caption_references, simple_tokenize
from unip2.eval.classification_accuracy import classification_metrics
from unip2.eval.coco_detection import METRIC_NAMES, coco_eval, to_coco_results, write_coco_results
from unip2.eval.retrieval_recall import retrieval_metrics

__all__ = [
    "METRIC_NAMES",
    "caption_metrics",
    "classification_metrics",
    "coco_eval",
    "load_coco_caption_references",
    "retrieval_metrics",
    "simple_tokenize",
    "to_coco_results",
    "write_coco_results",
]
