"""Attacks: closed forms on linear models, feasibility (hypothesis), worst-case bookkeeping, apgd's schedule,
robust accuracy, state restoration, input validation, explanation attacks and hygiene checks."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from functools import partial
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import clearsight as cs
from clearsight import attacks
from clearsight.attacks.apgd import ApgdStepper, checkpoints
from clearsight.attacks.ball import Ball
from clearsight.attacks.loop import run_attack
from clearsight.attacks.losses import ce, dlr, margin
from clearsight.attacks.pgd import fixed_step
from clearsight.errors import ConfigError, DataError
from clearsight.modes import channels_last

TOL = 1e-6  # float32 rounding of x + delta - x


def within(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> bool:
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps + TOL).all()) and bool((x_adv >= 0).all()) and bool((x_adv <= 1).all())


def linear(d: int, c: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, c))


def worst_margin(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                 against: torch.Tensor | None = None) -> torch.Tensor:
    """max over the ball of z_j - z_y for a linear model whose ball lies inside the box: the linear function
    (w_j - w_y).x' grows by eps times the dual norm of w_j - w_y. j = `against` [B], or the best j != y."""
    lin = model[1]
    w, b = lin.weight.detach(), lin.bias.detach()
    diff = w[None] - w[y][:, None]  # [B, C, D]: w_j - w_y
    base = (x.flatten(1)[:, None] @ diff.transpose(1, 2)).squeeze(1)  # [B, C]
    dual = diff.abs().sum(2) if norm == "linf" else diff.norm(dim=2)
    value = base + (b[None] - b[y][:, None]) + eps * dual
    if against is not None:
        return value.gather(1, against[:, None]).squeeze(1)
    return value.masked_fill(F.one_hot(y, w.shape[0]).bool(), float("-inf")).amax(1)


class Spike(nn.Module):
    """Two classes on a 1-d input; class 1 wins only in a band of width 0.016 around 0.6: coarse steps jump over
    it, fine steps climb into it (a model built so that more steps change robust accuracy)."""

    def forward(self, x):
        h = -1 + 2 / (1 + ((x[:, 0] - 0.6) / 0.008) ** 2)
        return torch.stack([torch.zeros_like(h), h], 1)


# ---- fixtures -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(mnist_mini_train):
    """A small ReLU MLP trained briefly on 1,000 mnist-mini images (~87% test accuracy)."""
    torch.manual_seed(0)
    model = cs.models.build("mlp", num_classes=10, input_shape=(1, 28, 28), widths=[256, 256])
    cs.fit(model, "standard", mnist_mini_train.subset(torch.arange(0, 5000, 5)), epochs=5, batch_size=32,
           lr=0.05, progress="none", val_fraction=0.0, device="cpu")
    return model.eval()


@pytest.fixture(scope="module")
def batch(mnist_mini_test):
    return mnist_mini_test.x[:200], mnist_mini_test.y[:200]


