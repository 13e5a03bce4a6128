"""Oracles for clearsight.attributions: closed forms on a linear model, IG completeness, SmoothGrad with
sigma -> 0, literal slow re-implementations, batch-size invariance, a hand-computed Grad-CAM, finite differences
of create_graph results, and state restoration for every registered entry (also on error)."""

import functools
import math
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clearsight import attributions as A
from clearsight.attributions import ATTRIBUTIONS
from clearsight.errors import ConfigError, DataError
from clearsight.models import build

NAMES = ATTRIBUTIONS.names()


def linear_model(classes: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, classes)).eval()


def small_cnn() -> nn.Sequential:
    return build("small-cnn", num_classes=10, input_shape=(1, 12, 12), hidden=32).eval()


def smooth_cnn() -> nn.Sequential:
    """Softplus CNN in float64: smooth in inputs and parameters, so finite differences are exact enough."""
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus()),
        penultimate=nn.Sequential(nn.AvgPool2d(2), nn.Flatten()),
        logits=nn.Linear(4 * 3 * 3, 3)))
    return model.double().eval()


def small_options(name: str, **extra) -> dict:
    """Few copies/steps and a small chunk for multi-sample entries, read from the signature (no name cases)."""
    valid = A.attribution_options(name)
    opts = {"n": 4, "steps": 4, "max_batch": 3, "generator": torch.Generator().manual_seed(5)}
    return {k: v for k, v in {**opts, **extra}.items() if k in valid}


