"""The command line: the acceptance run, the run directory, and user mistakes (clear error, no traceback)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clearsight import io
from clearsight.cli import main
from clearsight.engine import CHECKPOINT

CLI = [sys.executable, "-m", "clearsight.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """The issue's acceptance command: 2 epochs of small-cnn on mnist-mini."""
    out = tmp_path_factory.mktemp("runs") / "first"
    code = main(["train", "--dataset", "mnist-mini", "--model", "small-cnn", "--objective", "standard",
                 "--epochs", "2", "--out", str(out), "--set", "train.progress=none"])
    assert code == 0
    return out


def test_acceptance_run_reaches_95_percent_and_writes_the_run_directory(trained_run):
    files = sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*") if p.is_file())
    assert files == ["checkpoint/state.pt", "config.yaml", "log.jsonl", "model.safetensors", "results.jsonl"]
    results = io.read_jsonl(trained_run / "results.jsonl")
    assert results[0]["metric"] == "accuracy" and results[0]["split"] == "test" and results[0]["n"] == 2000
    assert results[0]["value"] >= 0.95
    config = io.read_yaml(trained_run / "config.yaml")
    assert config["model"]["dropout"] == 0.5 and config["train"]["epochs"] == 2 and config["train"]["seed"] == 0
    assert config["versions"]["torch"] == torch.__version__
    assert len(io.read_jsonl(trained_run / "log.jsonl")) == 2
    state = torch.load(trained_run / CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "rng", "epoch", "history"} <= set(state) and state["epoch"] == 2


