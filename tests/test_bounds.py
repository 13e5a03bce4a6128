"""Proofs of soundness of clearsight.bounds: exactness at radius 0, enclosure of sampled gradients and logits
(hypothesis over random networks, inputs and radii), monotonicity, linear closed forms, certificates against
sampling and gradient search, and refusal of layers without a sound rule."""

from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from clearsight import bounds
from clearsight.bounds import interval
from clearsight.bounds import layers as rules
from clearsight.errors import ConfigError, DataError
from clearsight.models import Normalize, build

# ---- helpers -------------------------------------------------------------------------------------------------


def true_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor, of: str = "logit") -> torch.Tensor:
    """Per-sample autograd gradient of z_target (or CE) w.r.t. x, model in eval mode (samples independent)."""
    x = x.detach().clone().requires_grad_(True)
    z = model(x)
    s = z.gather(1, target[:, None]).sum() if of == "logit" else F.cross_entropy(z, target, reduction="sum")
    (g,) = torch.autograd.grad(s, x)
    return g


def box_points(x: torch.Tensor, eps: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points per sample in the clipped box around x [B, ...] -> [B * n, ...]: the center, corners (a quarter)
    and uniform points. Sample b owns rows b*n .. b*n + n - 1."""
    lower, upper = interval.input_box(x, eps)
    lower, upper = lower.repeat_interleave(n, 0), upper.repeat_interleave(n, 0)
    u = torch.rand(lower.shape, generator=generator, dtype=x.dtype)
    corner = torch.arange(lower.shape[0]) % n < n // 4
    u[corner] = u[corner].round()  # box corners: every coordinate at an end
    points = lower + u * (upper - lower)
    points[torch.arange(lower.shape[0]) % n == n - 1] = x.to(points.dtype)  # and the center itself
    return points


def perturbed(model: nn.Module, gamma: float, generator: torch.Generator, corner: bool) -> nn.Module:
    """A copy whose Linear/Conv2d weights and biases lie in the relative box w ± gamma|w| (a corner if asked)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                for p in (m.weight, m.bias):
                    if p is None:
                        continue
                    u = torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 - 1
                    p.add_(gamma * p.abs() * (u.sign() if corner else u))
    return other


def make_net(spec: dict, dtype: torch.dtype = torch.float64) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A random supported network from a hypothesis spec, with random BatchNorm statistics, in eval mode."""
    torch.manual_seed(spec["seed"])
    layers: list[nn.Module] = []
    if spec["kind"] == "mlp":
        shape: tuple[int, ...] = (spec["features"],)
        if spec["normalize"]:
            n = spec["features"]
            layers.append(Normalize(torch.rand(n).tolist(), (torch.rand(n) + 0.2).tolist()))
        fan = spec["features"]
        for w in spec["widths"]:
            layers += [nn.Linear(fan, w)]
            if spec["batchnorm"]:
                layers.append(nn.BatchNorm1d(w))
            layers += [nn.ReLU(), nn.Dropout(0.3)]
            fan = w
    else:
        c, size = spec["channels"], spec["size"]
        shape = (c, size, size)
        if spec["normalize"]:
            layers.append(Normalize(torch.rand(c).tolist(), (torch.rand(c) + 0.2).tolist()))
        for out_c, k, stride, pad in spec["convs"]:
            if size + 2 * pad < max(k, 2):
                continue  # the feature map is too small for this conv
            size = (size + 2 * pad - k) // stride + 1
            layers += [nn.Conv2d(c, out_c, k, stride=stride, padding=pad)]
            if spec["batchnorm"]:
                layers.append(nn.BatchNorm2d(out_c))
            layers.append(nn.ReLU())
            c = out_c
        if spec["pool"] and size >= 2:
            layers.append(nn.AvgPool2d(2, ceil_mode=spec["pool"] == "ceil", count_include_pad=False))
        layers.append(nn.Flatten())
        fan = math.prod(nn.Sequential(*layers).eval()(torch.zeros(1, *shape)).shape[1:])
        layers += [nn.Linear(fan, spec["widths"][0]), nn.ReLU()]
        fan = spec["widths"][0]
    layers.append(nn.Linear(fan, spec["classes"]))
    model = nn.Sequential(*layers).to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval(), shape


def net_specs():
    conv = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1))
    mlp = st.fixed_dictionaries({
        "kind": st.just("mlp"), "features": st.integers(2, 10), "widths": st.lists(st.integers(2, 12), min_size=1,
                                                                                   max_size=3)})
    cnn = st.fixed_dictionaries({
        "kind": st.just("cnn"), "channels": st.integers(1, 2), "size": st.integers(5, 8),
        "convs": st.lists(conv, min_size=1, max_size=2), "pool": st.sampled_from([None, "floor", "ceil"]),
        "widths": st.lists(st.integers(2, 8), min_size=1, max_size=1)})
    common = {"classes": st.integers(2, 5), "normalize": st.booleans(), "batchnorm": st.booleans(),
              "seed": st.integers(0, 2**16)}
    return st.one_of(mlp, cnn).flatmap(lambda s: st.fixed_dictionaries({**{k: st.just(v) for k, v in s.items()},
                                                                         **common}))


def assert_inside(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, n: int, tol: float) -> None:
    """values [B * n, ...] (rows of sample b: b*n ...) inside [lower, upper] [B, ...] up to tol (relative too)."""
    values, lo, hi = values.detach(), lower.detach().repeat_interleave(n, 0), upper.detach().repeat_interleave(n, 0)
    slack = tol * (1 + values.abs())
    below, above = (lo - values - slack).clamp(min=0), (values - hi - slack).clamp(min=0)
    assert float(below.max()) == 0 and float(above.max()) == 0, \
        f"outside the bounds by {float(below.max()):.3g} / {float(above.max()):.3g}"


# ---- exactness at radius 0 -----------------------------------------------------------------------------------


def _custom_net() -> nn.Sequential:
    net = nn.Sequential(OrderedDict([
        ("normalize", Normalize([0.2, 0.5], [0.3, 0.8])),
        ("conv", nn.Conv2d(2, 4, 3, stride=2, padding=1)), ("bn", nn.BatchNorm2d(4)), ("relu", nn.ReLU()),
        ("pool", nn.AvgPool2d(2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * 2 * 2, 6)),
        ("bn1", nn.BatchNorm1d(6)), ("relu1", nn.ReLU()), ("drop", nn.Dropout(0.5)), ("logits", nn.Linear(6, 3))]))
    with torch.no_grad():
        for bn in (net.bn, net.bn1):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(-1, 1)
    return net


MODELS = {
    "mlp": lambda: (build("mlp", num_classes=4, input_shape=(1, 6, 6), widths=[20, 12]), (1, 6, 6), 4),
    "small-cnn": lambda: (build("small-cnn", num_classes=5, input_shape=(1, 12, 12), pool="avg", hidden=32),
                          (1, 12, 12), 5),
    "normalize-bn": lambda: (_custom_net(), (2, 8, 8), 3),
}


@pytest.mark.parametrize("of", ["logit", "ce"])
@pytest.mark.parametrize("name", list(MODELS))
def test_radius_zero_equals_autograd(name, of):
    model, shape, classes = MODELS[name]()
    model.train()  # bounds describe the eval network whatever the mode; compare with eval autograd
    x, target = torch.rand(6, *shape), torch.randint(0, classes, (6,))
    lower, upper = bounds.gradient_bounds(model, x, target, eps=0.0, gamma=0.0, of=of)
    assert model.training
    g = true_gradient(model.eval(), x, target, of)
    torch.testing.assert_close(lower, g, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(upper, g, atol=1e-5, rtol=1e-4)
    z_lower, z_upper = bounds.interval_forward(model, x, x)
    torch.testing.assert_close(z_lower, model(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_upper, model(x), atol=1e-5, rtol=1e-5)


def test_bounds_keep_mode_flags_and_are_batch_invariant():
    model, shape, classes = MODELS["normalize-bn"]()
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x, target = torch.rand(5, *shape), torch.randint(0, classes, (5,))
    lower, upper = bounds.gradient_bounds(model, x, target, eps=0.05, gamma=0.02)
    assert [m.training for m in model.modules()] == flags and [p.requires_grad for p in model.parameters()] == grads
    one = bounds.gradient_bounds(model, x[2:3], target[2:3], eps=0.05, gamma=0.02)
    torch.testing.assert_close(one[0], lower[2:3], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(one[1], upper[2:3], atol=1e-6, rtol=1e-5)


# ---- soundness by sampling -----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(spec=net_specs(), eps=st.sampled_from([0.0, 0.01, 0.05, 0.2]), gamma=st.sampled_from([0.0, 0.01, 0.05]),
       data_seed=st.integers(0, 2**16))
def test_sampled_gradients_and_logits_lie_inside_the_bounds(spec, eps, gamma, data_seed):
    model, shape = make_net(spec)
    gen = torch.Generator().manual_seed(data_seed)
    b, n = 3, 680  # about 2,000 points per example
    x = torch.rand(b, *shape, generator=gen, dtype=torch.float64)
    target = torch.randint(0, spec["classes"], (b,), generator=gen)

    def all_bounds():
        per = {of: bounds.gradient_bounds(model, x, target, eps=eps, gamma=gamma, of=of) for of in ("logit", "ce")}
        box = interval.input_box(x, eps)
        return per, bounds.interval_forward(model, *box, gamma=gamma), bounds.margin_bounds(model, *box, target,
                                                                                              gamma=gamma)

    per, z_bounds, margins = all_bounds()
    with torch.no_grad():  # certification's path: the rules work in place, and must give the same bounds
        torch.testing.assert_close(all_bounds(), (per, z_bounds, margins), rtol=1e-12, atol=1e-12)
    points = box_points(x, eps, n, gen)
    targets = target.repeat_interleave(n)
    # parameters: the nominal ones, random ones in the box, and a corner of the box
    for i, net in enumerate([model] + [perturbed(model, gamma, gen, corner=k == 2) for k in range(3)] * (gamma > 0)):
        rows = slice(None) if gamma == 0 else slice(i, None, 4)
        pts = points[rows]
        sub = torch.arange(points.shape[0])[rows] // n  # owning sample of each point
        z = net(pts)
        for lo_hi, values in ((z_bounds, z), *((per[of], true_gradient(net, pts, targets[rows], of)) for of in per)):
            assert_inside(values, lo_hi[0][sub], lo_hi[1][sub], 1, tol=1e-9)
        true_margin = z.gather(1, targets[rows][:, None]) - z
        assert bool((true_margin >= margins[sub] - 1e-9).all())


@settings(max_examples=15, deadline=None)
@given(spec=net_specs(), data_seed=st.integers(0, 2**16))
def test_widths_are_monotone_in_eps_and_gamma(spec, data_seed):
    """Interval arithmetic is inclusion-monotone: a larger box gives enclosing bounds (stronger than widths)."""
    model, shape = make_net(spec)
    gen = torch.Generator().manual_seed(data_seed)
    x = torch.rand(4, *shape, generator=gen, dtype=torch.float64)
    target = torch.randint(0, spec["classes"], (4,), generator=gen)
    radii = [(0.0, 0.0), (0.01, 0.0), (0.01, 0.02), (0.05, 0.02), (0.05, 0.05), (0.2, 0.05)]
    for of in ("logit", "ce"):
        previous = None
        for eps, gamma in radii:
            lower, upper = bounds.gradient_bounds(model, x, target, eps=eps, gamma=gamma, of=of)
            if previous is not None:
                assert bool((lower <= previous[0] + 1e-12).all()) and bool((upper >= previous[1] - 1e-12).all())
            previous = (lower, upper)


def test_float32_bounds_enclose_sampled_gradients_of_a_trained_shape_cnn():
    model, shape, classes = MODELS["small-cnn"]()
    model.eval()
    gen = torch.Generator().manual_seed(3)
    x, target = torch.rand(2, *shape, generator=gen), torch.randint(0, classes, (2,), generator=gen)
    lower, upper = bounds.gradient_bounds(model, x, target, eps=0.02, gamma=0.01)
    n = 500
    net = perturbed(model, 0.01, gen, corner=False)
    g = true_gradient(net, box_points(x, 0.02, n, gen), target.repeat_interleave(n))
    assert_inside(g, lower, upper, n, tol=1e-5)


# ---- closed forms --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_linear_model_bounds_are_exact(eps):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x, target = torch.rand(5, 12), torch.tensor([0, 1, 2, 3, 1])
    lower, upper = bounds.gradient_bounds(model, x, target, eps=eps)
    w = model[1].weight
    torch.testing.assert_close(lower, w[target].detach())
    torch.testing.assert_close(upper, w[target].detach())
    box_lo, box_hi = interval.input_box(x, eps)
    z_lower, z_upper = bounds.interval_forward(model, box_lo, box_hi)
    for j in range(4):  # z_j is maximal at the corner picking the upper end where w_j > 0, and minimal at the other
        best = torch.where(w[j] > 0, box_hi, box_lo)
        worst = torch.where(w[j] > 0, box_lo, box_hi)
        torch.testing.assert_close(z_upper[:, j], model(best)[:, j].detach())
        torch.testing.assert_close(z_lower[:, j], model(worst)[:, j].detach())


def test_margin_is_tighter_than_logit_difference_and_exact_for_linear_models():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 3))
    x, y = torch.rand(8, 6), torch.randint(0, 3, (8,))
    lo, hi = interval.input_box(x, 0.1)
    margin = bounds.margin_bounds(model, lo, hi, y)
    w, b = model[0].weight.detach(), model[0].bias.detach()
    for j in range(3):  # exact: the minimum of (w_y - w_j).x over the box is at a corner
        d = w[y] - w[j]
        corner = torch.where(d > 0, lo, hi)
        torch.testing.assert_close(margin[:, j], (d * corner).sum(1) + b[y] - b[j])
    deep = build("mlp", num_classes=3, input_shape=(6,), widths=[16])
    margin = bounds.margin_bounds(deep, lo, hi, y, gamma=0.02)
    z_lo, z_hi = bounds.interval_forward(deep, lo, hi, gamma=0.02)
    naive = (z_lo.gather(1, y[:, None]) - z_hi).scatter(1, y[:, None], 0.0)
    assert bool((margin >= naive - 1e-6).all()) and bool((margin > naive + 1e-6).any())


# ---- interval primitives -------------------------------------------------------------------------------------


def test_mask_product_equals_the_four_product_rule_and_softmax_bounds_enclose_samples():
    gen = torch.Generator().manual_seed(0)
    a_lo = torch.randn(1000, generator=gen)
    a_hi = a_lo + torch.rand(1000, generator=gen)
    d_lo = (torch.rand(1000, generator=gen) > 0.5).float()
    d_hi = torch.maximum(d_lo, (torch.rand(1000, generator=gen) > 0.5).float())
    general = interval.mul_interval(a_lo, a_hi, d_lo, d_hi)
    special = interval.mul_mask_interval(a_lo, a_hi, d_lo, d_hi)
    torch.testing.assert_close(general, special)
    z_lo = torch.randn(4, 5, generator=gen) * 5
    z_hi = z_lo + torch.rand(4, 5, generator=gen) * 3
    p_lo, p_hi = interval.softmax_bounds(z_lo, z_hi)
    z = z_lo + torch.rand(500, 4, 5, generator=gen) * (z_hi - z_lo)
    p = z.softmax(-1)
    assert bool((p >= p_lo - 1e-7).all()) and bool((p <= p_hi + 1e-7).all())
    big = interval.softmax_bounds(torch.tensor([[1000.0, 0.0]]), torch.tensor([[1001.0, 1.0]]))
    assert all(bool(torch.isfinite(t).all()) for t in big)


def test_in_place_relu_rule_is_the_exact_image_of_the_interval():
    gen = torch.Generator().manual_seed(1)
    mid = torch.randn(2000, generator=gen, dtype=torch.float64)
    rad = torch.rand(2000, generator=gen, dtype=torch.float64)
    rad[:300] = 0.0  # points
    rad[300:600] = mid[300:600].abs()  # one end exactly at 0
    out_mid, out_rad = rules._relu_inplace(mid.clone(), rad.clone())
    torch.testing.assert_close((out_mid - out_rad, out_mid + out_rad), ((mid - rad).relu(), (mid + rad).relu()),
                               rtol=0, atol=1e-15)
    assert bool((out_rad >= 0).all()) and torch.equal(out_mid[:300], mid[:300].relu())
    # an overflowed pre-activation: relu(-inf) = 0, not NaN (the autograd path's endpoints give (0, 0) too)
    out = rules._relu_inplace(torch.tensor([-math.inf, -math.inf]), torch.tensor([0.0, 2.0]))
    assert torch.equal(torch.stack(out), torch.zeros(2, 2))


def test_results_without_autograd_own_their_memory():
    # the no-grad path writes |W| into scratch memory kept per weight; no result may alias it: a later call on
    # other weights rewrites the scratch with other values, and the first results must not move
    model, shape, classes = MODELS["small-cnn"]()
    model.eval()
    x = torch.rand(3, *shape)
    y = torch.randint(0, classes, (3,))
    with torch.no_grad():
        first = (*bounds.interval_forward(model, *interval.input_box(x, 0.02)),
                 *bounds.gradient_bounds(model, x, y, eps=0.02, gamma=0.01))
        kept = [t.clone() for t in first]
        for p in model.parameters():
            p.mul_(-1.5)
        bounds.interval_forward(model, *interval.input_box(x, 0.05))
        bounds.gradient_bounds(model, x, y, eps=0.05, gamma=0.02)
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
        assert all(torch.equal(rules._SCRATCH.store[id(w)][1], w.abs()) for w in weights)  # the scratch moved
    assert all(torch.equal(a, b) for a, b in zip(first, kept, strict=True))


def test_bounds_under_inference_mode_then_no_grad():
    # scratch made under inference_mode must stay writable outside it (and the other way round)
    model, shape, classes = MODELS["mlp"]()
    x = torch.rand(2, *shape)
    y = torch.randint(0, classes, (2,))
    with torch.inference_mode():
        inside = bounds.gradient_bounds(model, x, y, eps=0.03)
    with torch.no_grad():
        outside = bounds.gradient_bounds(model, x, y, eps=0.03)
    with torch.inference_mode():
        again = bounds.gradient_bounds(model, x, y, eps=0.03)
    torch.testing.assert_close(inside, outside)
    torch.testing.assert_close(again, outside)


class _WidthOf(nn.Module):
    """Wraps a network so torch.func.functional_call can substitute its parameters inside gradient_bounds."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lower, upper = bounds.gradient_bounds(self.net, x, target, eps=0.05, gamma=0.02, of="ce")
        return upper - lower, lower


def test_bounds_are_differentiable_in_the_parameters():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    wrapper = _WidthOf(net)
    x, target = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2, 1])
    width, _ = wrapper(x, target)
    width.sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())
    names = [n for n, _ in wrapper.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_(True) for p in wrapper.parameters())

    def fn(*ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps, strict=True)), (x, target))

    assert torch.autograd.gradcheck(fn, values, atol=1e-6)