def local_gradient(model, x, target, *, create_graph=False):
    """Saliency d z_target / d x, differentiable in x with create_graph=True (stands in for cs.attributions)."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x, create_graph=create_graph)
    return g


def gradient_attribution():
    try:
        from clearsight.attributions import gradient
    except ImportError:
        return local_gradient
    return gradient


# ---- closed forms on linear models --------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_is_the_closed_form_on_a_linear_model(norm):
    model = linear(12, 4)
    x = torch.rand(16, 12)
    y = torch.randint(0, 4, (16,))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    x_adv = attacks.fgsm(model, x, y, eps=0.1, norm=norm)
    if norm == "linf":
        assert torch.equal(x_adv, (x + 0.1 * g.sign()).clamp(0, 1))
    else:
        expected = (x + 0.1 * g / g.norm(dim=1, keepdim=True)).clamp(0, 1)
        torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_reaches_the_analytic_worst_case_on_a_linear_model(norm, classes, random_start):
    eps = 0.1
    model = linear(20, classes)
    x = 0.3 + 0.4 * torch.rand(32, 20)  # the ball lies inside the box, so the worst case is analytic
    y = torch.randint(0, classes, (32,))
    # l2 ascent from a random start turns towards the optimum at a rate set by step_size / eps (the default
    # 2.5 * eps / steps leaves ~1% of the margin after 40 steps); eps / 4 converges to float precision
    x_adv = attacks.pgd(model, x, y, eps=eps, norm=norm, steps=40, step_size=eps / 4, loss="margin", restarts=3,
                        random_start=random_start, generator=torch.Generator().manual_seed(1))
    assert within(x_adv, x, eps, norm)
    z = model(x_adv).detach()
    achieved = margin(z, y)
    best = worst_margin(model, x, y, eps, norm)
    tol = 2e-3 * float(best.abs().max())
    assert bool((achieved <= best + 1e-4).all())  # nothing in the ball beats the analytic optimum
    # the max of several linear functions is not concave, so with C > 2 ascent may end at the optimum of
    # another wrong class than the global one; it must still be the exact optimum of the class it ends in
    runner_up = z.masked_fill(F.one_hot(y, classes).bool(), float("-inf")).argmax(1)
    torch.testing.assert_close(achieved, worst_margin(model, x, y, eps, norm, against=runner_up), rtol=0, atol=tol)
    if classes == 2:
        torch.testing.assert_close(achieved, best, rtol=0, atol=tol)
    else:
        assert float((achieved >= best - tol).float().mean()) > 0.75  # usually the global one


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_ce_reaches_the_analytic_worst_case_on_a_binary_linear_model(norm):
    eps = 0.1
    model = linear(20, 2, seed=3)
    x = 0.3 + 0.4 * torch.rand(32, 20)
    y = torch.randint(0, 2, (32,))
    x_adv = attacks.apgd(model, x, y, eps=eps, norm=norm, steps=50, generator=torch.Generator().manual_seed(0))
    assert within(x_adv, x, eps, norm)
    # for two classes CE is increasing in the margin, so the CE maximizer is the margin maximizer
    torch.testing.assert_close(margin(model(x_adv), y), worst_margin(model, x, y, eps, norm), rtol=0, atol=2e-3)


def test_eps_zero_returns_x():
    model = linear(6, 3)
    x, y = torch.rand(8, 6), torch.randint(0, 3, (8,))
    for attack in (attacks.fgsm, attacks.pgd, attacks.apgd):
        for norm in ("linf", "l2"):
            assert torch.equal(attack(model, x, y, eps=0.0, norm=norm), x)


# ---- feasibility: property tests ----------------------------------------------------------------------------

_TINY = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 6), eps=st.floats(0.0, 2.0),
       norm=st.sampled_from(["linf", "l2"]), steps=st.integers(1, 6), restarts=st.integers(1, 3),
       loss=st.sampled_from(["ce", "margin", "dlr"]), kind=st.sampled_from(["fgsm", "pgd", "apgd", "targeted"]),
       random_start=st.booleans())
def test_every_result_lies_in_the_ball_and_the_box(seed, batch, eps, norm, steps, restarts, loss, kind,
                                                    random_start):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 4, 4, generator=gen)
    x[x < 0.2] = 0.0  # pixels exactly at the box edges, as in real images
    x[x > 0.9] = 1.0
    y = torch.randint(0, 4, (batch,), generator=gen)
    before = x.clone()
    if kind == "fgsm":
        x_adv = attacks.fgsm(_TINY, x, y, eps=eps, norm=norm, loss=loss)
    elif kind == "pgd":
        x_adv = attacks.pgd(_TINY, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss,
                            random_start=random_start, generator=gen)
    elif kind == "apgd":
        x_adv = attacks.apgd(_TINY, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss,
                             random_start=random_start, generator=gen)
    else:
        target = torch.randint(0, 4, (batch,), generator=gen)
        x_adv = attacks.pgd(_TINY, x, y, eps=eps, norm=norm, steps=steps, loss=loss, targeted=True, target=target,
                            random_start=random_start, generator=gen)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert within(x_adv, x, eps, norm)
    assert torch.equal(x, before)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.0, 3.0), norm=st.sampled_from(["linf", "l2"]))
def test_ball_projection_and_random_start_are_feasible(seed, eps, norm):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 3, 7, generator=gen).round()  # many coordinates on the box edges
    ball = Ball(x, eps, norm)
    far = x + 5 * torch.randn(x.shape, generator=gen)
    assert within(ball.project(far), x, eps, norm)
    assert within(ball.random_point(gen), x, eps, norm)
    inside = ball.random_point(gen)
    torch.testing.assert_close(ball.project(inside), inside)  # projection leaves feasible points alone


def test_l2_random_start_is_uniform_in_the_ball():
    # in D dimensions the radius of a uniform point has P(r <= eps * s) = s^D
    x = torch.full((4000, 3), 0.5)
    r = (Ball(x, 0.2, "l2").random_point(torch.Generator().manual_seed(0)) - x).norm(dim=1) / 0.2
    for s in (0.5, 0.8, 0.95):
        assert abs(float((r <= s).float().mean()) - s**3) < 0.03


# ---- losses -------------------------------------------------------------------------------------------------

def test_losses_match_their_formulas_and_dlr_is_scale_free():
    z = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 1.0, 4.0]])
    y = torch.tensor([2, 1])
    torch.testing.assert_close(margin(z, y), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(dlr(z, y), torch.tensor([1.0 / (3 - 1), -1.0 / (5 - 1)]))
    torch.testing.assert_close(dlr(7 * z - 3, y), dlr(z, y))  # invariant to shift and positive scale
    torch.testing.assert_close(ce(z, y), F.cross_entropy(z, y, reduction="none"))
    with pytest.raises(ConfigError, match="at least 3 classes"):
        attacks.apgd(linear(4, 2), torch.rand(3, 4), torch.zeros(3, dtype=torch.int64), loss="dlr", steps=2)


# ---- worst-case bookkeeping, restarts, targeted ---------------------------------------------------------------

def test_restarts_never_make_the_result_weaker(trained, batch):
    x, y = batch
    one = attacks.pgd(trained, x, y, eps=0.08, steps=5, generator=torch.Generator().manual_seed(7))
    many = attacks.pgd(trained, x, y, eps=0.08, steps=5, restarts=4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        l1, l4 = ce(trained(one), y), ce(trained(many), y)
        f1, f4 = trained(one).argmax(1) != y, trained(many).argmax(1) != y
    assert bool((f4 >= f1).all())  # a sample broken by the first restart stays broken
    # where the success is equal, the loss is never lower (a newly broken sample may trade loss for success)
    assert bool(((l4 >= l1 - 1e-5) | (f4 & ~f1)).all())
    assert int(f4.sum()) > int(f1.sum())  # and here the extra restarts do find more


def test_pgd_returns_the_worst_iterate_not_the_last():
    # coarse steps oscillate around Spike's narrow adversarial band: an iterate inside it is often followed by
    # one outside, so the last iterate misses successes that the worst case over iterates keeps
    x, y = torch.full((200, 1), 0.5), torch.zeros(200, dtype=torch.int64)
    opts = {"eps": 0.3, "norm": "linf", "steps": 10, "loss": "ce"}
    last = run_attack(Spike(), x, y, stepper=partial(fixed_step, step_size=0.075), keep="last",
                      generator=torch.Generator().manual_seed(0), **opts)
    worst = attacks.pgd(Spike(), x, y, step_size=0.075, generator=torch.Generator().manual_seed(0), **opts)
    with torch.no_grad():
        won_last, won_worst = Spike()(last).argmax(1) == 1, Spike()(worst).argmax(1) == 1
    assert bool((won_worst >= won_last).all())
    assert int(won_worst.sum()) > int(won_last.sum()) + 10  # 38 vs 16 with this seed


def test_targeted_pgd_reaches_the_target(trained, batch):
    x, y = batch
    target = (y + 1) % 10
    x_adv = attacks.pgd(trained, x, y, eps=0.3, steps=20, targeted=True, target=target)
    with torch.no_grad():
        hit = trained(x_adv).argmax(1) == target
        ll = attacks.pgd(trained, x, y, eps=0.3, steps=20, targeted=True, target="least-likely")
        least = trained(x).argmin(1)
        hit_ll = trained(ll).argmax(1) == least
    assert float(hit.float().mean()) > 0.9 and float(hit_ll.float().mean()) > 0.8


# ---- apgd schedule --------------------------------------------------------------------------------------------

def test_apgd_checkpoints_follow_the_paper():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein, section 3.2)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]


def test_apgd_halves_the_step_and_restarts_from_the_best_point():
    x = torch.full((2, 3), 0.5)
    stepper = ApgdStepper(Ball(x, 0.1, "linf"), steps=10, rho=0.75, alpha=0.75)
    grad = torch.ones(2, 3)
    it = x
    best_at_2 = None
    # sample 0 always improves; sample 1 improves once (t=1) and then falls back
    for t, values in enumerate([(0.0, 0.0), (1.0, 1.0), (2.0, 0.5), (3.0, 0.4)]):
        if t == 1:
            best_at_2 = it[1].clone()
        it = stepper(t, it, grad, torch.tensor(values))
    # checkpoint w_1 = 3: sample 0 increased 3 of 3 times, sample 1 once (< 0.75 * 3): only sample 1 halves
    torch.testing.assert_close(stepper.eta.flatten(), torch.tensor([0.2, 0.1]))
    # sample 1 continued from its best point (reached at t=1), with the halved step
    assert torch.equal(stepper.x_prev[1], best_at_2)


def test_apgd_is_at_least_as_strong_as_short_pgd(trained, batch):
    x, y = batch
    gen = torch.Generator().manual_seed(0)
    r_pgd = attacks.robust_accuracy(trained, x, y, [partial(attacks.pgd, eps=0.1, steps=10, generator=gen)])
    for loss in ("ce", "dlr"):
        r_apgd = attacks.robust_accuracy(trained, x, y, [partial(attacks.apgd, eps=0.1, steps=30, loss=loss)])
        assert float(r_apgd.mean()) <= float(r_pgd.mean()) + 0.02


# ---- robust accuracy ----------------------------------------------------------------------------------------

def test_robust_accuracy_is_monotone_in_eps_and_equals_clean_accuracy_at_zero(trained, batch):
    x, y = batch
    clean = (trained(x).argmax(1) == y).float()
    values = []
    for eps in (0.0, 0.03, 0.06, 0.1, 0.15, 0.25):
        robust = attacks.robust_accuracy(trained, x, y, [partial(attacks.pgd, eps=eps, steps=10)])
        assert robust.shape == (200,) and robust.dtype == torch.float32
        assert bool((robust <= clean).all())
        values.append(float(robust.mean()))
    assert values[0] == float(clean.mean())
    assert all(a >= b for a, b in pairwise(values)), values
    assert values[-1] < 0.1 < 0.8 < values[0]


def test_robust_accuracy_is_the_worst_case_and_skips_broken_samples(trained, batch):
    x, y = batch
    seen: list[int] = []

    def recorded(attack):
        def run(model, xs, ys):
            seen.append(xs.shape[0])
            return attack(model, xs, ys)
        return run

    a1 = partial(attacks.fgsm, eps=0.1)
    a2 = partial(attacks.pgd, eps=0.1, steps=10, random_start=False)  # deterministic: same answer on a subset
    robust = attacks.robust_accuracy(trained, x, y, [recorded(a1), recorded(a2)])
    with torch.no_grad():
        clean = trained(x).argmax(1) == y
        ok1 = trained(a1(trained, x, y)).argmax(1) == y
        ok2 = trained(a2(trained, x, y)).argmax(1) == y
    assert torch.equal(robust.bool(), clean & ok1 & ok2)
    assert seen == [int(clean.sum()), int((clean & ok1).sum())]
    assert torch.equal(attacks.robust_accuracy(trained, x, y, ["fgsm"]).bool(),
                       clean & (trained(attacks.fgsm(trained, x, y)).argmax(1) == y))


# ---- state, inputs and validation ---------------------------------------------------------------------------

class ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []
        self.fail = False

    def forward(self, x):
        self.seen.append(self.training)
        if self.fail:
            raise RuntimeError("boom")
        return x


def stateful_model() -> tuple[nn.Sequential, ModeRecorder]:
    rec = ModeRecorder()
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), rec,
                          nn.Linear(6, 3))
    model.train()
    model[1].bias.requires_grad_(False)  # a mixed state that must come back exactly
    return model, rec


@pytest.mark.parametrize("attack", [attacks.fgsm, partial(attacks.pgd, steps=3, restarts=2),
                                    partial(attacks.apgd, steps=4),
                                    partial(attacks.explanation_attack, attribution=local_gradient, steps=2, topk=3),
                                    attacks.check])
def test_model_state_is_restored_and_inputs_are_untouched(attack):
    model, rec = stateful_model()
    x, y = torch.rand(10, 8), torch.randint(0, 3, (10,))
    x0, y0 = x.clone(), y.clone()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    attack(model, x, y)
    assert rec.seen and not any(rec.seen)  # every forward pass ran in eval mode
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # BN statistics untouched
    assert torch.equal(x, x0) and torch.equal(y, y0)
    rec.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        attack(model, x, y)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


class ViewNet(nn.Module):
    """A CNN that flattens with .view, which fails on channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = self.conv(x).relu()
        return self.fc(h.view(h.shape[0], -1))


