"""The generalist model behind HTTP on Ray Serve: one deployment whose replicas hold the model and are the
FastAPI ingress (proxy → replica, one hop), with a dynamic batching queue per task route.

    serve run serve.app:build_app checkpoint=runs/<run>/checkpoint           # http://127.0.0.1:8000/
    serve run serve.app:build_app checkpoint=runs/<run>/checkpoint gallery=.cache/unip2/shapes-v2-seed0/parquet
    ray job submit --working-dir . -- python -m serve.deploy serve/config.yaml checkpoint=...   # on a cluster
    serve deploy serve/config.yaml                                     # with the code the nodes already hold

Our folder is the top-level package ``serve``; Ray's is always imported as ``from ray import serve``.
Nothing here does model math: requests go through the tasks' own preprocess → collate → predict.
"""
