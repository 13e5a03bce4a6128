"""The data layer's common parts: ArrayDataset validation and slicing, as_array_dataset, and `load` itself
(names, splits, options, the default root). Loaders: test_data_images.py, test_data_tabular.py; files and
downloads: test_data_files.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import clearsight as cs
from clearsight.data import DATASETS, ArrayDataset, as_array_dataset, default_root, load, loader_options, tabular
from clearsight.errors import ConfigError, DataError, UnknownNameError

ALL_DATASETS = ["adult", "cifar10", "decoy-mnist", "fashion-mnist", "german-credit", "mnist", "mnist-mini"]


def _make(n: int = 6, f: int = 4, **kwargs) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    x = kwargs.pop("x", torch.rand(n, f, generator=g))
    y = kwargs.pop("y", torch.arange(n) % 3)
    kwargs.setdefault("classes", ["a", "b", "c"])
    return ArrayDataset(x, y, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# ArrayDataset


def test_array_dataset_holds_what_it_is_given():
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    mask = torch.arange(6 * 4).view(6, 1, 2, 2).float()
    ds = ArrayDataset(x, y, classes=("a", "b", "c"), name="toy", split="train", extras={"mask": mask})
    assert len(ds) == 6 and ds.input_shape == (1, 2, 2) and ds.num_classes == 3 and ds.classes == ["a", "b", "c"]
    xi, yi = ds[4]
    assert torch.equal(xi, x[4]) and int(yi) == 0
    assert ds.feature_names is None and ds.sensitive == {} and ds.name == "toy" and ds.split == "train"
    assert repr(ds) == "ArrayDataset('toy', split='train', n=6, input_shape=(1, 2, 2), classes=3)"
    loader = torch.utils.data.DataLoader(ds, batch_size=4)  # a plain torch Dataset of (x, y)
    xb, yb = next(iter(loader))
    assert torch.equal(xb, x[:4]) and torch.equal(yb, y[:4])


NAN = torch.tensor([[0.5, float("nan")], [0.1, 0.2]])
INF = torch.tensor([[0.5, float("inf")], [0.1, 0.2]])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"x": NAN, "y": torch.tensor([0, 1])}, "holds 1 NaN or infinite values"),
    ({"x": INF, "y": torch.tensor([0, 1])}, "holds 1 NaN or infinite values"),
    ({"x": torch.tensor([[0.5, 1.5], [0.0, 0.2]]), "y": torch.tensor([0, 1])}, r"must lie in \[0, 1\]"),
    ({"x": torch.tensor([[0.5, -0.01], [0.0, 0.2]]), "y": torch.tensor([0, 1])}, r"must lie in \[0, 1\]"),
    ({"x": torch.tensor([[0, 255], [3, 4]], dtype=torch.uint8), "y": torch.tensor([0, 1])}, "floating tensor"),
    ({"x": torch.tensor([[0, 1], [1, 0]]), "y": torch.tensor([0, 1])}, "floating tensor"),
    ({"x": torch.rand(2, 3, dtype=torch.float64), "y": torch.tensor([0, 1])}, "must be float32, got torch.float64"),
    ({"x": torch.rand(2, 3, dtype=torch.float16), "y": torch.tensor([0, 1])}, "must be float32"),
    ({"x": torch.rand(3), "y": torch.tensor([0, 1, 2])}, "batch-first"),
    ({"x": [[0.5]], "y": torch.tensor([0])}, "must be a torch.Tensor"),
    ({"y": torch.tensor([0, 1, 2, 3, 1, 1])}, r"labels in \[0, 3\] but there are 3 classes"),
    ({"y": torch.tensor([0, 1, -1, 2, 1, 1])}, r"labels in \[-1, 2\] but there are 3 classes"),
    ({"y": torch.tensor([0, 1, 2, 0, 1, 1], dtype=torch.int32)}, "int64 class indices, got dtype torch.int32"),
    ({"y": torch.tensor([0.0, 1, 2, 0, 1, 1])}, "int64 class indices, got dtype torch.float32"),
    ({"y": [0, 1, 2, 0, 1, 1]}, "must be a torch.Tensor of int64"),
    ({"y": torch.tensor([0, 1, 2, 0, 1])}, "has 5 labels for a batch of 6 inputs"),
    ({"y": torch.tensor([[0, 1, 2, 0, 1, 1]])}, r"must have shape \[B\]"),
    ({"feature_names": ["f0", "f1", "f2"]}, "3 feature names for 4 features"),
    ({"feature_names": ["f0", "f1", "f2", "f3", "f4"]}, "5 feature names for 4 features"),
    ({"sensitive": {"sex": [1, 4]}}, r"sensitive feature indices of 'sex' out of range 0\.\.3"),
    ({"sensitive": {"age": [-1]}}, r"sensitive feature indices of 'age' out of range"),
    ({"extras": {"mask": torch.zeros(5, 4)}}, "extra 'mask' has 5 rows for 6 samples"),
])
def test_array_dataset_refuses_bad_input(kwargs, message):
    with pytest.raises(DataError, match=message):
        _make(**kwargs)


def test_array_dataset_error_names_the_dataset():
    with pytest.raises(DataError, match="toy inputs holds 1 NaN"):
        ArrayDataset(NAN, torch.tensor([0, 1]), classes=["a", "b"], name="toy")
    with pytest.raises(DataError, match=r"toy labels holds labels in \[0, 2\]"):
        ArrayDataset(torch.rand(2, 2), torch.tensor([0, 2]), classes=["a", "b"], name="toy")


def test_array_dataset_accepts_edge_values():
    ds = _make(x=torch.tensor([[0.0, 1.0], [1.0, 0.0]]), y=torch.tensor([2, 0]), feature_names=["p", "q"],
               sensitive={"g": [0, 1]}, extras={"w": torch.tensor([1.0, 2.0])})
    assert ds.sensitive == {"g": [0, 1]} and ds.feature_names == ["p", "q"]
    empty = _make(x=torch.zeros(0, 3), y=torch.zeros(0, dtype=torch.int64))
    assert len(empty) == 0 and empty.input_shape == (3,)


def test_subset_and_batch_keep_metadata_and_extras_aligned():
    n = 10
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 0])
    ds = ArrayDataset(x, y, classes=["a", "b", "c"], name="toy", split="train", feature_names=["u", "v", "w"],
                      sensitive={"g": [1]}, extras={"id": torch.arange(n), "mask": x > 0.5})
    idx = torch.tensor([7, 2, 2, 9])
    sub = ds.subset(idx)
    assert torch.equal(sub.x, x[idx]) and torch.equal(sub.y, y[idx])
    assert sub.extras["id"].tolist() == [7, 2, 2, 9] and torch.equal(sub.extras["mask"], x[idx] > 0.5)
    assert (sub.classes, sub.name, sub.split, sub.feature_names, sub.sensitive) == (
        ["a", "b", "c"], "toy", "train", ["u", "v", "w"], {"g": [1]})
    assert ds.subset(idx, split="val").split == "val" and ds.split == "train"
    by_mask = ds.subset(y == 0)
    assert by_mask.extras["id"].tolist() == [0, 5, 6, 9] and torch.equal(by_mask.x, x[[0, 5, 6, 9]])
    # the subset has its own metadata containers
    sub.feature_names.append("extra")
    sub.sensitive["g"].append(2)
    assert ds.feature_names == ["u", "v", "w"] and ds.sensitive == {"g": [1]}
    for index in (slice(3, 8), idx):
        b = ds.batch(index)
        assert set(b) == {"x", "y", "id", "mask"}
        assert torch.equal(b["x"], x[index]) and torch.equal(b["y"], y[index])
        assert torch.equal(b["id"], torch.arange(n)[index]) and torch.equal(b["mask"], (x > 0.5)[index])


def test_as_array_dataset():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(7, 1, 3, 3, generator=g)
    y = torch.tensor([0, 4, 1, 4, 2, 0, 3])
    ds = as_array_dataset(TensorDataset(x, y))
    assert isinstance(ds, ArrayDataset) and torch.equal(ds.x, x) and torch.equal(ds.y, y)
    assert ds.classes == ["0", "1", "2", "3", "4"] and ds.name == "TensorDataset" and ds.x.dtype == torch.float32
    same = _make()
    assert as_array_dataset(same) is same
    # float64 inputs become float32; int32 labels become int64
    ds64 = as_array_dataset(TensorDataset(x.double(), y.int()))
    assert ds64.x.dtype == torch.float32 and ds64.y.dtype == torch.int64 and torch.equal(ds64.x, x)
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):  # validated like every dataset
        as_array_dataset(TensorDataset(x * 255, y))

    class Pairs(Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    with pytest.raises(DataError, match="expected a dataset of \\(x, y\\) pairs"):
        as_array_dataset(Pairs([0.5, 0.25]))  # bare numbers, no (x, y) pairs
    with pytest.raises(DataError, match="could not read it"):
        as_array_dataset(Pairs([(torch.rand(2), 0), (torch.rand(3), 1)]))  # inputs of different shapes
    with pytest.raises(DataError, match="could not read it"):
        as_array_dataset(Pairs([(torch.rand(2), torch.tensor([0, 1]))]))  # a label that is not one class

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.rand(2), 0

    with pytest.raises(DataError, match="with len\\(\\)"):
        as_array_dataset(Stream())  # no len()


# --------------------------------------------------------------------------------------------------------------
# load


def test_registered_datasets_and_metadata():
    assert set(ALL_DATASETS) <= set(DATASETS.names())
    assert cs.data.load is load
    for name in ALL_DATASETS:
        meta = DATASETS.meta(name)
        assert meta["num_classes"] in (2, 10) and meta["kind"] in ("image", "tabular") and meta["description"]
    assert DATASETS.meta("mnist-mini")["embedded"] is True and DATASETS.meta("mnist")["embedded"] is False


def test_load_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        load("mnsit", split="train")
    msg = str(err.value)
    assert "unknown dataset 'mnsit'" in msg and "Did you mean 'mnist'" in msg
    assert f"Valid datasets: {', '.join(DATASETS.names())}" in msg and all(n in msg for n in ALL_DATASETS)
    assert isinstance(err.value, KeyError)


def test_load_unknown_split_lists_the_valid_ones():
    for split in ("val", "validation", "Train", ""):
        with pytest.raises(ConfigError) as err:
            load("mnist-mini", split=split)
        assert f"unknown split {split!r}; valid splits: train, test" in str(err.value)


def test_load_unknown_option_lists_the_valid_ones(tmp_path):
    cases = {
        "adult": ("missing_values", "test_fraction, seed, missing"),
        "german-credit": ("sed", "test_fraction, seed"),
        "decoy-mnist": ("corner", "source, seed"),
        "mnist-mini": ("seed", "(none)"),
        "cifar10": ("train", "(none)"),
    }
    for name, (option, valid) in cases.items():
        with pytest.raises(ConfigError) as err:
            load(name, split="train", root=tmp_path, **{option: 1})
        message = str(err.value)  # with " (did you mean ...?)" between when a valid option is close
        assert message.startswith(f"dataset {name!r} has no option {option!r}")
        assert message.endswith(f"; valid options: {valid}")
    with pytest.raises(ConfigError, match=r"has no option 'sed' \(did you mean 'seed'\?\)"):
        load("german-credit", split="train", root=tmp_path, sed=1)
    assert loader_options("adult") == {"test_fraction": 0.2, "seed": 0, "missing": "drop"}
    assert loader_options("decoy-mnist") == {"source": "mnist-mini", "seed": 0}
    assert loader_options("mnist") == {}


def test_default_root_honours_clearsight_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CLEARSIGHT_DATA", str(tmp_path / "data"))
    assert default_root() == tmp_path / "data"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLEARSIGHT_DATA", "~/elsewhere")
    assert default_root() == tmp_path / "home" / "elsewhere"
    monkeypatch.delenv("CLEARSIGHT_DATA")
    assert default_root() == tmp_path / "home" / ".cache" / "clearsight"
    monkeypatch.setenv("CLEARSIGHT_DATA", "")  # empty counts as unset
    assert default_root() == tmp_path / "home" / ".cache" / "clearsight"


def test_load_reads_from_the_default_root(monkeypatch, tmp_path):
    lines = gzip.decompress((tabular.EMBEDDED_DIR / "german.data.gz").read_bytes()).decode().splitlines()

    def put(root: Path, n_rows: int) -> None:  # a local copy of the first n_rows rows
        (root / "german-credit").mkdir(parents=True)
        (root / "german-credit" / "german.data").write_text("\n".join(lines[:n_rows]) + "\n")

    def rows(**kwargs) -> int:
        return sum(len(load("german-credit", split=split, **kwargs)) for split in ("train", "test"))

    monkeypatch.setenv("CLEARSIGHT_DATA", str(tmp_path / "data"))
    assert rows() == 1000  # nothing in the default root: the embedded official file
    put(tmp_path / "data", 900)
    assert rows() == 900  # a copy in the default root takes precedence
    # an explicit root wins, and "~" in it is expanded
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    put(tmp_path / "home" / "d", 800)
    assert rows(root="~/d") == 800 and rows() == 900