class BatchTwoView(nn.Module):
    """Per-channel means by a view that merges the batch and channel axes: in channels-last layout it fails only
    once the batch has two samples or more."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        b, c = h.shape[:2]
        return self.fc(h.view(b * c, -1).mean(1).view(b, c))


class RawMemory(nn.Module):
    """Reads its conv weight's memory in storage order: runs in both layouts but computes other values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        w = self.conv.weight
        flat = torch.as_strided(w, (w.numel(),), (1,))
        return self.conv(x).mean((2, 3))[:, :3] + flat[:3]


def input_grad(model, x, y):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]


def test_attacks_hold_conv_weights_channels_last_only_where_the_model_runs_so_and_restore_them():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3))
    x, y = torch.rand(5, 3, 6, 6), torch.randint(0, 3, (5,))
    weight = cnn[0].weight
    data, strides = weight.data, weight.stride()
    logits, grad = cnn(x), input_grad(cnn, x, y)
    with channels_last(cnn, x) as used:
        assert used and cnn[0].weight is weight and weight.stride() == (27, 1, 9, 3)
        torch.testing.assert_close(cnn(x), logits)  # a layout, not other values
        torch.testing.assert_close(input_grad(cnn, x, y), grad)
    assert weight.data_ptr() == data.data_ptr() and weight.stride() == strides
    with pytest.raises(KeyError), channels_last(cnn, x):
        raise KeyError("inside")
    assert weight.data_ptr() == data.data_ptr() and weight.stride() == strides
    one = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 3))  # one input channel: restrided too
    with channels_last(one, torch.rand(2, 1, 6, 6)) as used:
        assert used and one[0].weight.stride() == (9, 1, 3, 1)
    view = ViewNet()
    with channels_last(view, x) as used:
        assert not used and view.conv.weight.is_contiguous()
    with channels_last(linear(8, 3), torch.rand(4, 8)) as used:
        assert not used
    for model in (cnn, view):
        x_adv = attacks.pgd(model, x, y, eps=0.1, steps=3)
        assert x_adv.is_contiguous() and within(x_adv, x, 0.1, "linf")
        assert model[0].weight.stride() == strides if model is cnn else model.conv.weight.is_contiguous()