def images(b: int = 3, size: int = 12, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(b, 1, size, size, dtype=dtype)


# ---------------------------------------------------------------- closed forms on f(x) = W x + b

def test_linear_model_closed_forms():
    model = linear_model()
    x, t = torch.rand(4, 3, 4), torch.tensor([0, 4, 2, 2])
    w_t = model[1].weight.detach()[t].view_as(x)
    torch.testing.assert_close(A.gradient(model, x, t), w_t, rtol=0, atol=0)
    torch.testing.assert_close(A.input_x_gradient(model, x, t), x * w_t)
    f = lambda z: model(z).detach().gather(1, t[:, None])[:, 0]  # noqa: E731
    for method, steps in [("riemann_midpoint", 1), ("riemann_midpoint", 7), ("trapezoid", 2), ("trapezoid", 9)]:
        ig = A.integrated_gradients(model, x, t, steps=steps, method=method, max_batch=5)
        torch.testing.assert_close(ig, x * w_t)
        torch.testing.assert_close(ig.sum((1, 2)), f(x) - f(torch.zeros_like(x)))  # completeness, exact
    b = torch.rand(1, 3, 4)
    torch.testing.assert_close(A.integrated_gradients(model, x, t, baseline=b, steps=3), (x - b) * w_t)
    torch.testing.assert_close(A.integrated_gradients(model, x, t, baseline=0.5, steps=3), (x - 0.5) * w_t)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(A.smoothgrad(model, x, t, n=9, max_batch=5, generator=g), w_t)
    torch.testing.assert_close(A.smoothgrad(model, x, t, n=9, clip=True), w_t)
    torch.testing.assert_close(A.vargrad(model, x, t, n=9, max_batch=5), torch.zeros_like(x), rtol=0, atol=1e-12)


def test_path_points_quadrature():
    alphas, weights = A.path_points(4, "riemann_midpoint")
    torch.testing.assert_close(alphas, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(weights, torch.full((4,), 0.25))
    alphas, weights = A.path_points(5, "trapezoid", dtype=torch.float64)
    torch.testing.assert_close(alphas, torch.linspace(0, 1, 5, dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([1, 2, 2, 2, 1], dtype=torch.float64) / 8)


# ---------------------------------------------------------------- axioms and literal re-implementations

def test_integrated_gradients_completeness_on_a_cnn_shrinks_with_steps():
    model = small_cnn()
    x = images(4)
    t = A.predicted(model, x)
    b = torch.rand_like(x) * 0.2
    with torch.no_grad():
        gap = (model(x) - model(b)).gather(1, t[:, None])[:, 0].double()
    errors = []
    for steps in (2, 8, 64):
        ig = A.integrated_gradients(model, x, t, baseline=b, steps=steps)
        errors.append(float((ig.double().sum((1, 2, 3)) - gap).abs().max()))
    assert errors[2] < errors[0] / 4, errors
    assert errors[2] < 0.03 * float(gap.abs().max()), (errors, gap)


def test_smoothgrad_with_sigma_to_zero_is_the_gradient():
    model = small_cnn()
    x = images(3)
    t = A.predicted(model, x)
    grad = A.gradient(model, x, t)
    torch.testing.assert_close(A.smoothgrad(model, x, t, n=5, sigma=0.0, max_batch=4), grad)
    torch.testing.assert_close(A.smoothgrad(model, x, t, n=5, sigma=1e-6), grad, rtol=1e-3, atol=1e-6)
    far = A.smoothgrad(model, x, t, n=5, sigma=0.3)
    assert not torch.allclose(far, grad, rtol=1e-3, atol=1e-6)  # noise does change a nonlinear model's map


def literal_noise(b: int, n: int, shape, seed: int) -> torch.Tensor:
    """The documented stream: row i*n + k of successive randn((NOISE_BLOCK, *shape)) draws."""
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.randn((A.NOISE_BLOCK, *shape), generator=g) for _ in range(math.ceil(b * n / A.NOISE_BLOCK))]
    return torch.cat(blocks)[: b * n].view(b, n, *shape)


def literal_gradient(model, x_one, t_one) -> torch.Tensor:
    x_one = x_one.clone().requires_grad_()
    return torch.autograd.grad(model(x_one[None])[0, t_one], x_one)[0]


def test_smoothgrad_and_vargrad_equal_a_literal_loop_over_samples_and_draws():
    model = small_cnn()
    x = images(3)
    t = A.predicted(model, x)
    n, sigma, seed = 7, 0.2, 11
    noise = literal_noise(3, n, x.shape[1:], seed)
    grads = torch.stack([torch.stack([literal_gradient(model, x[i] + sigma * noise[i, k], t[i]) for k in range(n)])
                         for i in range(3)])
    for max_batch in (5, 256):  # 5: samples straddle chunks
        sg = A.smoothgrad(model, x, t, n=n, sigma=sigma, max_batch=max_batch,
                          generator=torch.Generator().manual_seed(seed))
        vg = A.vargrad(model, x, t, n=n, sigma=sigma, max_batch=max_batch,
                       generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(sg, grads.mean(1))
        torch.testing.assert_close(vg, grads.var(1, unbiased=False), rtol=1e-4, atol=1e-9)


def test_integrated_gradients_equals_the_literal_riemann_sums():
    model = small_cnn()
    x, b = images(2), torch.rand(2, 1, 12, 12) * 0.3
    t = torch.tensor([3, 7])
    m = 5
    for method, alphas, weights in [
            ("riemann_midpoint", [(k + 0.5) / m for k in range(m)], [1 / m] * m),
            ("trapezoid", [k / (m - 1) for k in range(m)], [0.5 / (m - 1), *[1 / (m - 1)] * (m - 2), 0.5 / (m - 1)])]:
        literal = torch.stack([(x[i] - b[i]) * sum(w * literal_gradient(model, b[i] + a * (x[i] - b[i]), t[i])
                                                   for a, w in zip(alphas, weights, strict=True)) for i in range(2)])
        ours = A.integrated_gradients(model, x, t, baseline=b, steps=m, method=method, max_batch=3)
        torch.testing.assert_close(ours, literal)


def test_grad_cam_by_hand():
    """features = 2x2 conv (stride 2 or 1), head = Linear on the flat map: d f_t / d A = V_t exactly."""
    torch.manual_seed(3)
    for stride in (1, 2):
        conv = nn.Conv2d(1, 2, 2, stride=stride)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [0.5, 2.0]]], [[[-2.0, 1.0], [1.0, -0.5]]]]))
            conv.bias.copy_(torch.tensor([0.1, -0.2]))
        h = 6 if stride == 1 else 3
        head = nn.Linear(2 * h * h, 3)
        pad = (0, 1, 0, 1) if stride == 1 else (0, 0, 0, 0)  # stride 1: the map keeps the input's 6x6
        features = nn.Sequential(nn.ZeroPad2d(pad), conv)
        model = nn.Sequential(OrderedDict(features=features, flatten=nn.Flatten(), logits=head)).eval()
        x, t = torch.rand(2, 1, 6, 6), torch.tensor([2, 0])
        padded = F.pad(x, pad)
        patches = padded.unfold(2, 2, stride).unfold(3, 2, stride)  # [B, 1, h, h, 2, 2]
        acts = torch.einsum("bcijuv,kcuv->bkij", patches, conv.weight.detach()) + conv.bias.detach()[:, None, None]
        alpha = head.weight.detach()[t].view(2, 2, h, h).mean((2, 3))  # mean gradient per channel
        cam = torch.relu((alpha[:, :, None, None] * acts).sum(1, keepdim=True))
        if stride == 2:
            cam = F.interpolate(cam, size=(6, 6), mode="bilinear", align_corners=False)
        ours = A.grad_cam(model, x, t, layer="features")
        assert ours.shape == (2, 1, 6, 6)
        torch.testing.assert_close(ours, cam)
        assert (ours >= 0).all()
        assert not model.features._forward_hooks
        assert torch.equal(A.grad_cam(model, x, t, layer=model.features), ours)



