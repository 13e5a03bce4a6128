"""The baseline objectives pgd-at, trades, input-gradient and jacobian: closed forms on linear models, slow literal
re-implementations, the attack inside the step (ball, eval mode, no graph), the eps ramp and the data-dependent
budgets. (Every objective's contract, its `standard_at` points included, is in test_contracts.py; the real-data
effects are in test_baseline_effects.py.)"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clearsight as cs
from clearsight import io, objectives
from clearsight.attacks import pgd
from clearsight.attacks.losses import kl
from clearsight.config import build_config, migrate_train, resolve
from clearsight.errors import ConfigError, DataError
from clearsight.models import build
from clearsight.objectives.adversarial import adversarial_examples


def linear_model(features: int = 6, classes: int = 4) -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def param_grads(loss: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


def assert_grads_close(a: list[torch.Tensor], b: list[torch.Tensor], **tol: float) -> None:
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga, gb, **tol)


# ---------------------------------------------------------------- input-gradient

def test_input_gradient_on_a_linear_model_is_its_closed_form():
    model = linear_model()
    x, y = torch.rand(5, 6), torch.tensor([0, 3, 1, 2, 2])
    W = model[1].weight
    onehot = F.one_hot(y, 4).float()
    # d CE_i / d x_i = W^T (p_i - e_y); d sum_k log p_k / d x_i = W^T (1 - C p_i)
    for gradient_of, closed_grad in (("ce", lambda p: (p - onehot) @ W), ("log_probs", lambda p: (1 - 4 * p) @ W)):
        out = objectives.build("input-gradient", lam=0.7, gradient_of=gradient_of)(model, x, y)
        ce, grad = F.cross_entropy(model(x), y), closed_grad(model(x).softmax(1))
        closed = ce + 0.7 * grad.pow(2).sum(1).mean()
        torch.testing.assert_close(out.loss, closed)
        assert_grads_close(param_grads(out.loss, model), param_grads(closed, model))
        assert out.logs["grad_penalty"] == pytest.approx(float(grad.pow(2).sum(1).mean().detach()), rel=1e-5)


def test_input_gradient_equals_a_slow_per_sample_literal_implementation():
    torch.manual_seed(3)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[10, 10]).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    out = objectives.build("input-gradient", lam=2.5)(model, x, y)
    ces, penalties = [], []
    for i in range(6):  # one sample at a time, one autograd.grad each
        xi = x[i : i + 1].clone().requires_grad_(True)
        ce_i = F.cross_entropy(model(xi), y[i : i + 1])
        (g,) = torch.autograd.grad(ce_i, xi, create_graph=True)
        ces.append(ce_i)
        penalties.append((g**2).sum())
    literal = torch.stack(ces).mean() + 2.5 * torch.stack(penalties).mean()
    torch.testing.assert_close(out.loss, literal)
    assert_grads_close(param_grads(out.loss, model), param_grads(literal, model))


def test_input_gradient_mask_form():
    torch.manual_seed(4)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[10]).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    masked = objectives.build("input-gradient", lam=3.0, explanation_mask="mask", gradient_of="ce")
    plain = objectives.build("input-gradient", lam=3.0)(model, x, y)
    # with a mask the default is Ross et al.'s term, the gradient of the summed log-probabilities
    rrr = objectives.build("input-gradient", lam=3.0, explanation_mask="mask")(model, x, y, mask=torch.ones_like(x))
    assert torch.equal(rrr.loss, objectives.build("input-gradient", lam=3.0, gradient_of="log_probs")(model, x, y).loss)
    ones = masked(model, x, y, mask=torch.ones_like(x))
    assert torch.equal(ones.loss, plain.loss)  # an all-ones mask is the plain form
    assert all(torch.equal(a, b) for a, b in zip(param_grads(ones.loss, model), param_grads(plain.loss, model),
                                                 strict=True))
    zeros = masked(model, x, y, mask=torch.zeros_like(x))
    standard = objectives.build("standard")(model, x, y)
    assert torch.equal(zeros.loss, standard.loss) and zeros.logs["grad_penalty"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(param_grads(zeros.loss, model), param_grads(standard.loss, model),
                                                 strict=True))
    # a mask over half the pixels: the penalty counts exactly those pixels' squared gradient
    half = torch.zeros_like(x)
    half[..., :2] = 1.0
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    expected = (g[..., :2] ** 2).flatten(1).sum(1).mean()
    assert masked(model, x, y, mask=half).logs["grad_penalty"] == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(DataError, match=r"no extra 'mask'.*decoy-mnist"):
        masked(model, x, y)
    with pytest.raises(DataError, match="shape"):
        masked(model, x, y, mask=torch.ones(6, 16))


# ---------------------------------------------------------------- jacobian

def test_jacobian_estimator_converges_to_the_frobenius_norm_on_a_linear_model():
    model = linear_model(features=6, classes=4)
    W = model[1].weight.detach()
    x, y = torch.rand(32, 6), torch.randint(0, 4, (32,))
    ce = float(F.cross_entropy(model(x), y))
    expected = 0.5 * float(W.pow(2).sum())  # lam/2 * ||W||_F^2 with lam = 1: J(x) = W for every x
    torch.manual_seed(5)
    estimates = [objectives.build("jacobian", lam=1.0)(model, x, y).logs["jacobian"] for _ in range(300)]
    mean = sum(estimates) / len(estimates)
    spread = float(torch.tensor(estimates).std()) / len(estimates) ** 0.5
    assert abs(0.5 * mean - expected) < 4 * 0.5 * spread + 1e-6  # unbiased: within 4 standard errors
    assert float(torch.tensor(estimates).std()) > 0  # and really random
    exact = objectives.build("jacobian", lam=1.0, n_proj=4, projections="orthonormal")(model, x, y)
    torch.testing.assert_close(exact.loss, torch.tensor(ce + expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="5 orthonormal projections but only 4 classes"):
        objectives.build("jacobian", n_proj=5, projections="orthonormal")(model, x, y)


def test_jacobian_orthonormal_full_basis_equals_the_jacobian_of_a_mlp():
    torch.manual_seed(6)
    model = build("mlp", num_classes=3, input_shape=(5,), widths=[8]).eval()
    x, y = torch.rand(4, 5), torch.tensor([0, 1, 2, 1])
    out = objectives.build("jacobian", lam=0.2, n_proj=3, projections="orthonormal")(model, x, y)
    jac = torch.stack([torch.autograd.functional.jacobian(model, x[i : i + 1]).reshape(3, 5) for i in range(4)])
    literal = F.cross_entropy(model(x), y) + 0.1 * jac.pow(2).sum() / 4
    torch.testing.assert_close(out.loss, literal, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- trades

def test_kl_loss_is_the_literal_divergence_and_zero_at_the_clean_point():
    z, z_adv = torch.randn(5, 4), torch.randn(5, 4)
    p, q = z.softmax(1), z_adv.softmax(1)
    literal = torch.stack([sum(p[i, j] * torch.log(p[i, j] / q[i, j]) for j in range(4)) for i in range(5)])
    torch.testing.assert_close(kl(z_adv, p), literal)
    torch.testing.assert_close(kl(z, p), torch.zeros(5), atol=1e-6, rtol=0)


def test_trades_is_ce_plus_beta_kl_at_the_attacks_point():
    torch.manual_seed(7)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12]).train()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    torch.manual_seed(11)
    out = objectives.build("trades", beta=2.0, eps=0.1, steps=4)(model, x, y)
    torch.manual_seed(11)  # the same Gaussian start: the same x_adv
    x_adv = pgd(model, x, y, eps=0.1, steps=4, loss="kl", keep="last", start_sigma=0.001)
    logits, logits_adv = model(x), model(x_adv)
    p, q = logits.softmax(1), logits_adv.softmax(1)
    literal = F.cross_entropy(logits, y) + 2.0 * (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(out.loss, literal)
    assert_grads_close(param_grads(out.loss, model), param_grads(literal, model))
    assert out.logs["kl"] > 0 and set(out.logs) == {"ce", "kl", "eps"}


def test_trades_inner_attack_increases_the_kl_and_needs_its_start_noise():
    torch.manual_seed(8)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[16]).eval()
    x, y = torch.rand(16, 1, 4, 4), torch.randint(0, 3, (16,))
    p = model(x).softmax(1).detach()
    torch.manual_seed(0)
    start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    x_adv = pgd(model, x, y, eps=0.2, steps=10, loss="kl", keep="last", start_sigma=0.001)
    with torch.no_grad():
        before, after = kl(model(start), p), kl(model(x_adv), p)
        # a uniform random point of the ball: the start of a zero-size step, returned unscored
        uniform = kl(model(pgd(model, x, y, eps=0.2, steps=1, step_size=0.0, keep="last")), p)
    assert bool((after > before).all()) and float(after.mean()) > 5 * float(uniform.mean())
    # at x itself the KL is at its minimum, its gradient 0 up to rounding: the reason for the Gaussian start
    at_x, at_start = x.clone().requires_grad_(True), start.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad(kl(model(at_x), p).sum(), at_x)
    (g_start,) = torch.autograd.grad(kl(model(at_start), p).sum(), at_start)
    assert float(g_x.abs().max()) < 1e-6 < float(g_start.abs().max())
    with pytest.raises(ConfigError, match="no targeted form"):
        pgd(model, x, y, eps=0.2, loss="kl", targeted=True, target=y)


# ---------------------------------------------------------------- pgd-at and the attack inside a step

def bn_model() -> nn.Sequential:
    """With batch norm (its num_batches_tracked counts the train-mode forwards) and dropout."""
    torch.manual_seed(9)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(12, 3)).train()


def test_adversarial_examples_lie_in_the_ball_and_carry_no_graph():
    model = bn_model()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    x.requires_grad_(True)  # even a caller's x that requires grad gives an x_adv without a graph
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        x_adv = adversarial_examples(model, x, y, eps=eps, norm=norm, steps=5, step_size=None)
        delta = (x_adv - x.detach()).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert bool((size <= eps + 1e-6).all()) and float(size.max()) > 0.5 * eps
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert torch.equal(adversarial_examples(model, x, y, eps=0.0, norm="linf", steps=5, step_size=None), x.detach())


def test_pgd_at_attacks_in_eval_mode_and_trains_in_the_engines_mode():
    model = bn_model()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    tracked = model[2].num_batches_tracked.item()
    objectives.build("pgd-at", eps=0.1, steps=5)(model, x, y)
    # five attack steps and the training forward: only the training forward updates batch-norm statistics
    assert model[2].num_batches_tracked.item() == tracked + 1
    assert all(m.training for m in model.modules())


def test_pgd_at_mix_and_its_literal_loss():
    torch.manual_seed(10)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12]).train()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    for mix in (1.0, 0.3):
        torch.manual_seed(12)
        out = objectives.build("pgd-at", eps=0.2, steps=3, mix=mix)(model, x, y)
        torch.manual_seed(12)
        x_adv = pgd(model, x, y, eps=0.2, steps=3, keep="last")
        literal = mix * F.cross_entropy(model(x_adv), y) + (1 - mix) * F.cross_entropy(model(x), y)
        torch.testing.assert_close(out.loss, literal)
        assert_grads_close(param_grads(out.loss, model), param_grads(literal, model))
        assert (out.logits is None) == (mix == 1.0)
        assert set(out.logs) == ({"ce_adv", "eps"} if mix == 1.0 else {"ce_adv", "ce", "eps"})
    standard = objectives.build("standard")(model, x, y)
    assert torch.equal(objectives.build("pgd-at", eps=0.2, mix=0.0)(model, x, y).loss, standard.loss)
    with pytest.raises(ConfigError, match=r"mix must be a finite number in \[0, 1\]"):
        objectives.build("pgd-at", eps=0.2, mix=1.5)(model, x, y)


@pytest.mark.parametrize("name", ["pgd-at", "trades"])
def test_eps_follows_the_ramp(name):
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[8]).eval()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    obj = objectives.build(name, eps=0.2, steps=2, ramp=0.5, warmup=0.1)
    for progress, expected in ((0.0, 0.0), (0.1, 0.0), (0.3, 0.1), (0.5, 0.2), (0.9, 0.2), (None, 0.2)):
        batch = {} if progress is None else {"progress": progress}
        assert obj(model, x, y, **batch).logs["eps"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="warmup <= ramp"):
        objectives.build(name, eps=0.2, ramp=0.1, warmup=0.5)(model, x, y)
    with pytest.raises(ConfigError, match="eps"):
        objectives.build(name, eps=-0.1)(model, x, y, progress=0.5)


# ---------------------------------------------------------------- budgets from the dataset

@pytest.mark.parametrize("name", ["pgd-at", "trades"])
def test_budgets_come_from_the_dataset(name):
    assert objectives.build(name, dataset="cifar10").keywords["eps"] == pytest.approx(8 / 255)
    assert objectives.build(name, dataset="mnist-mini").keywords["eps"] == 0.3
    assert objectives.build(name, dataset="mnist", norm="l2").keywords["eps"] == 2.0
    assert objectives.build(name, dataset="german-credit").keywords["eps"] == 0.05
    assert objectives.build(name, dataset="cifar10", eps=0.01).keywords["eps"] == 0.01  # a given eps stays
    cfg = resolve({"data": {"name": "cifar10"}, "model": {"name": "resnet18"}, "objective": {"name": name}})
    assert cfg.objective.options["eps"] == pytest.approx(8 / 255)  # and config.yaml states it
    model = build("mlp", num_classes=3, input_shape=(4,), widths=[4])
    with pytest.raises(ConfigError, match="needs eps"):
        objectives.build(name)(model, torch.rand(2, 4), torch.tensor([0, 1]))


def test_fit_fills_the_budget_from_its_training_data_and_records_it(tmp_path):
    data = cs.data.load("german-credit", "train").subset(torch.arange(64))
    model = build("mlp", num_classes=2, input_shape=data.input_shape, widths=[8])
    cs.fit(model, "pgd-at", data, epochs=1, batch_size=32, out_dir=tmp_path / "run", progress="none")
    saved = io.read_yaml(tmp_path / "run" / "config.yaml")
    assert saved["objective"]["name"] == "pgd-at" and saved["objective"]["eps"] == 0.05
    nameless = cs.data.ArrayDataset(data.x, data.y, classes=data.classes)  # no registered dataset: no budget
    with pytest.raises(ConfigError, match="needs eps"):
        cs.fit(copy.deepcopy(model), "pgd-at", nameless, epochs=1, batch_size=32, progress="none")


# ---------------------------------------------------------------- the renamed learning-rate decay

def test_fit_reads_the_old_gamma_keyword_as_lr_decay():
    data = cs.data.load("german-credit", "train").subset(torch.arange(64))
    model = build("mlp", num_classes=2, input_shape=data.input_shape, widths=[8])
    with pytest.warns(FutureWarning, match="lr_decay"):
        history = cs.fit(model, "standard", data, epochs=2, batch_size=32, schedule="step", milestones=(0.5,),
                         gamma=0.5, lr=0.1, progress="none", val_fraction=0.0)
    assert history[1]["lr"] == pytest.approx(0.05)  # the second epoch runs at lr * lr_decay


def test_train_gamma_is_read_as_lr_decay_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="train.gamma .* is now train.lr_decay"):
        cfg = build_config(overrides=["train.gamma=0.5", "train.schedule=step"])
    assert cfg.train.lr_decay == 0.5
    with pytest.raises(ConfigError, match="both train.gamma and train.lr_decay"):
        migrate_train({"gamma": 0.5, "lr_decay": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_config(overrides=["train.lr_decay=0.2"]).train.lr_decay == 0.2  # the new name: no warning
    # a run written before the rename resumes: its config.yaml's train.gamma reads as lr_decay
    data = cs.data.load("german-credit", "train").subset(torch.arange(64))
    model = build("mlp", num_classes=2, input_shape=data.input_shape, widths=[8])
    out = tmp_path / "old"
    cs.fit(model, "standard", data, epochs=1, batch_size=32, out_dir=out, progress="none")
    doc = io.read_yaml(out / "config.yaml")
    doc["train"]["gamma"] = doc["train"].pop("lr_decay")
    io.write_yaml(out / "config.yaml", doc)
    with pytest.warns(FutureWarning, match="lr_decay"):
        history = cs.fit(model, "standard", data, epochs=1, batch_size=32, out_dir=out, resume=True,
                         progress="none")
    assert [row["epoch"] for row in history] == [1]  # accepted as the same config: nothing left to train
