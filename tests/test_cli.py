"""The command line: the acceptance run, the run directory, and user mistakes (clear error, no traceback)."""

from __future__ import annotations

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


def test_help_and_list():
    result = run("--help")
    assert result.returncode == 0
    for command in ("list", "train", "evaluate"):
        assert command in result.stdout
    listing = run("list", "datasets")
    assert listing.returncode == 0
    for name in ("mnist-mini", "mnist", "fashion-mnist", "cifar10", "decoy-mnist", "german-credit", "adult"):
        assert f"\n{name} " in "\n" + listing.stdout
    assert "source='mnist-mini'" in listing.stdout  # options are shown


@pytest.mark.parametrize("args, message", [
    (["train", "--dataset", "imagenet", "--out", "{tmp}/a"], "Valid datasets:"),
    (["train", "--set", "train.learning_rate=1", "--out", "{tmp}/b"], "valid keys: epochs"),
    (["train", "--set", "train.epochs=two", "--out", "{tmp}/c"], "train.epochs must be int"),
    (["train", "--dataset", "mnist", "--set", "data.root={tmp}/nodata", "--out", "{tmp}/d"], "download=True"),
    (["evaluate", "{tmp}"], "not a run directory"),
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