# ---- refusal -------------------------------------------------------------------------------------------------


def test_maxpool_is_refused_with_the_layer_name_and_a_fix():
    model = build("small-cnn", num_classes=10)
    with pytest.raises(ConfigError, match=r"MaxPool2d at features\.pool1.*pool='avg'"):
        bounds.gradient_bounds(model, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="MaxPool2d"):
        bounds.interval_forward(model, torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28))


class Scale(nn.Module):
    def forward(self, x):
        return 2 * x


def test_unknown_layers_and_residual_models_are_refused():
    model = nn.Sequential(OrderedDict([("fc", nn.Linear(4, 4)), ("act", nn.Tanh()), ("out", nn.Linear(4, 2))]))
    with pytest.raises(ConfigError, match=r"Tanh at act; supported layers: Linear"):
        bounds.gradient_bounds(model, torch.rand(2, 4), torch.tensor([0, 1]))
    custom = nn.Sequential(nn.Linear(4, 4), nn.Sequential(OrderedDict([("scale", Scale())])), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"Scale at 1\.scale"):
        bounds.interval_forward(custom, torch.zeros(1, 4), torch.ones(1, 4))
    resnet = build("resnet18", num_classes=10, width=4)
    with pytest.raises(ConfigError, match=r"PreActBlock at features\.layer1\.0 \(a container with its own forward"):
        bounds.gradient_bounds(resnet, torch.rand(1, 3, 32, 32), torch.tensor([0]))
    with pytest.raises(ConfigError, match="padding_mode='reflect'"):
        bounds.bound_layers(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")))


def test_a_module_used_twice_is_bounded_at_each_use():
    """Sequential.forward runs a module listed twice twice; the bound must too (a skipped ReLU is unsound)."""
    torch.manual_seed(4)
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(5, 6), relu, nn.Linear(6, 6), relu, nn.Linear(6, 2))
    assert [name for name, _ in bounds.bound_layers(model)] == ["0", "1", "2", "3", "4"]
    x = torch.rand(8, 5)
    lo, hi = bounds.interval_forward(model, x, x)  # a point box is the forward pass
    torch.testing.assert_close(lo, model(x).detach())
    torch.testing.assert_close(hi, model(x).detach())


