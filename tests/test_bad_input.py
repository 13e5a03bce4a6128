"""Bad options and broken models: a clear one-line error, a non-zero exit, nothing written, nothing changed.

One row per bad input in TABLE (a command, the exit code, a phrase its message must hold); every row checks that
the files present before are byte-identical after and that no traceback was shown. The property test feeds
values of the wrong type and range to every config field and objective option: each is refused with a message
naming it, or trains a step with a finite loss.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clearsight as cs
from clearsight import io
from clearsight.cli import main
from clearsight.config import TrainConfig, resolve
from clearsight.errors import ClearsightError, ConfigError, DataError, TrainingError
from clearsight.objectives import OBJECTIVES, LossOutput
from clearsight.options import NonNegative, option_hints

CREDIT = ["--dataset", "german-credit", "--model", "mlp", "--epochs", "1", "--set", "model.widths=[8]",
          "--set", "train.progress=none"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder with a trained german-credit run ("good") and a copy whose logit weights are NaN ("nan")."""
    base = tmp_path_factory.mktemp("bad-input")
    assert main(["train", *CREDIT, "--out", str(base / "good")]) == 0
    shutil.copytree(base / "good", base / "nan")
    state = io.load_weights(base / "nan" / "model.safetensors")
    state["logits.weight"][:] = float("nan")
    io.save_weights(base / "nan" / "model.safetensors", state)
    return base


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def call(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and standard error of the CLI run in-process (argparse's usage errors exit with 2)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    return code, capsys.readouterr().err


# (command, exit code, phrase of the message); "{d}" is the runs folder, "{new}" a path that does not exist yet
TABLE = [
    # options that would train a broken model, refused before anything is written
    (["train", *CREDIT, "--set", "train.grad_clip=-1", "--out", "{new}"],
     1, "train.grad_clip must be a finite number > 0"),
    (["train", *CREDIT, "--set", "train.lr=.nan", "--out", "{new}"],
     1, "train.lr must be a finite number > 0, got nan"),
    (["train", *CREDIT, "--set", "train.lr=.inf", "--out", "{new}"],
     1, "train.lr must be a finite number > 0, got inf"),
    (["train", *CREDIT, "--set", "train.momentum=-0.5", "--out", "{new}"],
     1, "train.momentum must be a finite number in [0, 1)"),
    (["train", *CREDIT, "--set", "train.weight_decay=-1", "--out", "{new}"],
     1, "train.weight_decay must be a finite number >= 0"),
    (["train", *CREDIT, "--set", "train.seed=-3", "--out", "{new}"], 1, "train.seed must be an int in [0, "),
    (["train", *CREDIT, "--set", "train.milestones=[0.5, 2]", "--out", "{new}"],
     1, "train.milestones[1] must be a finite number in [0, 1]"),
    (["train", *CREDIT, "--set", "train.optimizer=adamw", "--out", "{new}"], 1, "(did you mean 'adam'?)"),
    (["train", *CREDIT, "--set", "train.lrr=0.1", "--out", "{new}"],
     1, "train has no option 'lrr' (did you mean 'lr'?)"),
    (["train", *CREDIT, "--set", "model.widths=[8, x]", "--out", "{new}"],
     1, "model.widths[1] must be an int >= 1, got 'x'"),
    (["train", *CREDIT, "--set", "model.widths=[8, -2]", "--out", "{new}"],
     1, "model.widths[1] must be an int >= 1, got -2"),
    (["train", "--dataset", "mnist-mini", "--set", "model.dropout=1.5", "--out", "{new}"], 1,
     "model.dropout must be a finite number in [0, 1), got 1.5"),
    (["train", "--dataset", "mnist-mini", "--set", "model.hidden=-1", "--out", "{new}"],
     1, "model.hidden must be an int >= 1"),
    (["train", "--dataset", "mnist-mini", "--set", "model.pool=min", "--out", "{new}"], 1,
     "model.pool must be one of 'max', 'avg', got 'min'"),
    (["train", *CREDIT, "--set", "objective.label_smoothing=2", "--out", "{new}"], 1,
     "objective.label_smoothing must be a finite number in [0, 1], got 2"),
    (["train", *CREDIT, "--objective", "pgd-at", "--set", "objective.steps=0", "--out", "{new}"], 1,
     "objective.steps must be an int >= 1, got 0"),
    (["train", *CREDIT, "--objective", "pgd-at", "--set", "objective.eps=.nan", "--out", "{new}"], 1,
     "objective.eps must be a finite number >= 0, got nan"),
    (["train", *CREDIT, "--objective", "trades", "--set", "objective.norm=l3", "--out", "{new}"], 1,
     "objective.norm must be one of 'linf', 'l2', got 'l3'"),
    (["train", *CREDIT, "--objective", "pgd-at", "--set", "objective.stepz=3", "--out", "{new}"], 1,
     "has no option 'stepz' (did you mean 'steps'?)"),
    (["train", *CREDIT, "--set", "data.test_fraction=1", "--out", "{new}"], 1,
     "data.test_fraction must be a finite number in (0, 1), got 1"),
    (["train", *CREDIT, "--set", "tran.lr=0.1", "--out", "{new}"], 1, "unknown config section 'tran'"),
    # paths
    (["train", *CREDIT, "--out", ""], 2, "argument --out: expected a path, got an empty string"),
    (["train", *CREDIT, "--out", "{new}", "--resume"], 1, "holds no run to continue"),
    (["train", *CREDIT, "--out", "{d}/good"], 1, "already holds a run"),
    (["evaluate", "{d}/good", "--suite", "clean", "--out", "{d}"], 1, "is a directory"),
    (["study", "--out", ""], 2, "argument --out: expected a path"),
    # numeric flags
    (["certify", "{d}/good", "--eps", "nan"], 2, "argument --eps: expected a finite number >= 0, got 'nan'"),
    (["certify", "{d}/good", "--eps", "0.01", "--delta", "nan"], 2, "argument --delta: expected a finite number >= 0"),
    (["certify", "{d}/good", "--eps", "0.01", "--delta", "-1"], 2, "argument --delta: expected a finite number >= 0"),
    (["certify", "{d}/good", "--eps", "0.01", "--gamma", "inf"], 2, "argument --gamma: expected a finite number >= 0"),
    (["certify", "{d}/good", "--eps", "0.01", "--p", "0.5"], 2, "argument --p: expected a number (inf allowed) >= 1"),
    (["certify", "{d}/good", "--eps", "0.01", "--topk", "0"], 2, "argument --topk: expected an int >= 1, got '0'"),
    (["targets", "{d}/good", "--out", "{new}", "--n", "0"], 2, "argument --n: expected an int >= 1"),
    (["targets", "{d}/good", "--out", "{new}", "--sigma", "-0.1"],
     2, "argument --sigma: expected a finite number >= 0"),
    (["train", *CREDIT, "--epochs", "0", "--out", "{new}"], 2, "argument --epochs: expected an int >= 1, got '0'"),
    # a model whose logits are NaN is never scored
    (["evaluate", "{d}/nan", "--suite", "clean"],
     1, "model.safetensors holds NaN or infinite values (in logits.weight)"),
    (["certify", "{d}/nan", "--eps", "0.01"], 1, "model.safetensors holds NaN or infinite values"),
]


@pytest.mark.parametrize("argv, code, phrase", TABLE, ids=[f"{' '.join(r[0][:1])}-{i}" for i, r in enumerate(TABLE)])
def test_bad_input_is_refused_and_changes_nothing(runs, tmp_path, capsys, argv, code, phrase):
    new = tmp_path / "new"
    argv = [a.replace("{d}", str(runs)).replace("{new}", str(new)) for a in argv]
    before = snapshot(runs)
    got, err = call(argv, capsys)
    assert got == code, err
    assert phrase in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert snapshot(runs) == before
    assert not new.exists()  # nothing written before validation


def test_the_command_line_wins_over_the_config_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data: {name: mnist-mini}\nmodel: {name: small-cnn}\ntrain: {epochs: 3, lr: 0.01}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), *CREDIT, "--out", str(out)]) == 0
    written = io.read_yaml(out / "config.yaml")
    assert written["data"]["name"] == "german-credit" and written["model"]["name"] == "mlp"
    assert written["train"]["epochs"] == 1 and written["train"]["lr"] == 0.01  # the file's lr, the flag's epochs
    capsys.readouterr()


