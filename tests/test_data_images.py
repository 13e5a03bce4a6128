"""Image datasets: embedded mnist-mini (against the official t10k files), mnist / fashion-mnist on IDX files,
CIFAR-10 on python batches in the original format, and decoy-mnist."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import struct
import tarfile
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import clearsight as cs
from clearsight.data import images
from clearsight.errors import DataError

REPO = Path(__file__).resolve().parents[1]
T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
OFFICIAL = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", *T10K)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# an independent, literal IDX implementation (gzip + struct), slow on purpose


def slow_read_idx(path: Path) -> tuple[tuple[int, ...], list]:
    """(sizes, items): the items of an unsigned-byte IDX file, each a tuple of ints (or an int for 1-D files)."""
    with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
        zero, type_code, ndim = struct.unpack(">HBB", f.read(4))
        assert zero == 0 and type_code == 0x08, f"{path}: not an unsigned-byte IDX file"
        sizes = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        item_size = 1
        for s in sizes[1:]:
            item_size *= s
        items = []
        for _ in range(sizes[0]):
            chunk = f.read(item_size)
            assert len(chunk) == item_size
            values = struct.unpack(f">{item_size}B", chunk)
            items.append(values[0] if ndim == 1 else values)
        assert f.read() == b""
    return sizes, items


def slow_write_idx(path: Path, sizes: tuple[int, ...], values: list[int], *, compress: bool = True) -> None:
    payload = struct.pack(">HBB", 0, 0x08, len(sizes)) + struct.pack(f">{len(sizes)}I", *sizes)
    payload += struct.pack(f">{len(values)}B", *values)
    path.write_bytes(gzip.compress(payload) if compress else payload)


@functools.cache
def _parse_t10k(mnist: Path) -> tuple[list[tuple[int, ...]], list[int]]:
    image_sizes, pixels = slow_read_idx(mnist / T10K[0])
    label_sizes, labels = slow_read_idx(mnist / T10K[1])
    assert image_sizes == (10_000, 28, 28) and label_sizes == (10_000,)
    return pixels, labels


@pytest.fixture
def t10k(shared_data) -> tuple[list[tuple[int, ...]], list[int]]:
    """The official MNIST test set, parsed by `slow_read_idx` (images as 784-tuples, labels as ints)."""
    return _parse_t10k(shared_data / "mnist")


def _as_x(pixels: list[tuple[int, ...]]) -> torch.Tensor:
    """Pixel bytes -> float32 [N, 1, 28, 28], each value byte/255 computed in float32."""
    raw = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28)
    return raw / torch.tensor(255.0, dtype=torch.float32)


def _build_script():
    spec = importlib.util.spec_from_file_location("build_mnist_mini", REPO / "scripts" / "build_mnist_mini.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------
# mnist-mini


def test_mnist_mini_shapes_types_and_balance(mnist_mini_train, mnist_mini_test):
    for ds, n, per_class, split in ((mnist_mini_train, 5000, 500, "train"), (mnist_mini_test, 2000, 200, "test")):
        assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == torch.float32
        assert ds.y.shape == (n,) and ds.y.dtype == torch.int64
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
        assert torch.bincount(ds.y, minlength=10).tolist() == [per_class] * 10
        assert ds.classes == [str(d) for d in range(10)] and ds.name == "mnist-mini" and ds.split == split
        assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds) == n
        x0, y0 = ds[7]
        assert torch.equal(x0, ds.x[7]) and int(y0) == int(ds.y[7])


@pytest.mark.shared_data
def test_mnist_mini_files_are_what_the_build_script_produces(tmp_path, shared_data):
    script = _build_script()
    md5s = script.build(shared_data / "mnist", tmp_path)
    embedded = images.MNIST_MINI_DIR
    assert sorted(md5s) == sorted(images.MNIST_MINI_MD5)
    for name, md5 in md5s.items():
        assert (tmp_path / name).read_bytes() == (embedded / name).read_bytes(), name
        assert md5 == images.MNIST_MINI_MD5[name] == _md5(embedded / name)


@pytest.mark.shared_data
def test_mnist_mini_test_split_is_the_first_200_per_class_of_t10k(mnist_mini_test, t10k):
    pixels, labels = t10k
    chosen, seen = [], Counter()
    for i, label in enumerate(labels):  # the rule, literally: the first 200 of each digit, in file order
        if seen[label] < 200:
            seen[label] += 1
            chosen.append(i)
    assert len(chosen) == 2000
    assert _build_script().test_indices(np.asarray(labels, dtype=np.uint8)).tolist() == chosen
    assert mnist_mini_test.y.tolist() == [labels[i] for i in chosen]
    expected = _as_x([pixels[i] for i in chosen])
    assert torch.equal(mnist_mini_test.x, expected)  # pixel = byte / 255, exactly
    bytes_back = torch.round(mnist_mini_test.x * 255).to(torch.int64).view(2000, -1)
    assert bytes_back.tolist() == [list(pixels[i]) for i in chosen]


@pytest.mark.shared_data
def test_mnist_mini_train_split_is_train5k(mnist_mini_train, shared_data):
    mnist = shared_data / "mnist"
    _, pixels = slow_read_idx(mnist / "train5k-images-idx3-ubyte.gz")
    _, labels = slow_read_idx(mnist / "train5k-labels-idx1-ubyte.gz")
    assert mnist_mini_train.y.tolist() == labels
    assert torch.equal(mnist_mini_train.x, _as_x(pixels))


def test_mnist_mini_refuses_a_modified_embedded_file(tmp_path, monkeypatch):
    folder = tmp_path / "mnist_mini"
    shutil.copytree(images.MNIST_MINI_DIR, folder)
    monkeypatch.setattr(images, "MNIST_MINI_DIR", folder)
    assert torch.equal(cs.data.load("mnist-mini", split="test").y[:5], torch.tensor([7, 2, 1, 0, 4]))
    raw = bytearray((folder / "test-labels-idx1-ubyte.gz").read_bytes())
    raw[-8] ^= 1  # one bit of the gzip CRC
    (folder / "test-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch") as err:
        cs.data.load("mnist-mini", split="test")
    assert "test-labels-idx1-ubyte.gz" in str(err.value)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="reinstall") as err:
        cs.data.load("mnist-mini", split="train")
    assert "train-images-idx3-ubyte.gz" in str(err.value)


# --------------------------------------------------------------------------------------------------------------
# mnist / fashion-mnist on IDX files


def write_idx_set(folder: Path, *, n_train: int, n_test: int, seed: int, compress: bool = True
                  ) -> dict[str, tuple[list, list]]:
    """The four official files with random content; returns split -> (pixel tuples, labels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        pixels = [tuple(int(v) for v in rng.integers(0, 256, size=784)) for _ in range(n)]
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        suffix = ".gz" if compress else ""
        slow_write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", (n, 28, 28), [v for p in pixels for v in p],
                       compress=compress)
        slow_write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", (n,), labels, compress=compress)
        out[split] = (pixels, labels)
    return out


