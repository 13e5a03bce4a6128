"""The seed papers' objectives (ir, scaat, consistency-at, activation-sensitivity) and IR's target maps: closed
forms on linear models, literal slow re-implementations, the masked attack, the target-map file's checks.
(The contract tests in test_contracts.py cover every objective too; real-data effects: test_seed_effects.py.)"""

from __future__ import annotations

import math
from collections import OrderedDict
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clearsight as cs
from clearsight import io, objectives, targets
from clearsight.attacks import pgd
from clearsight.attributions import gradient
from clearsight.cli import main
from clearsight.config import SECTIONS, resolve
from clearsight.errors import CheckpointError, ConfigError, DataError
from clearsight.metrics.perturb import block_size
from clearsight.models import build
from clearsight.objectives.scaat import saliency_mask
from clearsight.runs import load_data, open_run


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


def test_ir_absolute_compares_the_students_absolute_gradient_as_the_authors_code_does():
    model = linear_model()
    x, y = torch.rand(5, 6), torch.tensor([0, 3, 1, 2, 2])
    r = torch.rand(5, 6)  # absolute targets are >= 0
    g = model[1].weight[y].abs()  # |W_y|: the student's absolute gradient
    cos = torch.stack([torch.dot(g[i], r[i]) / (g[i].norm() * r[i].norm()) for i in range(5)])
    closed = F.cross_entropy(model(x), y) + 2.0 * (1 - cos.mean()) + 0.3 * g.norm(dim=1).mean()
    out = objectives.build("ir", lambda_cs=2.0, lambda_gm=0.3, magnitude="mean_l2", absolute=True)(model, x, y,
                                                                                                  target_map=r)
    torch.testing.assert_close(out.loss, closed)
    for a, b in zip(param_grads(out.loss, model), param_grads(closed, model), strict=True):
        torch.testing.assert_close(a, b)
    signed = objectives.build("ir", lambda_cs=2.0, lambda_gm=0.3, magnitude="mean_l2")(model, x, y, target_map=r)
    assert abs(float(signed.loss.detach()) - float(closed.detach())) > 1e-3  # the option changes the cosine term


def test_ir_needs_target_maps_only_for_its_cosine_term():
    model = linear_model()
    x, y = torch.rand(5, 6), torch.tensor([0, 3, 1, 2, 2])
    g = model[1].weight[y]
    out = objectives.build("ir", lambda_cs=0.0, lambda_gm=0.4)(model, x, y)  # no target_map: none needed
    closed = F.cross_entropy(model(x), y) + 0.4 * g.pow(2).sum().sqrt()
    torch.testing.assert_close(out.loss, closed)
    for a, b in zip(param_grads(out.loss, model), param_grads(closed, model), strict=True):
        torch.testing.assert_close(a, b)
    assert out.logs["cos"] == 0.0
    with pytest.raises(DataError, match="lambda_cs > 0"):
        objectives.build("ir", lambda_cs=0.1, lambda_gm=0.0)(model, x, y)


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


def literal_target_maps(model: nn.Module, data: cs.data.ArrayDataset, generator: torch.Generator, *, n: int,
                        sigma: float, absolute: bool) -> torch.Tensor:
    """Sample by sample: draw the sample's noise block, n clipped noisy copies plus the clean image, the mean of
    their (absolute) true-class gradients."""
    maps = []
    shape = tuple(data.x.shape[1:])
    for i in range(len(data)):
        noise = torch.randn(block_size(n, shape), generator=generator)[: n * math.prod(shape)].view(n, *shape)
        x = data.x[i : i + 1]
        copies = torch.cat([(x + sigma * noise).clamp(0, 1), x])
        g = gradient(model, copies, data.y[i].repeat(n + 1))
        maps.append((g.abs() if absolute else g).mean(0))
    return torch.stack(maps)


