"""scripts/claims.py, which writes EXPERIMENTS.md's tables: pooling studies, paired differences, undefined seeds.

The summaries are small files the tests write in summary.json's format; the expected cells are computed here by
hand (mean, Student-t half-width with t_{0.975, n-1}) so that a wrong pairing or pooling changes the text.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
T975 = {1: 12.706204736174707, 2: 4.302652729749464}  # t_{0.975, df}


def _script():
    spec = importlib.util.spec_from_file_location("claims", REPO / "scripts" / "claims.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(path: Path, methods: dict[str, dict[int, float | str]], key: str = "accuracy/samples=10") -> Path:
    """A study directory whose summary.json has one row `key` with per-seed values for each method."""
    path.mkdir(parents=True)
    summary = {"rows": [{"key": key, "label": "accuracy"}],
               "methods": [{"name": name, "results": {key: {"seeds": list(values), "values": list(values.values())}}}
                           for name, values in methods.items()]}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def _run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = _script().main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


def _half(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return T975[n - 1] * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def test_a_difference_is_paired_by_seed_not_by_position(tmp_path, capsys):
    # base lists its seeds in another order: pairing by position would give differences 0.3, -0.1, -0.2.
    study = _study(tmp_path / "s", {"base": {2: 0.5, 0: 0.7, 1: 0.9}, "m": {0: 0.8, 1: 0.8, 2: 0.7}})
    code, lines, _ = _run(capsys, str(study), "--methods", "base,m", "--against", "base", "--row", "accuracy")
    assert code == 0
    diffs = [0.8 - 0.7, 0.8 - 0.9, 0.7 - 0.5]
    mean = sum(diffs) / 3
    expected = f"{0.7667:.3g} ± {_half([0.8, 0.8, 0.7]):.2g} ({mean:+.3g} ± {_half(diffs):.2g})"
    assert lines[-1] == f"| m | {expected} |"
    assert "*" not in lines[-1]  # the interval (± 0.63) includes 0


def test_a_consistent_difference_is_starred(tmp_path, capsys):
    study = _study(tmp_path / "s", {"base": {0: 0.5, 1: 0.6, 2: 0.7}, "m": {0: 0.6, 1: 0.72, 2: 0.79}})
    _, lines, _ = _run(capsys, str(study), "--methods", "m", "--against", "base", "--row", "accuracy")
    assert lines[-1].endswith("*) |")


def test_studies_pool_their_seeds_and_a_shared_cell_counts_once(tmp_path, capsys):
    first = _study(tmp_path / "a", {"base": {0: 0.5, 1: 0.6}, "m": {0: 0.7, 1: 0.8}})
    more = _study(tmp_path / "b", {"base": {1: 0.6, 2: 0.7}, "m": {2: 0.6}})  # base seed 1 again, same value
    _, lines, _ = _run(capsys, str(first), str(more), "--methods", "base,m", "--row", "accuracy")
    assert lines[-2] == f"| base | {0.6:.3g} ± {_half([0.5, 0.6, 0.7]):.2g} |"
    assert lines[-1] == f"| m | {0.7:.3g} ± {_half([0.7, 0.8, 0.6]):.2g} |"


def test_a_shared_cell_with_different_values_is_an_error(tmp_path, capsys):
    first = _study(tmp_path / "a", {"base": {0: 0.5, 1: 0.6}})
    other = _study(tmp_path / "b", {"base": {1: 0.61}})
    code, lines, err = _run(capsys, str(first), str(other), "--methods", "base", "--row", "accuracy")
    assert code == 2 and not lines
    assert "base seed 1" in err and "0.6" in err and "0.61" in err


def test_an_undefined_seed_is_left_out_and_said(tmp_path, capsys):
    study = _study(tmp_path / "s", {"base": {0: 0.5, 1: 0.6, 2: 0.7}, "m": {0: 0.8, 1: "nan", 2: 0.9}})
    _, lines, _ = _run(capsys, str(study), "--methods", "m", "--against", "base", "--row", "accuracy")
    diffs = [0.8 - 0.5, 0.9 - 0.7]
    expected = (f"{0.85:.3g} ± {_half([0.8, 0.9]):.2g} [2 of 3 seeds] "
                f"({sum(diffs) / 2:+.3g} ± {_half(diffs):.2g})")
    assert lines[-1] == f"| m | {expected} |"


def test_a_difference_over_fewer_seeds_than_its_mean_says_how_many_pairs(tmp_path, capsys):
    # base lacks seed 2 and has seed 1 undefined: m's mean is over three seeds, its difference over one pair
    study = _study(tmp_path / "s", {"base": {0: 0.5, 1: "nan"}, "m": {0: 0.8, 1: 0.7, 2: 0.9}})
    _, lines, _ = _run(capsys, str(study), "--methods", "base,m", "--against", "base", "--row", "accuracy")
    assert lines[-1] == f"| m | {0.8:.3g} ± {_half([0.8, 0.7, 0.9]):.2g} ({0.3:+.3g} [1 pair]) |"


@pytest.mark.parametrize(("argv", "said"), [
    (["--methods", "nobody", "--row", "accuracy"], "no method ['nobody']"),
    (["--methods", "base", "--row", "robust"], "matches 0 rows"),
    (["--methods", "base", "--row", "accuracy", "--labels", "a,b"], "2 titles for 1 rows"),
])
def test_a_bad_argument_is_named(tmp_path, capsys, argv, said):
    study = _study(tmp_path / "s", {"base": {0: 0.5}})
    code, lines, err = _run(capsys, str(study), *argv)
    assert code == 2 and not lines and said in err
