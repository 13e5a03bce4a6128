"""The certified-explanation and ibp objectives: literal losses, schedules, gradients to the parameters, and the
real-data effect (a certified-explanation model certifies far more test points than a standard one at the same
eps, with test accuracy within 3 points)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

import clearsight as cs
from clearsight import bounds
from clearsight.errors import ConfigError
from clearsight.metrics import certified_suite
from clearsight.models import build
from clearsight.objectives import OBJECTIVES
from clearsight.objectives.certified import certified_explanation, ibp
from clearsight.objectives.schedule import schedule_factor
from test_bounds import searched_points, true_gradient  # the same explanation searches as the bound tests


def _models_and_inputs():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return [(build("mlp", num_classes=3, input_shape=(7,), widths=[16, 16]), torch.rand(6, 7), y),
            (build("small-cnn", num_classes=3, input_shape=(1, 8, 8), pool="avg", hidden=16),
             torch.rand(6, 1, 8, 8), y)]


@pytest.mark.parametrize("objective", [
    functools.partial(certified_explanation, alpha=1.0, eps=0.05, gamma=0.02),
    functools.partial(certified_explanation, alpha=1.0, eps=0.05, of="ce"),
    functools.partial(ibp, eps=0.05, gamma=0.01),
    functools.partial(ibp, eps=0.05, elide=False)], ids=["cert-logit", "cert-ce", "ibp", "ibp-no-elision"])
def test_loss_gradient_reaches_every_parameter(objective):
    for model, x, y in _models_and_inputs():
        out = objective(model, x, y, progress=0.9)
        out.loss.backward()
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
        assert all(isinstance(v, float) for v in out.logs.values()) and set(out.logs) >= {"ce", "eps"}
        assert out.logits.shape == (6, 3) and not out.logits.requires_grad


def test_certified_explanation_is_ce_plus_alpha_times_mean_width():
    torch.manual_seed(0)
    model = build("mlp", num_classes=3, input_shape=(7,), widths=[16]).eval()
    x, y = torch.rand(5, 7), torch.tensor([0, 1, 2, 2, 1])
    out = certified_explanation(model, x, y, alpha=0.3, eps=0.04, gamma=0.01)  # no progress: final radii
    lower, upper = bounds.gradient_bounds(model, x, y, eps=0.04, gamma=0.01)
    ce = F.cross_entropy(model(x), y)
    torch.testing.assert_close(out.loss, ce + 0.3 * (upper - lower).mean())
    assert out.logs["width"] == pytest.approx(float((upper - lower).mean().detach()))
    assert out.logs["ce"] == pytest.approx(float(ce.detach()))
    assert out.logs["eps"] == 0.04 and out.logs["gamma"] == 0.01


def test_zero_radius_gives_plain_cross_entropy():
    torch.manual_seed(1)
    model = build("mlp", num_classes=3, input_shape=(7,), widths=[16]).eval()
    x, y = torch.rand(5, 7), torch.tensor([0, 1, 2, 2, 1])
    ce = F.cross_entropy(model(x), y)
    for out in (certified_explanation(model, x, y, alpha=1.0, eps=0.0, gamma=0.0),
                certified_explanation(model, x, y, alpha=1.0, eps=0.1, gamma=0.05, progress=0.0)):
        assert out.logs["width"] == 0.0
        torch.testing.assert_close(out.loss, ce)
    for kappa_end in (0.0, 0.5):
        for out in (ibp(model, x, y, eps=0.0, kappa_end=kappa_end), ibp(model, x, y, eps=0.1, progress=0.0),
                    ibp(model, x, y, eps=0.0, kappa_end=kappa_end, elide=False)):
            torch.testing.assert_close(out.loss, ce)


def test_ibp_worst_case_logits_literal_and_elision_is_tighter():
    torch.manual_seed(2)
    model = build("mlp", num_classes=4, input_shape=(7,), widths=[16, 16]).eval()
    x, y = torch.rand(8, 7), torch.randint(0, 4, (8,))
    lower, upper = bounds.input_box(x, 0.05)
    z_lo, z_hi = bounds.interval_forward(model, lower, upper)
    worst = torch.where(F.one_hot(y, 4).bool(), z_lo, z_hi)
    plain = ibp(model, x, y, eps=0.05, kappa_end=0.0, elide=False)
    torch.testing.assert_close(plain.loss, F.cross_entropy(worst, y))
    elided = ibp(model, x, y, eps=0.05, kappa_end=0.0)
    assert elided.logs["ce_robust"] < plain.logs["ce_robust"]
    half = ibp(model, x, y, eps=0.05, kappa_end=0.25)
    torch.testing.assert_close(half.loss, 0.25 * F.cross_entropy(model(x), y) + 0.75 * elided.loss)
    # elided worst case, literally: logit j = -(lower bound of z_y - z_j) = upper bound of z_j - z_y, y at 0;
    # with a parameter box too, and checked against sampled networks of that box
    boxed = ibp(model, x, y, eps=0.05, gamma=0.02, kappa_end=0.0)
    worst = -bounds.margin_bounds(model, lower, upper, y, gamma=0.02)
    torch.testing.assert_close(boxed.loss, F.cross_entropy(worst, y))
    for _ in range(50):
        noisy = copy.deepcopy(model)
        with torch.no_grad():
            for layer in noisy.modules():
                if isinstance(layer, torch.nn.Linear):
                    for p in (layer.weight, layer.bias):
                        p.add_(0.02 * p.abs() * (2 * torch.rand_like(p) - 1))
            z = noisy(lower + (upper - lower) * torch.rand_like(x))
        assert bool((z - z.gather(1, y[:, None]) <= worst + 1e-5).all())


def test_schedules_follow_progress():
    torch.manual_seed(3)
    model = build("mlp", num_classes=3, input_shape=(7,), widths=[8])
    x, y = torch.rand(4, 7), torch.tensor([0, 1, 2, 0])
    expected = {0.0: 0.0, 0.1: 0.0, 0.2: 0.0, 0.35: 0.5, 0.5: 1.0, 0.9: 1.0}  # warmup 0.2, full at 0.5
    for progress, factor in expected.items():
        out = certified_explanation(model, x, y, eps=0.1, gamma=0.04, ramp=0.5, warmup=0.2, progress=progress)
        assert out.logs["eps"] == pytest.approx(0.1 * factor) and out.logs["gamma"] == pytest.approx(0.04 * factor)
        out = ibp(model, x, y, eps=0.2, kappa_end=0.5, ramp=0.5, warmup=0.2, progress=progress)
        assert out.logs["eps"] == pytest.approx(0.2 * factor)
        assert out.logs["kappa"] == pytest.approx(1.0 - 0.5 * factor)
    assert schedule_factor(0.3, warmup=0.0, end=0.0) == 1.0 and schedule_factor(None, warmup=0.5, end=1.0) == 1.0
    # inside fit, the ramp reaches the objective through `progress`
    ds = cs.data.ArrayDataset(torch.rand(40, 7), torch.randint(0, 3, (40,)), classes=["a", "b", "c"])
    history = cs.fit(model, cs.objectives.build("certified-explanation", eps=0.1, ramp=1.0), ds, epochs=4,
                     batch_size=10, val_fraction=0.0, progress="none", device="cpu")
    # 4 steps per epoch, progress = step / 16, eps_t = 0.1 * progress; the log holds the epoch mean
    assert [row["eps"] for row in history] == pytest.approx([0.1 * (4 * e + 1.5) / 16 for e in range(4)])


def test_bad_options_are_refused():
    model = build("mlp", num_classes=3, input_shape=(7,), widths=[8])
    x, y = torch.rand(4, 7), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ConfigError, match="alpha must be a finite number >= 0"):
        certified_explanation(model, x, y, alpha=-1.0)
    with pytest.raises(ConfigError, match="warmup <= ramp"):
        certified_explanation(model, x, y, warmup=0.6, ramp=0.5)
    with pytest.raises(ConfigError, match="of must be one of"):
        certified_explanation(model, x, y, of="loss")
    with pytest.raises(ConfigError, match="kappa_end"):
        ibp(model, x, y, kappa_end=1.5)
    with pytest.raises(ConfigError, match="MaxPool2d"):
        ibp(build("small-cnn", num_classes=3, input_shape=(1, 8, 8), hidden=8), torch.rand(4, 1, 8, 8), y)


def test_metadata_is_truthful():
    for name in ("certified-explanation", "ibp"):
        meta = OBJECTIVES.meta(name)
        assert meta["needs_double_backprop"] is False  # a differentiable bound, not a gradient of a gradient
        assert meta["description"] and meta["paper"].startswith("arXiv")
    assert cs.objectives.objective_options("certified-explanation") == {
        "alpha": 0.5, "eps": 0.1, "gamma": 0.0, "of": "logit", "ramp": 0.5, "warmup": 0.0}


# ---- real data: the effect the method promises ---------------------------------------------------------------


def _train_pair(train, *, epochs, lr, alpha, eps, widths=(256, 256), num_classes=2, batch_size=64):
    """A standard and a certified-explanation model of the same architecture, init and data order (Adam)."""
    models = {}
    for name, objective in (("standard", cs.objectives.build("standard")),
                            ("certified", cs.objectives.build("certified-explanation", alpha=alpha, eps=eps))):
        torch.manual_seed(0)
        model = build("mlp", num_classes=num_classes, input_shape=train.input_shape, widths=widths)
        cs.fit(model, objective, train, epochs=epochs, optimizer="adam", lr=lr, weight_decay=0.0,
               schedule="constant", batch_size=batch_size, val_fraction=0.0, progress="none", device="cpu")
        models[name] = model.eval()
    return models


def _accuracy(model, ds) -> float:
    return float((cs.predict(model, ds.x, device="cpu").argmax(1) == ds.y).float().mean())


def _topk_effect(name, *, epochs, n_train, eps, k, sensitive):
    train = cs.data.load(name, "train")
    test = cs.data.load(name, "test")
    if n_train:
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_train])
    models = _train_pair(train, epochs=epochs, lr=5e-4, alpha=0.5, eps=0.1)
    result = {}
    for which, model in models.items():
        rows = cs.evaluate_rows(model, test, suite=certified_suite(eps=[eps], topk=k, sensitive=sensitive),
                                device="cpu", progress="none")
        result[which] = ({r["metric"]: r["value"] for r in rows}["certified_topk"], _accuracy(model, test))
    (std_cert, std_acc), (cert_cert, cert_acc) = result["standard"], result["certified"]
    print(f"{name}: certified top-{k} fraction at eps {eps}: standard {std_cert:.3f}, certified-explanation "
          f"{cert_cert:.3f}; accuracy {std_acc:.3f} vs {cert_acc:.3f}")
    assert cert_cert >= std_cert + 0.5, result
    assert cert_acc >= std_acc - 0.03, result


def test_german_credit_topk_certificate_effect():
    """Authors' settings (2x256 MLP, Adam lr 5e-4, 25 epochs); sensitive: sex and age."""
    _topk_effect("german-credit", epochs=25, n_train=0, eps=0.02, k=5, sensitive="sex,age")


