"""Training on Ray Train: the launcher, the one worker loop of both stages, the generalist's step, checkpoints, live metrics."""
