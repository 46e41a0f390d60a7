"""Instance segmentation: detection plus each proposal's mask (BCE + dice losses, RLE predictions)."""

from __future__ import annotations

from unip2.tasks.detection import Detection, DetectRequest
from unip2.tasks.routes import Route
from unip2.tasks.headlines import Headline


class InstanceSegmentation(Detection):
    name = "instance_segmentation"
    metric = "segm_AP"
    headlines = (Headline("segm_AP", "mask AP", "mask AP", paper_column="COCO mask AP", default_run_goal=">= 0.4",
                          benchmark_key="default_run_mask_ap"),)
    with_masks = True
    iou_types = ("segm", "bbox")
    results_file = "segmentations.json"
    routes = (Route("/v1/segment", "As detect, plus each instance's mask as COCO RLE", DetectRequest,
                    shows="instances", example={"max_detections": 10}),)
