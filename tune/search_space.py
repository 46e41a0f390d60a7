"""The one place a sweep's search space is defined: ω_k and s_k of every task of the run, and the learning rate.

The tasks come from the run config (whose task names are checked against ``unip2.tasks.TASKS``); the
ranges come from a YAML file (``tune/configs/search_space.yaml``) or the defaults below::

    omega: {sample: loguniform, low: 0.25, high: 4.0}            # ω_k of every task
    sampling_weight: {sample: loguniform, low: 0.25, high: 4.0}  # unnormalized s_k of every task
    lr: {sample: loguniform, low: 5.0e-5, high: 1.0e-3}          # optim.lr; null = keep the config's
    tasks:                                                        # optional per-task ranges
      retrieval: {omega: {sample: choice, values: [1.0, 2.0]}}

A trial's parameters are a nested dict shaped like the run config (``{"tasks": {name: {"omega": x,
"sampling_weight": y}}, "optim": {"lr": z}}``) and become ``key=value`` overrides of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import ray.tune
import yaml

from unip2 import config_io
from unip2.config_io import ConfigError, require
from unip2.run_config import RunConfig
from unip2.tasks import TASKS


@dataclass
class Range:
    """One searched number: a continuous range or a list of choices; every value must be > 0."""

    sample: Literal["uniform", "loguniform", "choice"] = "loguniform"
    """How values are drawn: uniformly, log-uniformly between ``low`` and ``high``, or from ``values``."""
    low: float | None = None
    """Lower bound (uniform, loguniform)."""
    high: float | None = None
    """Upper bound (uniform, loguniform)."""
    values: list[float] | None = None
    """The choices (choice)."""

    def validate(self, prefix: str = "") -> None:
        if self.sample == "choice":
            require(bool(self.values), prefix + "values", "choice needs a non-empty list of values")
            require(all(v > 0 for v in self.values), prefix + "values", "every value must be > 0")
            return
        require(self.low is not None and self.high is not None, prefix + "low",
                f"{self.sample} needs both low and high")
        require(self.low > 0, prefix + "low", "must be > 0")
        require(self.high > self.low, prefix + "high", f"must be > low ({self.low})")

    def domain(self):
        """The Ray Tune search domain."""
        if self.sample == "choice":
            return ray.tune.choice(list(self.values))
        draw = ray.tune.loguniform if self.sample == "loguniform" else ray.tune.uniform
        return draw(self.low, self.high)


@dataclass
class TaskRanges:
    """Per-task ranges replacing the global ones; None = the global range."""

    omega: Range | None = None
    sampling_weight: Range | None = None


@dataclass
class SearchSpace:
    """Ranges of ω_k and s_k (shared by every task unless ``tasks`` names one) and of the learning rate."""

    omega: Range | None = field(default_factory=lambda: Range(low=0.25, high=4.0))
    """ω_k of every task; None = keep each task's configured ω."""
    sampling_weight: Range | None = field(default_factory=lambda: Range(low=0.25, high=4.0))
    """Unnormalized s_k of every task; None = keep each task's configured s."""
    lr: Range | None = field(default_factory=lambda: Range(low=5e-5, high=1e-3))
    """Peak learning rate; None = keep ``optim.lr``."""
    tasks: dict[str, TaskRanges] = field(default_factory=dict)
    """Ranges for single tasks, by registered task name."""

    def validate(self, prefix: str = "") -> None:
        for name, ranges in self.tasks.items():
            require(name in TASKS, f"{prefix}tasks.{name}", f"unknown task; registered: {', '.join(TASKS)}")
            for key in ("omega", "sampling_weight"):
                if getattr(ranges, key) is not None:
                    getattr(ranges, key).validate(f"{prefix}tasks.{name}.{key}.")
        for key in ("omega", "sampling_weight", "lr"):
            if getattr(self, key) is not None:
                getattr(self, key).validate(f"{prefix}{key}.")


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """The defaults, or the YAML file at ``path``; an invalid file is refused naming the field."""
    if path is None:
        return SearchSpace()
    try:
        _check_ranges(path)
        return config_io.load(SearchSpace, path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err.field}", str(err).split(": ", 1)[1]) from None


def _check_ranges(path: str | Path) -> None:
    """Parse every range mapping on its own first, so an error names the range's field (``omega.sample``)
    instead of "matches none of Range | None"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("search space", "the file must hold a mapping")
    ranges = {key: data.get(key) for key in ("omega", "sampling_weight", "lr")}
    tasks = data.get("tasks") or {}
    if isinstance(tasks, dict):
        for name, entry in tasks.items():
            if isinstance(entry, dict):
                ranges |= {f"tasks.{name}.{key}": entry.get(key) for key in ("omega", "sampling_weight")}
    for prefix, value in ranges.items():
        if isinstance(value, dict):
            config_io.from_dict(Range, value, prefix=prefix)


def param_space(space: SearchSpace, run: RunConfig) -> dict:
    """Ray Tune ``param_space`` over the run's tasks, nested like the run config."""
    for name in space.tasks:
        if name not in run.tasks:
            raise ConfigError(f"search space tasks.{name}", f"not a task of this run ({', '.join(run.tasks)})")
    tasks: dict[str, dict] = {}
    for name in run.tasks:
        own = space.tasks.get(name, TaskRanges())
        entry = {}
        for key in ("omega", "sampling_weight"):
            chosen = getattr(own, key) or getattr(space, key)
            if chosen is not None:
                entry[key] = chosen.domain()
        if entry:
            tasks[name] = entry
    params: dict = {"tasks": tasks} if tasks else {}
    if space.lr is not None:
        params["optim"] = {"lr": space.lr.domain()}
    if not params:
        raise ConfigError("search space", "nothing to search: every range is null")
    return params


def uniform_params(run: RunConfig) -> dict:
    """The reference point: ω = 1 and s = 1 for every task, the configured learning rate."""
    return {"tasks": {name: {"omega": 1.0, "sampling_weight": 1.0} for name in run.tasks},
            "optim": {"lr": run.optim.lr}}


def to_overrides(params: dict, prefix: str = "") -> list[str]:
    """A trial's nested parameters → ``key=value`` overrides of the run config."""
    overrides = []
    for key, value in params.items():
        if isinstance(value, dict):
            overrides += to_overrides(value, f"{prefix}{key}.")
        else:
            overrides.append(f"{prefix}{key}={float(value)!r}")  # numpy floats print oddly
    return overrides


def flat_params(params: dict, prefix: str = "") -> dict[str, float]:
    """``{"tasks": {"detection": {"omega": 2}}}`` → ``{"tasks.detection.omega": 2}`` (table columns)."""
    flat: dict[str, float] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat |= flat_params(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = float(value)
    return flat