def test_layers_with_forward_hooks_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    handle = model[2].register_forward_pre_hook(lambda _m, args: (args[0] * 2,))
    with pytest.raises(ConfigError, match=r"forward hooks, but Linear at 2 has 1"):
        bounds.interval_forward(model, torch.zeros(1, 4), torch.ones(1, 4))
    handle.remove()
    bounds.interval_forward(model, torch.zeros(1, 4), torch.ones(1, 4))


@pytest.mark.parametrize("register", [torch.nn.modules.module.register_module_forward_hook,
                                      torch.nn.modules.module.register_module_forward_pre_hook])
def test_global_module_hooks_are_refused(register):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    handle = register(lambda _m, *args: None)
    try:
        with pytest.raises(ConfigError, match=r"1 global module hook\(s\)"):
            bounds.interval_forward(model, torch.zeros(1, 4), torch.ones(1, 4))
    finally:
        handle.remove()
    bounds.interval_forward(model, torch.zeros(1, 4), torch.ones(1, 4))


def test_every_supported_layer_class_has_both_rules_and_is_named_in_the_errors():
    assert set(rules._FORWARD) == set(rules._BACKWARD)
    named = set(re.findall(r"\w+", rules.SUPPORTED_NAMES))
    assert {cls.__name__ for cls in (*rules._FORWARD, *rules._IDENTITY)} <= named