@pytest.mark.parametrize("absolute", [False, True])
def test_targets_equal_a_literal_per_sample_loop(teacher, tmp_path, absolute):
    path = targets.compute(teacher, tmp_path / "t.safetensors", n=3, sigma=0.2, threshold=0.5, seed=4,
                           batch_size=300, absolute=absolute, progress="none")
    tensors, meta = io.load_tensors(path)
    model = open_run(teacher).model.eval()
    generator = torch.Generator().manual_seed(4)  # one stream, sample after sample: train, then test
    for split in ("train", "test"):
        data = cs.data.load("german-credit", split)
        literal = literal_target_maps(model, data, generator, n=3, sigma=0.2, absolute=absolute)
        torch.testing.assert_close(tensors[split], literal_sparsify(literal, 0.5), rtol=1e-5, atol=1e-7)
    assert meta["settings"] == {"attribution": "smoothgrad", "n": 3, "sigma": 0.2, "threshold": 0.5,
                                "abs": absolute, "seed": 4, "device": "cpu", "batch_size": 300, "max_batch": 256}
    assert meta["teacher"]["weights_sha256"] == io.sha256_file(teacher / "model.safetensors")
    assert meta["data"]["test"]["shape"] == [200, 61]
    if absolute:  # per copy: mean |g|, which is not |mean g| (the copies' gradients differ in sign)
        signed = literal_target_maps(model, cs.data.load("german-credit", "test"), torch.Generator().manual_seed(4),
                                     n=3, sigma=0.2, absolute=False)
        assert float((tensors["test"] - literal_sparsify(signed.abs(), 0.5)).abs().max()) > 1e-3


def test_target_maps_do_not_depend_on_the_batch_size(teacher, tmp_path):
    """Per-sample noise: the file is reproducible from its recorded settings whatever batch_size was (CPU)."""
    small = targets.compute(teacher, tmp_path / "a.safetensors", n=3, threshold=0.0, seed=2, batch_size=7,
                            progress="none")
    large = targets.compute(teacher, tmp_path / "b.safetensors", n=3, threshold=0.0, seed=2, batch_size=300,
                            progress="none")
    model = open_run(teacher).model.eval()
    test = cs.data.load("german-credit", "test")
    for split, maps in io.load_tensors(small)[0].items():
        torch.testing.assert_close(maps, io.load_tensors(large)[0][split], rtol=1e-5, atol=1e-7)
    # and a sample's map does not depend on the other samples of its call, nor on max_batch
    generator = torch.Generator().manual_seed(5)
    whole = targets.teacher_maps(model, test.x[:6], test.y[:6], n=4, threshold=0.0, generator=generator,
                                 max_batch=5)
    generator = torch.Generator().manual_seed(5)
    parts = [targets.teacher_maps(model, test.x[i : i + 3], test.y[i : i + 3], n=4, threshold=0.0,
                                  generator=generator, max_batch=64) for i in (0, 3)]
    torch.testing.assert_close(whole, torch.cat(parts), rtol=1e-5, atol=1e-7)


def test_plain_gradient_targets_and_no_overwrite(teacher, tmp_path):
    plain = targets.compute(teacher, tmp_path / "g.safetensors", attribution="gradient", threshold=0.0,
                            absolute=True, progress="none")
    run = open_run(teacher)
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
    # stale: the teacher's weights or its config changed after the maps were computed
    weights = io.load_weights(teacher / "model.safetensors")
    with (retrained(teacher, weights={k: v + 0.01 for k, v in weights.items()}),
          pytest.raises(CheckpointError, match="stale.*another model.safetensors")):
        targets.attach(cs.data.load("german-credit", "train"), path)
    with (retrained(teacher, config_note="# retrained with other settings\n"),
          pytest.raises(CheckpointError, match="stale.*another config.yaml")):
        targets.attach(cs.data.load("german-credit", "train"), path)
    targets.attach(cs.data.load("german-credit", "train"), path)  # restored: accepted again
    # the student's absolute option must match the file's abs setting
    with pytest.raises(ConfigError, match="signed target maps but the objective has absolute=True"):
        targets.attach(cs.data.load("german-credit", "train"), path, absolute=True)
    assert "target_map" in targets.attach(cs.data.load("german-credit", "train"), path, absolute=False).extras