def test_a_run_that_diverges_before_its_first_epoch_leaves_its_folder_usable(tmp_path):
    data = cs.data.load("german-credit", "train").subset(torch.arange(32))
    model = cs.models.build("mlp", num_classes=2, input_shape=data.input_shape, widths=[8])
    options = {"batch_size": 16, "val_fraction": 0.0, "progress": "none"}

    def diverging_at(bad_epoch):
        def objective(model, x, y, *, epoch, **batch):
            ce = torch.nn.functional.cross_entropy(model(x), y)
            return LossOutput(ce * float("nan") if epoch == bad_epoch else ce)
        return objective

    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="No epoch had finished, so nothing was kept"):
        cs.fit(model, diverging_at(0), data, out_dir=out, epochs=1, **options)
    assert not out.exists()  # the config.yaml it had written is gone with the folder it made
    made = tmp_path / "made"
    made.mkdir()
    with pytest.raises(TrainingError, match="can be used again"):
        cs.fit(model, diverging_at(0), data, out_dir=made, epochs=1, **options)
    assert made.is_dir() and not any(made.iterdir())  # the user's folder stays, emptied of what the run wrote
    cs.fit(model, "standard", data, out_dir=out, epochs=1, **options)  # the same --out can be used again
    assert (out / "model.safetensors").exists()
    late = tmp_path / "late"
    with pytest.raises(TrainingError, match="The last good checkpoint is kept"):
        cs.fit(model, diverging_at(1), data, out_dir=late, epochs=2, **options)
    assert (late / "model.safetensors").exists() and (late / "config.yaml").exists()
    assert len(io.read_jsonl(late / "log.jsonl")) == 1


