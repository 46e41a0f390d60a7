"""The generalist model behind HTTP: a FastAPI ingress over a batching model deployment on Ray Serve.

    serve run serve.app:build_app checkpoint=runs/tiny/model           # http://127.0.0.1:8000/
    serve run serve.app:build_app checkpoint=runs/tiny/model gallery=data/parquet
    serve deploy serve/config.yaml                                     # against a running Ray cluster

Our folder is the top-level package ``serve``; Ray's is always imported as ``from ray import serve``.
Nothing here does model math: requests go through the tasks' own preprocess → collate → predict.
"""