def test_adult_topk_certificate_effect_short():
    """A shorter run (6,000 training rows, 6 epochs) of the slow test below; sensitive: sex and race."""
    _topk_effect("adult", epochs=6, n_train=6000, eps=0.02, k=3, sensitive="sex,race")


@pytest.mark.slow
def test_adult_topk_certificate_effect_authors_settings():
    _topk_effect("adult", epochs=25, n_train=0, eps=0.02, k=3, sensitive="sex,race")


def _delta_effect(epochs):
    train, test = cs.data.load("mnist-mini", "train"), cs.data.load("mnist-mini", "test")
    models = _train_pair(train, epochs=epochs, lr=1e-3, alpha=0.5, eps=0.1, num_classes=10)
    eps, delta = 0.005, 0.5  # eps about 1.3/255; the explanation provably moves by at most half its own norm
    result = {}
    for which, model in models.items():
        rows = cs.evaluate_rows(model, test, suite=certified_suite(eps=[eps], delta=delta), device="cpu",
                                progress="none")  # relative delta-certificate
        by = {r["metric"]: r["value"] for r in rows}
        result[which] = (by["certified_delta"], by["delta_bound"], _accuracy(model, test))
        # the empirical check beside the certificate: a gradient search never beats the bound
        x, y = test.x[:64], test.y[:64]
        bound = bounds.delta_bound(model, x, y, eps=eps)
        for points in searched_points(model, x, y, eps):
            change = (true_gradient(model, points, y) - true_gradient(model, x, y)).flatten(1).norm(dim=1)
            assert bool((change <= bound + 1e-4).all())
    (std_cert, std_bound, std_acc), (cert_cert, cert_bound, cert_acc) = result["standard"], result["certified"]
    print(f"mnist-mini: relative delta-certificate (delta {delta}) at eps {eps}: standard {std_cert:.3f} "
          f"(mean bound {std_bound:.2f}), certified-explanation {cert_cert:.3f} (mean bound {cert_bound:.2f}); "
          f"accuracy {std_acc:.3f} vs {cert_acc:.3f}")
    assert cert_cert >= std_cert + 0.5, result
    assert cert_acc >= std_acc - 0.03, result


def test_mnist_mini_delta_certificate_effect_short():
    """A shorter run (6 epochs) of the slow test below."""
    _delta_effect(epochs=6)


@pytest.mark.slow
def test_mnist_mini_delta_certificate_effect_authors_settings():
    """Authors' MNIST settings (Adam lr 1e-3, 30 epochs) with the mlp (2x256)."""
    _delta_effect(epochs=30)
