"""Tabular datasets on the real UCI files: german-credit and adult, checked row by row against an independent
parse and encoding of the original files (the embedded official copies; with the shared folder, also its
copies)."""

from __future__ import annotations

import gzip
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import clearsight as cs
from clearsight.data import tabular
from clearsight.errors import ConfigError, DataError

# the official UCI checksums (of german.data with labels 1 good / 2 bad, and of adult.data)
UCI_MD5 = {"german.data": "6b94c2e35480e671545e52a808a8a549", "adult.data": "5d7c39d7b8804f071cdd1f2a7c460872"}


def embedded_text(fname: str) -> str:
    return gzip.decompress((tabular.EMBEDDED_DIR / f"{fname}.gz").read_bytes()).decode()

# attribute names in file order (german.doc); numeric attributes: 2, 5, 8, 11, 13, 16, 18
GERMAN_ATTRS = ["checking_status", "duration", "credit_history", "purpose", "credit_amount", "savings",
                "employment_since", "installment_rate", "personal_status_sex", "other_debtors", "residence_since",
                "property", "age", "other_installment_plans", "housing", "existing_credits", "job", "people_liable",
                "telephone", "foreign_worker"]
GERMAN_NUMERIC = {"duration", "credit_amount", "installment_rate", "residence_since", "age", "existing_credits",
                  "people_liable"}
ADULT_ATTRS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
               "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country"]
ADULT_NUMERIC = {"age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"}


