"""Configuration of a training run: model, tasks (ω_k, s_k, batch sizes), data, optimizer, schedule, scale.

Loaded by ``load_run_config`` from YAML + ``key=value`` overrides. ``model.preset`` picks the starting
model config; the rest of ``model`` overrides its fields. Saved with every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from unip2 import config_io, schedules
from unip2.config import ModelConfig
from unip2.config_io import ConfigError, require
from unip2.presets import preset
from unip2.schedules import Schedule
from unip2.tasks import OPTION_CLASSES, TASKS, tasks_with_option, validate_task_options


@dataclass
class TaskRunConfig:
    """How one task takes part in multi-task training."""

    batch_size: int = 8
    """Per-worker batch size of this task (unmixed sampling lets every task have its own)."""
    omega: Schedule = 1.0
    """ω_k: weight of the task's normalized gradient (MT-AdamW). A number, or ``{step: value}`` pieces that change
    it at those steps (``unip2.schedules``; the first piece at step 0), e.g. a schedule Population Based Training
    learned."""
    sampling_weight: Schedule = 1.0
    """Unnormalized s_k: how often the task is drawn; normalized over the run's tasks at each step. A number or
    ``{step: value}`` pieces, as ``omega``."""
    eval_batch_size: int = 32
    """Batch size at evaluation."""
    datasets: list[str] | None = None
    """Datasets of the data folder (names in its manifest) whose ``train`` rows the task trains on, read as
    one row space in this order, e.g. [coco_captions, web_pairs]; None = the task's own dataset."""

    def validate(self, prefix: str = "") -> None:
        require(self.batch_size > 0, prefix + "batch_size", "must be > 0")
        require(self.datasets is None or (len(self.datasets) > 0 and len(set(self.datasets)) == len(self.datasets)),
                prefix + "datasets", "must be a non-empty list of distinct dataset names, or null")
        for name in ("omega", "sampling_weight"):
            why = schedules.problem(getattr(self, name))
            require(why is None, prefix + name, why or "")
        require(self.eval_batch_size > 0, prefix + "eval_batch_size", "must be > 0")


@dataclass
class DataConfig:
    """Where the data comes from and how it is streamed."""

    root: str | None = None
    """Folder written by ``pipelines/prepare_data.py`` (holds manifest.json); None = the embedded default."""
    cache_dir: str = ".cache/unip2"
    """Where the embedded default is generated and converted when ``root`` is None."""
    synthetic_seed: int = 0
    """Seed of the embedded default dataset."""
    shuffle_window: int = 4096
    """Rows are shuffled within windows of this many rows (whole Parquet shards), for read locality."""
    loader_concurrency: int = 1
    """Ray Data decode/augment tasks running at once per training worker."""
    loader_cpus: float = 0.5
    """CPUs reserved per decode/augment task."""
    prefetch_steps: int = 4
    """Step batches decoded ahead of the training step, per worker."""
    steps_per_block: int = 8
    """Steps decoded per Ray Data block (one task call): more amortizes Ray's per-block cost, fewer hands
    the first batch over sooner."""

    def validate(self, prefix: str = "") -> None:
        require(self.shuffle_window > 0, prefix + "shuffle_window", "must be > 0")
        require(self.loader_concurrency > 0, prefix + "loader_concurrency", "must be > 0")
        require(self.loader_cpus > 0, prefix + "loader_cpus", "must be > 0")
        require(self.prefetch_steps >= 1, prefix + "prefetch_steps", "must be >= 1")
        require(self.steps_per_block >= 1, prefix + "steps_per_block", "must be >= 1")