class _WideLinear(nn.Linear):
    """Keeps Linear's forward, and still is not Linear: refused like any subclass."""


class _MaskedLinear(nn.Linear):
    """Linear.forward reads self.weight, which this property masks: the raw parameter is not the weight used."""

    @property
    def weight(self) -> torch.Tensor:
        raw = self._parameters.get("weight")
        if raw is None:  # during Linear.__init__, before the parameter is registered
            raise AttributeError("weight")
        mask = self.__dict__.get("mask")
        return raw if mask is None else raw * mask


class _DoubledConv(nn.Conv2d):
    """Keeps Conv2d.forward but changes the method it calls."""

    def _conv_forward(self, x, weight, bias):
        return 2 * super()._conv_forward(x, weight, bias)


class _ReversedSequential(nn.Sequential):
    """Keeps Sequential.forward but changes the order it runs its layers in."""

    def __iter__(self):
        return reversed(list(self._modules.values()))


def test_subclasses_of_supported_layers_are_refused_even_when_they_keep_forward():
    x = torch.rand(2, 4)
    masked = _MaskedLinear(4, 4)
    masked.mask = torch.zeros(4, 4)
    cases = [nn.Sequential(_WideLinear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
             nn.Sequential(masked, nn.ReLU(), nn.Linear(4, 2)),
             _ReversedSequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))]
    for model, where in zip(cases, ["_WideLinear at 0", "_MaskedLinear at 0", "_ReversedSequential at the model"],
                            strict=True):
        with pytest.raises(ConfigError, match=rf"{where}.* \(a subclass: .*; supported layers: Linear"):
            bounds.interval_forward(model, x, x)
    conv = nn.Sequential(_DoubledConv(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"_DoubledConv at 0 \(a subclass"):
        bounds.gradient_bounds(conv, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))