def _patch_md5(monkeypatch, name: str, folder: Path) -> None:
    monkeypatch.setitem(images.IDX_SOURCES[name], "md5", {f: _md5(folder / f) for f in OFFICIAL})


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_refuses_files_with_the_wrong_checksum(tmp_path, name):
    write_idx_set(tmp_path / name, n_train=3, n_test=2, seed=0)
    for split, fname in (("train", "train-images-idx3-ubyte.gz"), ("test", "t10k-images-idx3-ubyte.gz")):
        with pytest.raises(DataError, match="checksum mismatch") as err:
            cs.data.load(name, split=split, root=tmp_path)
        assert str(tmp_path / name / fname) in str(err.value)
        assert images.IDX_SOURCES[name]["md5"][fname] in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_reads_both_splits(tmp_path, monkeypatch, name):
    written = write_idx_set(tmp_path / name, n_train=12, n_test=7, seed=1)
    _patch_md5(monkeypatch, name, tmp_path / name)
    classes = images.MNIST_CLASSES if name == "mnist" else images.FASHION_CLASSES
    for split in ("train", "test"):
        ds = cs.data.load(name, split=split, root=tmp_path)
        pixels, labels = written[split]
        assert ds.x.shape == (len(labels), 1, 28, 28) and ds.x.dtype == torch.float32
        assert torch.equal(ds.x, _as_x(pixels)) and ds.y.tolist() == labels and ds.y.dtype == torch.int64
        assert ds.classes == classes and ds.name == name and ds.split == split
    assert cs.data.load(name, split="test", root=tmp_path).classes[9] == ("9" if name == "mnist" else "ankle boot")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_accepts_decompressed_files(tmp_path, name):
    written = write_idx_set(tmp_path / name, n_train=4, n_test=3, seed=2, compress=False)
    assert not list((tmp_path / name).glob("*.gz"))
    for split in ("train", "test"):
        ds = cs.data.load(name, split=split, root=tmp_path)
        assert torch.equal(ds.x, _as_x(written[split][0])) and ds.y.tolist() == written[split][1]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_missing_file_says_where_and_how(tmp_path, name):
    with pytest.raises(DataError) as err:
        cs.data.load(name, split="test", root=tmp_path)
    msg = str(err.value)
    folder = tmp_path / name
    assert f"missing {folder / 't10k-images-idx3-ubyte.gz'}" in msg and f"in {folder}" in msg
    assert "download=True" in msg
    write_idx_set(folder, n_train=2, n_test=2, seed=0)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    gz = folder / "train-images-idx3-ubyte.gz"  # the images present in decompressed form, the labels absent
    (folder / "train-images-idx3-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    with pytest.raises(DataError) as err:
        cs.data.load(name, split="train", root=tmp_path)
    assert f"missing {folder / 'train-labels-idx1-ubyte.gz'}" in str(err.value)


@pytest.mark.parametrize(("n_images", "n_labels"), [(5, 4), (4, 5)])
def test_idx_loader_label_count_mismatch(tmp_path, monkeypatch, n_images, n_labels):
    folder = tmp_path / "mnist"
    write_idx_set(folder, n_train=2, n_test=2, seed=0)
    slow_write_idx(folder / T10K[0], (n_images, 28, 28), [0] * (784 * n_images))
    slow_write_idx(folder / T10K[1], (n_labels,), [1] * n_labels)
    _patch_md5(monkeypatch, "mnist", folder)
    with pytest.raises(DataError) as err:
        cs.data.load("mnist", split="test", root=tmp_path)
    assert f"{n_labels} labels for {n_images} images" in str(err.value) and T10K[1] in str(err.value)


def test_idx_loader_refuses_swapped_or_bad_label_files(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    write_idx_set(folder, n_train=2, n_test=3, seed=0)
    slow_write_idx(folder / T10K[1], (3,), [1, 10, 2])  # a label that is not a digit
    _patch_md5(monkeypatch, "mnist", folder)
    with pytest.raises(DataError, match=r"labels in \[1, 10\] but there are 10 classes"):
        cs.data.load("mnist", split="test", root=tmp_path)
    shutil.copyfile(folder / T10K[0], folder / T10K[1])  # the images file given as labels
    _patch_md5(monkeypatch, "mnist", folder)
    with pytest.raises(DataError, match="labels for 3 images"):
        cs.data.load("mnist", split="test", root=tmp_path)


def _copy_t10k(shared_data: Path, root: Path) -> None:
    (root / "mnist").mkdir(parents=True)
    for name in T10K:
        shutil.copyfile(shared_data / "mnist" / name, root / "mnist" / name)


@pytest.mark.shared_data
def test_mnist_loader_reads_the_real_t10k_files(tmp_path, shared_data, t10k):
    _copy_t10k(shared_data, tmp_path)  # official names and official checksums: no patching
    ds = cs.data.load("mnist", split="test", root=tmp_path)
    pixels, labels = t10k
    assert len(ds) == 10_000 and ds.x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.y, minlength=10).tolist() == [Counter(labels)[d] for d in range(10)]
    assert torch.bincount(ds.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.y.tolist() == labels
    assert torch.equal(ds.x, _as_x(pixels))
    with pytest.raises(DataError, match="missing"):  # the train files are not there
        cs.data.load("mnist", split="train", root=tmp_path)


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10 on python batches in the original format


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote with protocol 2, the format of the official CIFAR-10 batches:
    byte strings inline (SHORT_BINSTRING / BINSTRING) and numpy under numpy.core."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_str8(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core.", "numpy.core.")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())


