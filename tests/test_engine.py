"""fit/evaluate: determinism, exact kill-and-resume, non-finite loss, run-directory safety, schedules."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import clearsight as cs
from clearsight import io
from clearsight.config import TrainConfig
from clearsight.engine import CHECKPOINT, lr_factor
from clearsight.errors import CheckpointError, ConfigError, DataError, TrainingError
from clearsight.objectives import LossOutput

FAST = {"epochs": 2, "batch_size": 16, "lr": 0.05, "progress": "none", "val_fraction": 0.2}


@pytest.fixture(scope="module")
def small_train(mnist_mini_train):
    return mnist_mini_train.subset(torch.arange(0, 5000, 10))  # 500 images, 50 per class


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cs.models.build("mlp", num_classes=10, input_shape=(1, 28, 28), widths=[32])


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_runs_are_identical_and_seed_matters(small_train):
    a, b, c = mlp(), mlp(), mlp()
    cs.fit(a, "standard", small_train, **FAST)
    cs.fit(b, "standard", small_train, **FAST)
    cs.fit(c, "standard", small_train, **{**FAST, "seed": 1})
    assert same_weights(a.state_dict(), b.state_dict())
    assert not same_weights(a.state_dict(), c.state_dict())


def test_training_learns_and_logs_every_epoch(small_train, mnist_mini_test, tmp_path):
    model = mlp()
    history = cs.fit(model, "standard", small_train, out_dir=tmp_path, **{**FAST, "epochs": 3})
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert {"loss", "ce", "accuracy", "lr", "seconds", "val_loss", "val_accuracy"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
    assert io.read_jsonl(tmp_path / "log.jsonl") == json.loads(json.dumps(history))
    assert cs.evaluate(model, mnist_mini_test)["accuracy"] > 0.6  # far above chance (0.1) after 3 short epochs
    saved = io.load_weights(tmp_path / "model.safetensors")
    assert same_weights(saved, model.state_dict())
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 3 and same_weights(state["model"], model.state_dict())


def test_epoch_means_count_each_term_over_the_steps_that_logged_it(small_train):
    """A term (or the accuracy from clean logits) logged at some steps only is averaged over those steps'
    samples, not diluted by the others (pgd-at returns clean logits only at some settings, say)."""
    seen: list[tuple[int, float, bool]] = []
    correct: list[float] = []

    def objective(model, x, y, **batch):
        if batch["progress"] == 1.0:  # fit's check call before training (no training step is at progress 1)
            return cs.objectives.build("standard")(model, x, y)
        step = len(seen)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        odd = step % 2 == 1
        seen.append((x.shape[0], float(step), odd))
        if odd:
            correct.append(float((logits.argmax(1) == y).sum()))
        logs = {"always": 1.0, **({"odd": float(step)} if odd else {})}
        return LossOutput(loss, logs, logits.detach() if odd else None)

    history = cs.fit(mlp(), objective, small_train, **{**FAST, "epochs": 1, "batch_size": 64, "val_fraction": 0.0})
    odd = [(n, v) for n, v, is_odd in seen if is_odd]
    expected = sum(n * v for n, v in odd) / sum(n for n, _ in odd)
    assert history[0]["always"] == pytest.approx(1.0) and history[0]["odd"] == pytest.approx(expected)
    assert history[0]["accuracy"] == pytest.approx(sum(correct) / sum(n for n, _ in odd))
    assert not any(k.startswith("n/") for k in history[0])


def test_fit_checks_the_objective_before_writing_anything(small_train, tmp_path, monkeypatch):
    calls: list[tuple[bool, float]] = []

    def objective(model, x, y, **batch):
        calls.append((model.training, batch["progress"]))
        return cs.objectives.build("pgd-at", eps=0.1, steps=2, norm="l1")(model, x, y, **batch)  # a wrong norm

    with pytest.raises(ConfigError, match="norm must be one of 'linf', 'l2', got 'l1'"):
        cs.fit(mlp(), objective, small_train, out_dir=tmp_path / "run", **FAST)
    assert calls == [(False, 1.0)] and not (tmp_path / "run").exists()  # one eval-mode call, nothing written
    with pytest.raises(DataError, match="no extra 'mask'"):
        cs.fit(mlp(), cs.objectives.build("input-gradient", explanation_mask="mask"), small_train,
               out_dir=tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()
    # the check leaves the run as it would be without it (RNG restored, no state changed)
    a, b = mlp(), mlp()
    objective = cs.objectives.build("pgd-at", eps=0.1, steps=3)
    cs.fit(a, objective, small_train, **{**FAST, "epochs": 1})
    monkeypatch.setattr(cs.engine, "_check_objective", lambda *args: None)
    cs.fit(b, objective, small_train, **{**FAST, "epochs": 1})
    assert same_weights(a.state_dict(), b.state_dict())


def test_validation_split_is_held_out_and_fixed(small_train):
    seen: list[torch.Tensor] = []

    def recording(model, x, y, **batch):
        if batch["progress"] < 1.0:  # not fit's check call before training
            seen.append(x.flatten(1))
        return cs.objectives.build("standard")(model, x, y)

    cs.fit(mlp(), recording, small_train, **{**FAST, "epochs": 1})
    trained = torch.cat(seen)
    assert trained.shape[0] == 400  # 20% of 500 held out
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    val = small_train.x[perm[:100]].flatten(1)
    # no validation image is ever trained on (compare pixel rows)
    assert not (torch.cdist(val, trained) == 0).any()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(small_train, tmp_path):
    def explodes_in_epoch_2(model, x, y, *, epoch, **batch):
        out = cs.objectives.build("standard")(model, x, y)
        return LossOutput(out.loss * (float("nan") if epoch == 1 else 1.0), out.logs, out.logits)

    model = mlp()
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2.*last good checkpoint"):
        cs.fit(model, explodes_in_epoch_2, small_train, out_dir=tmp_path, **FAST)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1
    assert len(io.read_jsonl(tmp_path / "log.jsonl")) == 1
    assert all(torch.isfinite(v).all() for v in io.load_weights(tmp_path / "model.safetensors").values())


def test_existing_run_is_never_overwritten(small_train, tmp_path):
    cs.fit(mlp(), "standard", small_train, out_dir=tmp_path, **FAST)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="already holds a run; pass resume=True"):
        cs.fit(mlp(), "standard", small_train, out_dir=tmp_path, **FAST)
    with pytest.raises(CheckpointError, match=r"config differs.*train.lr \(0.05 -> 0.1\)"):
        cs.fit(mlp(), "standard", small_train, out_dir=tmp_path, resume=True, **{**FAST, "lr": 0.1})
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_resuming_a_finished_run_changes_nothing(small_train, tmp_path):
    model = mlp()
    cs.fit(model, "standard", small_train, out_dir=tmp_path, **FAST)
    again = mlp(seed=5)
    history = cs.fit(again, "standard", small_train, out_dir=tmp_path, resume=True, **FAST)
    assert len(history) == 2 and same_weights(again.state_dict(), model.state_dict())


def test_corrupted_or_hostile_checkpoint_is_refused(small_train, tmp_path):
    cs.fit(mlp(), "standard", small_train, out_dir=tmp_path, **FAST)
    state = tmp_path / CHECKPOINT
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load checkpoint.*corrupted"):
        cs.fit(mlp(), "standard", small_train, out_dir=tmp_path, resume=True, **FAST)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, state)  # a pickle that runs code if unpickled without restriction
    with pytest.raises(CheckpointError):
        cs.fit(mlp(), "standard", small_train, out_dir=tmp_path, resume=True, **FAST)
    assert not marker.exists()
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        io.load_weights(tmp_path / "model.safetensors")


def test_keep_best_holds_the_best_validation_epoch(small_train, tmp_path):
    model = mlp()
    history = cs.fit(model, "standard", small_train, out_dir=tmp_path, **{**FAST, "epochs": 4, "keep": "best",
                                                                          "lr": 0.5})
    kept = [r["epoch"] for r in history if r.get("kept")]
    best = max(history, key=lambda r: r["val_accuracy"])
    assert kept[-1] == best["epoch"]
    saved = io.load_weights(tmp_path / "model.safetensors")
    assert same_weights(saved, model.state_dict())  # the model in memory is the kept one too
    reloaded = mlp()
    reloaded.load_state_dict(saved)
    val = small_train.subset(torch.randperm(500, generator=torch.Generator().manual_seed(0))[:100])
    assert cs.evaluate(reloaded, val)["accuracy"] == pytest.approx(best["val_accuracy"])


def test_bad_inputs_are_caught_where_they_enter(small_train):
    with pytest.raises(ConfigError, match="fit\\(\\) has no option 'learning_rate'; valid options: epochs"):
        cs.fit(mlp(), "standard", small_train, learning_rate=0.1)
    five_way = cs.models.build("mlp", num_classes=5, input_shape=(1, 28, 28), widths=[8])
    with pytest.raises(DataError, match=r"labels in \[0, 9\] but there are 5 classes"):
        cs.fit(five_way, "standard", small_train, **FAST)
    with pytest.raises(DataError, match="must lie in \\[0, 1\\]"):
        cs.data.ArrayDataset(small_train.x * 255, small_train.y, classes=small_train.classes)
    with pytest.raises(ConfigError, match="unknown device"):
        cs.fit(mlp(), "standard", small_train, **{**FAST, "device": "tpu"})
    with pytest.raises(ConfigError, match="unknown suite"):
        cs.evaluate(mlp(), small_train, suite="everything")


def test_evaluate_accuracy_matches_a_hand_count():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3, 2))  # logits = (x0, x1, 0): class 0 if x0 > x1, else class 1
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.1]])
    y = torch.tensor([0, 1, 1, 2, 0])  # predictions 0, 1, 0, 1, 0 -> correct: yes, yes, no, no, yes
    ds = cs.data.ArrayDataset(x, y, classes=["a", "b", "c"], name="toy", split="test")
    rows = cs.evaluate_rows(model, ds, batch_size=2, suite="clean")
    assert rows[0]["value"] == pytest.approx(3 / 5) and rows[0]["n"] == 5 and rows[0]["higher_is_better"]
    assert model.training  # mode restored
    with pytest.raises(ConfigError, match="declares no attack budgets; pass eps_grid"):
        cs.evaluate(model, ds)  # "toy" is no registered dataset, so the quick suite has no eps grid


def test_quick_suite_robust_accuracy_matches_the_linear_closed_form():
    """Binary linear model z = (w.x, 0): an interior point is robust at linf eps iff its margin > eps*||w||_1."""
    torch.manual_seed(3)
    w = torch.randn(16)
    model = nn.Sequential(nn.Linear(16, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.stack([w, torch.zeros(16)]))
    x = 0.3 + 0.4 * torch.rand(400, 16)  # eps <= 0.2 keeps every ball inside [0, 1]
    y = (x @ w < 0).long()  # label = the predicted class, so every sample is clean-correct
    ds = cs.data.ArrayDataset(x, y, classes=["pos", "neg"], name="toy", split="test")
    result = cs.evaluate(model, ds, eps_grid={"linf": (0.05, 0.2)})
    margin = (x @ w).abs()
    for eps in (0.05, 0.2):
        expected = float((margin > eps * w.abs().sum()).float().mean())
        key = f"robust_accuracy/attack=pgd/eps={eps}/norm=linf/steps=20/samples=1000"
        assert result[key] == pytest.approx(expected)
    assert 0 < result[key] < result["accuracy"] == 1.0  # key: the row at eps 0.2
    assert result["hygiene/eps=0.2/max_gap=None/norm=linf"] == 0.0



def linear_binary(seed: int = 3, n: int = 400):
    """z = (w.x, 0) with labels = predictions, inputs whose linf balls of radius <= 0.2 stay inside [0, 1]."""
    torch.manual_seed(seed)
    w = torch.randn(16)
    model = nn.Sequential(nn.Linear(16, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.stack([w, torch.zeros(16)]))
    x = 0.3 + 0.4 * torch.rand(n, 16)
    y = (x @ w < 0).long()
    return model, w, cs.data.ArrayDataset(x, y, classes=["pos", "neg"], name="toy", split="test")


def attack_rows(name: str, grid: tuple[float, ...], classes: int) -> cs.metrics.Suite:
    """The robust-accuracy rows and hygiene of a shipped suite (its explanation rows need a ReLU network)."""
    spec = cs.metrics.suite(name, eps_grid={"linf": grid}, num_classes=classes)
    return cs.metrics.Suite(name, [r for r in spec.rows if r.metric in ("accuracy", "robust_accuracy")], spec.hygiene)


def test_full_suite_worst_case_row_runs_each_attack_with_its_own_options():
    model, w, ds = linear_binary(n=200)
    rows = {r["key"]: r for r in cs.evaluate_rows(model, ds, suite=attack_rows("full", (0.05, 0.2), 2))}
    margin = (ds.x @ w).abs()
    for eps in (0.05, 0.2):
        expected = float((margin > eps * w.abs().sum()).float().mean())
        pgd = rows[f"robust_accuracy/attack=pgd/eps={eps}/norm=linf/steps=40"]
        both = rows[f"robust_accuracy/attack=pgd+apgd:loss=ce,steps=100/eps={eps}/norm=linf/steps=40"]
        assert pgd["value"] == pytest.approx(expected) and both["value"] == pytest.approx(expected)
    assert rows["hygiene/eps=0.2/norm=linf"]["warnings"] == []
    spec = cs.metrics.suite("full", eps_grid={"linf": (0.1,)}, num_classes=10)
    assert cs.metrics.Row("robust_accuracy", {"attack": [("pgd", {}), ("apgd", {"loss": "dlr", "steps": 100})],
                                              "norm": "linf", "eps": 0.1, "steps": 40}) in spec.rows
    with pytest.raises(ConfigError, match=r"eps_grid\['linf'\] must be a non-empty list"):
        cs.metrics.suite("full", eps_grid={"linf": ()}, num_classes=10)


def test_the_worst_case_row_reuses_the_pgd_row_and_never_exceeds_it(monkeypatch):
    import importlib

    # the package exports functions named like their modules: fetch the modules themselves
    pgd_module, apgd_module = (importlib.import_module(f"clearsight.attacks.{m}") for m in ("pgd", "apgd"))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.rand(96, 16)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct at eps 0, so every sample is attacked
    ds = cs.data.ArrayDataset(x, y, classes=["a", "b", "c"], name="toy", split="test")
    calls = {"pgd": 0, "apgd": 0}

    def counting(name, run):
        def wrapped(*args, **kwargs):
            calls[name] += kwargs["eps"] == 0.02  # the hygiene check attacks at the largest budget only
            return run(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(pgd_module, "run_attack", counting("pgd", pgd_module.run_attack))
    monkeypatch.setattr(apgd_module, "run_attack", counting("apgd", apgd_module.run_attack))
    rows = {r["key"]: r for r in cs.evaluate_rows(model, ds, suite=attack_rows("full", (0.02, 0.1), 3),
                                                  batch_size=32)}
    assert calls["pgd"] == 3  # one pgd-40 per batch at this budget: the worst-case row reuses it
    assert 0 < calls["apgd"] <= 3
    for eps in (0.02, 0.1):
        pgd = rows[f"robust_accuracy/attack=pgd/eps={eps}/norm=linf/steps=40"]["value"]
        both = rows[f"robust_accuracy/attack=pgd+apgd:loss=dlr,steps=100/eps={eps}/norm=linf/steps=40"]["value"]
        assert both <= pgd
    assert pgd < 1.0  # eps 0.1 breaks some samples, so the comparison above is not vacuous


def test_attack_lists_are_data_and_give_each_attack_its_options():
    from clearsight.metrics.accuracy import attack_list

    assert attack_list("pgd") == [("pgd", {})]
    assert attack_list([("pgd", {}), {"name": "apgd", "steps": 100, "loss": "dlr"}]) == [
        ("pgd", {}), ("apgd", {"steps": 100, "loss": "dlr"})]
    assert attack_list(["pgd", {"restarts": 2}]) == [("pgd", {"restarts": 2})]
    with pytest.raises(ConfigError, match="looks like an attack string"):
        attack_list("pgd:steps=3")
    model, w, ds = linear_binary(n=64)
    with pytest.raises(ConfigError, match="changes the explanation, not the prediction"):
        cs.metrics.get("robust_accuracy")(model, ds.x, ds.y, eps=0.1, attack="explanation")
    with pytest.raises(ConfigError, match="attack 'apgd' has no option 'stepz'"):
        cs.metrics.get("robust_accuracy")(model, ds.x, ds.y, eps=0.1, attack=[("apgd", {"stepz": 3})])
    # each attack runs with its own options: a 1-step fgsm-like pgd fails where a 40-step pgd succeeds
    margin = (ds.x @ w).abs()
    expected = float((margin > 0.2 * w.abs().sum()).float().mean())
    strong = cs.metrics.get("robust_accuracy")(model, ds.x, ds.y, eps=0.2, steps=1,
                                               attack=[("pgd", {"steps": 40})])
    assert float(strong.mean()) == pytest.approx(expected)


def test_evaluation_is_seeded_and_leaves_the_global_rng_alone():
    _, _, ds = linear_binary(n=64)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))  # non-linear: random starts matter
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = cs.evaluate(model, ds, eps_grid={"linf": (0.1, 0.2)})
    assert torch.equal(torch.random.get_rng_state(), state)
    assert cs.evaluate(model, ds, eps_grid={"linf": (0.1, 0.2)}) == first


def test_result_rows_are_standard_json_and_keep_their_fields(tmp_path):
    path = tmp_path / "results.jsonl"
    io.append_jsonl(path, [{"key": "delta_bound", "value": float("inf"), "options": {"p": float("inf")}, "n": 2}])
    text = path.read_text()
    assert "Infinity" not in text
    assert json.loads(text) == {"key": "delta_bound", "value": "inf", "options": {"p": "inf"}, "n": 2}
    from clearsight.results import row_key

    # options live under "options", so a metric option may share a row field's name (max_sensitivity's n)
    assert row_key("max_sensitivity", {"n": 10, "radius": 0.1}) == "max_sensitivity/n=10/radius=0.1"


def _append_many(path: str, tag: int, n: int) -> None:
    for i in range(n):
        io.append_jsonl(Path(path), [{"key": "row", "writer": tag, "i": i}])


def test_concurrent_appends_keep_every_row(tmp_path):
    # two processes appending to one results file at once (evaluate and certify on one run): no row may be lost
    import multiprocessing

    path = tmp_path / "results.jsonl"
    io.append_jsonl(path, [{"key": "first"}])
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    writers = [ctx.Process(target=_append_many, args=(str(path), tag, 40)) for tag in (1, 2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert all(w.exitcode == 0 for w in writers)
    rows = io.read_jsonl(path)
    assert rows[0] == {"key": "first"} and len(rows) == 81
    for tag in (1, 2):  # each writer's rows, all there and in its own order
        assert [r["i"] for r in rows if r.get("writer") == tag] == list(range(40))


def test_learning_rate_schedules():
    cos = TrainConfig(schedule="cosine")
    assert lr_factor(cos, 0, 100) == 1.0 and lr_factor(cos, 50, 100) == pytest.approx(0.5)
    assert lr_factor(cos, 25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    step = TrainConfig(schedule="step", milestones=(0.5, 0.75), lr_decay=0.1)
    assert [lr_factor(step, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(TrainConfig(schedule="constant"), 70, 100) == 1.0


def test_progress_lines_without_a_terminal(small_train, capsys):
    cs.fit(mlp(), "standard", small_train, **{**FAST, "epochs": 1, "progress": "auto"})
    err = capsys.readouterr().err
    assert err.startswith("epoch 1 | loss ") and "val_accuracy" in err


TRAIN = [sys.executable, "-m", "clearsight.cli", "train", "--dataset", "mnist-mini", "--model", "small-cnn",
         "--epochs", "4", "--set", "train.val_fraction=0.6", "--set", "train.progress=none"]


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL after an epoch's checkpoint, resume: same final weights as an uninterrupted run (dropout included)."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = subprocess.Popen([*TRAIN, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (killed / CHECKPOINT).exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(killed / CHECKPOINT, weights_only=True)["epoch"]
    assert 1 <= interrupted_at < 4  # killed mid-run
    subprocess.run([*TRAIN, "--out", str(killed), "--resume"], check=True, capture_output=True)
    subprocess.run([*TRAIN, "--out", str(whole)], check=True, capture_output=True)
    assert same_weights(io.load_weights(whole / "model.safetensors"), io.load_weights(killed / "model.safetensors"))
    assert [r["epoch"] for r in io.read_jsonl(killed / "log.jsonl")] == [1, 2, 3, 4]
    whole_log, killed_log = io.read_jsonl(whole / "log.jsonl"), io.read_jsonl(killed / "log.jsonl")
    assert [r["loss"] for r in whole_log] == [r["loss"] for r in killed_log]


DDP_SCRIPT = """
import os, sys
from pathlib import Path
import torch
import clearsight as cs
from clearsight import io
train = cs.data.load("mnist-mini", "train").subset(torch.arange(0, 5000, 5))
torch.manual_seed(int(os.environ["RANK"]))  # different initial weights per rank: rank 0's must win
model = cs.models.build("small-cnn", num_classes=10, hidden=64)
cs.fit(model, "standard", train, epochs=3, batch_size=32, progress="none", out_dir=sys.argv[1] + "/run")
io.save_weights(Path(sys.argv[1]) / f"rank{os.environ['RANK']}.safetensors", model.state_dict())
"""


def test_two_process_data_parallel_ends_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (io.load_weights(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert same_weights(rank0, rank1)
    assert same_weights(rank0, io.load_weights(tmp_path / "run" / "model.safetensors"))
    history = io.read_jsonl(tmp_path / "run" / "log.jsonl")
    assert len(history) == 3 and history[-1]["val_accuracy"] > 0.5  # it learned, from the global batch


NAN_ON_ONE_RANK_SCRIPT = """
import hashlib, os, sys
import torch
import clearsight as cs
from clearsight.errors import TrainingError
from clearsight.objectives import LossOutput
seen = [0]
def objective(model, x, y, *, epoch, progress, **batch):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if os.environ["RANK"] == "1" and epoch == 1 and progress < 1.0:  # progress 1.0: fit's check call
        seen[0] += 1
        if seen[0] == 3:
            loss = loss * float("nan")
    return LossOutput(loss, {"ce": float(loss)})