class _Scaled(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 1.5 * w


def test_parametrized_layers_are_bounded_as_the_network_they_compute():
    # parametrize swaps in a class made per module; it stands for its base (BatchNorm's scale through
    # _channel_affine too), and those classes are not cached
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    for layer, name in ((model[0], "weight"), (model[0], "bias"), (model[1], "weight"), (model[3], "weight")):
        torch.nn.utils.parametrize.register_parametrization(layer, name, _Scaled())
    x, y = torch.rand(4, 5), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(bounds.interval_forward(model, x, x), (model(x).detach(),) * 2)
    torch.testing.assert_close(bounds.gradient_bounds(model, x, y, eps=0.0), (true_gradient(model, x, y),) * 2)
    assert not any(rules._parametrized_base(cls) for cls in rules._ROLES)


class _Counted(nn.Module):
    """A weight parametrization that counts its evaluations (each read of a parametrized weight runs it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.modes: list[bool] = []  # self.training at each evaluation

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.modes.append(self.training)
        return w * (1.0 + 0.01 * self.calls)  # a different weight at every read, as spectral_norm in train mode


def _counted_model() -> tuple[nn.Sequential, nn.Sequential, list[_Counted]]:
    """(model with counted parametrizations on its conv and linear weights and biases and the BatchNorm weight,
    a plain copy holding the values their first evaluation gives, the counters reset to 0)."""
    from torch.nn.utils import parametrize

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    frozen = copy.deepcopy(model)
    counters = []
    for i, name in ((0, "weight"), (0, "bias"), (1, "weight"), (4, "weight"), (4, "bias")):
        counter = _Counted()
        parametrize.register_parametrization(model[i], name, counter)
        counter.calls, counter.modes = 0, []  # registration evaluates it once
        counters.append(counter)
        with torch.no_grad():
            getattr(frozen[i], name).mul_(1.01)  # what the first evaluation after the reset returns
    return model, frozen, counters


BOUND_CALLS = {
    "gradient_bounds": lambda m, x, y: bounds.gradient_bounds(m, x, y, eps=0.02, gamma=0.01, of="ce"),
    "interval_forward": lambda m, x, y: bounds.interval_forward(m, *interval.input_box(x, 0.02), gamma=0.01),
    "margin_bounds": lambda m, x, y: bounds.margin_bounds(m, *interval.input_box(x, 0.02), y, gamma=0.01),
    "delta_bound relative": lambda m, x, y: bounds.delta_bound(m, x, y, eps=0.02, gamma=0.01, relative=True),
}


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("call", list(BOUND_CALLS))
def test_a_parametrized_tensor_is_read_once_per_bound(call, grad):
    """The midpoint, the radius and the backward product of a layer must bound one network: a parametrized tensor
    that changes at every read (as spectral_norm in train mode) is read once per bound call and kept for the
    backward rule; certificates that combine bound calls (relative delta) read it once; evaluation reads it once
    over all batches (tests/test_evaluation.py)."""
    model, _, counters = _counted_model()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with torch.set_grad_enabled(grad):
        BOUND_CALLS[call](model, x, y)
    assert [c.calls for c in counters] == [1] * len(counters)


def test_the_parametrized_tensors_read_are_the_network_bounded():
    model, frozen, _ = _counted_model()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    g_lo, g_hi = bounds.gradient_bounds(model, x, y, eps=0.0)
    torch.testing.assert_close(g_lo, true_gradient(frozen, x, y))
    torch.testing.assert_close(g_hi, g_lo)


def test_bad_arguments_get_clear_errors():
    model = build("mlp", num_classes=3, input_shape=(4,), widths=[5])
    x = torch.rand(2, 4)
    with pytest.raises(ConfigError, match="eps must be"):
        bounds.gradient_bounds(model, x, torch.tensor([0, 1]), eps=-0.1)
    with pytest.raises(ConfigError, match="of must be one of logit, ce"):
        bounds.gradient_bounds(model, x, torch.tensor([0, 1]), of="softmax")
    with pytest.raises(DataError, match="labels in"):
        bounds.gradient_bounds(model, x, torch.tensor([0, 3]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        bounds.gradient_bounds(model, x + 1, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="lower <= upper"):
        bounds.interval_forward(model, x, x - 0.1)
    with pytest.raises(DataError, match="same shape and dtype"):
        bounds.interval_forward(model, x, x.double())
    for bad in (float("nan"), float("inf")):
        corrupt = x.clone()
        corrupt[1, 2] = bad
        with pytest.raises(DataError, match="NaN or infinite"):
            bounds.interval_forward(model, x, corrupt)
        with pytest.raises(DataError, match="NaN or infinite"):
            bounds.gradient_bounds(model, corrupt, torch.tensor([0, 1]))


# ---- certificates --------------------------------------------------------------------------------------------


def softplus_copy(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """The model with every ReLU replaced by softplus(beta): a smooth surrogate whose gradient can be attacked."""
    smooth = copy.deepcopy(model)
    for module in list(smooth.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Softplus(beta=beta))
    return smooth


def gradient_search(model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float, *, steps: int = 40
                    ) -> torch.Tensor:
    """PGD on ||g(x') - g(x)||_2 over the clipped eps box, through a softplus copy (ReLU gradients are piecewise
    constant): the empirical worst case that the delta-certificate must bound."""
    smooth = softplus_copy(model)
    g0 = true_gradient(model, x, target)
    lower, upper = interval.input_box(x, eps)
    xs = lower + torch.rand_like(x) * (upper - lower)
    for _ in range(steps):
        xs.requires_grad_(True)
        z = smooth(xs)
        (g,) = torch.autograd.grad(z.gather(1, target[:, None]).sum(), xs, create_graph=True)
        (step,) = torch.autograd.grad(((g - g0) ** 2).sum(), xs)
        xs = torch.minimum(torch.maximum(xs.detach() + eps / 8 * step.sign(), lower), upper)
    return xs.detach()


def searched_points(model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float) -> list[torch.Tensor]:
    """Points of the box found by attacking the explanation: our gradient search, and clearsight's explanation
    attack (Ghorbani et al.) when the attacks package is there."""
    found = [gradient_search(model, x, target, eps)]
    try:
        from clearsight.attacks import explanation_attack
    except ImportError:
        return found
    return [*found, explanation_attack(model, x, target, eps=eps, steps=30, topk=max(1, x[0].numel() // 10))]


def test_delta_certificate_bounds_sampled_and_searched_explanation_changes():
    torch.manual_seed(6)
    model = build("mlp", num_classes=3, input_shape=(10,), widths=[24, 24]).eval()
    x, target = torch.rand(16, 10), torch.randint(0, 3, (16,))
    for eps in (0.01, 0.05):
        bound = bounds.delta_bound(model, x, target, eps=eps)
        g0 = true_gradient(model, x, target)
        n = 300
        sampled = true_gradient(model, box_points(x, eps, n, torch.Generator().manual_seed(1)),
                                target.repeat_interleave(n))
        change = (sampled - g0.repeat_interleave(n, 0)).norm(dim=1).view(16, n).amax(1)
        lower, upper = bounds.gradient_bounds(model, x, target, eps=eps)
        searched = torch.zeros(16)
        for points in searched_points(model, x, target, eps):
            g = true_gradient(model, points, target)
            assert_inside(g, lower, upper, 1, tol=1e-5)
            searched = torch.maximum(searched, (g - g0).norm(dim=1))
        assert bool((change <= bound + 1e-5).all()) and bool((searched <= bound + 1e-5).all())
        assert float(torch.maximum(change, searched).max()) > 0  # the check is not vacuous
        relative = bounds.delta_bound(model, x, target, eps=eps, relative=True)
        torch.testing.assert_close(relative, bound / g0.norm(dim=1))
        certified = bounds.delta_certified(model, x, target, delta=float(bound.detach().median()), eps=eps)
        assert certified.dtype == torch.bool and 0 < int(certified.sum()) < 16


def pgd_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20) -> torch.Tensor:
    """bool [B]: a small l-inf PGD on the margin fails (our own, so the test does not depend on attacks/)."""
    lower, upper = interval.input_box(x, eps)
    robust = model(x).argmax(1) == y
    for start in (x, lower + torch.rand_like(x) * (upper - lower)):
        xs = start.clone()
        for _ in range(steps):
            xs.requires_grad_(True)
            z = model(xs)
            other = z.scatter(1, y[:, None], -1e9).amax(1)
            (g,) = torch.autograd.grad((other - z.gather(1, y[:, None])[:, 0]).sum(), xs)
            xs = torch.minimum(torch.maximum(xs.detach() + eps / 4 * g.sign(), lower), upper)
        robust &= model(xs).argmax(1) == y
    return robust


def test_certified_robustness_implies_empirical_robustness():
    import clearsight as cs
    from clearsight.objectives.certified import ibp

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(600, 8, generator=gen)
    y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()
    ds = cs.data.ArrayDataset(x, y, classes=["a", "b"])
    model = build("mlp", num_classes=2, input_shape=(8,), widths=[32, 32])
    cs.fit(model, lambda m, xb, yb, **b: ibp(m, xb, yb, eps=0.05, **b), ds, epochs=6, optimizer="adam", lr=3e-3,
           batch_size=64, val_fraction=0.0, progress="none", device="cpu")
    model.eval()
    for eps in (0.02, 0.05):
        certified = bounds.certified_robust(model, x, y, eps=eps)
        empirical = pgd_robust(model, x, y, eps)
        assert 0.2 < float(certified.float().mean()) <= float(empirical.float().mean())
        assert not bool((certified & ~empirical).any())  # every certified sample survives the attack
        try:
            from clearsight.attacks import pgd
        except ImportError:
            continue
        attacked = pgd(model, x, y, eps=eps, norm="linf", steps=20)
        assert not bool((certified & (model(attacked).argmax(1) != y)).any())


def test_topk_rule_on_hand_made_intervals():
    # feature 0 sensitive. Magnitude intervals: f0 in [0, 0.5] (straddles 0), f1 [1, 2], f2 [0.6, 0.8], f3 [0, 3]
    lower = torch.tensor([[-0.5, 1.0, -0.8, -3.0]])
    upper = torch.tensor([[0.2, 2.0, -0.6, 1.0]])
    assert bool(bounds.topk_rule(lower, upper, [0], 1))  # f1 always beats f0
    assert bool(bounds.topk_rule(lower, upper, [0], 2))  # f1 and f2 (>= 0.6 > 0.5) always beat f0
    assert not bool(bounds.topk_rule(lower, upper, [0], 3))  # f3 may be 0: f0 may be third
    assert not bool(bounds.topk_rule(lower, upper, [0, 2], 2))  # f2 is sensitive now: only f1 surely beats both
    tie = bounds.topk_rule(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]]), [0], 1)
    assert not bool(tie)  # ties count against the certificate
    with pytest.raises(ConfigError, match="topk must be in 1..3"):
        bounds.topk_rule(lower, upper, [0], 4)


def test_topk_certificate_is_sound_by_sampling_and_monotone_in_eps():
    torch.manual_seed(7)
    model = build("mlp", num_classes=2, input_shape=(12,), widths=[32]).eval()
    sensitive, k = [0, 1], 3
    with torch.no_grad():
        model.features.fc1.weight[:, sensitive] *= 0.1  # a model that mostly ignores the sensitive features
    x, target = torch.rand(64, 12), torch.randint(0, 2, (64,))
    previous = torch.ones(64, dtype=torch.bool)
    for eps in (0.0, 0.02, 0.05, 0.1, 0.3):
        certified = bounds.topk_certified(model, x, target, sensitive=sensitive, k=k, eps=eps)
        assert not bool((certified & ~previous).any())  # a larger box never certifies more
        previous = certified
        n = 200
        g = true_gradient(model, box_points(x, eps, n, torch.Generator().manual_seed(2)),
                          target.repeat_interleave(n))
        top = g.abs().topk(k, dim=1).indices.view(64, n, k)
        hit = (top[..., None] == torch.tensor(sensitive)).any(-1).any(-1).any(-1)
        assert not bool((certified & hit).any())
        if eps == 0.02:
            assert 0 < int(certified.sum()) < 64
    assert int(previous.sum()) < 64
