"""clearsight study: the config is checked before anything trains, cells are hashed by what decides their weights,
a killed study finishes with the same results as an uninterrupted one, shards split the work, locks keep two
workers off one cell, and a directory holding other settings is never overwritten."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clearsight import io
from clearsight.errors import ConfigError
from clearsight.study import PRESETS, cells, folders, parse, parse_file, preset_text
from clearsight.study.plan import shard
from clearsight.study.store import Busy, locked

# german-credit with a small MLP: the study's machinery on real data in seconds
TINY = {
    "name": "tiny",
    "dataset": {"name": "german-credit"},
    "model": {"name": "mlp", "widths": [32]},
    "train": {"epochs": 2, "batch_size": 100, "optimizer": "adam", "lr": 0.003},
    "seeds": [0],
    "evaluate": {"suites": ["clean", {"name": "attack", "rows": [
        {"metric": "robust_accuracy", "attack": [{"name": "pgd"}], "norm": "linf", "eps": 0.05, "steps": 3}]}],
        "samples": 120, "batch_size": 50},
    "examples": {"count": 2, "attributions": ["gradient"]},
    "methods": [
        {"name": "standard", "objective": "standard"},
        {"name": "teacher", "objective": "pgd-at", "options": {"norm": "l2", "steps": 2}},
        {"name": "ir", "objective": "ir", "teacher": {"method": "teacher", "n": 2}},
    ],
}


def tiny(**changes):
    doc = copy.deepcopy(TINY)
    doc.update(changes)
    return doc


def run_study(doc, out, *, report=False, **kw):
    from clearsight.study import run, runner

    # the report is tests/test_report.py's concern; here the cells matter, and results.csv where asked
    kw.setdefault("progress", "none")
    original = runner._render
    if not report:
        runner._render = lambda out: out / "report.html"
    try:
        return run(parse(doc), out, **kw)
    finally:
        runner._render = original


def cell_results(out: Path) -> dict[str, dict]:
    """{cell: {"rows": {key: value}, "weights": state dict}} of every complete cell."""
    found = {}
    for folder in sorted((out / "cells").iterdir()):
        state = json.loads((folder / "cell.json").read_text())
        assert state["complete"], folder
        written = [r["key"] for r in io.read_jsonl(folder / "results.jsonl")]
        assert len(written) == len(set(written)), f"{folder.name}: a row was appended twice"
        rows = {r["key"]: r["value"] for r in io.read_jsonl(folder / "results.jsonl")}
        assert sorted(rows) == sorted(state["evaluation"]["rows"])
        examples, _ = io.load_tensors(folder / "examples.safetensors")
        found[folder.name] = {"rows": rows, "weights": io.load_weights(folder / "model.safetensors"),
                              "examples": examples}
    return found


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["rows"] == b[name]["rows"], name
        for part in ("weights", "examples"):
            assert sorted(a[name][part]) == sorted(b[name][part])
            for k, v in a[name][part].items():
                assert torch.equal(v, b[name][part][k]), (name, part, k)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "whole"
    run_study(TINY, out, report=True)
    return out, cell_results(out)


# ---- the config ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc, message", [
    (tiny(method=[]), r"no key 'method' \(did you mean 'methods'"),
    (tiny(methods=[{"name": "a", "objective": "pgd-att"}]), "pgd-at"),
    (tiny(methods=[{"name": "a", "objective": "pgd-at", "options": {"stepz": 3}}]), "has no option 'stepz'"),
    (tiny(methods=[{"name": "a", "objective": "ir", "teacher": {"method": "nobody"}}]), "teacher 'nobody'"),
    (tiny(methods=[{"name": "a", "objective": "ir", "teacher": {"method": "b"}},
                   {"name": "b", "objective": "ir", "teacher": {"method": "a"}}]), "cycle: a -> b -> a"),
    (tiny(methods=[{"name": "a"}, {"name": "a"}]), "two methods are named 'a'"),
    (tiny(methods=[{"name": "A b"}]), "lower-case name"),
    (tiny(seeds=[0, 0]), "distinct"),
    (tiny(seeds=[]), "seeds"),
    (tiny(methods=[{"name": "a", "objective": "standard", "train": {"seed": 3}}]), "set by the study's seeds"),
    (tiny(methods=[{"name": "a", "objective": "standard", "train": {"lrr": 3}}]), "train has no option 'lrr'"),
    (tiny(evaluate={"samples": 0}), "evaluate.samples"),
    (tiny(evaluate={"suite": ["quick"]}), "did you mean 'suites'"),
    (tiny(methods=[{"name": "a", "objective": "ir"}]), "needs a teacher"),
    (tiny(methods=[{"name": "a", "objective": "standard"},
                   {"name": "b", "objective": "standard", "teacher": {"method": "a"}}]), "reads no teacher maps"),
    (tiny(methods=[{"name": "a", "objective": "standard"},
                   {"name": "b", "objective": "ir", "teacher": {"method": "a", "attribution": "smoothgradd"}}]),
     r"attribution must be one of .smoothgrad., .gradient., got .smoothgradd. \(did you mean .smoothgrad.\?\)"),
    (tiny(methods=[{"name": "a", "objective": "standard"},
                   {"name": "b", "objective": "ir", "teacher": {"method": "a", "n": "many"}}]), "n must be"),
])
def test_a_bad_study_is_refused_naming_the_mistake(doc, message):
    with pytest.raises(ConfigError, match=message):
        parse(doc)


def test_a_bad_suite_or_attribution_is_refused_before_anything_is_written(tmp_path):
    for change in ({"evaluate": {"suites": ["quik"]}}, {"examples": {"count": 2, "attributions": ["gradientt"]}}):
        with pytest.raises(ConfigError):
            run_study(tiny(**change), tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_every_preset_parses_and_prints():
    for name in PRESETS:
        group = parse_file(_yaml(preset_text(name)), where=name)
        assert group.name == name
        assert all(cells(s) for s in group.studies)
    tabular = parse_file(_yaml(preset_text("tabular")))
    assert [s.dataset["name"] for s in tabular.studies] == ["german-credit", "adult"]
    assert [p.name for _, p in folders(tabular, None)] == ["german-credit", "adult"]
    assert folders(parse_file(_yaml(preset_text("quick"))), None)[0][1] == Path("runs/quick")


def _yaml(text):
    import yaml
    return yaml.safe_load(text)


def test_cells_are_hashed_by_what_decides_their_weights():
    base = {c.name: c.hash for c in cells(parse(TINY))}
    assert len(set(base.values())) == len(base)
    # evaluation settings never retrain
    same = {c.name: c.hash for c in cells(parse(tiny(evaluate={"samples": 50}, examples={"count": 3})))}
    assert same == base
    # the teacher's options move the teacher and its student, not the others
    doc = tiny()
    doc["methods"][1]["options"]["steps"] = 3
    moved = {c.name: c.hash for c in cells(parse(doc))}
    assert [n for n in base if moved[n] != base[n]] == ["teacher-seed0", "ir-seed0"]
    # so do the target-map settings, for the student alone
    doc = tiny()
    doc["methods"][2]["teacher"]["n"] = 3
    moved = {c.name: c.hash for c in cells(parse(doc))}
    assert [n for n in base if moved[n] != base[n]] == ["ir-seed0"]
    # the device is not a setting of the result
    assert {c.name: c.hash for c in cells(parse(tiny(train={**TINY["train"], "device": "cpu"})))} == base


def test_teachers_come_first_and_shards_partition_the_cells():
    doc = tiny(seeds=[0, 1], methods=[TINY["methods"][2], *TINY["methods"][:2]])  # the student listed first
    order = [c.name for c in cells(parse(doc))]
    assert order.index("teacher-seed0") < order.index("ir-seed0")
    assert order.index("teacher-seed1") < order.index("ir-seed1")
    all_cells = cells(parse(doc))
    parts = [[c.name for c in shard(all_cells, f"{k}/4")] for k in range(1, 5)]
    assert sorted(n for part in parts for n in part) == sorted(order) and all(parts)
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(ConfigError, match="K/N"):
            shard(all_cells, bad)


# ---- running ------------------------------------------------------------------------------------------------

def test_a_study_trains_evaluates_and_reruns_nothing(whole):
    out, results = whole
    assert sorted(results) == ["ir-seed0", "standard-seed0", "teacher-seed0"]
    for r in results.values():
        assert r["rows"]["accuracy/samples=120"] > 0.5  # german-credit: 70% good risks; a trained model is no worse
    ir_cfg = io.read_yaml(out / "cells" / "ir-seed0" / "config.yaml")
    assert Path(ir_cfg["objective"]["targets"]).parent == (out / "cells" / "teacher-seed0").resolve()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    run_study(TINY, out)
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()} == stamps


def test_an_added_row_is_computed_alone_and_settings_changes_need_update(whole, tmp_path):
    out = tmp_path / "s"
    run_study(TINY, out)
    logs = {p: p.read_bytes() for p in (out / "cells").rglob("log.jsonl")}
    doc = tiny()
    doc["evaluate"]["suites"][1]["rows"].append(
        {"metric": "robust_accuracy", "attack": [{"name": "pgd"}], "norm": "linf", "eps": 0.1, "steps": 3})
    with pytest.raises(ConfigError, match="--update"):
        run_study(doc, out)
    run_study(doc, out, update=True)
    assert {p: p.read_bytes() for p in (out / "cells").rglob("log.jsonl")} == logs  # nothing retrained
    after = cell_results(out)
    for name, r in whole[1].items():
        assert {k: v for k, v in after[name]["rows"].items() if k in r["rows"]} == r["rows"]
        assert len(after[name]["rows"]) == len(r["rows"]) + 1
    assert list((out / "stale").glob("study-*.yaml"))
    # new examples settings are computed with --update too, and nothing retrains
    run_study(tiny(examples={"count": 3, "attributions": ["gradient"]}, evaluate=doc["evaluate"]), out, update=True)
    assert {p: p.read_bytes() for p in (out / "cells").rglob("log.jsonl")} == logs
    assert all(v["examples"]["y"].shape[0] == 3 for v in cell_results(out).values())


def test_rows_deleted_by_hand_or_of_older_conventions_are_recomputed_without_retraining(whole, tmp_path,
                                                                                       monkeypatch):
    import clearsight.results

    out = tmp_path / "s"
    run_study(TINY, out)
    logs = {p: p.read_bytes() for p in (out / "cells").rglob("log.jsonl")}
    results = out / "cells" / "standard-seed0" / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:-1]))  # the last row deleted by hand
    run_study(TINY, out)
    assert cell_results(out)["standard-seed0"]["rows"] == whole[1]["standard-seed0"]["rows"]
    # a newer clearsight whose rows are computed differently: every cell's rows set aside and redone
    monkeypatch.setattr(clearsight.results, "CONVENTIONS", clearsight.results.CONVENTIONS + 1)
    run_study(TINY, out)
    assert {p: p.read_bytes() for p in (out / "cells").rglob("log.jsonl")} == logs  # nothing retrained
    for folder in (out / "cells").iterdir():
        assert len(list(folder.glob("results-*.jsonl"))) == 1, folder.name  # the old rows kept beside
    assert_same(cell_results(out), whole[1])
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    run_study(TINY, out)  # and then they are current: nothing is redone
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()} == stamps


def test_a_changed_method_retrains_only_its_cells_and_keeps_the_old_ones(whole, tmp_path):
    out = tmp_path / "s"
    run_study(TINY, out)
    doc = tiny()
    doc["methods"][2]["options"] = {"lambda_cs": 1.0}
    run_study(doc, out, update=True)
    after = cell_results(out)
    for name in ("standard-seed0", "teacher-seed0"):
        assert after[name]["rows"] == whole[1][name]["rows"]
    assert sorted(p.name.rsplit("-", 1)[0] for p in (out / "stale").iterdir() if p.is_dir()) == ["ir-seed0"]


def test_a_directory_that_is_not_this_study_is_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a study directory"):
        run_study(TINY, tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


KILLER = textwrap.dedent("""
    import os, sys, json
    import clearsight.engine, clearsight.evaluation, clearsight.targets
    from clearsight.study import parse, run, runner
    point, after = sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}
    def dying(module, name):
        real = getattr(module, name)
        def wrapper(*a, **k):
            calls["n"] += 1
            if calls["n"] > after:
                os._exit(9)  # like SIGKILL: no cleanup, the lock stays behind
            return real(*a, **k)
        setattr(module, name, wrapper)
    import clearsight.examples
    {"train": lambda: dying(clearsight.engine, "_save_epoch"),
     "checkpoint": lambda: dying(clearsight.engine.io, "save_state"),
     "model": lambda: dying(clearsight.engine.io, "save_weights"),
     "evaluate": lambda: dying(runner.io, "append_jsonl"),
     "targets": lambda: dying(clearsight.targets, "teacher_maps"),
     "examples": lambda: dying(clearsight.examples, "pick")}[point]()
    runner._render = lambda out: out
    run(parse(json.loads(sys.argv[4])), sys.argv[1], progress="none")
