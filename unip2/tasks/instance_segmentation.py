"""Instance segmentation: detection plus each proposal's mask (BCE + dice losses, RLE predictions)."""

from __future__ import annotations

from unip2.tasks.detection import Detection


class InstanceSegmentation(Detection):
    name = "instance_segmentation"
    metric = "segm_AP"
    with_masks = True
