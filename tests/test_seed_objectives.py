"""The seed papers' objectives (ir, scaat, consistency-at, activation-sensitivity) and IR's target maps: closed
forms on linear models, literal slow re-implementations, the masked attack, the target-map file's checks.
(The contract tests in test_contracts.py cover every objective too; real-data effects: test_seed_effects.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clearsight as cs
from clearsight import io, objectives, targets
from clearsight.attacks import pgd
from clearsight.attributions import gradient, smoothgrad
from clearsight.cli import main
from clearsight.errors import CheckpointError, ConfigError, DataError
from clearsight.models import build
from clearsight.objectives.scaat import saliency_mask
from clearsight.runs import open_run


def linear_model(features: int = 6, classes: int = 4) -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def param_grads(loss: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


# ---------------------------------------------------------------- ir

def test_ir_on_a_linear_model_is_its_closed_form():
    model = linear_model()
    x, y = torch.rand(5, 6), torch.tensor([0, 3, 1, 2, 2])
    r = torch.randn(5, 6)
    for magnitude in ("batch_frobenius", "mean_l2"):
        g = model[1].weight[y]  # the input gradient of the true-class logit of a linear model is the row W_y
        cos = torch.stack([torch.dot(g[i], r[i]) / (g[i].norm() * r[i].norm()) for i in range(5)])
        size = g.pow(2).sum().sqrt() if magnitude == "batch_frobenius" else g.norm(dim=1).mean()
        out = objectives.build("ir", lambda_cs=2.0, lambda_gm=0.3, magnitude=magnitude)(model, x, y, target_map=r)
        closed = F.cross_entropy(model(x), y) + 2.0 * (1 - cos.mean()) + 0.3 * size
        torch.testing.assert_close(out.loss, closed)
        for a, b in zip(param_grads(out.loss, model), param_grads(closed, model), strict=True):
            torch.testing.assert_close(a, b)
        assert out.logs["cos"] == pytest.approx(float(cos.mean().detach()), rel=1e-5)
        assert out.logs["magnitude"] == pytest.approx(float(size.detach()), rel=1e-5)


def test_ir_cosine_term_is_zero_for_the_models_own_gradient():
    torch.manual_seed(3)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[10]).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    own = gradient(model, x, y)
    out = objectives.build("ir", lambda_cs=1.0, lambda_gm=0.0)(model, x, y, target_map=3.0 * own)  # any scale
    assert out.logs["cos"] == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y), atol=1e-6, rtol=0)
    with pytest.raises(DataError, match="clearsight targets"):
        objectives.build("ir")(model, x, y)
    with pytest.raises(DataError, match="shape"):
        objectives.build("ir")(model, x, y, target_map=torch.rand(6, 16))
    with pytest.raises(ConfigError, match="magnitude"):
        objectives.build("ir", magnitude="frobenius")(model, x, y, target_map=own)


# ---------------------------------------------------------------- target maps

def literal_sparsify(maps: torch.Tensor, t: float) -> torch.Tensor:
    out = maps.clone()
    for i in range(maps.shape[0]):
        values = maps[i].flatten().tolist()
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        flat = out[i].view(-1)
        for j, v in enumerate(values):
            if not abs(v - mean) > t * std:
                flat[j] = 0.0
    return out


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 2.0])
def test_sparsification_matches_a_literal_per_map_loop(t):
    maps = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(targets.sparsify(maps, t), literal_sparsify(maps, t))
    if t > 0:
        assert bool((targets.sparsify(maps, t) == 0).any())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small german-credit mlp run written by `clearsight train`, the teacher."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    code = main(["train", "--dataset", "german-credit", "--model", "mlp", "--set", "model.widths=[16]",
                        "--epochs", "1", "--set", "train.progress=none", "--out", str(out)])
    assert code == 0
    return out


def test_targets_equal_a_literal_loop_of_smoothgrad_calls(teacher, tmp_path):
    path = targets.compute(teacher, tmp_path / "t.safetensors", n=3, sigma=0.2, threshold=0.5, seed=4,
                           batch_size=300, progress="none")
    tensors, meta = io.load_tensors(path)
    run = open_run(teacher)
    generator = torch.Generator().manual_seed(4)  # the same stream, consumed in the same order
    for split in ("train", "test"):
        data = cs.data.load("german-credit", split)
        expected = []
        for i in range(0, len(data), 300):
            x, y = data.x[i : i + 300], data.y[i : i + 300]
            run.model.eval()
            sg = smoothgrad(run.model, x, y, n=3, sigma=0.2, clip=True, generator=generator)
            expected.append(literal_sparsify((3 * sg + gradient(run.model, x, y)) / 4, 0.5))
        torch.testing.assert_close(tensors[split], torch.cat(expected), rtol=1e-5, atol=1e-7)
    assert meta["settings"] == {"attribution": "smoothgrad", "n": 3, "sigma": 0.2, "threshold": 0.5, "abs": False,
                                "seed": 4}
    assert meta["teacher"]["weights_sha256"] == io.sha256_file(teacher / "model.safetensors")
    assert meta["data"]["test"]["shape"] == [200, 61]
    plain = targets.compute(teacher, tmp_path / "g.safetensors", attribution="gradient", threshold=0.0,
                            absolute=True, progress="none")
    data = cs.data.load("german-credit", "test")
    torch.testing.assert_close(io.load_tensors(plain)[0]["test"], gradient(run.model.eval(), data.x, data.y).abs())
    with pytest.raises(ConfigError, match="already exists"):
        targets.compute(teacher, plain, progress="none")


def test_attached_maps_follow_every_split_and_bad_files_are_refused(teacher, tmp_path):
    path = targets.compute(teacher, tmp_path / "t.safetensors", n=2, progress="none")
    maps = io.load_tensors(path)[0]["train"]
    data = targets.attach(cs.data.load("german-credit", "train"), path)
    assert torch.equal(data.extras["target_map"], maps)
    idx = torch.tensor([5, 1, 700, 3])
    assert torch.equal(data.subset(idx).batch(torch.tensor([2, 0]))["target_map"], maps[idx][[2, 0]])
    with pytest.raises(DataError, match="other data"):  # another order of the same samples
        targets.attach(cs.data.load("german-credit", "train").subset(torch.arange(799, -1, -1)), path)
    with pytest.raises(DataError, match="other data"):  # another split seed: other samples
        targets.attach(cs.data.load("german-credit", "train", seed=1), path)
    with pytest.raises(DataError, match="does not exist"):
        targets.attach(cs.data.load("german-credit", "train"), tmp_path / "missing.safetensors")
    io.save_weights(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(DataError, match="not a clearsight target-map file"):
        targets.attach(cs.data.load("german-credit", "train"), tmp_path / "w.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        targets.attach(cs.data.load("german-credit", "train"), tmp_path / "junk.safetensors")
    # stale: the teacher's weights changed after the maps were computed
    weights = io.load_weights(teacher / "model.safetensors")
    saved = (teacher / "model.safetensors").read_bytes()
    try:
        io.save_weights(teacher / "model.safetensors", {k: v + 0.01 for k, v in weights.items()})
        with pytest.raises(CheckpointError, match="stale"):
            targets.attach(cs.data.load("german-credit", "train"), path)
    finally:
        (teacher / "model.safetensors").write_bytes(saved)


def test_ir_trains_from_the_cli_with_a_targets_file(teacher, tmp_path, capsys):
    path = targets.compute(teacher, tmp_path / "t.safetensors", n=2, progress="none")
    args = ["train", "--dataset", "german-credit", "--model", "mlp", "--objective", "ir", "--set",
            f"objective.targets={path}", "--set", "objective.magnitude=mean_l2", "--epochs", "1", "--set",
            "train.progress=none", "--out", str(tmp_path / "ir")]
    assert main(args) == 0
    config = io.read_yaml(tmp_path / "ir" / "config.yaml")
    assert config["files"] == {"objective.targets": io.sha256_file(path)}
    log = io.read_jsonl(tmp_path / "ir" / "log.jsonl")
    assert {"ce", "cos", "magnitude"} <= set(log[0]) and -1.0 <= log[0]["cos"] <= 1.0
    # the file changed: the run cannot be resumed as if nothing happened
    io.save_weights(path, {k: v + 1 for k, v in io.load_tensors(path)[0].items()}, io.load_tensors(path)[1])
    assert main([*args, "--resume"]) == 1
    assert "differs from this one in files.objective.targets" in capsys.readouterr().err


# ---------------------------------------------------------------- scaat

def literal_mask(saliency: torch.Tensor, keep: float) -> torch.Tensor:
    out = torch.zeros_like(saliency, dtype=torch.bool)
    for i in range(saliency.shape[0]):
        values = saliency[i].flatten().abs().tolist()
        total = sum(values)
        order = sorted(range(len(values)), key=lambda j: -values[j])
        mass, flat = 0.0, out[i].view(-1)
        for j in order:
            if mass >= keep * total or total == 0:
                break
            flat[j] = True
            mass += values[j]
    return out


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.8, 1.0])
def test_saliency_mask_is_the_smallest_set_holding_keep_mass(keep):
    torch.manual_seed(5)
    s = torch.rand(6, 1, 4, 4, dtype=torch.float64) ** 3  # skewed maps: some concentrated
    s[0] = 0.0  # an all-zero map keeps nothing
    mask = saliency_mask(s, keep)
    assert torch.equal(mask, literal_mask(s, keep))
    held = (s * mask).flatten(1).sum(1) / s.flatten(1).sum(1).clamp_min(1e-30)
    assert bool((held[1:] >= keep - 1e-12).all()) and not bool(mask[0].any())
    # adaptive: a map with all its mass on two features keeps two features
    peaked = torch.zeros(1, 16, dtype=torch.float64)
    peaked[0, [3, 9]] = torch.tensor([2.0, 1.0], dtype=torch.float64)
    assert saliency_mask(peaked, 0.8).sum() == 2 and saliency_mask(peaked, 0.6).sum() == 1


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 1.0)])
def test_pgd_with_a_perturbation_mask_never_changes_masked_features(norm, eps):
    torch.manual_seed(6)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12]).eval()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    free = torch.rand(8, 1, 4, 4) > 0.5
    for keep, restarts in (("worst", 2), ("last", 1)):
        x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=5, perturb_mask=free, keep=keep, restarts=restarts)
        assert torch.equal(x_adv[~free], x[~free])
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert bool((size <= eps + 1e-6).all()) and float(size.max()) > 0.3 * eps
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with pytest.raises(ConfigError, match="perturbation mask has shape"):
        pgd(model, x, y, eps=eps, norm=norm, steps=2, perturb_mask=free[:, 0])


def test_scaat_attacks_only_outside_the_saliency_mask_and_follows_its_warmup(monkeypatch):
    torch.manual_seed(7)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12]).train()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    seen = {}
    from clearsight.objectives import adversarial

    original = adversarial.pgd

    def spy(model_, x_, y_, **kwargs):
        seen["x_adv"] = original(model_, x_, y_, **kwargs)
        seen["mask"], seen["training"] = kwargs["perturb_mask"], model_.training
        return seen["x_adv"]

    monkeypatch.setattr(adversarial, "pgd", spy)
    out = objectives.build("scaat", eps=0.2, steps=3, keep_mass=0.7)(model, x, y)
    with cs.modes.eval_mode(model):
        protected = literal_mask(gradient(model, x, y), 0.7)
    assert torch.equal(seen["mask"], ~protected)  # the complement of the smallest 70%-mass set
    assert torch.equal(seen["x_adv"][protected], x[protected])  # nothing inside the mask moved
    assert out.logs["kept"] == pytest.approx(float(protected.float().mean()))
    assert model.training  # the engine's mode is back
    obj = objectives.build("scaat", eps=0.2, steps=2, warmup_epochs=2.0)
    for progress, epochs, expected in ((0.0, 4, 0.0), (0.25, 4, 0.1), (0.5, 4, 0.2), (0.9, 4, 0.2), (0.5, 1, 0.05)):
        assert obj(model, x, y, progress=progress, epochs=epochs).logs["eps"] == pytest.approx(expected)
    assert obj(model, x, y).logs["eps"] == 0.2  # outside fit: the final eps
    with pytest.raises(ConfigError, match="keep_mass"):
        objectives.build("scaat", eps=0.2, keep_mass=1.5)(model, x, y)


# ---------------------------------------------------------------- consistency-at

def test_consistency_distance_is_zero_at_the_clean_point_and_literal_otherwise():
    from clearsight.objectives.consistency import feature_distance

    a, b = torch.randn(5, 7), torch.randn(5, 7)
    literal = torch.stack([(a[i] / a[i].norm() - b[i] / b[i].norm()).pow(2).sum() for i in range(5)])
    torch.testing.assert_close(feature_distance(a, b, "l2sq"), literal)
    torch.testing.assert_close(feature_distance(a, b, "cosine"), literal / 2)
    torch.testing.assert_close(feature_distance(a, 3 * a, "l2sq"), torch.zeros(5), atol=1e-6, rtol=0)
    torch.manual_seed(8)
    model = build("small-cnn", num_classes=3, input_shape=(1, 8, 8), hidden=16, dropout=0.0).train()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    out = objectives.build("consistency-at", eps=0.0)(model, x, y)  # x_adv = x
    assert out.logs["distance"] == pytest.approx(0.0, abs=1e-6) and out.logs["ce_adv"] == pytest.approx(out.logs["ce"])


@pytest.mark.parametrize("attack", ["pgd", "fgsm", "least-likely"])
def test_consistency_at_reads_the_layer_a_manual_forward_computes(attack, monkeypatch):
    torch.manual_seed(9)
    model = build("small-cnn", num_classes=3, input_shape=(1, 8, 8), hidden=16, dropout=0.0).train()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    from clearsight.objectives import adversarial

    made = {}
    original = adversarial.adversarial_examples

    def spy(*args, **kwargs):
        made["x_adv"] = original(*args, **kwargs)
        return made["x_adv"]

    monkeypatch.setattr("clearsight.objectives.consistency.adversarial_examples", spy)
    out = objectives.build("consistency-at", eps=0.2, steps=3, alpha=0.5, lam=2.0, attack=attack)(model, x, y)
    x_adv = made["x_adv"]
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6 and not torch.equal(x_adv, x)
    phi, phi_adv = model.penultimate(model.features(x)), model.penultimate(model.features(x_adv))  # by hand
    literal = (F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
               + 2.0 * ((F.normalize(phi, dim=1) - F.normalize(phi_adv, dim=1)) ** 2).sum(1).mean())
    torch.testing.assert_close(out.loss, literal)
    for a, b in zip(param_grads(out.loss, model), param_grads(literal, model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())  # the capture hook is gone
    if attack == "least-likely":  # targeted at the lowest clean logit: that class's logit went up
        with torch.no_grad(), cs.modes.eval_mode(model):
            low = model(x).argmin(1)
            assert bool((model(x_adv).gather(1, low[:, None]) > model(x).gather(1, low[:, None])).all())


class FailsOnBigBatches(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4:
            raise RuntimeError("boom")
        return x


def test_consistency_at_removes_its_hook_after_an_error():
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("penultimate", nn.Linear(16, 8)),
                                       ("boom", FailsOnBigBatches()), ("logits", nn.Linear(8, 3))]))
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    with pytest.raises(RuntimeError, match="boom"):  # the attack (batch 4) runs, the joint forward (8) fails
        objectives.build("consistency-at", eps=0.1, steps=1)(model, x, y)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        objectives.build("consistency-at", eps=0.1, steps=1, layer="nope")(model, x, y)


# ---------------------------------------------------------------- activation-sensitivity

def tiny_mlp3() -> nn.Module:
    torch.manual_seed(11)
    return build("mlp", num_classes=3, input_shape=(1, 3, 3), widths=[6, 5, 4]).eval()


def literal_activation_penalty(model: nn.Module, x: torch.Tensor, mode: str, k: int) -> torch.Tensor:
    """The sampled units drawn as the objective draws them, one autograd.grad per unit, gradients summed."""
    f = model.features
    xi = x.clone().requires_grad_(True)
    h1 = f.relu1(f.fc1(xi.flatten(1)))
    h2 = f.relu2(f.fc2(h1))
    h3 = f.relu3(f.fc3(h2))
    total = torch.zeros_like(xi)
    for h in (h2, h3):  # the default layers: every ReLU after the first
        if mode == "units":
            for u in torch.randperm(h.shape[1])[:k].tolist():
                (g,) = torch.autograd.grad(h[:, u].sum(), xi, create_graph=True)
                total = total + g
        else:
            v = torch.randn(h.shape[1])
            v = v / v.norm()
            (g,) = torch.autograd.grad((h @ v).sum(), xi, create_graph=True)
            total = total + g
    return total.flatten(1).pow(2).sum(1).mean()


@pytest.mark.parametrize("mode", ["units", "projection"])
def test_activation_sensitivity_equals_a_literal_loop_over_sampled_units(mode):
    model = tiny_mlp3()
    x, y = torch.rand(5, 1, 3, 3), torch.tensor([0, 1, 2, 2, 1])
    assert cs.neurons.relu_layers(model) == ["features.relu2", "features.relu3"]
    torch.manual_seed(5)
    out = objectives.build("activation-sensitivity", lam=0.7, units=3, mode=mode)(model, x, y)
    torch.manual_seed(5)
    literal = F.cross_entropy(model(x), y) + 0.7 * literal_activation_penalty(model, x, mode, 3)
    torch.testing.assert_close(out.loss, literal)
    for a, b in zip(param_grads(out.loss, model), param_grads(literal, model), strict=True):
        torch.testing.assert_close(a, b)
    torch.manual_seed(5)  # the reusable per-sample quantity is the same penalty
    per_sample = cs.neurons.activation_sensitivity(model, x, units=3, mode=mode)
    torch.manual_seed(5)
    torch.testing.assert_close(per_sample.mean(), literal_activation_penalty(model, x, mode, 3).detach())
    assert not per_sample.requires_grad and all(p.requires_grad for p in model.parameters())


def test_activation_sensitivity_with_jacobian_and_hooks_after_errors():
    from collections import OrderedDict

    model = tiny_mlp3()
    x, y = torch.rand(5, 1, 3, 3), torch.tensor([0, 1, 2, 2, 1])
    torch.manual_seed(6)
    both = objectives.build("activation-sensitivity", lam=0.0, with_jacobian=0.4)(model, x, y)
    torch.manual_seed(6)
    jac = objectives.build("jacobian", lam=0.4)(model, x, y)
    torch.testing.assert_close(both.loss, jac.loss)  # lam 0: exactly the jacobian objective
    broken = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("penultimate", nn.Linear(9, 8)),
                                        ("relu", nn.ReLU()), ("boom", FailsOnBigBatches()),
                                        ("logits", nn.Linear(8, 3))]))
    with pytest.raises(RuntimeError, match="boom"):
        objectives.build("activation-sensitivity", layers=["relu"])(broken, x, y)  # batch 5 fails after relu
    assert all(not m._forward_hooks for m in broken.modules())
    with pytest.raises(ConfigError, match="cannot sample 9 units"):
        objectives.build("activation-sensitivity", units=9)(model, x, y)
    assert all(not m._forward_hooks for m in model.modules())