def cifar_batch(label: bytes, n: int, rng: np.random.Generator) -> dict:
    return {b"batch_label": label, b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)]}


def dump_batch(batch: object, writer: str) -> bytes:
    if writer == "python2":
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(batch)
        content = buf.getvalue()
        assert b"_codecs" not in content and b"numpy._core" not in content  # as Python 2 wrote it
        return content
    return pickle.dumps(batch, protocol=2)


def write_cifar_archive(folder: Path, *, seed: int = 0, writer: str = "python2", n: int = 3,
                        replace: dict[str, bytes] | None = None) -> dict[str, dict]:
    """cifar-10-python.tar.gz with cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": cifar_batch(f"training batch {i} of 5".encode(), n + i, rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(b"testing batch 1 of 1", n + 6, rng)
    meta = {b"label_names": [c.encode() for c in images.CIFAR10_CLASSES], b"num_cases_per_batch": 10000,
            b"num_vis": 3072}
    folder.mkdir(parents=True, exist_ok=True)
    contents = {name: dump_batch(b, writer) for name, b in batches.items()}
    contents["batches.meta"] = dump_batch(meta, writer)
    contents.update(replace or {})
    with tarfile.open(folder / images.CIFAR10_ARCHIVE, "w:gz") as tar:
        top = tarfile.TarInfo("cifar-10-batches-py")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for name, data in contents.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return batches


def _patch_cifar_md5(monkeypatch, folder: Path) -> None:
    monkeypatch.setattr(images, "CIFAR10_MD5", _md5(folder / images.CIFAR10_ARCHIVE))


def _check_cifar(ds, batches: list[dict]) -> None:
    data = np.concatenate([b[b"data"] for b in batches])
    labels = [v for b in batches for v in b[b"labels"]]
    assert ds.x.shape == (len(labels), 3, 32, 32) and ds.x.dtype == torch.float32 and ds.y.tolist() == labels
    # layout, literally: a row is 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32
    for i in (0, len(labels) // 2, len(labels) - 1):
        for c, h, w in ((0, 0, 0), (0, 0, 31), (1, 5, 7), (2, 31, 0), (2, 31, 31), (1, 16, 20)):
            assert float(ds.x[i, c, h, w]) == np.float32(data[i, c * 1024 + h * 32 + w]) / np.float32(255)
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)) / 255
    assert torch.equal(ds.x, expected)


@pytest.mark.parametrize("writer", ["python2", "python3"])
def test_cifar10_loads_train_and_test_from_the_archive(tmp_path, monkeypatch, writer):
    folder = tmp_path / "cifar10"
    batches = write_cifar_archive(folder, seed=1, writer=writer)
    _patch_cifar_md5(monkeypatch, folder)
    train = cs.data.load("cifar10", split="train", root=tmp_path)
    _check_cifar(train, [batches[f"data_batch_{i}"] for i in range(1, 6)])  # in batch order 1..5
    assert len(train) == 4 + 5 + 6 + 7 + 8
    assert train.classes == images.CIFAR10_CLASSES and train.name == "cifar10" and train.split == "train"
    test = cs.data.load("cifar10", split="test", root=tmp_path)
    _check_cifar(test, [batches["test_batch"]])
    assert len(test) == 9 and test.split == "test"
    # extracted once; the extracted folder alone is enough afterwards
    (folder / images.CIFAR10_ARCHIVE).unlink()
    assert torch.equal(cs.data.load("cifar10", split="test", root=tmp_path).x, test.x)


def test_cifar10_wrong_checksum_and_missing_archive(tmp_path):
    with pytest.raises(DataError) as err:
        cs.data.load("cifar10", split="test", root=tmp_path)
    msg = str(err.value)
    assert f"missing {tmp_path / 'cifar10' / images.CIFAR10_ARCHIVE}" in msg and "download=True" in msg
    write_cifar_archive(tmp_path / "cifar10")
    with pytest.raises(DataError, match="checksum mismatch") as err:
        cs.data.load("cifar10", split="test", root=tmp_path)
    assert str(tmp_path / "cifar10" / images.CIFAR10_ARCHIVE) in str(err.value)
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()  # not extracted


class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_cifar10_refuses_a_pickle_with_code_and_never_runs_it(tmp_path, monkeypatch, attack):
    marker = tmp_path / "side-effect"
    payload = (_Evil(os.system, f"touch {marker}") if attack == "os.system"
               else _Evil(eval, f"open({str(marker)!r}, 'w').close()"))
    evil = {b"batch_label": b"testing batch 1 of 1", b"labels": [0], b"data": payload, b"filenames": [b"x.png"]}
    folder = tmp_path / "cifar10"
    write_cifar_archive(folder, replace={"test_batch": pickle.dumps(evil, protocol=2)})
    _patch_cifar_md5(monkeypatch, folder)
    with pytest.raises(DataError) as err:
        cs.data.load("cifar10", split="test", root=tmp_path)
    assert "test_batch" in str(err.value) and "not allowed" in str(err.value)
    assert not marker.exists()
    # the other batches of the same archive are fine
    assert len(cs.data.load("cifar10", split="train", root=tmp_path)) == 30


@pytest.mark.parametrize("member", ["../evil", "/ABS/evil", "symlink"])
def test_cifar10_refuses_an_archive_that_escapes(tmp_path, monkeypatch, member):
    folder = tmp_path / "cifar10"
    write_cifar_archive(folder)
    archive = folder / images.CIFAR10_ARCHIVE
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    if member == "symlink":
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_6")
        info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path)
    else:
        info = tarfile.TarInfo(member.replace("/ABS", str(tmp_path)))
        info.size = 5
    members.insert(3, (info, b"pwned" if info.isfile() else None))
    with tarfile.open(archive, "w:gz") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    _patch_cifar_md5(monkeypatch, folder)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match="refusing to extract") as err:
        cs.data.load("cifar10", split="test", root=tmp_path)
    assert str(archive) in str(err.value)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written, inside or outside
    assert not (tmp_path / "evil").exists()


def test_cifar10_refuses_batches_of_the_wrong_shape(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    bad = cifar_batch(b"testing batch 1 of 1", 2, rng)
    bad[b"data"] = bad[b"data"][:, :1024]  # one channel only
    folder = tmp_path / "cifar10"
    write_cifar_archive(folder, replace={"test_batch": dump_batch(bad, "python2")})
    _patch_cifar_md5(monkeypatch, folder)
    with pytest.raises(DataError, match=r"test_batch: expected uint8 data of shape \[N, 3072\]"):
        cs.data.load("cifar10", split="test", root=tmp_path)


# --------------------------------------------------------------------------------------------------------------
# decoy-mnist


def _corner_masks() -> torch.Tensor:
    masks = torch.zeros(4, 1, 28, 28)
    masks[0, :, :4, :4] = 1
    masks[1, :, :4, 24:] = 1
    masks[2, :, 24:, :4] = 1
    masks[3, :, 24:, 24:] = 1
    return masks


def _check_decoy(decoy, base) -> torch.Tensor:
    """Common oracle; returns the digit each patch's shade encodes."""
    mask = decoy.extras["mask"]
    assert mask.shape == (len(base), 1, 28, 28) and torch.equal(decoy.y, base.y)
    assert decoy.x.dtype == torch.float32 and decoy.classes == base.classes
    # exactly one 4x4 corner patch per sample
    matches = (mask[:, None] == _corner_masks()[None]).flatten(2).all(-1)  # [N, 4]
    assert torch.equal(matches.sum(1), torch.ones(len(base), dtype=torch.int64))
    assert torch.bincount(matches.float().argmax(1), minlength=4).min() > len(base) // 4 * 0.8  # all corners used
    outside = mask == 0
    assert torch.equal(decoy.x[outside], base.x[outside])  # untouched outside the patch, bit for bit
    patch = decoy.x[mask == 1].view(len(base), 16)
    assert torch.equal(patch, patch[:, :1].expand(-1, 16))  # one gray level per patch
    digit = torch.round((255 - patch[:, 0] * 255) / 25).to(torch.int64)
    assert bool(((digit >= 0) & (digit <= 9)).all())
    shades = (255.0 - 25.0 * torch.arange(10, dtype=torch.float32)) / 255.0
    assert torch.equal(patch[:, 0], shades[digit])  # exactly (255 - 25 d) / 255
    return digit


