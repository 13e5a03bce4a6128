"""The study report against a small real study: three cells trained and evaluated on mnist-mini (two seeds of
standard, one of pgd-at), one incomplete cell, one method never started.

Oracles: the summary's means and 95% intervals recomputed literally from the cells' results.jsonl (a hard-coded
t table), the t quantile against closed forms and published values, results.csv read back row by row, the best
value of each column against the summary's means and directions, and the page itself in headless Chromium.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import re
import shutil
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import torch

import clearsight as cs
from clearsight import io
from clearsight.errors import ConfigError
from clearsight.examples import save_examples
from clearsight.report import collect, render, summary_text
from clearsight.report.columns import describe, table_columns
from clearsight.report.stats import mean_interval, t_quantile
from clearsight.report.text import compare
from clearsight.results import CONVENTIONS, read_rows

SUITE = {"name": "tiny", "rows": [
    {"metric": "accuracy"},
    {"metric": "robust_accuracy", "attack": "pgd", "eps": 0.1, "steps": 5},
    {"metric": "robust_accuracy", "attack": "pgd", "eps": 0.3, "steps": 5},
    {"metric": "robust_accuracy", "attack": "pgd", "norm": "l2", "eps": 1.5, "steps": 5},
    {"metric": "deletion_auc", "attribution": "gradient", "steps": 8},
    {"metric": "insertion_auc", "attribution": "gradient", "start": 0.0, "steps": 8},
    {"metric": "deletion_auc", "attribution": {"name": "smoothgrad", "n": 4}, "steps": 8, "samples": 64},
    {"metric": "gini", "attribution": "gradient"},
    {"metric": "certified_accuracy", "eps": 0.01},
    {"metric": "certified_accuracy", "eps": 0.03}],
    "hygiene": {"eps": 0.3, "norm": "linf", "max_gap": None}}
EXAMPLES = ["gradient", {"name": "smoothgrad", "n": 4}]
METHODS = [
    {"name": "standard", "objective": "standard", "options": {}, "train": {}, "teacher": None,
     "description": "cross-entropy"},
    {"name": "pgd-at-linf", "objective": "pgd-at", "options": {"eps": 0.1, "steps": 3, "mix": 0.5}, "train": {},
     "teacher": None, "description": "PGD adversarial training"},
    {"name": "jacobian", "objective": "jacobian", "options": {}, "train": {}, "teacher": None,
     "description": "never started here"}]
COMPLETE = (("standard", 0), ("standard", 1), ("pgd-at-linf", 0))
T975 = {1: 12.7062047362, 2: 4.3026527297, 3: 3.1824463053, 4: 2.7764451052}  # published t_{0.975, df}


def _cell_state(method: str, seed: int, *, complete: bool, rows: list[str],
                conventions: int = CONVENTIONS) -> str:
    objective = next(m["objective"] for m in METHODS if m["name"] == method)
    return json.dumps({"method": method, "objective": objective, "seed": seed, "hash": "0" * 12, "stages": {},
                       "complete": complete,
                       "evaluation": {"settings": {"conventions": conventions}, "rows": rows}})


def build_study(folder: Path) -> Path:
    """The study directory the runner would write, made here from real training and evaluation."""
    g = torch.Generator().manual_seed(0)
    train, test = cs.data.load("mnist-mini", split="train"), cs.data.load("mnist-mini", split="test")
    train = train.subset(torch.randperm(len(train), generator=g)[:600])
    test = test.subset(torch.arange(200))
    io.write_yaml(folder / "study.yaml", {
        "name": "tiny", "description": "", "dataset": {"name": "mnist-mini"}, "model": {"name": "mlp", "widths": [64]},
        "train": {"epochs": 1}, "seeds": [0, 1], "evaluate": {"suites": [SUITE]},
        "examples": {"count": 8, "attributions": EXAMPLES}, "methods": METHODS})
    keys = [*(cs.metrics.suites.from_data(SUITE).rows[i].key for i in range(len(SUITE["rows"]))),
            "hygiene/eps=0.3/max_gap=None/norm=linf"]
    for method, seed in COMPLETE:
        m = next(x for x in METHODS if x["name"] == method)
        cell = folder / "cells" / f"{method}-seed{seed}"
        torch.manual_seed(seed)
        model = cs.models.build("mlp", num_classes=10, input_shape=train.input_shape, widths=(64,))
        cs.fit(model, cs.objectives.build(m["objective"], **m["options"]), train, epochs=1, out_dir=cell, seed=seed,
               batch_size=32, optimizer="adam", lr=0.003, progress="none", device="cpu")
        rows = cs.evaluate_rows(model, test, suite=SUITE, progress="none", seed=seed, device="cpu")
        if (method, seed) == ("standard", 0):  # a row of another evaluation (not the study's) in the same file
            rows += cs.evaluate_rows(model, test, suite={"rows": [{"metric": "accuracy", "samples": 50}]},
                                     progress="none", device="cpu")
        io.write_jsonl(cell / "results.jsonl", rows)
        save_examples(model, test, cell / "examples.safetensors", attributions=EXAMPLES, count=8, seed=seed,
                      device="cpu")
        (cell / "cell.json").write_text(_cell_state(method, seed, complete=True, rows=keys))
    # a cell still running: it has results (copied), which must count nowhere
    shutil.copytree(folder / "cells" / "pgd-at-linf-seed0", folder / "cells" / "pgd-at-linf-seed1")
    (folder / "cells" / "pgd-at-linf-seed1" / "cell.json").write_text(
        _cell_state("pgd-at-linf", 1, complete=False, rows=keys))
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def rendered(study: Path) -> tuple[Path, dict[str, Any], str]:
    page = render(study)
    return page, json.loads((study / "summary.json").read_text()), page.read_text()


def _copy(study: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(study, out, ignore=shutil.ignore_patterns("checkpoint", "model.safetensors", "report.html"))
    return out


def _cell_rows(study: Path, method: str, seed: int) -> list[dict[str, Any]]:
    wanted = json.loads((study / "cells" / f"{method}-seed{seed}" / "cell.json").read_text())["evaluation"]["rows"]
    return [r for r in read_rows(study / "cells" / f"{method}-seed{seed}" / "results.jsonl") if r["key"] in wanted]


# ---- statistics -------------------------------------------------------------------------------------------------

def test_t_quantile_matches_closed_forms_and_published_values():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
        assert t_quantile(1 - p, 5) == pytest.approx(-t_quantile(p, 5), rel=1e-12)
    for df, value in {**T975, 10: 2.2281388520, 30: 2.0422724563, 100: 1.9839715185}.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-9)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959963985, abs=1e-6)  # the normal quantile in the limit
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def test_mean_interval_is_the_literal_student_t_interval():
    values = [0.2, 0.5, 0.35, 0.41]
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert mean_interval(values) == pytest.approx((mean, T975[3] * sd / 2))
    assert mean_interval([0.7]) == (0.7, None)  # one seed: no interval
    assert mean_interval([0.2, float("nan"), 0.4]) == pytest.approx((0.3, T975[1] * math.sqrt(0.02) / math.sqrt(2)))
    assert mean_interval([1.0, float("inf")]) == (float("inf"), None)  # a bound: no interval means anything
    assert math.isnan(mean_interval([float("nan")])[0])


# ---- the summary ------------------------------------------------------------------------------------------------

def test_summary_means_and_intervals_are_those_of_the_complete_cells_rows(study, rendered):
    _, summary, _ = rendered
    methods = {m["name"]: m for m in summary["methods"]}
    assert methods["standard"]["seeds"] == [0, 1] and methods["pgd-at-linf"]["seeds"] == [0]
    assert methods["jacobian"]["seeds"] == [] and methods["jacobian"]["results"] == {}
    checked = 0
    for name, seeds in (("standard", (0, 1)), ("pgd-at-linf", (0,))):
        per_seed = {s: {r["key"]: r for r in _cell_rows(study, name, s)} for s in seeds}
        assert set(methods[name]["results"]) == set(per_seed[seeds[0]])
        for key, got in methods[name]["results"].items():
            values = [per_seed[s][key]["value"] for s in seeds]
            mean = sum(values) / len(values)
            assert got["values"] == values and got["seeds"] == list(seeds)
            assert got["mean"] == pytest.approx(mean, abs=1e-12)
            if len(values) == 1:
                assert got["half_interval"] is None
            else:
                sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                assert got["half_interval"] == pytest.approx(T975[len(values) - 1] * sd / math.sqrt(len(values)))
            for curve, points in got["curve"].items():
                literal = [sum(per_seed[s][key]["curve"][curve][i] for s in seeds) / len(seeds)
                           for i in range(len(points))]
                assert points == pytest.approx(literal)
            checked += 1
    assert checked == 2 * 11
    assert "accuracy/samples=50" not in methods["standard"]["results"]  # not one of the study's rows
    assert any(e["half_interval"] for e in methods["standard"]["results"].values())  # the seeds differ somewhere


def test_train_cost_is_the_mean_seconds_per_epoch_relative_to_standard(study, rendered):
    _, summary, _ = rendered

    def seconds(method: str, seed: int) -> float:
        log = io.read_jsonl(study / "cells" / f"{method}-seed{seed}" / "log.jsonl")
        return sum(e["seconds"] for e in log) / len(log)

    methods = {m["name"]: m for m in summary["methods"]}
    standard = (seconds("standard", 0) + seconds("standard", 1)) / 2
    assert summary["standard"] == "standard"
    assert methods["standard"]["train"]["seconds_per_epoch"]["mean"] == pytest.approx(standard)
    assert methods["pgd-at-linf"]["train"]["relative"] == pytest.approx(seconds("pgd-at-linf", 0) / standard)
    assert methods["standard"]["train"]["relative"] == pytest.approx(1.0)
    assert methods["jacobian"]["train"]["relative"] is None


def test_results_csv_round_trips_every_row_of_the_complete_cells(study, rendered):
    with open(study / "results.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    expected = [(m, s, r) for m, s in COMPLETE for r in _cell_rows(study, m, s)]
    assert len(lines) == len(expected)
    objectives = {m["name"]: m["objective"] for m in METHODS}
    for line, (method, seed, row) in zip(lines, expected, strict=True):
        assert (line["method"], int(line["seed"]), line["key"], line["metric"]) == (method, seed, row["key"],
                                                                                   row["metric"])
        assert line["objective"] == objectives[method]
        assert float(line["value"]) == row["value"] or math.isnan(row["value"])  # exact: repr round-trips
        assert int(line["n"]) == row["n"] and line["higher_is_better"] == str(row["higher_is_better"])
        assert json.loads(line["options"]) == row["options"]
    assert not any(line["seed"] == "1" and line["method"] == "pgd-at-linf" for line in lines)


def test_a_cell_evaluated_with_other_conventions_does_not_count_and_says_why(study, tmp_path):
    cell = tmp_path / "standard-seed0"
    from clearsight.report.collect import Cell, read_cell

    shutil.copytree(study / "cells" / "standard-seed0", cell)
    assert isinstance(read_cell(cell, "standard", 0), Cell)
    keys = json.loads((cell / "cell.json").read_text())["evaluation"]["rows"]
    (cell / "cell.json").write_text(_cell_state("standard", 0, complete=True, rows=keys, conventions=CONVENTIONS - 1))
    reason = read_cell(cell, "standard", 0)
    assert isinstance(reason, str) and f"conventions {CONVENTIONS - 1}, now {CONVENTIONS}" in reason
    assert "run the study again" in reason


def test_missing_and_incomplete_cells_are_listed_with_the_reason_and_the_report_still_renders(rendered):
    _, summary, page = rendered
    missing = {c["cell"]: c["reason"] for c in summary["cells"]["missing"]}
    assert set(missing) == {"pgd-at-linf-seed1", "jacobian-seed0", "jacobian-seed1"}
    assert "incomplete" in missing["pgd-at-linf-seed1"] and missing["jacobian-seed0"] == "not started"
    assert summary["cells"]["complete"] == ["standard-seed0", "standard-seed1", "pgd-at-linf-seed0"]
    listed = re.search(r"<ul id='missing'>(.*?)</ul>", page, re.S)
    assert listed is not None and all(name in listed.group(1) for name in missing)
    assert "3 of 6 cells complete" in page


# ---- labels and columns -----------------------------------------------------------------------------------------

def test_labels_name_the_options_that_tell_a_metrics_rows_apart(rendered):
    _, summary, _ = rendered
    labels = {d["key"]: d["label"] for d in summary["rows"]}
    assert labels["deletion_auc/attribution=gradient/steps=8"] == "deletion auc: gradient"
    assert labels["deletion_auc/attribution=smoothgrad:n=4/steps=8/samples=64"] == \
        "deletion auc: smoothgrad n=4, first 64"
    assert labels["robust_accuracy/attack=pgd/eps=0.3/steps=5"] == "robust accuracy: ℓ∞, ε=0.3"  # default norm
    assert labels["robust_accuracy/attack=pgd/eps=1.5/norm=l2/steps=5"] == "robust accuracy: ℓ2, ε=1.5"
    assert labels["accuracy"] == "accuracy"
    rows = [{"key": f"gini/s={s}", "metric": "gini", "options": {"attribution": ["gradient", {}], "steps": s},
             "higher_is_better": True} for s in (4, 8)]
    assert [d["label"] for d in describe(rows)] == ["gini: gradient, steps=4", "gini: gradient, steps=8"]
    assert describe(rows[:1])[0]["label"] == "gini: gradient"  # an option no other row changes is left out


def test_table_columns_take_each_norm_at_its_largest_budget_and_the_strongest_attack_there(rendered):
    _, summary, _ = rendered
    robust = [k for k in summary["columns"] if k.startswith("robust_accuracy")]
    assert robust == ["robust_accuracy/attack=pgd/eps=0.3/steps=5",
                      "robust_accuracy/attack=pgd/eps=1.5/norm=l2/steps=5"]
    assert [k for k in summary["columns"] if k.startswith("certified")] == ["certified_accuracy/eps=0.03"]
    assert not any(k.startswith("hygiene") for k in summary["columns"])

    def row(attack: list[Any], eps: float) -> dict[str, Any]:
        options = {"attack": attack, "eps": eps}
        return {"key": f"robust_accuracy/{attack}/{eps}", "metric": "robust_accuracy", "options": options,
                "higher_is_better": True}

    rows = describe([row([["pgd", {}]], 0.1), row([["pgd", {}]], 0.3), row([["pgd", {}], ["apgd", {}]], 0.3)])
    means = {rows[0]["key"]: [0.5, 0.6], rows[1]["key"]: [0.3, 0.2], rows[2]["key"]: [0.25, 0.2]}
    assert table_columns(rows, means) == [rows[2]["key"]]  # pgd then apgd finds more: the stronger attack
    means[rows[2]["key"]] = [0.3, 0.3]
    assert table_columns(rows, means) == [rows[1]["key"]]


class _Table(HTMLParser):
    """The summary table of a page: its sortable header cells and its body rows, as (attributes, text) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.table = self.body = False
        self.heads: list[list[Any]] = []
        self.rows: list[list[list[Any]]] = []
        self.cell: list[Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id") == "summary"
        elif self.table and tag == "tbody":
            self.body = True
        elif self.table and self.body and tag == "tr":
            self.rows.append([])
        elif self.table and (tag == "td" or (tag == "th" and "data-col" in a)):
            self.cell = [a, ""]
            (self.rows[-1] if tag == "td" else self.heads).append(self.cell)

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.cell = None
        elif tag == "table":
            self.table = self.body = False


def test_best_value_per_column_is_marked_honoring_higher_is_better(rendered):
    _, summary, page = rendered
    table = _Table()
    table.feed(page)
    heads = sorted(table.heads, key=lambda h: int(h[0]["data-col"]))
    methods = {m["name"]: m for m in summary["methods"]}
    assert [r[0][1] for r in table.rows] == ["standard", "pgd-at-linf"]  # methods with a complete cell, in order
    assert len(heads) == 1 + len(summary["columns"]) + 1  # method, the result columns, training cost
    directions = set()
    for col, head in enumerate(heads[1:], 1):
        key = head[0]["title"].split(" (")[0]
        if key == "train seconds per epoch":
            means = {n: methods[n]["train"]["relative"] for n in methods if methods[n]["seeds"]}
            higher = False
        else:
            d = next(d for d in summary["rows"] if d["key"] == key)
            means = {n: methods[n]["results"][key]["mean"] for n in methods if methods[n]["seeds"]}
            higher = d["higher_is_better"]
            assert f"{d['title']} {'↑' if higher else '↓'}</th>" in page
        assert head[0]["data-better"] == ("high" if higher else "low")
        marked = {r[0][1] for r in table.rows if "best" in (r[col][0].get("class") or "")}
        best = (max if higher else min)(means.values())
        literal = {n for n, v in means.items() if v == best} if len(set(means.values())) > 1 else set()
        assert marked == literal, key
        directions.add(higher)
        for r in table.rows:
            assert float(r[col][0]["data-value"]) == pytest.approx(means[r[0][1]])
    assert directions == {True, False}  # both directions were checked


def test_the_table_says_whether_differences_hold_at_these_seeds():
    def method(name: str, mean: float, half: float | None) -> dict[str, Any]:
        return {"name": name, "results": {"k": {"mean": mean, "half_interval": half}}}

    close = [method("standard", 0.50, 0.05), method("pgd-at", 0.58, 0.05)]
    assert compare("acc", close, "k", higher_is_better=True, standard="standard") == (
        "acc (higher is better): best pgd-at with 0.58 ± 0.05, +0.08 against standard (0.5 ± 0.05), "
        "indistinguishable at these seeds.")
    apart = [method("standard", 0.50, 0.01), method("pgd-at", 0.58, 0.01)]
    assert "the 95% intervals do not overlap" in compare("acc", apart, "k", higher_is_better=True,
                                                         standard="standard")
    lower = compare("del", apart, "k", higher_is_better=False, standard="standard")
    assert lower.startswith("del (lower is better): best standard with 0.5 ± 0.01; next pgd-at")
    one = [method("standard", 0.50, None), method("pgd-at", 0.58, None)]
    assert "untested" in compare("acc", one, "k", higher_is_better=True, standard="standard")


def test_scatter_axes_and_words_come_from_the_data(rendered):
    from clearsight.report.figures import _front, scatter_axes, spearman

    _, summary, _ = rendered
    x, ys = scatter_axes(summary)
    complete = [m for m in summary["methods"] if m["seeds"]]

    def spread(key: str) -> float:
        means = [m["results"][key]["mean"] for m in complete]
        return max(means) - min(means)

    robust = [k for k in summary["columns"] if k.startswith("robust_accuracy")]
    assert x == max(robust, key=spread)  # the robust column that separates the methods most (first of ties)
    assert ys == ["deletion_auc/attribution=gradient/steps=8", "insertion_auc/attribution=gradient/start=0.0/steps=8",
                  "gini/attribution=gradient"]  # the first row of each interpretability metric
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # average ranks for the tie
    assert spearman([1, 2], [1, 2]) is None
    up, down = {"higher_is_better": True, "label": "rob"}, {"higher_is_better": False, "label": "del"}
    text = _front([("a", 0.5, 0.1), ("b", 0.4, 0.05), ("c", 0.3, 0.2)], up, down)
    assert "no method beats a, b." in text and "ρ = 0.50" in text  # c loses to a and to b on both axes


def test_the_saliency_words_measure_the_mass_on_the_top_tenth_of_features():
    from clearsight.report.saliency import concentration

    one_hot = torch.zeros(2, 20)
    one_hot[:, 3] = -2.0  # |map|: the sign does not matter
    assert concentration(one_hot) == pytest.approx(1.0)
    assert concentration(torch.ones(3, 1, 4, 5)) == pytest.approx(2 / 20)  # the top 2 of 20 equal features
    assert concentration(torch.stack([one_hot[0], torch.ones(20)])) == pytest.approx((1.0 + 0.1) / 2)
    assert math.isnan(concentration(torch.zeros(2, 20)))


# ---- the page ---------------------------------------------------------------------------------------------------

def test_the_page_has_every_figure_and_references_nothing_outside_itself(rendered):
    path, _, page = rendered
    for section in ("saliency", "scatter", "curves", "eps", "certified", "cost"):
        assert f"id='fig-{section}'" in page
    assert "Left out" not in page  # every figure has its data here
    assert len(re.findall(r"<img ", page)) == 2 + 5  # a saliency grid per attribution, one image per other figure
    targets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert targets and all(t.startswith("data:") for t in targets)
    assert not re.search(r"url\(|@import|<link rel='stylesheet'|<iframe|<object", page)
    assert "default-src 'none'" in page  # the browser refuses any load the page might still try
    assert page.count("What this says.") == 7  # the table and each figure
    assert render(path.parent).read_text() == page  # re-rendered from the same files: the same page


def test_figures_without_data_are_left_out_with_the_reason(study, tmp_path):
    folder = _copy(study, tmp_path)
    for cell in (folder / "cells").iterdir():
        (cell / "examples.safetensors").unlink()
        rows = [{k: v for k, v in r.items() if k != "curve"} for r in read_rows(cell / "results.jsonl")
                if r["metric"] not in ("certified_accuracy", "robust_accuracy")]
        io.write_jsonl(cell / "results.jsonl", rows)
    page = render(folder).read_text()
    for section, reason in (("saliency", "no complete cell has an examples.safetensors file"),
                            ("curves", "no row of the study has curves"),
                            ("eps", "the study has no robust-accuracy rows"),
                            ("certified", "the study has no certified rows"),
                            ("scatter", "the study has no robust-accuracy or certified rows")):
        body = page.split(f"id='fig-{section}'>")[1].split("<h2")[0]
        assert f"Left out: {reason}" in body and "<img" not in body, section
    assert "<img" in page.split("id='fig-cost'>")[1].split("<h2")[0]  # what has data is still drawn


def test_hygiene_and_robust_row_warnings_are_listed_per_method(study, tmp_path):
    folder = _copy(study, tmp_path)
    path = folder / "cells" / "pgd-at-linf-seed0" / "results.jsonl"
    rows = read_rows(path)
    for r in rows:
        if r["key"] == "robust_accuracy/attack=pgd/eps=0.3/steps=5":
            r["warnings"] = ["random noise finds more adversarial examples than pgd"]
        if r["metric"] == "gini":
            r["warnings"] = ["3 of 200 samples have no value"]
    io.write_jsonl(path, rows)
    summary = collect(folder)
    flagged = {m["name"]: m["hygiene"] for m in summary["methods"]}
    assert flagged["standard"] == [] and [w["text"] for w in flagged["pgd-at-linf"]] == [
        "random noise finds more adversarial examples than pgd"]  # a gini note is not about masking
    page = render(folder).read_text()
    section = page.split("id='hygiene'>")[1].split("<h2")[0]
    assert "pgd-at-linf" in section and "random noise finds more" in section and "robust accuracy: ℓ∞, ε=0.3" in section
    assert "standard" not in section


def test_without_a_standard_method_costs_are_seconds_and_comparisons_against_the_runner_up(study, tmp_path):
    folder = _copy(study, tmp_path)
    config = io.read_yaml(folder / "study.yaml")
    config["methods"][0]["objective"] = "jacobian"  # no method trains with the standard objective now
    io.write_yaml(folder / "study.yaml", config)
    summary = collect(folder, write=False)
    assert summary["standard"] is None and all(m["train"]["relative"] is None for m in summary["methods"])
    page = render(folder).read_text()
    assert "so seconds are absolute" in page and "against standard" not in page
    assert "; next " in page and "train s/epoch" in page


def test_infinite_and_undefined_means_sort_as_the_page_reads_them():
    from clearsight.report.table import summary_table

    def method(name: str, mean: float) -> dict[str, Any]:
        return {"name": name, "seeds": [0], "results": {"delta": {"mean": mean, "half_interval": None}},
                "train": {"relative": None, "relative_half_interval": None,
                          "seconds_per_epoch": {"mean": None, "half_interval": None}}}

    rows = describe([{"key": "delta", "metric": "delta_bound", "options": {"eps": 0.1}, "higher_is_better": False}])
    summary = {"rows": rows, "columns": ["delta"], "standard": None,
               "methods": [method("a", math.inf), method("b", 0.5), method("c", math.nan)]}
    table = _Table()
    table.feed(summary_table(summary))
    assert [(r[0][1], r[1][0]["data-value"], r[1][1].strip()) for r in table.rows] == [
        ("a", "Infinity", "∞"), ("b", "0.5", "0.5 ★"), ("c", "", "n/a")]


def test_a_cell_read_twice_keeps_the_last_row_of_a_key(study, tmp_path):
    folder = _copy(study, tmp_path)
    path = folder / "cells" / "pgd-at-linf-seed0" / "results.jsonl"
    rows = read_rows(path)
    stale = {**rows[0], "value": 0.001}
    io.write_jsonl(path, [stale, *rows])  # the stale row was written first, the recomputed one after it
    summary = collect(folder, write=False)
    pgd = next(m for m in summary["methods"] if m["name"] == "pgd-at-linf")
    assert pgd["results"][rows[0]["key"]]["values"] == [rows[0]["value"]]


def test_a_directory_that_is_no_study_is_refused_and_an_empty_study_renders(tmp_path):
    with pytest.raises(ConfigError, match="not a study directory: it has no study.yaml"):
        render(tmp_path)
    io.write_yaml(tmp_path / "study.yaml", {"name": "x", "seeds": [0]})
    with pytest.raises(ConfigError, match="no list 'methods'"):
        render(tmp_path)
    io.write_yaml(tmp_path / "study.yaml", {"name": "x", "seeds": [0], "methods": METHODS[:1]})
    page = render(tmp_path).read_text()
    assert "0 of 1 cells complete" in page and "No method has a complete cell yet" in page
    assert "standard-seed0: not started" in page
    assert "0 of 1 cells complete" in summary_text(tmp_path)


def test_the_terminal_summary_has_a_line_per_method_with_the_headline_means(rendered, study):
    _, summary, _ = rendered
    text = summary_text(study)
    lines = text.splitlines()
    std = next(line for line in lines if line.startswith("standard "))
    accuracy = next(m for m in summary["methods"] if m["name"] == "standard")["results"]["accuracy"]["mean"]
    assert f"{accuracy:.3g}" in std.split()
    assert any(line.startswith("pgd-at-linf ") for line in lines) and "missing: pgd-at-linf-seed1" in text


def test_the_report_imports_nothing_that_trains_attacks_or_attributes():
    forbidden = ("clearsight.attacks", "clearsight.attributions", "clearsight.bounds", "clearsight.models",
                 "clearsight.objectives", "clearsight.engine", "clearsight.evaluation", "clearsight.study",
                 "clearsight.data", "clearsight.targets", "torch.nn")
    files = sorted((Path(cs.__file__).parent / "report").glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "clearsight.examples":
                assert {a.name for a in node.names} <= {"Examples", "load_examples"}, path.name
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith(forbidden)], path.name


# ---- in a real browser ------------------------------------------------------------------------------------------

def _browser() -> Any:
    """A headless Chromium driven by selenium through Debian's chromium and chromium-driver, or a skip that says
    what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("the browser test needs selenium: pip install -e '.[test]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver: apt-get install -y chromium "
                    "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _order(browser: Any) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#summary tbody tr')).map(r => r.cells[0].textContent)")


@pytest.mark.browser
def test_the_report_in_headless_chromium(rendered):
    from PIL import Image, ImageStat

    page, summary, _ = rendered
    browser = _browser()
    try:
        browser.get(page.resolve().as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) == 7 and all(done and w > 0 and h > 0 for done, w, h in images)
        # clicking a header sorts by it, best first, then reversed; the method header sorts by name
        methods = {m["name"]: m for m in summary["methods"]}
        key = "certified_accuracy/eps=0.03"
        values = {n: methods[n]["results"][key]["mean"] for n in ("standard", "pgd-at-linf")}
        assert len(set(values.values())) == 2  # the orders below differ
        head = browser.find_element("css selector", f"#summary th[title^='{key} (']")
        head.click()
        assert _order(browser) == sorted(values, key=lambda n: -values[n])
        head.click()
        assert _order(browser) == sorted(values, key=lambda n: values[n])
        assert head.get_attribute("aria-sort") == "ascending"
        browser.find_element("css selector", "#summary th[data-col='0']").click()
        assert _order(browser) == ["pgd-at-linf", "standard"]
        shot = Image.open(BytesIO(browser.get_screenshot_as_png())).convert("L")
        assert ImageStat.Stat(shot).var[0] > 100  # text, table and figures, not a blank page
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        browser.quit()
