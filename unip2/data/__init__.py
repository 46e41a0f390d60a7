"""Datasets: the embedded shapes-world generator, readers of the real formats, and the Parquet converter.

- ``synthetic``: ``python -m unip2.data.synthetic --out DIR`` writes a small multi-task dataset in the real
  COCO / Karpathy / ImageNet formats (``shapes``, ``scenes``, ``caption_templates`` draw and describe it).
- ``coco``, ``karpathy``, ``imagenet``: readers of those formats, no Ray.
- ``images``: checks encoded image bytes (missing, truncated, undecodable) and decodes them.
- ``prepare``: converts the readers' output to one Parquet dataset per source and split plus
  ``manifest.json`` (``parquet_schema``, ``parquet_writer``, ``manifest``, ``progress``); the command line is
  ``pipelines/prepare_data.py``.
- ``web_pairs``: WebDataset tar shards of web image-text pairs (img2dataset's output) → Parquet of the
  captions schema, one shard at a time (``shard_paths`` finds the shards: folders, URIs, brace patterns);
  ``pipelines/data/web_pairs.py`` runs it over all shards with Ray Data.

Nothing heavy is imported here; import the submodule you need.
"""
