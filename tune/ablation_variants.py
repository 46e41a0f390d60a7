"""The ablation variants of the paper's Tables 2–5, as changes to one base run config.

Every variant is the base run (``tune/configs/ablations.yaml`` by default) with a few ``key=value``
overrides and, for the task-collaboration table, a subset of its tasks. The "full" variant (global +
regional tokens, every task, conditional MoE, unmixed sampling, gathered retrieval negatives, MT-AdamW,
both encoders from stage 1) is in every table and is trained once per seed.

The encoders' starting points come before the variant's overrides: ``tune/ablations.py`` runs stage 1
(``pipelines/pretrain.py``) once and appends its ``pretrained_path`` overrides to the base run's, so every
variant starts from the stage-1 encoders unless its own overrides (later, so they win) say otherwise.

Task names come from the base run config (checked against ``unip2.tasks.TASKS`` when it is loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from unip2 import config_io
from unip2.run_config import RunConfig
from unip2.tasks import tasks_with_option

FULL = "full"
"""Name of the variant that is the base run unchanged."""
NO_MOE = ("model.decoder.use_moe=false",)
PLAIN_OPTIMIZATION = ("optim.name=adamw",)
NO_GATHER = tuple(f"model.tasks.{name}.gather_negatives=false" for name in tasks_with_option("gather_negatives"))
RANDOM_IMAGE_ENCODER = ("model.backbone.pretrained_path=null", "optim.backbone_lr_scale=1.0")
RANDOM_TEXT_ENCODER = ("model.text.pretrained_path=null", "optim.text_lr_scale=1.0")
"""An encoder from random weights, at the full learning rate (the lower scale is for pretrained ones)."""
NO_STAGE1 = ("pretrain.encoders=[]",)
"""With an encoder set back to random: the trial must not run stage 1 for it (``prepare_run`` would)."""


@dataclass(frozen=True)
class Variant:
    """One trained configuration (trained once per seed)."""

    name: str
    """Unique id, used in folder names: letters, digits, ``_`` and ``-``."""
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides of the base run."""
    tasks: tuple[str, ...] | None = None
    """The tasks trained (a subset of the base run's, in its order); None = all of them."""
    backbone_from: str | None = None
    """Name of a variant whose trained backbone (same seed) initializes this one's."""
    backbone_file: str | None = None
    """A local weights file initializing the backbone (``model.backbone.pretrained_path``)."""


@dataclass
class AblationTable:
    """One of the paper's ablation tables: labelled rows, each a variant."""

    key: str
    """File-name key: ``representation``, ``collaboration``, ``optimization``, ``initialization``."""
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    """(row label, variant name), in the paper's row order."""


@dataclass
class AblationPlan:
    variants: dict[str, Variant]
    """Every distinct variant, by name, in training order (a variant after those it depends on)."""
    tables: list[AblationTable]