def test_grad_cam_survives_in_place_ops_after_the_layer_and_a_frozen_trunk():
    """VGG-style ReLU(inplace=True) after the hooked layer must not overwrite A (nor fail on a leaf), and
    create_graph=True must work when nothing before the layer requires grad."""
    torch.manual_seed(5)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    head = nn.Linear(3 * 6 * 6, 4)
    plain = nn.Sequential(OrderedDict(features=conv, act=nn.ReLU(), flatten=nn.Flatten(), logits=head)).eval()
    inplace = nn.Sequential(OrderedDict(features=conv, act=nn.ReLU(inplace=True), flatten=nn.Flatten(),
                                        logits=head)).eval()
    x, t = torch.rand(2, 1, 6, 6), torch.tensor([1, 3])
    expected = A.grad_cam(plain, x, t)
    torch.testing.assert_close(A.grad_cam(inplace, x, t), expected)
    torch.testing.assert_close(A.grad_cam(inplace, x, t, create_graph=True).detach(), expected)
    conv.requires_grad_(False)  # frozen trunk, x without grad: A has no graph of its own
    cam = A.grad_cam(plain, x, t, create_graph=True)
    torch.testing.assert_close(cam.detach(), expected)
    (g,) = torch.autograd.grad(cam.sum(), head.weight)  # the head is still reached through alpha
    assert float(g.abs().sum()) > 0

