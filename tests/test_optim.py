"""MTAdamW against a plain-loop reference, AdamW, and its checkpoint / grouping contracts."""

import copy
import io
import logging
import math

import pytest
import torch
from torch import nn

from unip2.optim import MTAdamW, global_grad_norm, param_groups_for

BETAS = (0.9, 0.999)
# (omega, s) per step; s = 0.05 and 0.01 make (1 - b1) / s > 1, so the cap binds.
SCHEDULE = [(1.0, 1.0), (2.0, 0.5), (0.5, 0.05), (1.5, 0.3), (1.0, 0.01), (0.7, 0.8), (3.0, 0.2)]


def reference_step(groups, state, omega, s, normalize=True):
    """Plain-loop MT-AdamW: `groups` is a list of dicts like an optimizer's param_groups."""
    with torch.no_grad():
        with_grad = [p for g in groups for p in g["params"] if p.grad is not None]
        norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in with_grad))
        for group in groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                # A parameter without a gradient in this step counts as g = 0 (the paper's update).
                st = state.setdefault(p, {"m": torch.zeros_like(p), "n": torch.zeros_like(p), "t": 0})
                grad = torch.zeros_like(p) if p.grad is None else p.grad
                g = omega * grad / norm if normalize else omega * grad
                st["t"] += 1
                st["m"] = b1 * st["m"] + min(1.0, (1 - b1) / s) * g
                st["n"] = b2 * st["n"] + min(1.0, (1 - b2) / s) * g * g
                p -= lr * wd * p
                m_hat = st["m"] / (1 - b1 ** st["t"])
                n_hat = st["n"] / (1 - b2 ** st["t"])
                p -= lr * m_hat / (n_hat.sqrt() + eps)


def make_tensors(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (4,), (3, 2, 2), (7,), ()]
    return [torch.randn(shape, generator=gen, dtype=dtype) for shape in shapes]


def fixed_grads(step, tensors, missing=()):
    """Deterministic gradients for `step`; tensors whose index is in `missing` get none."""
    gen = torch.Generator().manual_seed(100 + step)
    scale = 10.0 ** (step % 3)  # raw gradient size varies across steps
    return [None if i in missing else scale * torch.randn(t.shape, generator=gen, dtype=t.dtype)
            for i, t in enumerate(tensors)]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, tokens):  # tokens: (B, L) int -> (B, 3)
        x = self.norm(torch.relu(self.proj(self.embed(tokens))))  # (B, L, 8)
        return self.head(x.mean(1)) * self.logit_scale.exp()


def task_loss(model, step):
    gen = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 10, (4, 5), generator=gen)
    target = torch.randint(0, 3, (4,), generator=gen)
    return nn.functional.cross_entropy(model(tokens), target)


def seeded_model():
    torch.manual_seed(0)
    return TinyModel()


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference_over_changing_tasks(normalize):
    tensors = make_tensors()
    ours = [t.clone().requires_grad_() for t in tensors]
    ref = [t.clone() for t in tensors]
    opt = MTAdamW([{"params": ours[:3], "weight_decay": 0.1}, {"params": ours[3:]}],
                  lr=0.01, betas=BETAS, eps=1e-8)
    ref_groups = [
        {"params": ref[:3], "lr": 0.01, "betas": BETAS, "eps": 1e-8, "weight_decay": 0.1},
        {"params": ref[3:], "lr": 0.01, "betas": BETAS, "eps": 1e-8, "weight_decay": 0.0},
    ]
    ref_state = {}
    for step, (omega, s) in enumerate(SCHEDULE):
        # Tensor 1 has no gradient on odd steps: g = 0 there, its moments decay and it still moves.
        grads = fixed_grads(step, tensors, missing=(1,) if step % 2 else ())
        set_grads(ours, grads)
        set_grads(ref, grads)
        opt.step(omega=omega, s=s, normalize=normalize)
        reference_step(ref_groups, ref_state, omega, s, normalize=normalize)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)
    assert opt.state[ours[1]]["step"].item() == len(SCHEDULE)
    assert opt.state[ours[0]]["step"].item() == len(SCHEDULE)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(opt.state[a]["exp_avg"], ref_state[b]["m"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], ref_state[b]["n"], rtol=1e-10, atol=1e-14)


