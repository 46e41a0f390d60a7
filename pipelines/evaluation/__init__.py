"""Evaluation with Ray Data: the pipeline, its batch predictor, the report and the picture of predictions."""
