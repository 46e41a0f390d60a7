"""Multi-task AdamW with task-balanced gradient normalization (the paper's MT-AdamW).

One optimizer step consumes the (already all-reduced) gradient of a single task k:

    g  = omega_k * grad / ||grad||               one global L2 norm over every parameter with a grad
    m  = b1 * m + min(1, (1 - b1) / s_k) * g
    n  = b2 * n + min(1, (1 - b2) / s_k) * g**2
    p -= lr * wd * p                             decoupled, per param group, not scaled by omega or s
    p -= lr * (m / (1 - b1**t)) / (sqrt(n / (1 - b2**t)) + eps)

with `t` the step counter. Every parameter of the optimizer takes part in every step: one without a gradient
in this step (a head the drawn task does not use) counts as g = 0, so its moments decay and it moves like every
other, as in the paper's update (skipping it would let its moments move only on the steps of the tasks that use
it, making its effective step about 1/sqrt(s_k) too large). `s_k` is task
k's normalized sampling ratio: a task drawn rarely gets a proportionally larger share of the moments
so every task moves the moments equally on average. With `omega = s = 1` this is exactly AdamW fed
the unit-norm gradient. When `(1 - b) / s_k > 1` the coefficient is capped at 1 (the moment would
otherwise overshoot the new gradient); each capped step is counted in `cap_events` and the first
capped step of each distinct `s` is logged on the "unip2.optim" logger.

Distributed "mixed" mode (ablation only): when workers draw different tasks in the same step, each
worker must normalize (and weight) its own task's gradient *before* the all-reduce; that is the
trainer's job. The optimizer then receives an already-normalized sum and is called with
`step(omega=1.0, s=1.0, normalize=False)`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

logger = logging.getLogger("unip2.optim")

# Below this the gradient is treated as zero: g becomes 0 (no host sync needed to check).
_MIN_NORM = 1e-12
_MAX_HOST_SCALE = 1e18  # its square stays below float32's largest value (3.4e38)


def global_grad_norm(params: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """L2 norm of all gradients of `params` taken together, as if concatenated.

    Parameters without `.grad` are ignored. Returns a 0-d tensor (float32, or float64 when a
    gradient is float64) on the device of the first gradient; 0 when no parameter has a gradient.
    Uses one `_foreach_norm` per (device, dtype) group, so a few kernel launches in all.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    return _grads_norm([p.grad for p in params if p.grad is not None])


def _grads_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if not grads:
        return torch.zeros(())
    out_dtype = torch.float32
    if any(g.dtype == torch.float64 for g in grads):
        out_dtype = torch.float64
    first_device = grads[0].device
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype([grads])
    norms = []
    for (_, dtype), ([device_grads], _) in grouped.items():
        # Accumulate half-precision gradients in float32 so the norm does not overflow.
        acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        norms.extend(torch._foreach_norm(device_grads, 2, dtype=acc_dtype))
    stacked = torch.stack([n.to(device=first_device, dtype=out_dtype) for n in norms])
    return torch.linalg.vector_norm(stacked, 2)