def test_logits_that_overflow_are_refused_by_the_evaluation_driver():
    data = cs.data.load("german-credit", "test")
    model = cs.models.build("mlp", num_classes=2, input_shape=data.input_shape, widths=[8])
    with torch.no_grad():  # finite weights whose logits overflow float32
        for p in model.parameters():
            p.fill_(3e18)
    with pytest.raises(DataError, match="logits are NaN or infinite on"):
        cs.evaluate(model, data, suite="clean", device="cpu", progress="none")


# ---- valid values at the ends of their ranges are accepted ------------------------------------------------------

ACCEPTED = [
    {"train": {"momentum": 0, "weight_decay": 0, "lr_decay": 2, "val_fraction": 0, "milestones": [0, 1]}},
    {"model": {"name": "small-cnn", "dropout": 0}},
    {"objective": {"name": "certified-explanation", "alpha": 2.5, "gamma": 0, "ramp": 1, "warmup": 1}},
    {"objective": {"name": "ibp", "kappa_end": 1}},
    {"objective": {"name": "pgd-at", "mix": 0, "eps": 0, "steps": 1}},
    {"objective": {"name": "scaat", "keep_mass": 1}},
    {"objective": {"name": "scaat", "keep_mass": 0}},
    {"objective": {"name": "standard", "label_smoothing": 1}},
    {"objective": {"name": "input-gradient", "lam": 3}},  # an int for a float
]


@pytest.mark.parametrize("doc", ACCEPTED, ids=lambda d: str(d)[:60])
def test_values_at_the_ends_of_their_ranges_are_accepted(doc):
    resolve(doc)