def test_decoy_mnist_train_shade_gives_the_label(mnist_mini_train):
    decoy = cs.data.load("decoy-mnist", split="train")
    digit = _check_decoy(decoy, mnist_mini_train)
    assert torch.equal(digit, mnist_mini_train.y)
    assert decoy.name == "decoy-mnist" and decoy.split == "train"
    assert torch.equal(decoy.batch(slice(0, 3))["mask"], decoy.extras["mask"][:3])


def test_decoy_mnist_test_shade_is_random(mnist_mini_test):
    decoy = cs.data.load("decoy-mnist", split="test")
    digit = _check_decoy(decoy, mnist_mini_test)
    agree = float((digit == mnist_mini_test.y).float().mean())
    assert agree < 0.2  # about 1 in 10 by chance; in training it is 1
    assert torch.bincount(digit, minlength=10).min() > 100  # every shade occurs (about 200 each)


def test_decoy_mnist_is_seeded():
    a = cs.data.load("decoy-mnist", split="test", seed=0)
    b = cs.data.load("decoy-mnist", split="test", seed=0)
    c = cs.data.load("decoy-mnist", split="test", seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.extras["mask"], b.extras["mask"])
    assert not torch.equal(a.extras["mask"], c.extras["mask"]) and not torch.equal(a.x, c.x)
    train0, train1 = cs.data.load("decoy-mnist", split="train", seed=0), cs.data.load("decoy-mnist", split="train",
                                                                                       seed=1)
    assert not torch.equal(train0.extras["mask"], train1.extras["mask"])