def test_evaluate_reopens_the_run_and_appends(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--suite", "clean"]) == 0
    rows = io.read_jsonl(trained_run / "results.jsonl")
    assert len(rows) == 2 and rows[1]["value"] == rows[0]["value"]  # same weights, same test split
    assert "accuracy" in capsys.readouterr().out


def test_evaluate_runs_a_suite_written_as_yaml(trained_run, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: mine\nrows:\n  - {metric: gini, attribution: gradient, samples: 50}\n"
                     "  - {metric: deletion_auc, attribution: {name: smoothgrad, n: 4}, steps: 7, samples: 20}\n")
    out = tmp_path / "r.jsonl"
    assert main(["evaluate", str(trained_run), "--suite", str(suite), "--out", str(out)]) == 0
    rows = io.read_jsonl(out)
    assert [r["key"] for r in rows] == ["gini/attribution=gradient/samples=50",
                                        "deletion_auc/attribution=smoothgrad:n=4/steps=7/samples=20"]
    assert rows[0]["n"] == 50 and rows[1]["suite"] == "mine" and len(rows[1]["curve"]["deletion"]) == 8
    assert 0 < rows[0]["value"] < 1
    result = run("evaluate", str(trained_run), "--suite", "everything")
    assert result.returncode == 1 and "neither a suite (clean, quick, full, certified) nor a YAML file" in result.stderr


@pytest.mark.slow
def test_the_quick_suite_from_the_cli(trained_run, tmp_path):
    """The issue's acceptance: `clearsight evaluate RUN_DIR --suite quick` on a mnist-mini small-cnn."""
    out = tmp_path / "quick.jsonl"
    result = run("evaluate", str(trained_run), "--suite", "quick", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = {r["key"]: r for r in io.read_jsonl(out)}
    metrics = {r["metric"] for r in rows.values()}
    assert {"accuracy", "robust_accuracy", "deletion_auc", "insertion_auc", "gini", "max_sensitivity",
            "relevance_mass", "pointing_game", "hygiene"} <= metrics
    accuracy = rows["accuracy"]["value"]
    low, high = (rows[f"robust_accuracy/attack=pgd/eps={e}/norm=linf/steps=20/samples=1000"]["value"]
                 for e in (0.1, 0.3))
    assert accuracy >= 0.95 and high <= low <= 1.0  # a larger budget never helps the model
    # a trained model's gradient deletes faster than it inserts: faithful in the RISE sense
    assert rows["deletion_auc/attribution=gradient/samples=256"]["value"] < (
        rows["insertion_auc/attribution=gradient/start=blur/samples=256"]["value"])


def test_help_and_list():
    result = run("--help")
    assert result.returncode == 0
    for command in ("list", "train", "evaluate", "certify"):
        assert command in result.stdout
    listing = run("list", "datasets")
    assert listing.returncode == 0
    for name in ("mnist-mini", "mnist", "fashion-mnist", "cifar10", "decoy-mnist", "german-credit", "adult"):
        assert f"\n{name} " in "\n" + listing.stdout
    assert "source='mnist-mini'" in listing.stdout  # options are shown
    metrics = run("list", "metrics").stdout
    assert "options: eps, delta, gamma=0.0" in metrics and "_empty" not in metrics  # required options bare
    objectives_listing = run("list", "objectives").stdout
    assert "eps=<dataset budget>" in objectives_listing and "eps=None" not in objectives_listing
    for command in ("targets",):
        assert command in result.stdout


def _objective_cases() -> list:
    from clearsight.objectives import OBJECTIVES

    # every registered objective except those that read extras from a file (ir: tests/test_seed_objectives.py)
    return [n for n in OBJECTIVES.names() if not OBJECTIVES.meta(n).get("extras")]


@pytest.mark.parametrize("name", _objective_cases())
def test_every_objective_trains_from_the_cli_on_german_credit(tmp_path, name):
    from clearsight.objectives import OBJECTIVES, objective_options

    fast = ["--set", "objective.steps=1"] if "steps" in objective_options(name) else []
    out = tmp_path / name
    code = main(["train", "--dataset", "german-credit", "--model", "mlp", "--objective", name, "--epochs", "1",
                 "--set", "model.widths=[16]", "--set", "train.progress=none", *fast, "--out", str(out)])
    assert code == 0
    config = io.read_yaml(out / "config.yaml")
    assert config["objective"]["name"] == name
    if "eps" in OBJECTIVES.meta(name).get("budgets", ()):
        assert config["objective"]["eps"] == 0.05  # the tabular training budget, written down
    assert io.read_jsonl(out / "log.jsonl")[0]["epoch"] == 1


@pytest.mark.parametrize("args, message", [
    (["train", "--dataset", "imagenet", "--out", "{tmp}/a"], "Valid datasets:"),
    (["train", "--set", "train.learning_rate=1", "--out", "{tmp}/b"], "valid keys: epochs"),
    (["train", "--set", "train.epochs=two", "--out", "{tmp}/c"], "train.epochs must be an int >= 1"),
    (["train", "--dataset", "mnist", "--set", "data.root={tmp}/nodata", "--out", "{tmp}/d"], "download=True"),
    (["evaluate", "{tmp}"], "not a run directory"),
    (["study", "--preset", "quik"], "neither a preset (quick, paper-mnist, tabular, decoy)"),
    (["study", "--print", "quik"], "unknown preset 'quik'"),
    (["study", "--shard", "3/2", "--out", "{tmp}/s"], "--shard expects K/N"),
    (["report", "{tmp}"], "not a study directory"),
])
def test_user_mistakes_exit_nonzero_without_traceback(tmp_path, args, message):
    result = run(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.startswith("clearsight: error:")
    assert "Traceback" not in result.stderr


def test_existing_run_is_refused_and_left_intact(trained_run):
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    result = run("train", "--epochs", "2", "--out", str(trained_run))
    assert result.returncode == 1 and "already holds a run" in result.stderr and "Traceback" not in result.stderr
    assert before == {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}


def test_usage_errors_come_from_argparse():
    result = run("list", "widgets")
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.fixture(scope="module")
def credit_run(tmp_path_factory) -> Path:
    """A small german-credit mlp trained from the command line on the real (embedded) UCI file."""
    out = tmp_path_factory.mktemp("runs") / "credit"
    code = main(["train", "--dataset", "german-credit", "--model", "mlp", "--epochs", "3", "--out", str(out),
                 "--set", "model.widths=[32,32]", "--set", "train.optimizer=adam",
                 "--set", "train.lr=0.005", "--set", "train.progress=none"])
    assert code == 0
    return out


def test_evaluate_full_suite_writes_every_row_of_the_suite(credit_run, tmp_path, capsys):
    """`--suite full` from the command line (german-credit keeps it under a minute): one row per suite row, each
    a number, appended to --out."""
    from clearsight.evaluation import suite_for
    from clearsight.runs import load_data, open_run

    out = tmp_path / "full.jsonl"
    assert main(["evaluate", str(credit_run), "--suite", "full", "--out", str(out)]) == 0
    rows = io.read_jsonl(out)
    suite = suite_for("full", load_data(open_run(credit_run).config, "test"))
    assert [r["key"] for r in rows if r["metric"] != "hygiene"] == [r.key for r in suite.rows]
    assert all(isinstance(r["value"], float) and math.isfinite(r["value"]) and r["suite"] == "full" for r in rows)
    assert {"deletion_auc", "max_sensitivity", "randomisation", "neuron_consistency"} <= {r["metric"] for r in rows}
    capsys.readouterr()


def test_certified_explanation_on_german_credit_needs_no_data_root(tmp_path):
    """Issue 11's acceptance command, in a process that has no data folder and no data environment variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARSIGHT")}
    env["HOME"] = str(tmp_path / "home")  # the default root ~/.cache/clearsight does not exist
    out = tmp_path / "credit"
    proc = subprocess.run([*CLI, "train", "--dataset", "german-credit", "--model", "mlp", "--objective",
                           "certified-explanation", "--epochs", "1", "--set", "train.progress=none", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "home").exists()  # nothing was downloaded or cached
    config = io.read_yaml(out / "config.yaml")
    assert config["data"]["name"] == "german-credit" and config["objective"]["name"] == "certified-explanation"
    assert [r["metric"] for r in io.read_jsonl(out / "results.jsonl")] == ["accuracy"]


def test_resuming_a_finished_run_adds_no_duplicate_row(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "german-credit", "--model", "mlp", "--epochs", "1", "--out", str(out), "--set",
            "model.widths=[8]", "--set", "train.progress=none"]
    assert main(args) == 0
    rows = io.read_jsonl(out / "results.jsonl")
    assert main([*args, "--resume"]) == 0  # nothing left to train: the same weights, the same row
    assert io.read_jsonl(out / "results.jsonl") == rows and len(rows) == 1
    (out / "results.jsonl").unlink()  # as if killed after the last checkpoint, before the row was written
    assert main([*args, "--resume"]) == 0
    assert io.read_jsonl(out / "results.jsonl") == rows


def test_certify_appends_sound_certificates_to_the_run(credit_run, capsys):
    from clearsight import data, evaluate_rows, metrics
    from clearsight.runs import open_run

    before = io.read_jsonl(credit_run / "results.jsonl")
    assert main(["certify", str(credit_run), "--eps", "0", "0.01", "0.05", "--topk", "5", "--sensitive", "sex,age",
                 "--delta", "0.5"]) == 0
    assert "certified_topk" in capsys.readouterr().out
    rows = io.read_jsonl(credit_run / "results.jsonl")
    assert rows[: len(before)] == before  # appended, nothing earlier rewritten
    new = rows[len(before):]
    by = {(r["metric"], r["options"]["eps"]): r["value"] for r in new}
    assert {m for m, _ in by} == {"certified_accuracy", "delta_bound", "certified_delta", "certified_topk"}
    # at eps 0 the box is the point x: certified accuracy is the clean accuracy, the delta bound is 0
    assert by["certified_accuracy", 0.0] == pytest.approx(before[0]["value"])
    assert by["delta_bound", 0.0] == 0.0 and by["certified_delta", 0.0] == 1.0
    for metric in ("certified_accuracy", "certified_delta", "certified_topk"):  # larger boxes certify less
        assert by[metric, 0.0] >= by[metric, 0.01] >= by[metric, 0.05]
    assert by["delta_bound", 0.01] <= by["delta_bound", 0.05]
    # the rows are what the library computes for the same run
    run = open_run(credit_run)
    test = data.load("german-credit", "test", root=run.config.data.options["root"])
    direct = evaluate_rows(run.model, test, suite=metrics.certified_suite(eps=[0.01], topk=5, sensitive="sex,age",
                                                                          delta=0.5), progress="none")
    assert [(r["key"], r["value"]) for r in direct] == [(r["key"], r["value"]) for r in new
                                                        if r["options"]["eps"] == 0.01]
    # the rows of each metric at one eps are the mean of its per-sample certificates
    topk = metrics.certified_topk(run.model.eval(), test.x, test.y, eps=0.01, topk=5,
                                  sensitive=test.sensitive["sex"] + test.sensitive["age"])
    assert by["certified_topk", 0.01] == pytest.approx(float(topk.mean()))


@pytest.mark.parametrize("args, code, message", [
    (["--eps", "0.01"], 1, "MaxPool2d"),                     # small-cnn with max pooling has no sound rule
    (["--eps", "-1"], 2, "argument --eps: expected a finite number >= 0, got '-1'"),  # a usage error (argparse)
])
def test_certify_mistakes_exit_nonzero_and_write_nothing(trained_run, args, code, message):
    before = (trained_run / "results.jsonl").read_bytes()
    result = run("certify", str(trained_run), *args)
    assert result.returncode == code and message in result.stderr and "Traceback" not in result.stderr
    assert (trained_run / "results.jsonl").read_bytes() == before


def test_certify_topk_needs_sensitive_features(credit_run):
    result = run("certify", str(credit_run), "--eps", "0.01", "--topk", "5")
    assert result.returncode == 1 and "needs both topk and sensitive" in result.stderr
    result = run("certify", str(credit_run), "--eps", "0.01", "--topk", "5", "--sensitive", "height")
    assert result.returncode == 1 and "unknown sensitive attribute 'height'" in result.stderr


def test_a_bad_out_path_is_refused_before_any_work(trained_run, tmp_path):
    before = (trained_run / "results.jsonl").read_bytes()
    result = run("evaluate", str(trained_run), "--suite", "clean", "--out", str(tmp_path))
    assert result.returncode == 1 and "is a directory" in result.stderr and "Traceback" not in result.stderr
    result = run("certify", str(trained_run), "--eps", "0.01", "--out", str(tmp_path / "missing" / "r.jsonl"))
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = run("certify", str(trained_run), "--eps", "0.01", "-1")  # every eps checked before any work
    assert result.returncode == 2 and "argument --eps: expected a finite number >= 0" in result.stderr
    assert (trained_run / "results.jsonl").read_bytes() == before


def test_study_cli_runs_a_printed_and_edited_preset_and_rerenders_its_report(tmp_path):
    """`study --print` writes a preset that `study --preset FILE` takes back; `report DIR` re-renders without
    training (the cells are untouched) and prints the summary table."""
    import yaml

    printed = run("study", "--print", "quick")
    assert printed.returncode == 0
    doc = yaml.safe_load(printed.stdout)
    assert doc["name"] == "quick" and len(doc["methods"]) == 12
    doc["methods"] = [m for m in doc["methods"] if m["name"] in ("standard", "certified-explanation")]
    doc["train"]["epochs"] = 1
    doc["evaluate"] = {"samples": 32, "batch_size": 32, "suites": ["clean"]}
    doc["examples"] = {"count": 2, "attributions": ["gradient"]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "mine"
    result = run("study", "--preset", str(tmp_path / "mine.yaml"), "--out", str(out), "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert "certified-explanation" in result.stdout and f"report written to {out / 'report.html'}" in result.stdout
    cells = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    (out / "report.html").unlink()
    again = run("report", str(out))
    assert again.returncode == 0 and (out / "report.html").stat().st_size > 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()} == cells