def test_loss_scale_does_not_change_update():
    model_a, model_b = seeded_model(), seeded_model()
    opt_a = MTAdamW(param_groups_for(model_a, 0.05), lr=1e-2)
    opt_b = MTAdamW(param_groups_for(model_b, 0.05), lr=1e-2)
    for step, (omega, s) in enumerate(SCHEDULE):
        for model, opt, factor in ((model_a, opt_a, 1.0), (model_b, opt_b, 1000.0)):
            opt.zero_grad()
            (factor * task_loss(model, step)).backward()
            opt.step(omega=omega, s=s)
    # float32 norms of gradients 1000× apart round differently in the last bits
    torch.testing.assert_close(opt_a.last_grad_norm * 1000.0, opt_b.last_grad_norm, rtol=1e-5, atol=0)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_equals_adamw_on_normalized_grads():
    model_a, model_b = seeded_model(), seeded_model()
    ours = MTAdamW(param_groups_for(model_a, 0.1), lr=1e-2, betas=BETAS, eps=1e-8)
    adamw = torch.optim.AdamW(param_groups_for(model_b, 0.1), lr=1e-2, betas=BETAS, eps=1e-8,
                              foreach=True)
    for step in range(6):
        ours.zero_grad()
        adamw.zero_grad()
        task_loss(model_a, step).backward()
        task_loss(model_b, step).backward()
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model_b.parameters()]))
        for p in model_b.parameters():
            p.grad /= norm
        ours.step(omega=1.0, s=1.0)
        adamw.step()
    assert ours.cap_events == 0
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(ours.state[a]["exp_avg_sq"], adamw.state[b]["exp_avg_sq"],
                                   rtol=1e-5, atol=1e-12, msg=name)


@pytest.mark.parametrize("omega,s", [(1.0, 1.0), (3.0, 0.2), (0.25, 0.01)])
def test_weight_decay_not_scaled_by_omega_or_s(omega, s):
    p0 = make_tensors(torch.float64)[0]
    grad = fixed_grads(0, [p0])[0]
    lr, wd = 0.05, 0.3
    with_wd, without_wd = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    for p, decay in ((with_wd, wd), (without_wd, 0.0)):
        p.grad = grad.clone()
        MTAdamW([p], lr=lr, weight_decay=decay).step(omega=omega, s=s)
    # Same moments in both runs, so the only difference is the decoupled decay lr * wd * p0.
    torch.testing.assert_close(without_wd - with_wd, lr * wd * p0, rtol=1e-12, atol=1e-14)


def test_zero_omega_only_decays():
    p = make_tensors(torch.float64)[0].requires_grad_()
    p0 = p.detach().clone()
    p.grad = torch.ones_like(p)
    MTAdamW([p], lr=0.1, weight_decay=0.5).step(omega=0.0, s=0.3)
    torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * 0.5), rtol=1e-14, atol=0.0)


class Declaring(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(4, 8))
        self.bank = nn.Parameter(torch.zeros(2, 8, 8))

    def no_weight_decay(self):
        return {"query"}


def test_param_groups_for_no_decay_rule():
    model = TinyModel()
    model.pos_embed = nn.Parameter(torch.zeros(5, 8))  # a name alone exempts nothing
    model.sub = Declaring()
    model.temperature = nn.Parameter(torch.ones(1))
    model.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
    decay, no_decay = param_groups_for(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert set(decay["param_names"]) == {"proj.weight", "head.weight", "pos_embed", "sub.bank"}
    assert set(no_decay["param_names"]) == {
        "embed.weight", "proj.bias", "norm.weight", "norm.bias", "head.bias", "logit_scale", "sub.query",
        "temperature",
    }
    named = dict(model.named_parameters())
    for group in (decay, no_decay):
        assert all(p is named[n] for p, n in zip(group["params"], group["param_names"]))
    # An embedding is excluded by type even when its name says nothing.
    wrapped = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 3))
    decay, no_decay = param_groups_for(wrapped, weight_decay=0.1)
    assert decay["param_names"] == ["1.weight"]
    assert set(no_decay["param_names"]) == {"0.weight", "1.bias"}