def build_plan(tasks: list[str], *, backbone_files: dict[str, str] | None = None,
               only: list[str] | None = None) -> AblationPlan:
    """The four tables over the base run's ``tasks``.

    backbone_files: {label: local weights file} — extra rows of the initialization table.
    only: keep just these variant names (and what they depend on); the tables keep the rows trained.
    """
    variants: dict[str, Variant] = {}

    def add(variant: Variant) -> str:
        if variant.name in variants and variants[variant.name] != variant:
            raise ValueError(f"two different variants named {variant.name!r}")
        variants[variant.name] = variant
        return variant.name

    full = add(Variant(FULL))
    representation = AblationTable("representation", "Representation types (paper Table 2)", [
        ("global", add(Variant("tokens-global", ("model.tokens.use_regional=false",)))),
        ("regional", add(Variant("tokens-regional", ("model.tokens.use_global=false",)))),
        ("global + regional", full)])
    collaboration = AblationTable("collaboration", "Task collaboration and interference (paper Table 3; "
                                  "no MoE except the last row)")
    if len(tasks) > 1:
        for task in tasks:
            collaboration.rows.append((f"single task: {task}",
                                       add(Variant(f"single-{task}", NO_MOE, tasks=(task,)))))
        collaboration.rows.append(("all tasks", add(Variant("all-no_moe", NO_MOE))))
        if len(tasks) > 2:
            for task in tasks:
                kept = tuple(t for t in tasks if t != task)
                collaboration.rows.append((f"w/o {task}", add(Variant(f"without-{task}", NO_MOE, tasks=kept))))
    collaboration.rows.append(("all tasks with MoE", full))
    optimization = AblationTable("optimization", "Sampling and optimization (paper Table 4)", [
        ("mixed", add(Variant("mixed", ("train.sampling=mixed", *NO_GATHER, *PLAIN_OPTIMIZATION)))),
        ("unmixed", add(Variant("unmixed", (*NO_GATHER, *PLAIN_OPTIMIZATION)))),
        ("unmixed + gather", add(Variant("unmixed-gather", PLAIN_OPTIMIZATION))),
        ("unmixed + gather + MT-AdamW", full)])
    initialization = AblationTable("initialization", "Encoder initialization (paper Table 5)", [
        ("random", add(Variant("init-random", (*RANDOM_IMAGE_ENCODER, *RANDOM_TEXT_ENCODER, *NO_STAGE1)))),
        ("supervised classification (stage 1)", full)])
    if "detection" in tasks:  # the stage-1 image encoder trained on detection alone, then the generalist on it
        source = "single-detection" if len(tasks) > 1 else full
        initialization.rows.append(("+ detection", add(Variant("init-detection", backbone_from=source))))
    initialization.rows.append(("text encoder without MLM pretraining",
                                add(Variant("init-text-random", (*RANDOM_TEXT_ENCODER, *NO_STAGE1)))))
    for label, path in (backbone_files or {}).items():
        initialization.rows.append((f"backbone file: {label}",
                                    add(Variant(f"init-file-{_slug(label)}", backbone_file=str(path)))))
    tables = [representation, collaboration, optimization, initialization]
    if only is not None:
        variants, tables = _restrict(variants, tables, only)
    return AblationPlan(_dependency_order(variants), tables)


def variant_overrides(variant: Variant, base: RunConfig, *, seed: int, backbone_path: str | None = None) -> list[str]:
    """The ``key=value`` overrides that turn the base run into ``variant`` with ``seed``.

    backbone_path: the exported backbone file of ``variant.backbone_from`` (see ``unip2.persistence``).
    """
    overrides = [*variant.overrides, f"train.seed={seed}"]
    if variant.tasks is not None:
        unknown = [t for t in variant.tasks if t not in base.tasks]
        if unknown:
            raise ValueError(f"variant {variant.name}: tasks {unknown} are not in the base run ({', '.join(base.tasks)})")
        kept = {name: config_io.to_dict(base.tasks[name]) for name in base.tasks if name in variant.tasks}
        overrides.append("tasks=" + json.dumps(kept))  # JSON is YAML: replaces the task set
    if variant.backbone_file is not None:
        overrides.append(f"model.backbone.pretrained_path={Path(variant.backbone_file).resolve()}")
    if variant.backbone_from is not None:
        if backbone_path is None:
            raise ValueError(f"variant {variant.name} needs the backbone of {variant.backbone_from}")
        overrides.append(f"model.backbone.pretrained_path={backbone_path}")
    return overrides


def variant_tasks(variant: Variant, base: RunConfig) -> list[str]:
    return list(base.tasks) if variant.tasks is None else [t for t in base.tasks if t in variant.tasks]


def _slug(label: str) -> str:
    slug = "".join(c if c.isalnum() or c in "_-" else "_" for c in label)
    if not slug:
        raise ValueError(f"backbone file label {label!r} has no usable character")
    return slug


def _dependency_order(variants: dict[str, Variant]) -> dict[str, Variant]:
    first = {n: v for n, v in variants.items() if v.backbone_from is None}
    return first | {n: v for n, v in variants.items() if v.backbone_from is not None}


def _restrict(variants: dict[str, Variant], tables: list[AblationTable],
              only: list[str]) -> tuple[dict[str, Variant], list[AblationTable]]:
    unknown = sorted(set(only) - set(variants))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(variants)}")
    keep = set(only)
    for name in only:
        if variants[name].backbone_from is not None:
            keep.add(variants[name].backbone_from)
    kept = {n: v for n, v in variants.items() if n in keep}
    tables = [AblationTable(t.key, t.title, [(label, n) for label, n in t.rows if n in kept]) for t in tables]
    return kept, [t for t in tables if t.rows]