train = cs.data.load("mnist-mini", "train").subset(torch.arange(0, 5000, 10))
model = cs.models.build("small-cnn", num_classes=10, hidden=32)
try:
    cs.fit(model, objective, train, epochs=2, batch_size=32, progress="none", out_dir=sys.argv[1] + "/run")
except TrainingError as e:
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    # One file per rank: two processes printing to one pipe can interleave their lines.
    with open(f"{sys.argv[1]}/said{os.environ['RANK']}.txt", "w") as f:
        f.write(f"{e} | weights {digest}")
    sys.exit(3)
"""


def test_a_loss_that_diverges_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's loss alone becomes NaN in epoch 2: both ranks stop with the error at the same step (rank 0 says it
    happened on 1 of 2 ranks and that its own terms are finite) instead of one rank waiting for the other, no NaN
    gradient is applied (the replicas stay identical), and epoch 1's checkpoint is kept."""
    script = tmp_path / "nan.py"
    script.write_text(NAN_ON_ONE_RANK_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode != 0
    said = {f"rank {r}": (tmp_path / f"said{r}.txt").read_text() for r in (0, 1)
            if (tmp_path / f"said{r}.txt").exists()}
    assert set(said) == {"rank 0", "rank 1"}, result.stdout + result.stderr[-3000:]
    assert said["rank 1"].startswith("the loss became NaN or infinite on 1 of 2 ranks (here nan) at epoch 2, step 3")
    assert said["rank 0"].startswith("the loss became NaN or infinite on 1 of 2 ranks (finite here) at epoch 2, "
                                     "step 3 (this rank's terms: {'ce': ")
    assert all("The last good checkpoint is kept" in text for text in said.values()), said
    assert said["rank 0"].split(" | weights ")[1] == said["rank 1"].split(" | weights ")[1]
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_evaluation_reports_progress_a_line_per_row(capsys):
    _, _, ds = linear_binary(n=32)
    model = nn.Sequential(nn.Linear(16, 2))
    rows = cs.evaluate_rows(model, ds, eps_grid={"linf": (0.1,)}, progress="lines")
    err = capsys.readouterr().err.splitlines()
    lines = [line.split(" | ")[0] for line in err]
    assert [line for line in lines if line.startswith("row ")] == [
        f"row {r['key']}" for r in rows if r["metric"] != "hygiene"]
    assert lines[0] == "batch 1/1"  # a line per batch too: a long evaluation shows it is alive
    cs.evaluate_rows(model, ds, suite="clean", progress="none")
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="unknown progress mode 'loud'"):
        cs.evaluate(model, ds, suite="clean", progress="loud")


def test_a_bare_cuda_device_under_torchrun_is_the_local_rank(monkeypatch):
    from clearsight.distributed import local_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device(torch.device("cuda")) == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert local_device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # an explicit index is kept
    assert local_device(torch.device("cpu")) == torch.device("cpu")
