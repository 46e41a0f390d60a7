"""Ray Tune sweeps of the task weights ω_k, the sampling weights s_k and the learning rate.

The folder is named ``tune`` but never stands in for Ray's: Ray Tune is always imported as
``from ray import tune`` or ``import ray.tune``. Entry point: ``python tune/sweep.py`` (see its docstring).
"""