@dataclass
class OptimConfig:
    """MT-AdamW (or plain AdamW for the ablation) and the learning-rate schedule."""

    name: Literal["mt_adamw", "adamw"] = "mt_adamw"
    """``mt_adamw``: task-balanced gradient normalization; ``adamw``: the ablation without it."""
    lr: Schedule = 2e-4
    """Peak learning rate at the reference global batch ``lr_reference_workers`` (MT-AdamW steps are
    ~(1−β1)/s_k / √((1−β2)/s_k) × lr per parameter). A number, or ``{step: value}`` pieces (``unip2.schedules``):
    the warm-up and cosine decay then peak at the value in force at each step."""
    lr_reference_workers: int | None = None
    """The global batch at which ``lr`` is the peak, counted in per-worker batches (workers × accumulation
    steps; 64 = the paper's 64 GPUs × 1). One rule, linear: a run with W workers and A = ``train.
    accumulation_steps`` peaks at lr × W × A / this. None = this run's own ``scale.num_workers`` × A: ``lr`` is
    the peak of the run as configured (an elastic run below ``num_workers`` scales down)."""
    backbone_lr_scale: float = 0.1
    """Learning-rate multiplier of the image backbone: low for a pretrained one (the default run's comes from stage
    1), 1.0 for one trained from scratch."""
    text_lr_scale: float = 1.0
    """Learning-rate multiplier of the text encoder (lower it for a pretrained one)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam β1, β2 (torch convention: weight of the old moment)."""
    eps: float = 1e-8
    """Adam ε."""
    weight_decay: float = 0.05
    """Decoupled weight decay (not on norms, biases, embeddings, temperatures, queries)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.05
    """Cosine decay ends at lr × min_lr_ratio."""

    def validate(self, prefix: str = "") -> None:
        why = schedules.problem(self.lr)
        require(why is None, prefix + "lr", why or "")
        require(self.lr_reference_workers is None or self.lr_reference_workers > 0, prefix + "lr_reference_workers",
                "must be > 0, or null")
        require(self.backbone_lr_scale >= 0, prefix + "backbone_lr_scale", "must be >= 0")
        require(self.text_lr_scale >= 0, prefix + "text_lr_scale", "must be >= 0")
        require(all(0 <= b < 1 for b in self.betas), prefix + "betas", "must be in [0, 1)")
        require(self.eps > 0, prefix + "eps", "must be > 0")
        require(self.weight_decay >= 0, prefix + "weight_decay", "must be >= 0")
        require(self.warmup_steps >= 0, prefix + "warmup_steps", "must be >= 0")
        require(0 <= self.min_lr_ratio <= 1, prefix + "min_lr_ratio", "must be in [0, 1]")


@dataclass
class TrainingConfig:
    """The training schedule and the multi-task method."""

    steps: int = 1500
    """Optimizer steps (each step: one task for all workers in unmixed mode)."""
    seed: int = 0
    """Seed of the model init, task sequence and data order."""
    sampling: Literal["unmixed", "mixed"] = "unmixed"
    """``unmixed``: one task per step for all workers (the paper); ``mixed``: each worker draws its own."""
    log_every: int = 25
    """Steps between progress lines and metric reports."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and always at the end)."""
    validate_every: int = 500
    """Steps between validations during training: each task's own metrics (its headline ones reported as
    ``val/<task>/<metric>``, with the losses) on the first ``validation_rows`` rows of its validation split, on
    the first worker while the others wait; 0 = none (the evaluation at the end only)."""
    validation_rows: int = 16
    """Rows of each task's validation split a validation during training reads."""
    max_bad_steps: int = 5
    """Consecutive non-finite losses after which the run stops."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 autocast where the hardware computes bf16 natively (CUDA with bf16; CPUs with AVX512-BF16 or
    AMX, detected on each worker at start), fp32 elsewhere; ``bf16`` (refused where not native) or ``fp32``. Master
    weights, the optimizer, scores, softmax, losses and box math stay fp32 (``unip2.precision``). Evaluation takes
    the same setting."""
    compile: bool = False
    """``torch.compile`` every heavy module in place (``unip2.training_setup.compile_model``: backbone, proposals,
    token builders, text encoder, decoder; each traces as one graph per task). The first step of every task and
    text-length bucket compiles (text batches are padded to multiples of 8 then); checkpoints keep their plain
    parameter names. Off by default: at the tiny preset on CPUs compiling costs more than it saves
    (docs/full_size_step.md)."""
    accumulation_steps: int = 1
    """Micro-batches per optimizer step: every worker trains the step's one task on this many batches of
    ``tasks.<k>.batch_size`` rows, summing their gradients (DDP all-reduces after the last only), so the
    global batch is workers × this × batch_size (e.g. the paper's 64 GPUs' batch on one 8-GPU node with 8)."""
    activation_checkpointing: bool = False
    """Recompute the blocks of the backbone, the text encoder and the decoder in backward instead of keeping their
    activations (``unip2.model.checkpointing``): exact gradients, less memory, about one more forward pass of
    those stacks per step. Candidate sets are chunked and checkpointed either way (``model.candidate_chunk_tokens``).
    What it saves per task: docs/scale_out.md ("Memory per GPU")."""
    stop_at: int | None = None
    """Train up to this step only, checkpoint and stop (a segment of the run: the learning rate still decays over
    ``steps``); run again with a later ``stop_at`` or none to go on from there. Population Based Training trains
    its members one perturbation interval at a time this way. None = to ``steps``."""
    resume_from: str | None = None
    """A training checkpoint folder (another run's ``checkpoint_<step>``) this run starts from when its own folder
    has none: weights, optimizer, step and counters, so it continues that run's stream at its step with this
    config's ω_k / s_k / lr from there (Population Based Training's exploit)."""

    def validate(self, prefix: str = "") -> None:
        require(self.steps > 0, prefix + "steps", "must be > 0")
        require(self.stop_at is None or 0 < self.stop_at <= self.steps, prefix + "stop_at",
                "must be in 1..train.steps, or null")
        require(self.accumulation_steps >= 1, prefix + "accumulation_steps", "must be >= 1")
        require(self.log_every > 0, prefix + "log_every", "must be > 0")
        require(self.checkpoint_every > 0, prefix + "checkpoint_every", "must be > 0")
        require(self.validate_every >= 0, prefix + "validate_every", "must be >= 0 (0: no validation)")
        require(self.validation_rows > 0, prefix + "validation_rows", "must be > 0")
        require(self.max_bad_steps > 0, prefix + "max_bad_steps", "must be > 0")