class retrained:
    """The teacher run's files changed for the block (other weights, or a line added to config.yaml), restored
    after."""

    def __init__(self, run, *, weights=None, config_note=None):
        self.run, self.weights, self.note = run, weights, config_note

    def __enter__(self):
        self.saved = {name: (self.run / name).read_bytes() for name in ("model.safetensors", "config.yaml")}
        if self.weights is not None:
            io.save_weights(self.run / "model.safetensors", self.weights)
        if self.note is not None:
            (self.run / "config.yaml").write_bytes(self.saved["config.yaml"] + self.note.encode())

    def __exit__(self, *exc):
        for name, data in self.saved.items():
            (self.run / name).write_bytes(data)


def test_ir_trains_from_the_cli_with_a_targets_file(teacher, tmp_path, capsys):
    path = targets.compute(teacher, tmp_path / "t.safetensors", n=2, progress="none")
    args = ["train", "--dataset", "german-credit", "--model", "mlp", "--objective", "ir", "--set",
            f"objective.targets={path}", "--set", "objective.magnitude=mean_l2", "--epochs", "1", "--set",
            "train.progress=none", "--out", str(tmp_path / "ir")]
    assert main(args) == 0
    config = io.read_yaml(tmp_path / "ir" / "config.yaml")
    assert config["files"] == {"objective.targets": {"path": str(path.resolve()), "sha256": io.sha256_file(path),
                                                     "relative": "../t.safetensors"}}
    log = io.read_jsonl(tmp_path / "ir" / "log.jsonl")
    assert {"ce", "cos", "magnitude"} <= set(log[0]) and -1.0 <= log[0]["cos"] <= 1.0
    # the same content elsewhere (a study directory moved, a copy): the run resumes
    written = (tmp_path / "ir" / "config.yaml").read_bytes()
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err  # nothing moved: config.yaml as it was
    assert (tmp_path / "ir" / "config.yaml").read_bytes() == written
    moved = tmp_path / "moved" / "t.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    moved_args = [a.replace(str(path), str(moved)) for a in args]
    assert main([*moved_args, "--resume"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    moved_config = io.read_yaml(tmp_path / "ir" / "config.yaml")  # now names the file where it lies
    assert moved_config["objective"]["targets"] == str(moved.resolve())
    assert moved_config["files"]["objective.targets"] == {"path": str(moved.resolve()), "sha256": io.sha256_file(path),
                                                          "relative": "../moved/t.safetensors"}
    assert {k: v for k, v in moved_config.items() if k not in ("objective", "files")} == {
        k: v for k, v in config.items() if k not in ("objective", "files")}
    # the file changed: the run cannot be resumed as if nothing happened
    io.save_weights(path, {k: v + 1 for k, v in io.load_tensors(path)[0].items()}, io.load_tensors(path)[1])
    assert main([*args, "--resume"]) == 1
    assert "differs from this one in files.objective.targets" in capsys.readouterr().err


def test_a_run_moved_together_with_its_targets_file_reads_it_at_the_new_place(teacher, tmp_path):
    """A study directory moved elsewhere: the recorded absolute path is gone, the path relative to the run holds
    the same file (checked by its hash), so ir's target maps are still there for target_cosine."""
    import warnings

    work = tmp_path / "work"
    (work / "teacher").mkdir(parents=True)
    path = targets.compute(teacher, work / "teacher" / "t.safetensors", n=2, progress="none")
    assert main(["train", "--dataset", "german-credit", "--model", "mlp", "--objective", "ir", "--set",
                 f"objective.targets={path}", "--epochs", "1", "--set", "train.progress=none",
                 "--out", str(work / "student")]) == 0
    expected = io.load_tensors(path)[0]["test"]
    work.rename(tmp_path / "moved")
    student = tmp_path / "moved" / "student"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no longer exists" warning: the file was found
        assert torch.equal(load_data(open_run(student).config, "test").extras["target_map"], expected)
    # a different file at the relative place is not taken for it
    moved_file = tmp_path / "moved" / "teacher" / "t.safetensors"
    tensors, meta = io.load_tensors(moved_file)
    io.save_weights(moved_file, {k: v * 2 for k, v in tensors.items()}, meta)
    with pytest.warns(UserWarning, match=r"no longer exists, nor is it at .*holds another file"):
        assert "target_map" not in load_data(open_run(student).config, "test").extras


def test_a_trained_ir_run_stays_evaluable_from_anywhere_and_after_its_teacher_is_retrained(
        teacher, tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    targets.compute(teacher, "t.safetensors", n=2, progress="none")
    assert main(["train", "--dataset", "german-credit", "--model", "mlp", "--objective", "ir", "--set",
                 "objective.targets=t.safetensors", "--epochs", "1", "--set", "train.progress=none",
                 "--out", "student"]) == 0  # the path as typed: relative to this folder
    student, file = work / "student", work / "t.safetensors"
    config = io.read_yaml(student / "config.yaml")
    assert config["objective"]["targets"] == "t.safetensors"
    assert config["files"]["objective.targets"] == {"path": str(file), "sha256": io.sha256_file(file),
                                                    "relative": "../t.safetensors"}
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: cosine\nrows:\n  - {metric: target_cosine, attribution: {name: gradient}}\n"
                     "hygiene: null\n")
    expected = io.load_tensors(file)[0]["test"]
    monkeypatch.chdir(elsewhere)  # evaluating from another folder finds the recorded file
    assert main(["evaluate", str(student), "--suite", str(suite)]) == 0, capsys.readouterr().err
    assert [r["metric"] for r in io.read_jsonl(student / "results.jsonl")] == ["accuracy", "target_cosine"]
    assert torch.equal(load_data(open_run(student).config, "test").extras["target_map"], expected)
    # the teacher is retrained afterwards: the student is still evaluated with the file it was trained with
    weights = io.load_weights(teacher / "model.safetensors")
    with retrained(teacher, weights={k: v - 0.02 for k, v in weights.items()}, config_note="# again\n"):
        assert main(["evaluate", str(student), "--suite", str(suite)]) == 0, capsys.readouterr().err
        assert io.read_jsonl(student / "results.jsonl")[-1]["metric"] == "target_cosine"
        assert torch.equal(load_data(open_run(student).config, "test").extras["target_map"], expected)
        # training with that file is still refused: its teacher has changed
        sections = {k: v for k, v in config.items() if k in SECTIONS}
        sections["objective"] = {**sections["objective"], "targets": str(file)}
        with pytest.raises(CheckpointError, match="stale"):
            load_data(resolve(sections), "train")
    # the file changed or is gone: the extra is left out with a warning naming the file and its recorded hash
    recorded = config["files"]["objective.targets"]["sha256"]
    original, (tensors, meta) = file.read_bytes(), io.load_tensors(file)
    io.save_weights(file, {k: v * 2 for k, v in tensors.items()}, meta)
    with pytest.warns(UserWarning, match=f"{file}.*sha256 {recorded}.*has changed since"):
        assert "target_map" not in load_data(open_run(student).config, "test").extras
    file.unlink()
    with pytest.warns(UserWarning, match=f"{file}.*sha256 {recorded}.*no longer exists"):
        assert "target_map" not in load_data(open_run(student).config, "test").extras
    # a run of 0.1 recorded the hash alone (the path as the option gave it): read the same way
    file.write_bytes(original)
    old = {**config, "files": {"objective.targets": recorded}}
    io.write_yaml(student / "config.yaml", old)
    monkeypatch.chdir(work)
    assert torch.equal(load_data(open_run(student).config, "test").extras["target_map"], expected)


# ---------------------------------------------------------------- scaat

def literal_mask(saliency: torch.Tensor, keep: float) -> torch.Tensor:
    """Features in decreasing saliency until they hold keep * total, in exact arithmetic (no rounding)."""
    out = torch.zeros_like(saliency, dtype=torch.bool)
    for i in range(saliency.shape[0]):
        values = [Fraction(v) for v in saliency[i].flatten().abs().tolist()]
        total = sum(values)
        order = sorted(range(len(values)), key=lambda j: -values[j])
        mass, flat = Fraction(0), out[i].view(-1)
        for j in order:
            if mass >= Fraction(keep) * total or total == 0:
                break
            flat[j] = True
            mass += values[j]
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("keep", [0.0, 0.3, 0.8, 1.0])
def test_saliency_mask_is_the_smallest_set_holding_keep_mass(keep, dtype):
    torch.manual_seed(5)
    s = torch.rand(6, 1, 28, 28, dtype=dtype) ** 3  # skewed maps: some concentrated, many small features
    s[0] = 0.0  # an all-zero map keeps nothing
    s[:, :, :4] = 0.0  # features of no saliency are never needed, also at keep_mass 1
    mask = saliency_mask(s, keep)
    assert torch.equal(mask, literal_mask(s, keep))  # the literal sums in float64
    held = (s.double() * mask).flatten(1).sum(1) / s.double().flatten(1).sum(1).clamp_min(1e-30)
    assert bool((held[1:] >= keep - 1e-12).all()) and not bool(mask[0].any())
    if keep == 1.0:
        assert torch.equal(mask, s > 0)
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
        seen["attacking"] = True
        try:
            seen["x_adv"] = original(model_, x_, y_, **kwargs)
        finally:
            seen["attacking"] = False
        seen["mask"], seen["eps"] = kwargs["perturb_mask"], kwargs["eps"]
        return seen["x_adv"]

    monkeypatch.setattr(adversarial, "pgd", spy)
    forwards = []  # (inside the attack, the model's mode) of every forward pass
    hook = model.register_forward_pre_hook(lambda m, _: forwards.append((seen.get("attacking", False), m.training)))
    try:
        out = objectives.build("scaat", eps=0.2, steps=3, keep_mass=0.7)(model, x, y)
    finally:
        hook.remove()
    with cs.modes.eval_mode(model):
        protected = literal_mask(gradient(model, x, y), 0.7)
    assert torch.equal(seen["mask"], ~protected)  # the complement of the smallest 70%-mass set
    assert torch.equal(seen["x_adv"][protected], x[protected])  # nothing inside the mask moved
    assert out.logs["kept"] == pytest.approx(float(protected.float().mean()))
    # clean forward (train), saliency (eval), the attack's steps (eval), adversarial forward (train)
    attack = [training for inside, training in forwards if inside]
    assert len(attack) >= 3 and not any(attack)
    assert [f for f in forwards if not f[0]] == [(False, True), (False, False), (False, True)]
    assert model.training  # the engine's mode is back
    obj = objectives.build("scaat", eps=0.2, steps=2, warmup_epochs=2.0)
    for progress, epochs, expected in ((0.25, 4, 0.1), (0.5, 4, 0.2), (0.9, 4, 0.2), (0.5, 1, 0.05)):
        seen.clear()
        assert obj(model, x, y, progress=progress, epochs=epochs).logs["eps"] == pytest.approx(expected)
        assert seen["eps"] == pytest.approx(expected)  # the radius the attack was given
    seen.clear()
    assert obj(model, x, y, progress=0.0, epochs=4).logs["eps"] == 0.0 and not seen  # eps 0: no attack at all
    assert obj(model, x, y).logs["eps"] == 0.2 and seen["eps"] == 0.2  # outside fit: the final eps
    with pytest.raises(ConfigError, match="keep_mass"):
        objectives.build("scaat", eps=0.2, keep_mass=1.5)(model, x, y)


def test_scaat_loss_is_ce_plus_beta_kl_of_clean_to_adversarial(monkeypatch):
    """The literal loss of METHODS.md: CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)), the KL summed
    over classes and averaged over the batch, differentiated through both distributions."""
    torch.manual_seed(13)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12]).double().train()
    x, y = torch.rand(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    made = {}
    original = cs.objectives.scaat.adversarial_examples

    def spy(*args, **kwargs):
        made["x_adv"] = original(*args, **kwargs)
        return made["x_adv"]

    monkeypatch.setattr(cs.objectives.scaat, "adversarial_examples", spy)
    out = objectives.build("scaat", eps=0.3, steps=3, beta=0.7, keep_mass=0.5)(model, x, y)
    p, q = model(x).softmax(1), model(made["x_adv"]).softmax(1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert float(kl.detach()) > 1e-4  # the attack moved the prediction: the term is not trivially 0
    literal = F.cross_entropy(model(x), y) + 0.7 * kl
    torch.testing.assert_close(out.loss, literal)
    for a, b in zip(param_grads(out.loss, model), param_grads(literal, model), strict=True):
        torch.testing.assert_close(a, b)
    assert out.logs["kl"] == pytest.approx(float(kl.detach()), rel=1e-5)


def test_scaat_smoothgrad_saliency_options_and_its_noise_leave_the_global_rng_alone(monkeypatch):
    torch.manual_seed(14)
    model = build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12]).train()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    calls = []
    original = cs.objectives.scaat.smoothgrad

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(cs.objectives.scaat, "smoothgrad", spy)
    states = []
    for n in (2, 30):
        torch.manual_seed(3)
        objectives.build("scaat", eps=0.2, steps=2, saliency="smoothgrad", saliency_n=n,
                         saliency_sigma=0.05)(model, x, y)
        states.append(torch.get_rng_state())
    assert [(c["n"], c["sigma"]) for c in calls] == [(2, 0.05), (30, 0.05)]
    assert all(isinstance(c["generator"], torch.Generator) for c in calls)
    # the rest of training draws the same numbers however much noise the saliency drew
    assert torch.equal(states[0], states[1])


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