def test_decoy_mnist_invalid_source(tmp_path):
    for source in ("cifar10", "fashion-mnist", "MNIST"):
        with pytest.raises(DataError) as err:
            cs.data.load("decoy-mnist", split="train", root=tmp_path, source=source)
        assert repr(source) in str(err.value) and "'mnist-mini' or 'mnist'" in str(err.value)


@pytest.mark.parametrize("real", [False, pytest.param(True, marks=pytest.mark.shared_data)])
def test_decoy_mnist_from_full_mnist(tmp_path, request, monkeypatch, real):
    if real:  # the official t10k files
        _copy_t10k(request.getfixturevalue("shared_data"), tmp_path)
    else:  # files in the official format written here, their checksums patched in
        write_idx_set(tmp_path / "mnist", n_train=3, n_test=200, seed=2)
        _patch_md5(monkeypatch, "mnist", tmp_path / "mnist")
    base = cs.data.load("mnist", split="test", root=tmp_path)
    decoy = cs.data.load("decoy-mnist", split="test", root=tmp_path, source="mnist")
    _check_decoy(decoy, base)
    monkeypatch.setenv("CLEARSIGHT_DATA", str(tmp_path))  # a direct call without root uses the default root
    direct = images.decoy_mnist("test", source="mnist")
    assert torch.equal(direct.x, decoy.x)