@dataclass
class MlflowLogging:
    """An MLflow run per training run (the optional ``mlflow-skinny`` package: ``pip install -e '.[tracking]'``)."""

    tracking_uri: str | None = None
    """An MLflow tracking server (``http://host:5000``) or store; None = a local file store in the run folder
    (``<run>/mlruns``; ``mlflow ui --backend-store-uri <run>/mlruns``)."""
    experiment: str = "unip2"
    """The MLflow experiment the runs go into (created when missing)."""


@dataclass
class WandbLogging:
    """A Weights & Biases run per training run (the optional ``wandb`` package: ``pip install -e '.[tracking]'``)."""

    project: str = "unip2"
    mode: Literal["online", "offline"] = "online"
    """``offline`` writes the run into ``<run>/wandb`` only (``wandb sync`` uploads it later)."""
    entity: str | None = None
    """The W&B team or user; None = the logged-in user's default."""


@dataclass
class LoggingConfig:
    """Where a run's live metrics go besides its console and checkpoints (``pipelines.training.live_metrics``)."""

    tensorboard: bool = True
    """TensorBoard event files in the run folder (``<run>/tensorboard``; stage 1's in ``<run>/pretrain/``): every
    progress window's losses, learning rate, speed and counters, and the evaluation's metrics at the end."""
    mlflow: MlflowLogging | None = None
    """The same numbers in MLflow (``logging.mlflow={}`` for the defaults; None = off)."""
    wandb: WandbLogging | None = None
    """The same numbers in W&B (``logging.wandb={project: my-project}``; None = off)."""