def documented_split(n: int, seed: int, test_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """The documented rule: a seeded permutation of the rows, its last `test_fraction` is the test set."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_test = round(n * test_fraction)
    return sorted(perm[: n - n_test]), sorted(perm[n - n_test :])


def encode(rows: list[list[str]], attrs: list[str], numeric: set[str], train: list[int],
           drop: frozenset[str] = frozenset()) -> tuple[np.ndarray, list[str]]:
    """Independent encoding: numbers min-max scaled by the train rows (clipped), categories one-hot, sorted."""
    columns: list[list[float]] = []
    names: list[str] = []
    for j, attr in enumerate(attrs):
        if attr in drop:
            continue
        values = [r[j] for r in rows]
        if attr in numeric:
            nums = [float(v) for v in values]
            lo, hi = min(nums[i] for i in train), max(nums[i] for i in train)
            columns.append([min(1.0, max(0.0, (v - lo) / (hi - lo))) for v in nums])
            names.append(attr)
        else:
            for cat in sorted(set(values)):
                columns.append([1.0 if v == cat else 0.0 for v in values])
                names.append(f"{attr}={cat}")
    return np.array(columns, dtype=np.float32).T.copy(), names


def rows_by_bytes(matrix: np.ndarray) -> dict[bytes, list[int]]:
    index: dict[bytes, list[int]] = {}
    for i, row in enumerate(matrix):
        index.setdefault(row.tobytes(), []).append(i)
    return index


# --------------------------------------------------------------------------------------------------------------
# german-credit


@pytest.fixture(scope="module")
def german_file() -> tuple[list[list[str]], list[int]]:
    """(attribute rows, labels 0 = good / 1 = bad) of the embedded german.data, whose last field is 1 good, 2 bad."""
    lines = embedded_text("german.data").splitlines()
    fields = [line.split(" ") for line in lines if line]
    assert len(fields) == 1000 and {len(f) for f in fields} == {21}
    assert {f[-1] for f in fields} == {"1", "2"}
    return [f[:20] for f in fields], [0 if f[-1] == "1" else 1 for f in fields]


@pytest.fixture(scope="module")
def german():
    return {(split, seed): cs.data.load("german-credit", split=split, seed=seed)
            for split in ("train", "test") for seed in (0, 1)}


@pytest.mark.parametrize("seed", [0, 1])
def test_german_rows_equal_the_independent_encoding_of_exactly_one_file_row(german, german_file, seed):
    rows, labels = german_file
    train_rows, test_rows = documented_split(1000, seed)
    expected, names = encode(rows, GERMAN_ATTRS, GERMAN_NUMERIC, train_rows)
    index = rows_by_bytes(expected)
    assert max(len(v) for v in index.values()) == 1  # every file row has its own encoding
    matched = {}
    for split in ("train", "test"):
        ds = german[split, seed]
        assert ds.feature_names == names and len(names) == 61 and ds.x.shape[1] == 61
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        hits = [index.get(row.tobytes(), []) for row in ds.x.numpy()]
        assert all(len(h) == 1 for h in hits), f"{split}: a row that encodes no file row"
        matched[split] = [h[0] for h in hits]
        assert ds.y.tolist() == [labels[i] for i in matched[split]]
    assert len(matched["train"]) == 800 and len(matched["test"]) == 200
    assert set(matched["train"]).isdisjoint(matched["test"])
    assert sorted(matched["train"] + matched["test"]) == list(range(1000))
    assert matched["train"] == train_rows and matched["test"] == test_rows


def test_german_label_coding(german, german_file):
    rows, _ = german_file
    expected, _ = encode(rows, GERMAN_ATTRS, GERMAN_NUMERIC, documented_split(1000, 0)[0])
    train, test = german["train", 0], german["test", 0]
    assert train.classes == ["good", "bad"]
    everything_x = torch.cat([train.x, test.x]).numpy()
    everything_y = torch.cat([train.y, test.y])
    assert torch.bincount(everything_y).tolist() == [700, 300]
    # file row 1 ends in 1 (good), file row 2 ends in 0 (bad)
    for file_row, label in ((0, 0), (1, 1)):
        where = [i for i, row in enumerate(everything_x) if np.array_equal(row, expected[file_row])]
        assert len(where) == 1 and int(everything_y[where[0]]) == label
    assert rows[0][:3] == ["A11", "6", "A34"] and rows[1][:3] == ["A12", "48", "A32"]  # the rows meant above


def test_german_encoding_properties(german):
    train, test = german["train", 0], german["test", 0]
    names = train.feature_names
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.split("=")[0], []).append(i)
    assert list(groups) == GERMAN_ATTRS
    for attr, idx in groups.items():
        if attr in GERMAN_NUMERIC:
            assert idx == [names.index(attr)]
            col = train.x[:, idx[0]]
            assert float(col.min()) == 0.0 and float(col.max()) == 1.0
            assert float(test.x[:, idx[0]].min()) >= 0.0 and float(test.x[:, idx[0]].max()) <= 1.0
        else:
            for ds in (train, test):  # one-hot: exactly one 1 per row, the rest 0
                block = ds.x[:, idx]
                assert torch.equal(block.sum(1), torch.ones(len(ds))) and bool(((block == 0) | (block == 1)).all())


def test_german_sensitive_groups(german, german_file):
    rows, _ = german_file
    ds = german["train", 0]
    assert set(ds.sensitive) == {"sex", "age"}
    codes = sorted({r[8] for r in rows})  # attribute 9: personal status and sex
    assert codes == ["A91", "A92", "A93", "A94"]
    assert [ds.feature_names[i] for i in ds.sensitive["sex"]] == [f"personal_status_sex={c}" for c in codes]
    assert [ds.feature_names[i] for i in ds.sensitive["age"]] == ["age"]
    assert german["test", 0].sensitive == ds.sensitive


def test_german_split_is_deterministic_and_seeded(german):
    again = cs.data.load("german-credit", split="test")
    assert torch.equal(again.x, german["test", 0].x) and torch.equal(again.y, german["test", 0].y)
    assert german["test", 1].x.shape == german["test", 0].x.shape
    assert not torch.equal(german["test", 1].x, german["test", 0].x)
    half = cs.data.load("german-credit", split="test", test_fraction=0.5)
    assert len(half) == 500 and len(cs.data.load("german-credit", split="train", test_fraction=0.5)) == 500
    with pytest.raises(ConfigError, match=r"test_fraction must be a finite number in \(0, 1\)"):
        cs.data.load("german-credit", split="test", test_fraction=1.0)


def test_german_bad_files(tmp_path):
    # an empty root is no error: the embedded copy is read
    assert torch.equal(cs.data.load("german-credit", split="train", root=tmp_path).x, cs.data.load("german-credit").x)
    folder = tmp_path / "german-credit"
    lines = embedded_text("german.data").splitlines()
    folder.mkdir()
    cases = {
        "A11 6 A34": r"row 3 has 3 fields, expected 21",
        lines[2].rsplit(" ", 1)[0] + " 3": r"unexpected label '3'",
        lines[2].replace(" 2096 ", " 2,096 ", 1): "credit_amount.* numeric",
    }
    for bad, message in cases.items():
        (folder / "german.data").write_text("\n".join([*lines[:2], bad, *lines[3:]]) + "\n")
        with pytest.raises(DataError, match=message):
            cs.data.load("german-credit", split="train", root=tmp_path)


# --------------------------------------------------------------------------------------------------------------
# adult


@pytest.fixture(scope="module")
def adult_file() -> tuple[list[list[str]], list[int]]:
    """(attribute rows, labels 1 = >50K) of the embedded adult.data, all 32,561 rows, parsed with str.split."""
    rows, labels = [], []
    for line in embedded_text("adult.data").splitlines():
        if not line.strip():
            continue
        fields = [v.strip() for v in line.split(",")]
        assert len(fields) == 15 and fields[-1] in ("<=50K", ">50K")
        rows.append(fields[:14])
        labels.append(int(fields[-1] == ">50K"))
    return rows, labels


@pytest.fixture(scope="module")
def adult():
    return {(split, missing): cs.data.load("adult", split=split, missing=missing)
            for split in ("train", "test") for missing in ("drop", "category")}


def _adult_kept(adult_file, missing: str) -> tuple[list[list[str]], list[int]]:
    rows, labels = adult_file
    keep = [i for i, r in enumerate(rows) if missing == "category" or "?" not in r]
    return [rows[i] for i in keep], [labels[i] for i in keep]


@pytest.mark.parametrize("missing", ["drop", "category"])
def test_adult_rows_equal_the_independent_encoding(adult, adult_file, missing):
    rows, labels = _adult_kept(adult_file, missing)
    n = len(rows)
    assert n == (30_162 if missing == "drop" else 32_561)
    train_rows, _ = documented_split(n, 0)
    expected, names = encode(rows, ADULT_ATTRS, ADULT_NUMERIC, train_rows, drop=frozenset({"fnlwgt"}))
    train, test = adult["train", missing], adult["test", missing]
    assert len(test) == round(0.2 * n) and len(train) + len(test) == n
    assert train.feature_names == test.feature_names == names
    # as multisets of (row, label): adult.data has duplicate rows, so compare counts
    want = Counter((row.tobytes(), y) for row, y in zip(expected, labels, strict=True))
    got = Counter((row.tobytes(), int(y)) for ds in (train, test) for row, y in zip(ds.x.numpy(), ds.y, strict=True))
    assert got == want
    rows_of_train = Counter(row.tobytes() for row in expected[train_rows])
    assert Counter(row.tobytes() for row in train.x.numpy()) == rows_of_train


def test_adult_features_and_labels(adult, adult_file):
    rows, labels = _adult_kept(adult_file, "drop")
    train, test = adult["train", "drop"], adult["test", "drop"]
    names = train.feature_names
    assert "fnlwgt" not in names and not any(n.startswith("fnlwgt") for n in names)
    n_cats = sum(len({r[j] for r in rows}) for j, a in enumerate(ADULT_ATTRS) if a not in ADULT_NUMERIC)
    assert len(names) == 5 + n_cats == train.x.shape[1]
    assert not any(n.endswith("=?") for n in names)
    assert train.classes == ["<=50K", ">50K"]
    share = sum(labels) / len(labels)  # counted from the file
    assert sum(labels) == 7508 and int(train.y.sum() + test.y.sum()) == sum(labels)
    for ds in (train, test):
        assert abs(float(ds.y.float().mean()) - share) < 0.015
    for j, attr in enumerate(ADULT_ATTRS):
        if attr in ADULT_NUMERIC and attr != "fnlwgt":
            col = train.x[:, names.index(attr)]
            assert float(col.min()) == 0.0 and float(col.max()) == 1.0
        elif attr not in ADULT_NUMERIC:
            idx = [i for i, name in enumerate(names) if name.startswith(attr + "=")]
            assert len(idx) == len({r[j] for r in rows})
            assert torch.equal(train.x[:, idx].sum(1), torch.ones(len(train)))


def test_adult_sensitive_groups(adult, adult_file):
    rows, _ = _adult_kept(adult_file, "drop")
    for missing in ("drop", "category"):
        ds = adult["train", missing]
        assert set(ds.sensitive) == {"sex", "race"}
        assert [ds.feature_names[i] for i in ds.sensitive["sex"]] == ["sex=Female", "sex=Male"]
        races = sorted({r[8] for r in rows})
        assert len(races) == 5 and "Amer-Indian-Eskimo" in races
        assert [ds.feature_names[i] for i in ds.sensitive["race"]] == [f"race={r}" for r in races]


def test_adult_missing_as_category(adult, adult_file):
    rows, _ = adult_file
    train, test = adult["train", "category"], adult["test", "category"]
    assert len(train) + len(test) == 32_561
    names = train.feature_names
    for j, attr in ((1, "workclass"), (6, "occupation"), (13, "native_country")):
        assert f"{attr}=?" in names
        col = names.index(f"{attr}=?")
        n_missing = sum(r[j] == "?" for r in rows)
        assert n_missing > 500 and int(train.x[:, col].sum() + test.x[:, col].sum()) == n_missing
    with pytest.raises(ConfigError, match="missing must be one of 'drop', 'category', got"):
        cs.data.load("adult", split="train", root=Path("/nonexistent"), missing="impute")


def test_adult_missing_file(tmp_path, monkeypatch):
    # no copy in the root: the embedded file; asked to download, the missing copy is fetched, or the error says why
    assert len(cs.data.load("adult", split="test", root=tmp_path)) == 6032
    monkeypatch.setattr(tabular, "UCI", "http://127.0.0.1:9/")
    with pytest.raises(DataError) as err:
        cs.data.load("adult", split="train", root=tmp_path, download=True)
    assert "could not download adult.data" in str(err.value) and "127.0.0.1:9" in str(err.value)
    assert list((tmp_path / "adult").iterdir()) == []  # no partial file left


# --------------------------------------------------------------------------------------------------------------
# the embedded copies


def test_embedded_files_are_the_official_uci_files():
    for fname, md5 in UCI_MD5.items():
        assert hashlib.md5(embedded_text(fname).encode()).hexdigest() == md5, fname
    assert cs.data.DATASETS.meta("german-credit")["embedded"] and cs.data.DATASETS.meta("adult")["embedded"]


def test_a_damaged_embedded_file_is_an_install_error(tmp_path, monkeypatch):
    content = embedded_text("german.data").encode()
    monkeypatch.setattr(tabular, "EMBEDDED_DIR", tmp_path)
    empty = tmp_path / "empty-root"
    with pytest.raises(DataError, match="german.data.gz is missing or damaged.*reinstall"):
        cs.data.load("german-credit", root=empty)
    (tmp_path / "german.data.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="missing or damaged"):
        cs.data.load("german-credit", root=empty)
    (tmp_path / "german.data.gz").write_bytes(gzip.compress(content[:-10]))
    with pytest.raises(DataError, match=f"not the official {UCI_MD5['german.data']}.*reinstall"):
        cs.data.load("german-credit", root=empty)
    assert not empty.exists()  # nothing was written while failing


@pytest.mark.shared_data
def test_embedded_files_match_the_shared_copies(shared_data):
    """adult byte for byte; german-credit up to the label coding of the shared copy (1 good, 0 bad)."""
    assert embedded_text("adult.data").encode() == (shared_data / "adult" / "adult.data").read_bytes()
    shared = (shared_data / "german-credit" / "german.data").read_text().splitlines()
    embedded = embedded_text("german.data").splitlines()
    assert [line.rsplit(" ", 1)[0] for line in shared] == [line.rsplit(" ", 1)[0] for line in embedded]
    assert [line[-1] for line in shared] == [{"1": "1", "2": "0"}[line[-1]] for line in embedded]
    for split in ("train", "test"):
        ref = cs.data.load("german-credit", split=split, root=shared_data)
        got = cs.data.load("german-credit", split=split)
        assert torch.equal(got.x, ref.x) and torch.equal(got.y, ref.y)