@pytest.mark.parametrize("make", [BatchTwoView, RawMemory])
def test_models_that_fail_or_compute_otherwise_in_channels_last_are_left_alone(make):
    torch.manual_seed(0)
    model = make().eval()
    x, y = torch.rand(6, 3, 6, 6), torch.randint(0, 3, (6,))
    with channels_last(model, x) as used:
        assert not used and model.conv.weight.is_contiguous()
    assert within(attacks.pgd(model, x, y, eps=0.1, steps=3), x, 0.1, "linf")


class Jitter(nn.Module):
    """Draws from the global RNG on every forward pass, in any mode (tiny enough not to change the outputs)."""

    def forward(self, x):
        return x + 1e-9 * torch.rand_like(x)


def test_channels_last_probe_leaves_train_mode_state_and_the_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), Jitter(), nn.Flatten(),
                          nn.Linear(64, 3)).train()
    x = torch.rand(4, 3, 6, 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with channels_last(model, x) as used:
        assert used and model.training  # the probe ran in eval mode, the block sees the caller's mode
        assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN statistics untouched


def test_pgd_is_the_same_attack_with_and_without_channels_last(monkeypatch):
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(72, 4))
    x, y = torch.rand(16, 3, 6, 6), torch.randint(0, 4, (16,))
    fast = attacks.pgd(cnn, x, y, eps=0.05, steps=5, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr("clearsight.attacks.loop.channels_last", lambda model, x: nullcontext(False))
    slow = attacks.pgd(cnn, x, y, eps=0.05, steps=5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


class Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 1.0, 2.0]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 3)  # no path from x to the logits at all