def test_numbers_of_other_kinds_and_devices_are_taken():
    import numpy as np

    from clearsight.metrics import certified_suite
    from clearsight.options import Count, NormOrder, coerce

    assert TrainConfig(epochs=np.int64(3), lr=np.float32(0.5), device=torch.device("cpu")).device == "cpu"
    assert coerce("eps", torch.tensor(0.25), NonNegative) == 0.25 and coerce("n", np.int64(4), Count) == 4
    assert coerce("p", math.inf, NormOrder) == math.inf  # l-inf
    suite = certified_suite(eps=[0.01], gamma=0.0, topk=None, sensitive=None, delta=0.1, p=math.inf, of="logit",
                            relative=True)
    assert any(r.options.get("p") == math.inf for r in suite.rows)
    with pytest.raises(ConfigError, match="must be a number \\(inf allowed\\) >= 1, got nan"):
        coerce("p", math.nan, NormOrder)


def test_study_teachers_seeds_and_hygiene_are_checked():
    from clearsight.metrics import suite
    from clearsight.study import parse

    study = {"name": "t", "dataset": {"name": "german-credit"}, "model": {"name": "mlp", "widths": [8]},
             "methods": [{"name": "teacher", "objective": "pgd-at"},
                         {"name": "ir", "objective": "ir", "teacher": {"method": "teacher", "sigma": math.inf}}]}
    with pytest.raises(ConfigError, match="teacher.sigma must be a finite number >= 0, got inf"):
        parse(study)
    with pytest.raises(ConfigError, match="seeds\\[0\\] must be an int in"):
        parse({**study, "methods": study["methods"][:1], "seeds": [2**70]})
    for bad, phrase in [({"eps": math.nan}, "hygiene.eps must be a finite number >= 0"),
                        ({"epz": 0.1}, "has no option 'epz' (did you mean 'eps'?)")]:
        with pytest.raises(ConfigError, match=re.escape(phrase)):
            suite({"rows": [{"metric": "accuracy"}], "hygiene": bad}, eps_grid=None, num_classes=2)


# ---- the property test ------------------------------------------------------------------------------------------

WRONG = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(-3, 12),
                  st.text(max_size=4), st.booleans(), st.none(), st.lists(st.integers(-2, 4), max_size=3))
TINY = {"widths": [8]}


def _options() -> list[tuple[str, str, str]]:
    train = [("train", "", f) for f in typing.get_type_hints(TrainConfig) if f not in ("device", "progress")]
    objective = [("objective", e.name, k) for e in OBJECTIVES for k in option_hints(e.fn) if k != "targets"]
    return train + objective


@pytest.fixture(scope="module")
def tiny_data():
    return cs.data.load("german-credit", "train").subset(torch.arange(24))


@pytest.mark.parametrize("section, name, key", _options(), ids=lambda v: str(v))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=WRONG)
def test_every_option_refuses_bad_values_or_trains_with_a_finite_loss(tiny_data, section, name, key, value):
    doc = {"data": {"name": "german-credit"}, "model": {"name": "mlp", **TINY},
           "objective": {"name": name or "standard"}, "train": {"progress": "none", "epochs": 1,
                                                                 "batch_size": 8, "val_fraction": 0.0}}
    doc[section][key] = value
    try:
        cfg = resolve(doc)
    except ConfigError as err:
        assert f"{section}.{key}" in str(err), str(err)
        return
    model = cs.models.build("mlp", num_classes=2, input_shape=tiny_data.input_shape, **TINY)
    objective = cs.objectives.build(cfg.objective.name, **cfg.objective.options)
    train = {k: getattr(cfg.train, k) for k in cfg.train.__dataclass_fields__}
    try:
        cs.fit(model, objective, tiny_data, **{**train, "device": "cpu"})
    except TrainingError as err:
        # a loss that is NaN or infinite at the first step: the value should have been refused (a large learning
        # rate may diverge later; that is training, not validation)
        assert "at epoch 1, step 1 " not in str(err), f"{section}.{key}={value!r} was accepted: {err}"
    except ClearsightError:
        pass  # a clear error found later (a combination of options, say) is fine: no traceback