def matrices_without_decay(preset: str) -> tuple[dict[str, int], set[str]]:
    """For the real preset model: multi-dimensional parameters left undecayed, counted by their last name
    part; and the decayed parameter names."""
    import collections

    import unip2

    decay, no_decay = param_groups_for(unip2.build_model(unip2.preset(preset)), weight_decay=0.05)
    counts = collections.Counter(name.rsplit(".", 1)[-1] if not name.endswith(".weight") else
                                 name.rsplit(".", 2)[-2] + ".weight"
                                 for name, p in zip(no_decay["param_names"], no_decay["params"]) if p.ndim > 1)
    return dict(counts), set(decay["param_names"])


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_real_models_decay_every_weight_matrix_but_embeddings_and_declared_ones(preset):
    undecayed, decayed = matrices_without_decay(preset)
    layers = 2 if preset == "tiny" else 6
    expected = {"word_embeddings.weight": 1, "position_embeddings.weight": 1, "token_type_embeddings.weight": 1,
                "token_type.weight": 1, "level_embed": 1, "pool_query": 1, "spe_token": 1,
                "b1": layers, "b2": layers}
    if preset == "base":  # Swin-B: one relative position table per block
        expected["relative_position_bias_table"] = 24
    assert undecayed == expected
    # Linear weights whose names once matched "pos" / "query" substrings are decayed like every other.
    assert "global_tokens.position.weight" in decayed
    assert "text_encoder.model.encoder.layer.0.attention.self.query.weight" in decayed
    assert "proposals.pixel_encoder.input_proj.0.0.weight" in decayed
    assert "decoder.layers.0.ffn.w1" in decayed


def run_steps(model, opt, schedule, first_step):
    for i, (omega, s) in enumerate(schedule):
        opt.zero_grad()
        task_loss(model, first_step + i).backward()
        opt.step(omega=omega, s=s)