""")


@pytest.mark.parametrize("point, after", [("train", 3), ("checkpoint", 1), ("model", 1), ("evaluate", 1),
                                          ("targets", 0), ("examples", 1)])
def test_a_killed_study_finishes_with_the_same_results(whole, tmp_path, point, after):
    """Killed after the 3rd epoch (inside the teacher's training), in the first cell's last epoch at its
    checkpoint or at its model file (a run whose final checkpoint is written beside an older model would be
    trusted with the older weights), before the second cell's results were written, inside the
    teacher's target maps, or inside the second cell's examples; then run again: every cell's weights, rows and
    examples, and the study's results.csv, are those of the uninterrupted study."""
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(out), point, str(after), json.dumps(TINY)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 9, proc.stderr
    run_study(TINY, out, report=True)  # the killed worker's lock died with it
    assert_same(cell_results(out), whole[1])
    assert (out / "results.csv").read_text() == (whole[0] / "results.csv").read_text()


def test_shards_together_give_the_whole_study(whole, tmp_path):
    out = tmp_path / "sharded"
    for k in (2, 1):  # in any order: a shard whose cell needs a teacher from the other shard trains it
        run_study(TINY, out, shard_spec=f"{k}/2")
    assert_same(cell_results(out), whole[1])


def test_a_study_under_torchrun_trains_each_cell_on_every_rank_and_writes_once(whole, tmp_path):
    """`torchrun --nproc_per_node 2 -m clearsight study`: both ranks train each cell (the checkpoints hold two
    ranks' RNG states), rank 0 alone evaluates, makes target maps and writes; the file's two studies run in one
    group; a single-process rerun finds every cell complete."""
    second = tiny(name="second", methods=[{"name": "standard", "objective": "standard"}])
    (tmp_path / "studies.yaml").write_text(json.dumps({"name": "both", "studies": [TINY, second]}))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "clearsight", "study",
                             "--preset", str(tmp_path / "studies.yaml"), "--out", str(out), "--progress", "lines"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("report written to") == 2  # rank 0's summary only
    found = cell_results(out / "tiny")  # complete, every row written once
    assert sorted(found) == sorted(whole[1]) and sorted(cell_results(out / "second")) == ["standard-seed0"]
    for folder in [*(out / "tiny" / "cells").iterdir(), *(out / "second" / "cells").iterdir()]:
        assert len(torch.load(folder / "checkpoint" / "state.pt", weights_only=True)["rng"]) == 2, folder
    assert len(list((out / "tiny" / "cells" / "teacher-seed0").glob("targets-*.safetensors"))) == 1
    for key, value in whole[1]["standard-seed0"]["rows"].items():  # data parallel learns what one process does
        assert abs(found["standard-seed0"]["rows"][key] - value) < 0.1, key
    stamps = {p: p.stat().st_mtime_ns for p in (out / "tiny" / "cells").rglob("*") if p.is_file()}
    run_study(TINY, out / "tiny")
    assert {p: p.stat().st_mtime_ns for p in (out / "tiny" / "cells").rglob("*") if p.is_file()} == stamps


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from clearsight.study.store import locked
    with locked(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_cell_locked_by_a_live_worker_is_left_to_it_and_freed_when_it_dies(tmp_path):
    lock = tmp_path / "locks" / "x.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Busy) as err, locked(lock):
            pass
        assert err.value.owner["pid"] == proc.pid
    finally:
        proc.kill()  # SIGKILL: no cleanup, yet the kernel releases the lock
        proc.wait()
    with locked(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(Busy), locked(lock):  # held: a second holder in this process is refused too
            pass