@dataclass
class ScaleConfig:
    """Ray cluster resources of the run."""

    num_workers: int | Literal["auto"] = 2
    """Training workers (one per GPU on a cluster); the most an elastic run uses. ``auto``: resolved once as the
    run starts from the cluster's resources: every GPU, else the CPU slots, i.e. cluster CPUs // (cpus_per_worker
    + data.loader_concurrency × data.loader_cpus), at least 1; the run config saved with the run holds the
    number, so a resumed run keeps it."""
    min_workers: int | None = None
    """Elastic training: start with as few as this many workers and grow to ``num_workers`` as the cluster
    allows (a resize restarts from the last checkpoint). The learning rate follows the global batch
    (``optim.lr_reference_workers``); None = always exactly ``num_workers``."""
    resources_wait_s: float = 15.0
    """A start whose workers the cluster cannot hold (``min_workers`` for an elastic run) is refused, naming the
    resources asked and present, after waiting this long for the cluster to grow (an autoscaler adding nodes)."""
    cpus_per_worker: float = 0.5
    """CPUs reserved per training worker; fractional on small machines so Ray Data keeps CPUs."""
    use_gpu: bool | None = None
    """Train on GPUs; None = whenever the cluster has them."""
    threads_per_worker: int = 1
    """torch intra-op threads per CPU worker."""
    max_failures: int = 1
    """Worker-group restarts (from the last checkpoint) before the run fails."""
    address: str | None = None
    """Ray cluster address; None = RAY_ADDRESS or a new local Ray."""
    storage_path: str | None = None
    """Shared path or cloud URI for Ray Train's run storage; None = ``<out>/ray``."""

    def validate(self, prefix: str = "") -> None:
        auto = self.num_workers == "auto"
        require(auto or self.num_workers > 0, prefix + "num_workers", "must be > 0, or auto")
        require(self.min_workers is None or 0 < self.min_workers <= (float("inf") if auto else self.num_workers),
                prefix + "min_workers", f"must be between 1 and num_workers ({self.num_workers}), or null")
        require(self.resources_wait_s >= 0, prefix + "resources_wait_s", "must be >= 0")
        require(self.cpus_per_worker > 0, prefix + "cpus_per_worker", "must be > 0")
        require(self.threads_per_worker > 0, prefix + "threads_per_worker", "must be > 0")
        require(self.max_failures >= 0, prefix + "max_failures", "must be >= 0")


ENCODERS = ("image", "text")  # stage 1's: the task that trains each is the one whose ``Task.pretrains`` names it
ENCODER_WEIGHT_FIELDS = {"image": "model.backbone.pretrained_path", "text": "model.text.pretrained_path"}
"""Encoder → the config key of the weights it starts from."""


@dataclass
class PretrainConfig:
    """Stage 1: each encoder pretrained on its own objective before the generalist trains (the paper starts
    from a supervised ImageNet Swin and a RoBERTa): the image backbone as a plain classifier on the
    classification task's data, the text encoder as a masked language model on the language-modelling task's
    texts. Runs for an encoder without ``pretrained_path`` (real weights win); the result is cached under
    ``data.cache_dir`` by everything it depends on, and loaded through the same ``pretrained_path`` fields."""

    encoders: list[str] = field(default_factory=lambda: list(ENCODERS))
    """Encoders pretrained when they have no ``pretrained_path``: any of image, text; [] = random init."""
    image_steps: int = 500
    """Optimizer steps of the image encoder's classifier pretraining."""
    text_steps: int = 300
    """Optimizer steps of the text encoder's masked-language-model pretraining."""
    image_batch_size: int = 32
    """Per-worker batch of the classifier pretraining."""
    text_batch_size: int = 64
    """Per-worker batch of the masked-language-model pretraining."""
    image_size: int = 64
    """Image side of the classifier pretraining (low resolution first, as ImageNet pretraining at 224)."""
    image_lr: float = 2e-3
    """Peak AdamW learning rate of the image encoder (one-cycle: warm-up, then cosine to zero)."""
    text_lr: float = 1e-3
    """Peak AdamW learning rate of the text encoder."""
    weight_decay: float = 0.05
    """AdamW weight decay of both (not on norms and biases)."""
    warmup_fraction: float = 0.15
    """Share of each encoder's steps spent warming its learning rate up."""
    label_smoothing: float = 0.1
    """Label smoothing of the classifier's cross-entropy."""
    max_grad_norm: float = 1.0
    """Each step's gradient is clipped to this norm (0 = no clipping)."""
    random_init: Literal["allow", "refuse"] = "allow"
    """An encoder with neither a ``pretrained_path`` nor stage 1 (``encoders``, with data for its task): ``allow``
    starts it from random weights, said on the console; ``refuse`` does not start the run, naming the weights to
    download and the key to set (the paper configs: a random Swin-B is not the paper's model)."""

    def validate(self, prefix: str = "") -> None:
        require(self.max_grad_norm >= 0, prefix + "max_grad_norm", "must be >= 0")
        require(all(e in ENCODERS for e in self.encoders) and len(set(self.encoders)) == len(self.encoders),
                prefix + "encoders", f"must be distinct names out of {', '.join(ENCODERS)}")
        for name in ("image_steps", "text_steps", "image_batch_size", "text_batch_size"):
            require(getattr(self, name) > 0, prefix + name, "must be > 0")
        require(self.image_size >= 32 and self.image_size % 32 == 0, prefix + "image_size",
                "must be a multiple of 32, >= 32")
        require(self.image_lr > 0, prefix + "image_lr", "must be > 0")
        require(self.text_lr > 0, prefix + "text_lr", "must be > 0")
        require(self.weight_decay >= 0, prefix + "weight_decay", "must be >= 0")
        require(0 <= self.warmup_fraction < 1, prefix + "warmup_fraction", "must be in [0, 1)")
        require(0 <= self.label_smoothing < 1, prefix + "label_smoothing", "must be in [0, 1)")