def test_summed_unit_sensitivity_is_the_square_root_of_the_objectives_penalty():
    model = tiny_mlp3()
    x = torch.rand(5, 1, 3, 3)
    summed = cs.neurons.unit_sensitivity(model, x, layer="features.relu2", units=3, summed=True,
                                         generator=torch.Generator().manual_seed(4))
    penalty = cs.neurons.activation_sensitivity(model, x, layers=["features.relu2"], units=3,
                                                generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(summed[:, 0] ** 2, penalty)
    assert float(penalty.min()) > 0


# ---------------------------------------------------------------- a layer that runs twice

def reused_relu_model() -> nn.Module:
    torch.manual_seed(15)
    relu = nn.ReLU()
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc1", nn.Linear(16, 8)), ("relu", relu),
                                      ("penultimate", nn.Linear(8, 8)), ("again", relu), ("logits", nn.Linear(8, 3))]))


def test_every_reader_of_a_layer_refuses_one_the_model_runs_twice():
    """`capture(once=True)`, shared by every caller: a reused module is not one activation."""
    model = reused_relu_model()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    twice = "layer 'relu' runs more than once"
    with pytest.raises(ConfigError, match=twice):
        objectives.build("activation-sensitivity", layers=["relu"])(model, x, y)
    with pytest.raises(ConfigError, match=twice):
        objectives.build("consistency-at", eps=0.1, steps=1, layer="relu")(model, x, y)
    with pytest.raises(ConfigError, match=twice):
        cs.neurons.unit_sensitivity(model, x, layer="relu", units=2)
    with pytest.raises(ConfigError, match=twice):
        cs.neurons.activation_sensitivity(model, x, layers=["relu"])
    with pytest.raises(ConfigError, match=twice):
        cs.metrics.get("neuron_consistency")(model, x, y, layer="relu", k=2)
    assert all(not m._forward_hooks for m in model.modules())  # removed after each refusal
    with cs.neurons.capture(model, ["relu"]) as acts:  # without once: every call is recorded
        model(x)
    assert len(acts["relu"]) == 2
    unused = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("penultimate", nn.Linear(16, 3)),
                                        ("spare", nn.ReLU())]))
    unused.forward = lambda inp: unused.penultimate(unused.flatten(inp))  # "spare" never runs
    with (pytest.raises(ConfigError, match="layer 'spare' did not run"),
          cs.neurons.capture(unused, ["spare"], once=True)):
        unused(x)