def test_state_dict_round_trip_resumes_identically():
    schedule = SCHEDULE[:6]  # a capped step in each half
    straight_model = seeded_model()
    straight_opt = MTAdamW(param_groups_for(straight_model, 0.05), lr=1e-2)
    run_steps(straight_model, straight_opt, schedule, 0)

    first_model = seeded_model()
    first_opt = MTAdamW(param_groups_for(first_model, 0.05), lr=1e-2)
    run_steps(first_model, first_opt, schedule[:3], 0)
    buffer = io.BytesIO()
    torch.save({"model": first_model.state_dict(), "optim": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)

    torch.manual_seed(123)  # a differently initialised model: everything must come from the file
    resumed_model = TinyModel()
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt = MTAdamW(param_groups_for(resumed_model, 0.05), lr=1e-2)
    resumed_opt.load_state_dict(checkpoint["optim"])
    assert resumed_opt.cap_events == first_opt.cap_events == 1
    run_steps(resumed_model, resumed_opt, schedule[3:], 3)

    assert resumed_opt.cap_events == straight_opt.cap_events == 2
    assert resumed_opt.state_dict()["multitask"] == straight_opt.state_dict()["multitask"]
    for (name, a), b in zip(straight_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(straight_opt.state[a][key], resumed_opt.state[b][key]), (name, key)


def test_cap_events_counted_and_logged_once_per_s(caplog):
    p = make_tensors(torch.float64)[0].requires_grad_()
    opt = MTAdamW([p], lr=0.01, betas=BETAS)
    with caplog.at_level(logging.WARNING, logger="unip2.optim"):
        for s in (1.0, 0.05, 0.05, 0.5, 0.02, 0.05):
            p.grad = torch.ones_like(p)
            opt.step(omega=1.0, s=s)
    assert opt.cap_events == 4  # (1 - 0.9) / s > 1 for s = 0.05 (x3) and 0.02
    messages = [r.getMessage() for r in caplog.records if r.name == "unip2.optim"]
    assert len(messages) == 2
    assert "s=0.05" in messages[0] and "s=0.02" in messages[1]


def test_param_never_given_a_gradient_is_only_decayed():
    a, b = make_tensors()[:2]
    a.requires_grad_()
    b.requires_grad_()
    b_before = b.detach().clone()
    a.grad = torch.ones_like(a)
    opt = MTAdamW([a, b], lr=0.1, weight_decay=0.5)
    opt.step(omega=1.0, s=1.0)
    torch.testing.assert_close(b.detach(), b_before * (1 - 0.1 * 0.5))  # m = n = 0: no Adam step
    assert opt.state[b]["step"].item() == 1 and not opt.state[b]["exp_avg"].any()
    torch.testing.assert_close(opt.last_grad_norm, torch.tensor(math.sqrt(a.numel()), dtype=a.dtype))


def test_param_without_gradient_in_a_step_keeps_moving_on_decayed_moments():
    """A head used by one task (gradient on step 1 only): on step 2 its moments decay (g = 0) and it moves by
    m/√n of the decayed moments, with the optimizer's step count, not its own."""
    a, head = make_tensors()[:2]
    a.requires_grad_()
    head.requires_grad_()
    opt = MTAdamW([a, head], lr=0.1, weight_decay=0.0, betas=BETAS)
    a.grad, head.grad = torch.ones_like(a), torch.ones_like(head)
    opt.step(omega=1.0, s=0.5)
    m1, n1 = opt.state[head]["exp_avg"].clone(), opt.state[head]["exp_avg_sq"].clone()
    before = head.detach().clone()
    a.grad, head.grad = torch.ones_like(a), None
    opt.step(omega=1.0, s=0.5)
    m2, n2 = m1 * BETAS[0], n1 * BETAS[1]
    torch.testing.assert_close(opt.state[head]["exp_avg"], m2)
    torch.testing.assert_close(opt.state[head]["exp_avg_sq"], n2)
    expected = before - 0.1 * (m2 / (1 - BETAS[0] ** 2)) / ((n2 / (1 - BETAS[1] ** 2)).sqrt() + 1e-8)
    torch.testing.assert_close(head.detach(), expected)
    assert opt.state[head]["step"].item() == 2


def test_global_grad_norm():
    tensors = [t.requires_grad_() for t in make_tensors(torch.float32)]
    assert global_grad_norm(tensors).item() == 0.0
    grads = fixed_grads(2, tensors, missing=(0,))
    set_grads(tensors, grads)
    expected = torch.linalg.vector_norm(torch.cat([g.flatten().double() for g in grads[1:]]))
    torch.testing.assert_close(global_grad_norm(tensors).double(), expected, rtol=1e-6, atol=0.0)
    half = nn.Parameter(torch.zeros(4, dtype=torch.float16))
    half.grad = torch.full((4,), 3e4, dtype=torch.float16)  # sum of squares overflows fp16 range
    assert global_grad_norm([half]).item() == pytest.approx(6e4, rel=1e-2)


def test_rejects_bad_s():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    opt = MTAdamW([p], lr=0.1)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            opt.step(omega=1.0, s=bad)


def test_encoder_learning_rate_scales_reach_the_encoders_only():
    """The pretrained encoders' groups carry their scale; the text encoder's new projection and the rest 1.0."""
    from unip2.persistence import build_model
    from unip2.presets import preset
    from unip2.training_setup import build_optimizer, set_learning_rate

    model = build_model(preset("tiny"))
    optimizer = build_optimizer(model, name="mt_adamw", lr=1e-3, betas=BETAS, eps=1e-8, weight_decay=0.05,
                                backbone_lr_scale=0.25, text_lr_scale=0.5)
    set_learning_rate(optimizer, 2e-3)
    lr_of = {name: group["lr"] / 2e-3 for group in optimizer.param_groups for name in group["param_names"]}
    assert {lr_of[n] for n in lr_of if n.startswith("backbone.")} == {0.25}
    assert {lr_of[n] for n in lr_of if n.startswith("text_encoder.model.")} == {0.5}
    assert lr_of["text_encoder.proj.weight"] == 1.0
    assert {lr_of[n] for n in lr_of if n.startswith("decoder.")} == {1.0}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