def test_a_model_constant_in_its_input_is_attacked_without_error():
    x, y = torch.rand(4, 6), torch.randint(0, 3, (4,))
    for attack in (attacks.fgsm, attacks.pgd, attacks.apgd):
        assert within(attack(Constant(), x, y, eps=0.1), x, 0.1, "linf")
    assert torch.equal(attacks.fgsm(Constant(), x, y), x)  # a zero gradient does not move
    found = attacks.check(Constant(), x, y, max_gap=None)
    assert len(found) == 1 and "exactly zero" in found[0]


def test_attacks_work_under_no_grad_and_inference_mode():
    model = linear(6, 3)
    x, y = torch.rand(4, 6), torch.randint(0, 3, (4,))
    expected = attacks.fgsm(model, x, y)
    with torch.no_grad():
        assert torch.equal(attacks.fgsm(model, x, y), expected)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        assert torch.equal(attacks.fgsm(model, xi, yi), expected)


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x, y: attacks.pgd(m, x * float("nan"), y), DataError, "NaN"),
    (lambda m, x, y: attacks.pgd(m, x + 1.5, y), DataError, r"\[0, 1\]"),
    (lambda m, x, y: attacks.pgd(m, x, y + 10), DataError, "labels in"),
    (lambda m, x, y: attacks.pgd(m, x, y.float()), DataError, "int64"),
    (lambda m, x, y: attacks.pgd(m, x, y[:2]), DataError, "labels for a batch"),
    (lambda m, x, y: attacks.pgd(m, x, y, norm="l1"), ConfigError, "valid norms: linf, l2"),
    (lambda m, x, y: attacks.pgd(m, x, y, loss="hinge"), ConfigError, "valid losses"),
    (lambda m, x, y: attacks.pgd(m, x, y, eps=-1), ConfigError, "eps"),
    (lambda m, x, y: attacks.pgd(m, x, y, steps=0), ConfigError, "steps"),
    (lambda m, x, y: attacks.pgd(m, x, y, targeted=True), ConfigError, "target="),
    (lambda m, x, y: attacks.pgd(m, x, y, target=y), ConfigError, "targeted=False"),
    (lambda m, x, y: attacks.pgd(m, x, y, targeted=True, target=y + 5), DataError, "target"),
    (lambda m, x, y: attacks.robust_accuracy(m, x, y, ["pgdd"]), KeyError, "Did you mean 'pgd'"),
])
def test_bad_inputs_get_clear_errors(call, error, match):
    model = linear(6, 3)
    with pytest.raises(error, match=match):
        call(model, torch.rand(4, 6), torch.randint(0, 3, (4,)))