def default_tasks() -> dict[str, TaskRunConfig]:
    return {name: TaskRunConfig() for name in TASKS}


@dataclass
class RunConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=lambda: preset("tiny"))
    tasks: dict[str, TaskRunConfig] = field(default_factory=default_tasks)
    """Tasks trained together, by registry name."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    out: str | None = None
    """Run folder; None = ``runs/<timestamp>``."""

    def validate(self, prefix: str = "") -> None:
        validate_task_options(self.model, prefix + "model.")
        require(len(self.tasks) > 0, prefix + "tasks", "at least one task is needed")
        for name, task in self.tasks.items():
            require(name in TASKS, f"{prefix}tasks.{name}", f"unknown task; registered: {', '.join(TASKS)}")
            task.validate(f"{prefix}tasks.{name}.")
        require(self.scale.min_workers is None or self.train.sampling == "unmixed", prefix + "scale.min_workers",
                "elastic training needs train.sampling: unmixed (mixed draws depend on the worker count)")

    def random_encoders(self) -> list[str]:
        """The encoders that would start from random weights: no ``pretrained_path`` and not in
        ``pretrain.encoders``."""
        given = self.encoder_weights()
        return [encoder for encoder in ENCODERS if given[encoder] is None and encoder not in self.pretrain.encoders]

    def encoder_weights(self) -> dict[str, str | None]:
        """Encoder → the weights file or folder it starts from (None: not given)."""
        return {"image": self.model.backbone.pretrained_path, "text": self.model.text.pretrained_path}

    def learning_rate_scale(self, workers: int) -> float:
        """Linear scaling rule: the peak learning rate is ``optim.lr`` × this with ``workers`` running, the
        global batch (workers × ``train.accumulation_steps`` worker batches) over ``optim.lr_reference_workers``."""
        if self.scale.num_workers == "auto":
            raise ValueError("scale.num_workers: auto is resolved when the run starts (pipelines/run/cluster_fit.py)")
        accumulation = self.train.accumulation_steps
        reference = self.optim.lr_reference_workers or self.scale.num_workers * accumulation
        return workers * accumulation / reference

    def sampling_ratios(self, step: int = 0) -> dict[str, float]:
        """Normalized s_k over the run's tasks at ``step``."""
        weights = {name: schedules.value_at(t.sampling_weight, step) for name, t in self.tasks.items()}
        total = sum(weights.values())
        return {name: weight / total for name, weight in weights.items()}

    def omegas(self, step: int = 0) -> dict[str, float]:
        """ω_k of the run's tasks at ``step``."""
        return {name: schedules.value_at(t.omega, step) for name, t in self.tasks.items()}

    def balance_changes(self) -> list[int]:
        """The steps at which some ω_k or s_k starts a new piece (0 included)."""
        return schedules.change_steps([value for t in self.tasks.values() for value in (t.omega, t.sampling_weight)])

    def ratio_pieces(self) -> list[tuple[int, list[float]]]:
        """(first step, normalized s_k in the tasks' order) for every piece of the sampling schedule."""
        return [(step, list(self.sampling_ratios(step).values())) for step in self.balance_changes()]

    def image_size(self, task: str) -> int:
        """The input side ``task`` trains at (``model.tasks.<task>.image_size``, else ``model.image_size``)."""
        return self.model.task_input_settings(task).image_size

    def train_datasets(self, task: str) -> list[str]:
        """The datasets ``task`` trains on: its ``datasets`` field, else the task's own dataset."""
        return list(self.tasks[task].datasets or [TASKS[task].dataset])