# ---------------------------------------------------------------- state after an error inside an objective

class Tripwire(nn.Module):
    """Identity that raises at its `at_forward`-th forward call or `at_backward`-th backward call."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = self.backwards = 0
        self.at_forward: int | None = None
        self.at_backward: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if self.forwards == self.at_forward:
            raise RuntimeError("tripwire")
        return _Trip.apply(x, self)


class _Trip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, trip):
        ctx.trip = trip
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.trip.backwards += 1
        if ctx.trip.backwards == ctx.trip.at_backward:
            raise RuntimeError("tripwire")
        return grad, None


def tripwire_model() -> tuple[nn.Module, Tripwire]:
    torch.manual_seed(16)
    trip = Tripwire()
    model = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc1", nn.Linear(16, 12)), ("relu1", nn.ReLU()),
                                       ("trip", trip), ("fc2", nn.Linear(12, 10)), ("relu2", nn.ReLU()),
                                       ("penultimate", nn.Linear(10, 8)), ("dropout", nn.Dropout(0.0)),
                                       ("logits", nn.Linear(8, 3))])).train()
    model.fc1.bias.requires_grad_(False)  # a mixed state: restoring means restoring exactly this
    model.dropout.eval()
    return model, trip


def state(model: nn.Module) -> tuple:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


SEED_OBJECTIVES = {
    "ir": {"lambda_cs": 1.0, "lambda_gm": 0.1},
    "scaat": {"eps": 0.2, "steps": 2, "saliency": "smoothgrad", "saliency_n": 2},
    "activation-sensitivity": {"units": 2, "with_jacobian": 0.1},
    "consistency-at": {"eps": 0.2, "steps": 2},
}


@pytest.mark.parametrize("name", list(SEED_OBJECTIVES))
def test_mode_flags_and_hooks_are_restored_after_an_error_anywhere_inside(name):
    """A failure at every forward and every backward call the objective makes leaves the model as it was.
    (Tabular inputs: the attack's channels-last probe, which swallows errors by design, runs on images only.)"""
    x, y = torch.rand(4, 16), torch.tensor([0, 1, 2, 1])
    batch = {"target_map": torch.rand_like(x)} if name == "ir" else {}
    objective = objectives.build(name, **SEED_OBJECTIVES[name])
    model, trip = tripwire_model()
    objective(model, x, y, **batch)  # counts the calls
    calls = {"at_forward": trip.forwards, "at_backward": trip.backwards}
    assert calls["at_forward"] >= 1 and calls["at_backward"] >= 1  # ir: one forward; the attacks: several
    tried = 0
    for kind, count in calls.items():
        for at in range(1, count + 1):
            model, trip = tripwire_model()
            before = state(model)
            setattr(trip, kind, at)
            with pytest.raises(RuntimeError, match="tripwire"):
                objective(model, x, y, **batch)
            assert state(model) == before, (kind, at)
            tried += 1
    assert tried == sum(calls.values())