def test_registry_declares_metadata_and_every_entry_stays_feasible():
    assert set(attacks.ATTACKS.names()) == {"apgd", "explanation", "fgsm", "pgd"}
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.rand(5, 6), torch.randint(0, 3, (5,))
    for entry in attacks.ATTACKS:
        assert entry.meta["goal"] in ("prediction", "explanation") and entry.meta["paper"].startswith("arXiv:")
        for norm in entry.meta["norms"]:
            # the explanation attack runs with its default attribution (clearsight.attributions.gradient)
            opts = {"norm": norm} if entry.meta["goal"] == "prediction" else {"steps": 3, "topk": 2}
            assert within(entry.fn(model, x, y, eps=0.2, **opts), x, 0.2, norm), entry.name


# ---- explanation attack -------------------------------------------------------------------------------------

def test_softplus_copy_leaves_the_original_alone(trained):
    smooth = attacks.softplus_copy(trained, beta=10)
    assert not any(isinstance(m, nn.ReLU) for m in smooth.modules())
    assert any(isinstance(m, nn.ReLU) for m in trained.modules())
    x = torch.rand(4, 1, 28, 28)
    # softplus(beta) >= relu and differs by at most log(2)/beta per unit: the logits stay close
    assert (smooth(x) - trained(x)).abs().max() < 1.0