def test_grad_cam_layer_errors():
    with pytest.raises(ConfigError, match="no layer 'conv9'.*features.conv1"):
        A.grad_cam(small_cnn(), images(1), torch.tensor([0]), layer="conv9")
    mlp = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[5]).eval()
    with pytest.raises(ConfigError, match=r"output \[B, K, h, w\].*\(2, 5\)"):
        A.grad_cam(mlp, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    assert all(not m._forward_hooks for m in mlp.modules())
    with pytest.raises(DataError, match="images"):
        A.grad_cam(build("mlp", num_classes=3, input_shape=(6,), widths=[5]), torch.rand(2, 6), torch.tensor([0, 1]))


# ---------------------------------------------------------------- invariances

@pytest.mark.parametrize("name", NAMES)
def test_batch_size_invariance(name):
    fn = ATTRIBUTIONS.get(name)
    model = small_cnn()
    x = images(5)
    t = A.predicted(model, x)
    opts = small_options(name)
    full = fn(model, x, t, **{**opts, "generator": torch.Generator().manual_seed(1)} if "generator" in opts else opts)
    for max_batch in (1, 7, 1000):
        if "max_batch" in opts:
            again = fn(model, x, t, **{**small_options(name, max_batch=max_batch),
                                       **({"generator": torch.Generator().manual_seed(1)} if "generator" in opts
                                          else {})})
            torch.testing.assert_close(again, full, rtol=1e-5, atol=1e-7)
    if "generator" in opts:  # a sample's noise depends on its position only: the first two alone agree
        part = fn(model, x[:2], t[:2], **{**opts, "generator": torch.Generator().manual_seed(1)})
        torch.testing.assert_close(part, full[:2], rtol=1e-5, atol=1e-7)
    else:  # deterministic: any composition and order of the batch
        perm = torch.tensor([3, 0, 4])
        torch.testing.assert_close(fn(model, x[perm], t[perm], **opts), full[perm], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["smoothgrad", "vargrad"])
def test_seeded_generator_reproducibility(name):
    fn, model = ATTRIBUTIONS.get(name), small_cnn()
    x = images(2)
    t = A.predicted(model, x)
    run = lambda seed: fn(model, x, t, n=4, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    torch.manual_seed(9)
    first = fn(model, x, t, n=4)
    torch.manual_seed(9)
    assert torch.equal(fn(model, x, t, n=4), first)  # generator=None draws from the global RNG


# ---------------------------------------------------------------- create_graph: training through attributions

@pytest.mark.parametrize("name", NAMES)
def test_create_graph_reaches_every_weight_of_a_relu_cnn(name):
    model = small_cnn()
    x = images(2)
    t = A.predicted(model, x)
    attr = ATTRIBUTIONS.get(name)(model, x, t, create_graph=True, **small_options(name))
    assert attr.requires_grad
    weights = [p for p in model.parameters() if p.dim() > 1]
    grads = torch.autograd.grad(attr.pow(2).sum(), weights, allow_unused=True)
    for p, g in zip(weights, grads, strict=True):
        assert g is not None and g.abs().sum() > 0, tuple(p.shape)
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into .grad


@pytest.mark.parametrize("wrt", ["params", "x"])
@pytest.mark.parametrize("name", NAMES)
def test_create_graph_derivative_matches_finite_differences(name, wrt):
    """d/dθ L(attr(θ)) from autograd equals the central difference along a random direction (float64)."""
    torch.manual_seed(4)
    model = smooth_cnn()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64) * 0.8 + 0.1
    t = torch.tensor([1, 2])
    fn = functools.partial(ATTRIBUTIONS.get(name), **small_options(name, generator=None))

    def attribution(xx: torch.Tensor, **kw) -> torch.Tensor:
        gen = {"generator": torch.Generator().manual_seed(2)} if "generator" in A.attribution_options(name) else {}
        return fn(model, xx, t, **gen, **kw)

    first = attribution(x)
    weights = torch.randn_like(first) / first.abs().mean()  # O(1) loss whatever the scale of the method

    def loss(xx: torch.Tensor, **kw) -> torch.Tensor:
        a = attribution(xx, **kw)
        return (a * weights).sum() + (a * weights).pow(2).sum()

    params = list(model.parameters())
    if wrt == "params":
        directions = [torch.randn_like(p) for p in params]
        grads = torch.autograd.grad(loss(x, create_graph=True), params, allow_unused=True, materialize_grads=True)
        analytic = sum((g * d).sum() for g, d in zip(grads, directions, strict=True))
        eps = 1e-6
        with torch.no_grad():
            values = []
            for sign in (1, -1):
                for p, d in zip(params, directions, strict=True):
                    p.add_(sign * eps * d)
                values.append(loss(x))
                for p, d in zip(params, directions, strict=True):
                    p.sub_(sign * eps * d)
    else:
        direction, eps = torch.randn_like(x), 1e-7
        xg = x.clone().requires_grad_()
        analytic = (torch.autograd.grad(loss(xg, create_graph=True), xg)[0] * direction).sum()
        values = [loss(x + eps * direction), loss(x - eps * direction)]
    numeric = (values[0] - values[1]) / (2 * eps)
    assert abs(float(analytic)) > 1e-3
    torch.testing.assert_close(analytic.detach(), numeric.detach(), rtol=1e-4, atol=1e-8)


# ---------------------------------------------------------------- state restoration, also on error

class Bomb(nn.Module):
    """Identity that raises on its k-th forward call, or in the backward pass of its k-th call."""

    def __init__(self, k: int, where: str) -> None:
        super().__init__()
        self.k, self.where, self.calls = k, where, 0

    def forward(self, z):
        self.calls += 1
        if self.calls == self.k and self.where == "forward":
            raise RuntimeError("boom in forward")
        if self.calls == self.k and self.where == "backward":
            return _RaiseInBackward.apply(z)
        return z


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom in backward")


def state_model(bomb: Bomb | None = None) -> nn.Sequential:
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Dropout(0.1)),
        bomb=bomb or nn.Identity(), flatten=nn.Flatten(), drop=nn.Dropout(0.2), logits=nn.Linear(3 * 36, 4)))
    model.train()
    model.drop.eval()  # mixed flags: each must come back as it was, not as model.training
    model.logits.bias.requires_grad_(False)
    model.features.register_forward_hook(lambda m, i, o: None)
    model.logits.register_forward_pre_hook(lambda m, i: None)
    return model


def state_of(model: nn.Module) -> tuple:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()],
            [{name: list(getattr(m, name)) for name in dir(m) if name.endswith("hooks") and name.startswith("_")
              and isinstance(getattr(m, name), dict)} for m in model.modules()])


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_state_is_restored_and_x_untouched(name, create_graph):
    fn = ATTRIBUTIONS.get(name)
    for bomb in [None, Bomb(1, "forward"), Bomb(2, "forward"), Bomb(1, "backward"), Bomb(2, "backward")]:
        model = state_model(bomb)
        before = state_of(model)
        x = torch.rand(3, 1, 6, 6, requires_grad=create_graph)
        x_copy = x.detach().clone()
        t = torch.tensor([0, 3, 1])
        raises = bomb is not None and (bomb.k == 1 or ATTRIBUTIONS.meta(name)["multi_sample"])
        if raises:
            with pytest.raises(RuntimeError, match="boom"):
                fn(model, x, t, create_graph=create_graph, **small_options(name))
        else:
            fn(model, x, t, create_graph=create_graph, **small_options(name))
        assert state_of(model) == before, bomb and (bomb.k, bomb.where)
        assert torch.equal(x.detach(), x_copy) and x.grad is None and x.requires_grad == create_graph


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_declares_metadata_and_output_shape(name):
    meta = ATTRIBUTIONS.meta(name)
    assert re.fullmatch(r"arXiv \d{4}\.\d{4,5}", meta["paper"])
    assert isinstance(meta["multi_sample"], bool) and isinstance(meta["images_only"], bool)
    assert meta["description"]
    assert ("max_batch" in A.attribution_options(name)) == meta["multi_sample"]
    model, x = small_cnn(), images(2)
    out = ATTRIBUTIONS.get(name)(model, x, torch.tensor([1, 2]), **small_options(name))
    expected = {"input": x.shape, "map": (2, 1, 12, 12)}[meta["output"]]
    assert out.shape == expected and out.dtype == x.dtype and not out.requires_grad


