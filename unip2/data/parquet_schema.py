"""Arrow schemas of the converted datasets: one per source, shared by its tasks.

Columns common to all: ``image`` (the original encoded file bytes, never re-encoded), ``image_id``
(COCO id / cocoid; a stable index for ImageNet and Flickr30k), ``file_name``, ``width``, ``height``.

- ``imagenet`` (classification): ``label`` = index into manifest ``class_names["imagenet"]`` (sorted
  wnids), ``wnid``.
- ``coco_instances`` (detection, instance segmentation), per image N objects: ``boxes`` N x 4 COCO
  (x, y, w, h) pixels; ``labels`` contiguous 0..K-1 into ``class_names["coco"]`` (ordered by COCO
  category id); ``category_ids`` the original ids; ``masks`` compressed COCO RLE ``counts`` (utf-8) at
  height x width; ``iscrowd``; ``areas``. N may be 0.
- ``coco_captions`` (captioning, retrieval) and ``flickr30k`` (retrieval test): ``captions`` raw sentences.
- ``web_pairs`` (captioning, retrieval; web pairs from WebDataset shards, see ``web_pairs``): the
  ``coco_captions`` columns, one caption per image.
"""

from __future__ import annotations

import pyarrow as pa

_COMMON = [
    pa.field("image", pa.binary()),
    pa.field("image_id", pa.int64()),
    pa.field("file_name", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
]

SCHEMAS: dict[str, pa.Schema] = {
    "imagenet": pa.schema(_COMMON + [pa.field("label", pa.int32()), pa.field("wnid", pa.string())]),
    "coco_instances": pa.schema(_COMMON + [
        pa.field("boxes", pa.list_(pa.list_(pa.float32()))),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field("category_ids", pa.list_(pa.int32())),
        pa.field("masks", pa.list_(pa.string())),
        pa.field("iscrowd", pa.list_(pa.int8())),
        pa.field("areas", pa.list_(pa.float32())),
    ]),
    "coco_captions": pa.schema(_COMMON + [pa.field("captions", pa.list_(pa.string()))]),
    "flickr30k": pa.schema(_COMMON + [pa.field("captions", pa.list_(pa.string()))]),
}
SCHEMAS["web_pairs"] = SCHEMAS["coco_captions"]  # the same columns, so a task reads both as one row space


def leaf_columns(schema: pa.Schema) -> list[str]:
    """Parquet leaf column paths (``boxes.list.element.list.element``), as per-column options name them."""
    def leaves(name: str, kind: pa.DataType) -> list[str]:
        if pa.types.is_list(kind):
            return leaves(f"{name}.list.element", kind.value_type)
        return [name]
    return [leaf for f in schema for leaf in leaves(f.name, f.type)]