def test_untargeted_explanation_attack_destroys_the_top_k_and_keeps_the_class(trained, batch):
    x, y = batch[0][:48], batch[1][:48]
    attribution = gradient_attribution()
    params = {k: v.clone() for k, v in trained.state_dict().items()}
    k, eps = 80, 0.1
    x_adv = attacks.explanation_attack(trained, x, y, attribution=attribution, eps=eps, steps=40, topk=k)
    assert within(x_adv, x, eps, "linf")
    with torch.no_grad():
        assert torch.equal(trained(x_adv).argmax(1), trained(x).argmax(1))
    noise = (x + eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    a = attribution(trained, x, y)
    attacked = attacks.topk_intersection(a, attribution(trained, x_adv, y), k).mean()
    random = attacks.topk_intersection(a, attribution(trained, noise, y), k).mean()
    assert attacked < random - 0.1, (float(attacked), float(random))
    assert all(isinstance(m, nn.ReLU) for n, m in trained.named_modules() if n.endswith("relu1"))
    assert all(torch.equal(v, params[n]) for n, v in trained.state_dict().items())


def test_targeted_explanation_attack_moves_the_attribution_towards_the_target(trained, batch):
    x, y = batch[0][:32], batch[1][:32]
    attribution = gradient_attribution()
    target_map = attribution(trained, x.roll(1, 0), y.roll(1, 0))  # another image's saliency
    x_adv = attacks.explanation_attack(trained, x, y, attribution=attribution, eps=0.05, steps=30,
                                       target_map=target_map)
    assert within(x_adv, x, 0.05, "linf")
    with torch.no_grad():
        assert torch.equal(trained(x_adv).argmax(1), trained(x).argmax(1))
    before = F.cosine_similarity(attribution(trained, x, y).flatten(1), target_map.flatten(1))
    after = F.cosine_similarity(attribution(trained, x_adv, y).flatten(1), target_map.flatten(1))
    assert bool((after >= before - 1e-6).all())  # x itself is always a candidate
    assert float((after - before).mean()) > 0.1


def test_explanation_attack_differentiates_through_smoothgrad(trained, batch):
    smoothgrad = pytest.importorskip("clearsight.attributions").smoothgrad
    x, y = batch[0][:16], batch[1][:16]
    attribution = partial(smoothgrad, n=4, sigma=0.1, generator=torch.Generator().manual_seed(0))
    x_adv = attacks.explanation_attack(trained, x, y, attribution=attribution, eps=0.1, steps=10, topk=80)
    assert within(x_adv, x, 0.1, "linf")
    with torch.no_grad():
        assert torch.equal(trained(x_adv).argmax(1), trained(x).argmax(1))
    def scored(x_other):  # a fresh, fixed noise draw scores the result
        fixed = partial(smoothgrad, n=16, sigma=0.1, generator=torch.Generator().manual_seed(1))
        return attacks.topk_intersection(fixed(trained, x, y), fixed(trained, x_other, y), 80).mean()

    noise = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    assert scored(x_adv) < scored(noise) - 0.1


def test_explanation_attack_rejects_a_non_differentiable_attribution(trained, batch):
    detached = lambda model, x, target, create_graph=False: local_gradient(model, x, target).detach()  # noqa: E731
    with pytest.raises(ConfigError, match="differentiable"):
        attacks.explanation_attack(trained, batch[0][:2], batch[1][:2], attribution=detached, steps=1)
    with pytest.raises(ConfigError, match="topk"):
        attacks.explanation_attack(trained, batch[0][:2], batch[1][:2], attribution=local_gradient, topk=10_000)



def test_targeted_explanation_attack_takes_a_map_shaped_like_the_attribution():
    """grad_cam maps are [B, 1, H, W] whatever the channels of x: the target map is checked against the map."""
    torch.manual_seed(2)
    model = nn.Sequential(OrderedDict(features=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
                                      flatten=nn.Flatten(), logits=nn.Linear(4 * 8 * 8, 3))).eval()
    x = torch.rand(2, 3, 8, 8)
    y = model(x).argmax(1)
    cam = partial(cs.attributions.grad_cam, layer="features")
    target_map = torch.zeros(2, 1, 8, 8)
    target_map[:, :, :4, :4] = 1.0
    x_adv = attacks.explanation_attack(model, x, y, attribution=cam, target_map=target_map, eps=0.1, steps=20)
    assert within(x_adv, x, 0.1, "linf") and torch.equal(model(x_adv).argmax(1), y)
    cos = lambda a: F.cosine_similarity(a.flatten(1), target_map.flatten(1), dim=1)  # noqa: E731
    assert bool((cos(cam(model, x_adv, y)) >= cos(cam(model, x, y))).all())
    with pytest.raises(DataError, match=r"shaped like the attribution \(2, 1, 8, 8\)"):
        attacks.explanation_attack(model, x, y, attribution=cam, target_map=torch.zeros_like(x), steps=1)


def test_a_sample_misclassified_already_stays_misclassified_after_a_random_start():
    """With step size 0 the only candidates are x and the random start; x must win for a misclassified x."""
    model = linear(1, 2)
    with torch.no_grad():  # z_0 - z_1 = 2x - 1: class 0 above 0.5, class 1 below
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[1].bias.copy_(torch.tensor([-0.5, 0.5]))
    x = torch.full((400, 1), 0.49)
    y = torch.zeros(400, dtype=torch.int64)  # every x is misclassified (predicted 1), 0.01 from the boundary
    assert bool((model(x).argmax(1) == 1).all())
    x_adv = attacks.pgd(model, x, y, eps=0.1, steps=1, step_size=0.0, generator=torch.Generator().manual_seed(0))
    # a random start alone lands on the correct side (above 0.5) for about 45% of the samples
    assert bool((model(x_adv).argmax(1) != y).all())


def test_robust_accuracy_refuses_attacks_on_explanations(trained, batch):
    with pytest.raises(ConfigError, match="changes the explanation, not the prediction"):
        attacks.robust_accuracy(trained, batch[0][:2], batch[1][:2], ["explanation"])

# ---- hygiene checks -----------------------------------------------------------------------------------------

class Noisy(nn.Module):
    def forward(self, x):
        return x + 0.5 * torch.randn_like(x)  # random even in eval mode


class Quantize(nn.Module):
    def forward(self, x):
        return torch.round(x * 4) / 4  # zero gradient everywhere


def test_a_normal_model_passes_every_check(trained, batch):
    assert attacks.check(trained, *batch, eps=0.1) == []



def test_an_empty_batch_has_nothing_to_warn_about(trained, batch):
    assert attacks.check(trained, batch[0][:0], batch[1][:0], eps=0.1) == []

def saturating(model: nn.Module) -> nn.Module:
    """Logits x 1000: the softmax saturates and cross-entropy gradients underflow to zero, margins do not."""
    head = nn.Linear(10, 10)
    with torch.no_grad():
        head.weight.copy_(1000 * torch.eye(10))
        head.bias.zero_()
    return nn.Sequential(model, head)


@pytest.mark.parametrize("make, data, opts, words", [
    (lambda m: nn.Sequential(m, nn.Softmax(1)), None, {"max_gap": None}, "probabilities"),
    (lambda m: nn.Sequential(Noisy(), m), None, {"max_gap": None}, "random"),
    (lambda m: nn.Sequential(Quantize(), m), None, {"max_gap": None}, "exactly zero (of the logit margin"),
    (saturating, None, {"max_gap": None}, "softmax saturates"),
    (lambda m: Spike(), (torch.full((200, 1), 0.5), torch.zeros(200, dtype=torch.int64)),
     {"eps": 0.3, "weak_steps": 10, "strong_steps": 100, "strong_restarts": 2}, "more steps and restarts"),
])
def test_each_check_fires_on_a_model_built_to_trigger_it(trained, batch, make, data, opts, words):
    x, y = data if data is not None else batch
    found = attacks.check(make(trained), x, y, generator=torch.Generator().manual_seed(0), **opts)
    assert len(found) == 1 and words in found[0], found
    assert "gradient masking" in found[0] or "unreliable" in found[0]