def upgrade_legacy_fields(data: dict) -> dict:
    """Fields of earlier versions, as saved in their checkpoints' run configs: ``train.bf16`` (bf16 on GPUs) is
    ``train.precision`` now (true → auto, false → fp32); ``train.gather_retrieval`` is the ``gather_negatives``
    option of the tasks that have one."""
    train = data.get("train")
    if isinstance(train, dict) and "bf16" in train:
        bf16 = train.pop("bf16")
        train["precision"] = "auto" if bf16 else "fp32"
    if isinstance(train, dict) and "gather_retrieval" in train:
        gather = train.pop("gather_retrieval")
        for name in tasks_with_option("gather_negatives"):
            data.setdefault("model", {}).setdefault("tasks", {}).setdefault(name, {})["gather_negatives"] = gather
    return data


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← ``key=value`` overrides; ``model.preset`` picks the starting model config.

    A ``tasks`` mapping in the file replaces the default task set (all registered tasks); overrides
    only change fields.
    """
    data = config_io.read_mapping(path) if path is not None else {}
    tasks = data.get("tasks")
    if tasks is not None and not isinstance(tasks, dict):
        raise ConfigError("tasks", "must be a mapping of task name to settings")
    preset_name = config_io.apply_overrides(data, list(overrides or [])).get("model", {}).get("preset", "tiny")
    try:
        base_model = preset(preset_name)
    except ValueError as err:
        raise ConfigError("model.preset", str(err)) from None
    base = RunConfig(model=base_model, tasks={} if tasks is not None else default_tasks())
    merged = config_io.merge(config_io.to_dict(base), data)
    for name, settings in (tasks or {}).items():  # a task listed without settings takes the defaults
        merged["tasks"][name] = config_io.to_dict(TaskRunConfig()) | (settings or {})
    merged = upgrade_legacy_fields(config_io.apply_overrides(merged, list(overrides or [])))
    config = config_io.from_dict(RunConfig, merged, keyed_classes=OPTION_CLASSES)
    config_io.validate(config)
    return config


def weights_to_download(run: RunConfig, encoders: list[str], why: str) -> ConfigError:
    """The refusal of a start with ``encoders`` at random weights (``pretrain.random_init: refuse``): what to
    download, the keys to set, and the other ways out. ``why``: how it came to that."""
    name = run.model.backbone.name
    repository = f"timm/{name}.ms_in22k" if name.startswith("swin_") else f"timm/{name}"
    fields = ENCODER_WEIGHT_FIELDS
    steps = {"image": (f"image: hf download {repository} model.safetensors --local-dir weights/{name}, then "
                       f"model.backbone.pretrained_path=weights/{name}/model.safetensors"),
             "text": ("text: hf download FacebookAI/roberta-base --local-dir weights/roberta-base (a transformers "
                      "RoBERTa or BERT folder), then model.text.pretrained_path=weights/roberta-base")}
    return ConfigError(" and ".join(fields[e] for e in encoders),
                       f"{why}, so the run would start from random weights. Download and set them ("
                       + "; ".join(steps[e] for e in encoders) + f"), or pretrain them on data.root first "
                       f"(pretrain.encoders=[{','.join(encoders)}]), or accept random weights "
                       "(pretrain.random_init=allow)")