def _host_scale(scale: torch.Tensor | float, device: torch.device) -> float | None:
    """The gradient scale as a Python number where reading it costs no device sync (CPU tensors, numbers).

    None (use the scaled-copy path) on accelerators, and when scale**2 is not finite in float32 (a
    non-finite norm, or a near-zero one times a large omega), where that path's arithmetic is kept.
    """
    if isinstance(scale, torch.Tensor):
        if device.type != "cpu" or scale.device.type != "cpu":
            return None
        scale = float(scale)
    return scale if abs(scale) < _MAX_HOST_SCALE else None  # False for nan and inf


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters the model's modules declare exempt, through a ``no_weight_decay()`` method
    returning names relative to the module (timm's convention)."""
    names = set()
    for prefix, module in model.named_modules():
        declare = getattr(module, "no_weight_decay", None)
        if callable(declare):
            names.update(f"{prefix}.{name}" if prefix else name for name in declare())
    return names


def param_groups_for(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split `model`'s trainable parameters into a decayed and a non-decayed group.

    A parameter gets NO weight decay when any of these holds:
      * it has at most one dimension (biases, norm weights, scalar and per-family temperatures);
      * it is the weight of an `nn.Embedding` (token, position and type embeddings);
      * a module declares it in its ``no_weight_decay()`` (learned queries, the <SPE> token, level and
        position codes, the MoE experts' stacked biases, timm's position tables).
    Everything else (linear / conv weights, the experts' weight banks) is decayed with `weight_decay`.

    Returns `[{"params", "param_names", "weight_decay": weight_decay},
              {"params", "param_names", "weight_decay": 0.0}]`; both groups are always present (one
    may be empty) so optimizer checkpoints keep the same layout. Parameters with
    `requires_grad=False` are left out.
    """
    embedding_weights = {
        id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)
    }
    declared = no_weight_decay_names(model)
    decay: dict[str, list] = {"params": [], "param_names": []}
    no_decay: dict[str, list] = {"params": [], "param_names": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or id(param) in embedding_weights or name in declared
        target = no_decay if skip else decay
        target["params"].append(param)
        target["param_names"].append(name)
    return [
        {**decay, "weight_decay": float(weight_decay)},
        {**no_decay, "weight_decay": 0.0},
    ]


class MTAdamW(torch.optim.Optimizer):
    """AdamW over one task's normalized gradient per step; see the module docstring for the math.

    Per-parameter state (standard `Optimizer` machinery, round-trips through `state_dict`):
    `exp_avg` and `exp_avg_sq` (same shape/dtype as the parameter) and `step` (0-d float32 CPU
    tensor). Optimizer-wide state, also saved: `cap_events` (number of steps where the
    `min(1, .)` cap bound) and the set of `s` values that were capped.

    After each normalized step `last_grad_norm` holds the pre-normalization global gradient norm
    (0-d tensor, not synchronized to the host) for logging.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.cap_events: int = 0
        self._capped_s: set[float] = set()
        self.last_grad_norm: torch.Tensor | None = None

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("cap_events", 0)
        self.__dict__.setdefault("_capped_s", set())
        self.__dict__.setdefault("last_grad_norm", None)

    def state_dict(self) -> dict:
        """The standard optimizer state plus `"multitask": {"cap_events", "capped_s"}`."""
        state = super().state_dict()
        state["multitask"] = {
            "cap_events": self.cap_events,
            "capped_s": sorted(self._capped_s),
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        multitask = state_dict.pop("multitask", None)
        super().load_state_dict(state_dict)
        if multitask is not None:
            self.cap_events = int(multitask["cap_events"])
            self._capped_s = {float(v) for v in multitask["capped_s"]}

    @torch.no_grad()
    def step(
        self,
        omega: float,
        s: float,
        closure: Callable[[], torch.Tensor] | None = None,
        *,
        normalize: bool = True,
        grad_norm: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """One update from the current gradients of task k.

        Args:
            omega: task weight omega_k (>= 0); the length of the normalized gradient.
            s: task k's normalized sampling ratio, 0 < s <= 1.
            closure: optional, re-evaluates the loss (run with grad enabled) and returns it.
            normalize: False when the gradients were already normalized per worker (mixed mode);
                then g = omega * grad.
            grad_norm: the global gradient norm when the caller has it already (``global_grad_norm`` of
                the same gradients), so it is not computed twice.

        An all-zero gradient (norm < 1e-12) gives g = 0: the moments decay and the step counts, as
        AdamW would do with a zero gradient. A non-finite norm propagates, as in AdamW.
        """
        omega = float(omega)
        s = float(s)
        if not (0.0 < s <= 1.0):
            raise ValueError(f"s must be in (0, 1], got {s}")
        if not (omega >= 0.0 and math.isfinite(omega)):
            raise ValueError(f"omega must be finite and >= 0, got {omega}")

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        per_group = [self._collect(group) for group in self.param_groups]
        all_grads = [g for lists in per_group for g in lists[1] if g is not None]
        if not all_grads:
            return loss

        if normalize:
            norm = _grads_norm(all_grads) if grad_norm is None else grad_norm
            self.last_grad_norm = norm
            # 0-d tensor: keeps the step free of host syncs.
            scale: torch.Tensor | float = omega / norm.clamp_min(_MIN_NORM)
        else:
            scale = omega

        capped = False
        for group, lists in zip(self.param_groups, per_group):
            if lists[0]:
                capped |= self._update_group(group, *lists, scale=scale, s=s)

        if capped:
            self.cap_events += 1
            if s not in self._capped_s:
                self._capped_s.add(s)
                logger.warning(
                    "MT-AdamW: (1 - beta) / s > 1 for s=%g, moment coefficient capped at 1 "
                    "(counted in cap_events)",
                    s,
                )
        return loss

    def _collect(self, group: dict) -> tuple[list, list, list, list, list]:
        """Every parameter of `group` with its gradient (None: g = 0 this step) and its state (created on the
        first step, for all parameters at once, so every step counter counts the optimizer's steps)."""
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("MTAdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    def _update_group(
        self,
        group: dict,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
        exp_avg_sqs: list[torch.Tensor],
        steps: list[torch.Tensor],
        *,
        scale: torch.Tensor | float,
        s: float,
    ) -> bool:
        """Apply the update to one param group; returns whether the min(1, .) cap bound.

        A parameter whose gradient is None gets g = 0: m = b1*m, n = b2*n, then the same update as the others.
        """
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        c1 = min(1.0, (1.0 - beta1) / s)
        c2 = min(1.0, (1.0 - beta2) / s)
        capped = c1 < (1.0 - beta1) / s or c2 < (1.0 - beta2) / s
        # m = b1*m + c1*g == lerp(m, k*g, 1-b1) with k = c1/(1-b1): fold k into the gradient scale
        # so the first moment is a single lerp, as in AdamW; n's coefficient absorbs 1/k**2.
        k = c1 / (1.0 - beta1)
        with_grad = [i for i, g in enumerate(grads) if g is not None]
        idle = [i for i, g in enumerate(grads) if g is None]
        if idle:
            idle_m, idle_n = [exp_avgs[i] for i in idle], [exp_avg_sqs[i] for i in idle]
            torch._foreach_mul_(idle_m, beta1)
            torch._foreach_mul_(idle_n, beta2)
        everything = self._group_tensors_by_device_and_dtype([params, exp_avgs, exp_avg_sqs, steps])
        for (device_params, device_m, device_n, device_steps), _ in everything.values():
            if device_steps[0].is_cpu:
                # One wrapped scalar instead of one per tensor on the CPU fallback path.
                torch._foreach_add_(device_steps, torch.tensor(1.0), alpha=1.0)
            else:
                torch._foreach_add_(device_steps, 1)
            if weight_decay != 0.0:
                torch._foreach_mul_(device_params, 1.0 - lr * weight_decay)

        grouped = self._group_tensors_by_device_and_dtype(
            [[params[i] for i in with_grad], [grads[i] for i in with_grad], [exp_avgs[i] for i in with_grad],
             [exp_avg_sqs[i] for i in with_grad]]) if with_grad else {}
        device_scales: dict[torch.device, torch.Tensor] = {}
        for (device_params, device_grads, device_m, device_n), _ in grouped.values():
            device = device_params[0].device
            host_scale = _host_scale(scale, device)
            if host_scale is not None:
                # m = b1*m + c1*a*grad, n = b2*n + c2*a**2*grad**2 straight from the raw gradients: on
                # the CPU, allocating a scaled copy of every gradient costs more than the update itself.
                torch._foreach_mul_(device_m, beta1)
                torch._foreach_add_(device_m, device_grads, alpha=c1 * host_scale)
                torch._foreach_mul_(device_n, beta2)
                torch._foreach_addcmul_(device_n, device_grads, device_grads, value=c2 * host_scale**2)
            else:
                if isinstance(scale, torch.Tensor):
                    if device not in device_scales:
                        device_scales[device] = (scale * k).to(device)
                    g = torch._foreach_mul(device_grads, device_scales[device])
                elif scale * k != 1.0:
                    g = torch._foreach_mul(device_grads, scale * k)
                else:
                    g = device_grads
                torch._foreach_lerp_(device_m, g, 1.0 - beta1)
                torch._foreach_mul_(device_n, beta2)
                torch._foreach_addcmul_(device_n, g, g, value=c2 / (k * k))
                del g

        for (device_params, device_m, device_n, device_steps), _ in everything.values():
            step_values = [t.item() for t in device_steps]
            step_size = [-lr / (1.0 - beta1**t) for t in step_values]
            bias_correction2_sqrt = [(1.0 - beta2**t) ** 0.5 for t in step_values]
            denom = torch._foreach_sqrt(device_n)
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(device_params, device_m, denom, step_size)
        return capped
