"""Tabular datasets from the original UCI files: german-credit and adult.

Categorical columns are one-hot encoded (categories taken from the whole file, sorted, so train and test share
columns); numeric columns are min-max scaled to [0, 1] with the minimum and maximum of the *train* split (test
values are clipped, so nothing about the test split leaks into training). The train/test split is a fixed
seeded permutation. Feature names are kept ("age", "sex=Female", ...) and sensitive attributes are marked:
`dataset.sensitive` maps each one to the indices of the features that encode it.

Both official UCI files ship inside the package (uci/*.gz, CC BY 4.0, built by scripts/build_uci.py), so the
sets load offline with no data root. A copy in ROOT/<name>/ takes precedence (for a copy with another label
coding, say), and `download=True` fetches a missing one from the UCI repository, md5-verified.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from clearsight.data.base import ArrayDataset
from clearsight.data.files import ensure_file
from clearsight.data.registry import DATASETS
from clearsight.errors import DataError
from clearsight.io import decode_text, read_text
from clearsight.options import OpenFraction, Seed

UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/"
EMBEDDED_DIR = Path(__file__).parent / "uci"
# md5 of the official UCI files; the embedded copies decompress to exactly these bytes (checked on every load)
GERMAN_MD5 = "6b94c2e35480e671545e52a808a8a549"
ADULT_MD5 = "5d7c39d7b8804f071cdd1f2a7c460872"
# Evaluation budgets on min-max scaled features: Wicker et al. certify explanations up to eps 0.1 [recon for attacks].
TABULAR_EPS = {"linf": (0.01, 0.05, 0.1)}
# Training budget of adversarial objectives on min-max scaled features (METHODS.md, "Training budgets").
TABULAR_TRAIN_EPS = {"linf": 0.05, "l2": 0.5}


@dataclass(frozen=True)
class Column:
    name: str
    numeric: bool
    keep: bool = True


def encode(rows: Sequence[Sequence[str]], columns: Sequence[Column], train_rows: np.ndarray,
           ) -> tuple[np.ndarray, list[str], dict[str, list[int]]]:
    """One-hot/min-max encode `rows` -> (float32 [N, F] in [0, 1], feature names, column -> feature indices)."""
    blocks: list[np.ndarray] = []
    names: list[str] = []
    groups: dict[str, list[int]] = {}
    for j, col in enumerate(columns):
        if not col.keep:
            continue
        values = [r[j] for r in rows]
        start = len(names)
        if col.numeric:
            try:
                v = np.asarray(values, dtype=np.float64)
            except ValueError as err:
                raise DataError(f"column {col.name!r} should be numeric: {err}") from err
            lo, hi = v[train_rows].min(), v[train_rows].max()
            blocks.append(np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)[:, None])
            names.append(col.name)
        else:
            cats = sorted(set(values))
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((len(values), len(cats)))
            onehot[np.arange(len(values)), [index[v] for v in values]] = 1.0
            blocks.append(onehot)
            names.extend(f"{col.name}={c}" for c in cats)
        groups[col.name] = list(range(start, len(names)))
    return np.concatenate(blocks, axis=1).astype(np.float32), names, groups


def split_indices(n: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of `split` in a seeded permutation of n rows; the last `test_fraction` is the test set."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    return np.sort(perm[n - n_test :] if split == "test" else perm[: n - n_test])


def table_dataset(name: str, split: str, rows: list[list[str]], columns: Sequence[Column],
                  label: Callable[[str], int], classes: list[str], sensitive: Sequence[str], *,
                  test_fraction: float, seed: int) -> ArrayDataset:
    n_cols = len(columns) + 1
    bad = next((i for i, r in enumerate(rows) if len(r) != n_cols), None)
    if bad is not None:
        raise DataError(f"{name}: row {bad + 1} has {len(rows[bad])} fields, expected {n_cols}")
    train_rows = split_indices(len(rows), "train", test_fraction, seed)
    x, names, groups = encode([r[:-1] for r in rows], columns, train_rows)
    y = np.asarray([label(r[-1]) for r in rows], dtype=np.int64)
    idx = split_indices(len(rows), split, test_fraction, seed)
    return ArrayDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), classes=classes, name=name,
                        split=split, feature_names=names, sensitive={s: groups[s] for s in sensitive})


GERMAN_COLUMNS = [Column(n, num) for n, num in [
    ("checking_status", False), ("duration", True), ("credit_history", False), ("purpose", False),
    ("credit_amount", True), ("savings", False), ("employment_since", False), ("installment_rate", True),
    ("personal_status_sex", False), ("other_debtors", False), ("residence_since", True), ("property", False),
    ("age", True), ("other_installment_plans", False), ("housing", False), ("existing_credits", True),
    ("job", False), ("people_liable", True), ("telephone", False), ("foreign_worker", False)]]


@DATASETS.register("german-credit", kind="tabular", num_classes=2, embedded=True, eps_grid=TABULAR_EPS,
                   train_eps=TABULAR_TRAIN_EPS,
                   description="UCI Statlog German Credit (1,000 rows), embedded (or ROOT/german-credit/german.data)")
def german_credit(split: str, *, root: Path, download: bool = False, test_fraction: OpenFraction = 0.2,
                  seed: Seed = 0) -> ArrayDataset:
    """German Credit: label 0 = good, 1 = bad credit risk. Sensitive: `sex` (the one-hot columns of attribute
    9, "personal status and sex", A91-A95) and `age`.

    The UCI file codes the risk as 1 = good, 2 = bad; some copies code bad as 0. Both are read, so a copy in
    ROOT/german-credit is validated by parsing rather than by one checksum (the embedded copy and downloads are
    md5-verified). Without such a copy the embedded official file is read.
    """
    text = uci_text("german-credit", "german.data", GERMAN_MD5, root=root, download=download)
    rows = [line.split() for line in text.splitlines() if line.strip()]
    risk = {"1": 0, "2": 1, "0": 1}
    data = table_dataset("german-credit", split, rows, GERMAN_COLUMNS, lambda v: _label(v, risk),
                         ["good", "bad"], ["personal_status_sex", "age"], test_fraction=test_fraction, seed=seed)
    data.sensitive = {"sex": data.sensitive["personal_status_sex"], "age": data.sensitive["age"]}
    return data


ADULT_COLUMNS = [
    Column("age", True), Column("workclass", False), Column("fnlwgt", True, keep=False), Column("education", False),
    Column("education_num", True), Column("marital_status", False), Column("occupation", False),
    Column("relationship", False), Column("race", False), Column("sex", False), Column("capital_gain", True),
    Column("capital_loss", True), Column("hours_per_week", True), Column("native_country", False),
]


@DATASETS.register("adult", kind="tabular", num_classes=2, embedded=True, eps_grid=TABULAR_EPS,
                   train_eps=TABULAR_TRAIN_EPS,
                   description="UCI Adult census income (32,561 rows), embedded (or ROOT/adult/adult.data)")
def adult(split: str, *, root: Path, download: bool = False, test_fraction: OpenFraction = 0.2, seed: Seed = 0,
          missing: Literal["drop", "category"] = "drop") -> ArrayDataset:
    """Adult: label 1 = income >50K. Sensitive: `sex` and `race`.

    `fnlwgt` (a census sampling weight, not an attribute of the person) is dropped. Rows with a missing value
    ("?") are dropped (`missing="drop"`, 30,162 rows remain) or "?" is kept as its own category
    (`missing="category"`). The split is drawn from adult.data alone. Without a copy in ROOT/adult the embedded
    official file is read.
    """
    if missing not in ("drop", "category"):
        raise DataError(f"adult: missing must be 'drop' or 'category', got {missing!r}")
    text = uci_text("adult", "adult.data", ADULT_MD5, root=root, download=download)
    records = csv.reader(io.StringIO(text, newline=""))
    rows = [[v.strip() for v in r] for r in records if r and any(v.strip() for v in r)]
    if missing == "drop":
        rows = [r for r in rows if "?" not in r]
    return table_dataset("adult", split, rows, ADULT_COLUMNS,
                         lambda v: _label(v.rstrip("."), {"<=50K": 0, ">50K": 1}), ["<=50K", ">50K"],
                         ["sex", "race"], test_fraction=test_fraction, seed=seed)


def uci_text(name: str, fname: str, md5: str, *, root: Path, download: bool) -> str:
    """The text of UCI file `fname` of dataset `name`: ROOT/name/fname when present or `download` is asked for
    (fetched md5-verified if missing), else the embedded official copy."""
    local = root / name / fname
    if local.exists() or download:
        # a present copy is validated by parsing, not by one checksum: copies with another label coding exist
        path = ensure_file(local, md5, [UCI + _UCI_PATHS[fname]], download_ok=download, verify_present=False,
                           how=f"Put the UCI file {fname} in {local.parent}.")
        return read_text(path, what=f"the {name} data file", error=DataError,
                         fix=f"Put the UCI file {fname} there as published (plain text), or remove it to use the "
                             "copy embedded in clearsight")
    embedded = EMBEDDED_DIR / f"{fname}.gz"
    try:
        raw = gzip.decompress(embedded.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"the embedded file {embedded} is missing or damaged ({err}): the clearsight installation "
                        "is broken; reinstall it") from err
    got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if got != md5:
        raise DataError(f"the embedded file {embedded} decompresses to md5 {got}, not the official {md5}: the "
                        "clearsight installation is broken; reinstall it")
    return decode_text(raw, embedded, what="the embedded file", error=DataError,
                       fix="The clearsight installation is broken; reinstall it")


_UCI_PATHS = {"german.data": "statlog/german/german.data", "adult.data": "adult/adult.data"}


def _label(value: str, mapping: dict[str, int]) -> int:
    try:
        return mapping[value]
    except KeyError:
        raise DataError(f"unexpected label {value!r}; expected one of {sorted(mapping)}") from None