# ---------------------------------------------------------------- inputs, targets, options

@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_refused_where_they_enter(name):
    fn, model, x = ATTRIBUTIONS.get(name), small_cnn(), images(2)
    cases = [
        (x, torch.tensor([0, 1], dtype=torch.int32), "int64"),
        (x, torch.tensor([0, 10]), r"labels in \[0, 10\] but there are 10 classes"),
        (x, torch.tensor([0, 1, 2]), "3 labels for a batch of 2"),
        (x * 3, torch.tensor([0, 1]), r"\[0, 1\]"),
        (x.masked_fill(x > 0.5, float("nan")), torch.tensor([0, 1]), "NaN"),
    ]
    for xx, t, message in cases:
        with pytest.raises(DataError, match=message):
            fn(model, xx, t, **small_options(name))


def test_bad_options_are_config_errors():
    model, x, t = small_cnn(), images(2), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="n must be an integer >= 1"):
        A.smoothgrad(model, x, t, n=0)
    with pytest.raises(ConfigError, match="n must be an integer >= 2"):
        A.vargrad(model, x, t, n=1)
    with pytest.raises(ConfigError, match="sigma"):
        A.smoothgrad(model, x, t, sigma=-0.1)
    with pytest.raises(ConfigError, match="max_batch"):
        A.integrated_gradients(model, x, t, max_batch=0)
    with pytest.raises(ConfigError, match="valid methods: riemann_midpoint, trapezoid"):
        A.integrated_gradients(model, x, t, method="simpson")
    with pytest.raises(ConfigError, match="steps must be an integer >= 2"):
        A.integrated_gradients(model, x, t, method="trapezoid", steps=1)
    with pytest.raises(DataError, match="baseline of shape"):
        A.integrated_gradients(model, x, t, baseline=torch.zeros(3, 1, 12, 12))
    with pytest.raises(ConfigError, match="valid options: .*steps"):
        A.build("integrated_gradients", n_steps=5)


def test_build_binds_options():
    ig = A.build("integrated_gradients", steps=3)
    assert isinstance(ig, functools.partial) and ig.keywords == {"steps": 3}
    model, x = small_cnn(), images(2)
    t = A.predicted(model, x)
    torch.testing.assert_close(ig(model, x, t), A.integrated_gradients(model, x, t, steps=3))
    # a partial works as the base of smoothgrad (SmoothGrad of IG)
    sg = A.smoothgrad(model, x, t, n=2, sigma=0.0, base=ig)
    torch.testing.assert_close(sg, ig(model, x, t))
    assert A.smoothgrad(model, x, t, n=2, base=A.grad_cam).shape == (2, 1, 12, 12)  # any base, any output shape


def test_predicted_targets_and_inference_mode_inputs():
    model, x = small_cnn(), images(5)
    t = A.predicted(model, x)
    assert t.dtype == torch.int64 and torch.equal(t, model(x).argmax(1))
    assert torch.equal(A.predicted(model, x, max_batch=2), t)
    expected = A.gradient(model, x, t)
    with torch.inference_mode():  # an evaluation loop may hand over inference tensors
        xi, ti = x.clone(), A.predicted(model, x)
        inside = A.gradient(model, xi, ti)
    torch.testing.assert_close(inside, expected)
    with torch.no_grad():
        torch.testing.assert_close(A.integrated_gradients(model, x, t, steps=3),
                                   A.integrated_gradients(model, x, t, steps=3))
        torch.testing.assert_close(A.gradient(model, x, t), expected)


def test_empty_batch():
    model = small_cnn()
    x, t = images(0), torch.zeros(0, dtype=torch.int64)
    for name in NAMES:
        out = ATTRIBUTIONS.get(name)(model, x, t, **small_options(name))
        assert out.shape[0] == 0
