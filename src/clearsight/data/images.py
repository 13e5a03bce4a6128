"""Image datasets: embedded mnist-mini, MNIST, Fashion-MNIST, CIFAR-10 and the derived decoy-mnist.

All return float32 images in [0, 1] of shape [N, C, H, W] and int64 labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from clearsight.data.base import ArrayDataset, default_root
from clearsight.data.files import check_md5, ensure_file, load_array_pickle, read_idx, safe_extract_tar
from clearsight.data.registry import DATASETS
from clearsight.errors import DataError
from clearsight.options import Seed

# Attack budgets used by evaluation suites (metadata `eps_grid`), from Noack et al.'s evaluation code
# (METHODS.md, "Evaluation grids").
MNIST_EPS = {"linf": (0.1, 0.2, 0.25, 0.3), "l2": (1.5, 2.5, 3.5)}
CIFAR10_EPS = {"linf": (4 / 255, 8 / 255), "l2": (80 / 255, 320 / 255)}
# Training budgets (metadata `train_eps`): the eps an adversarial objective uses when the user gives none
# (METHODS.md, "Training budgets": Madry et al.'s MNIST linf 0.3; CIFAR-10 linf 8/255, l2 0.5).
MNIST_TRAIN_EPS = {"linf": 0.3, "l2": 2.0}
CIFAR10_TRAIN_EPS = {"linf": 8 / 255, "l2": 0.5}

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The embedded subset, built by scripts/build_mnist_mini.py from the official files; checked on every load.
MNIST_MINI_DIR = Path(__file__).parent / "mnist_mini"
MNIST_MINI_MD5 = {
    "train-images-idx3-ubyte.gz": "6057ca5a67cd8660e9946050476aec42",
    "train-labels-idx1-ubyte.gz": "f4e4f8640ad2a3b028472f5598c37e79",
    "test-images-idx3-ubyte.gz": "d325bf0ef7359ea43b6a40c7ac5554b7",
    "test-labels-idx1-ubyte.gz": "e61b4d25f5ae07d7b27b2c11476c0ee0",
}

IDX_SOURCES: dict[str, dict[str, Any]] = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] or [N, C, H, W] -> float32 [N, C, H, W] in [0, 1]."""
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    return torch.from_numpy(images.astype(np.float32) / 255.0)


def _labels_to_tensor(labels: np.ndarray | list[int], n_images: int, source: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if y.dim() != 1 or y.shape[0] != n_images:
        raise DataError(f"{source}: {y.shape[0] if y.dim() else 0} labels for {n_images} images")
    return y


def _idx_pair(images: Path, labels: Path, *, name: str, split: str, classes: list[str]) -> ArrayDataset:
    x = _images_to_tensor(read_idx(images))
    y = _labels_to_tensor(read_idx(labels), x.shape[0], str(labels))
    return ArrayDataset(x, y, classes=classes, name=name, split=split)


@DATASETS.register("mnist-mini", kind="image", input_shape=(1, 28, 28), num_classes=10, embedded=True,
                   eps_grid=MNIST_EPS, train_eps=MNIST_TRAIN_EPS,
                   description="5,000 MNIST train / 2,000 test images embedded in the package (offline)")
def mnist_mini(split: str, *, root: Path | None = None, download: bool = False) -> ArrayDataset:
    """Real MNIST subset shipped with clearsight: train = 500 images per class, test = 200 per class of t10k."""
    prefix = "train" if split == "train" else "test"
    files = [MNIST_MINI_DIR / f"{prefix}-images-idx3-ubyte.gz", MNIST_MINI_DIR / f"{prefix}-labels-idx1-ubyte.gz"]
    for f in files:
        if not f.exists():
            raise DataError(f"the embedded file {f} is missing: the clearsight installation is broken; reinstall it")
        check_md5(f, MNIST_MINI_MD5[f.name])
    return _idx_pair(*files, name="mnist-mini", split=split, classes=MNIST_CLASSES)


def _idx_dataset(name: str, split: str, root: Path, download: bool, classes: list[str]) -> ArrayDataset:
    source = IDX_SOURCES[name]
    folder = root / name
    prefix = "train" if split == "train" else "t10k"
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        fname = f"{prefix}-{kind}-ubyte.gz"
        raw = folder / fname[: -len(".gz")]
        if raw.exists() and not (folder / fname).exists():  # already decompressed by the user
            paths.append(raw)
            continue
        how = f"Put the official {fname} (or its decompressed form) in {folder}."
        paths.append(ensure_file(folder / fname, source["md5"][fname], [m + fname for m in source["mirrors"]],
                                 download_ok=download, how=how))
    return _idx_pair(*paths, name=name, split=split, classes=classes)


@DATASETS.register("mnist", kind="image", input_shape=(1, 28, 28), num_classes=10, embedded=False,
                   eps_grid=MNIST_EPS, train_eps=MNIST_TRAIN_EPS,
                   description="MNIST, 60,000 train / 10,000 test, IDX files in ROOT/mnist")
def mnist(split: str, *, root: Path, download: bool = False) -> ArrayDataset:
    """MNIST (LeCun et al.) from the official IDX files in ROOT/mnist; md5-verified download when asked."""
    return _idx_dataset("mnist", split, root, download, MNIST_CLASSES)


@DATASETS.register("fashion-mnist", kind="image", input_shape=(1, 28, 28), num_classes=10, embedded=False,
                   eps_grid=MNIST_EPS, train_eps=MNIST_TRAIN_EPS,
                   description="Fashion-MNIST, 60,000 train / 10,000 test, IDX files in ROOT/fashion-mnist")
def fashion_mnist(split: str, *, root: Path, download: bool = False) -> ArrayDataset:
    """Fashion-MNIST (Xiao et al., arXiv 1708.07747) from the IDX files in ROOT/fashion-mnist."""
    return _idx_dataset("fashion-mnist", split, root, download, FASHION_CLASSES)


@DATASETS.register("cifar10", kind="image", input_shape=(3, 32, 32), num_classes=10, embedded=False,
                   eps_grid=CIFAR10_EPS, train_eps=CIFAR10_TRAIN_EPS,
                   description="CIFAR-10, 50,000 train / 10,000 test, python batches in ROOT/cifar10")
def cifar10(split: str, *, root: Path, download: bool = False) -> ArrayDataset:
    """CIFAR-10 from the official python batches (read without executing pickle code)."""
    folder = root / "cifar10"
    batches = folder / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not all((batches / n).exists() for n in names):
        how = f"Put the official {CIFAR10_ARCHIVE} in {folder} (or its extracted cifar-10-batches-py folder)."
        archive = ensure_file(folder / CIFAR10_ARCHIVE, CIFAR10_MD5, [m + CIFAR10_ARCHIVE for m in CIFAR10_MIRRORS],
                              download_ok=download, how=how)
        safe_extract_tar(archive, folder)
        missing = [n for n in names if not (batches / n).exists()]
        if missing:
            raise DataError(f"{archive} did not contain cifar-10-batches-py/{missing[0]}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for n in names:
        batch = load_array_pickle(batches / n)
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise DataError(f"{batches / n} is not a CIFAR-10 batch (no data/labels entries)")
        data = np.asarray(batch[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{batches / n}: expected uint8 data of shape [N, 3072], got {data.dtype} {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[b"labels"])
    x = _images_to_tensor(np.concatenate(images))
    return ArrayDataset(x, _labels_to_tensor(labels, x.shape[0], str(batches)), classes=CIFAR10_CLASSES,
                        name="cifar10", split=split)


DECOY_SIZE = 4


@DATASETS.register("decoy-mnist", kind="image", input_shape=(1, 28, 28), num_classes=10, embedded=True,
                   eps_grid=MNIST_EPS, train_eps=MNIST_TRAIN_EPS,
                   description="MNIST with a 4x4 corner patch whose shade gives away the label in training only")
def decoy_mnist(split: str, *, root: Path | None = None, download: bool = False, source: str = "mnist-mini",
                seed: Seed = 0) -> ArrayDataset:
    """Decoy-MNIST (Ross & Doshi-Velez, arXiv 1703.03717), derived from `source` (mnist-mini or mnist).

    Each image gets a 4x4 patch in a random corner; its gray level is 255 - 25*y in training (a shortcut) and
    255 - 25*d for a random digit d in testing. The patch of every sample is in `extras["mask"]`
    ([N, 1, 28, 28], 1.0 inside the patch), the region where a right-for-the-right-reasons model puts no
    attribution. Corners and test shades are drawn from `seed` (offset by split), so the data are fixed.
    """
    if source not in ("mnist-mini", "mnist"):
        raise DataError(f"decoy-mnist source must be 'mnist-mini' or 'mnist', got {source!r}")
    # root=None (a direct call) means the default data folder, as in `load`; the full MNIST loader needs one
    base = DATASETS.get(source)(split, root=default_root() if root is None else root, download=download)
    n = len(base)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    corners = torch.from_numpy(rng.integers(0, 4, size=n))
    shade_digit = base.y if split == "train" else torch.from_numpy(rng.integers(0, 10, size=n))
    shade = (255.0 - 25.0 * shade_digit.float()) / 255.0
    mask = torch.zeros(n, 1, 28, 28)
    s = DECOY_SIZE
    for corner, (rows, cols) in enumerate([(slice(0, s), slice(0, s)), (slice(0, s), slice(-s, None)),
                                           (slice(-s, None), slice(0, s)), (slice(-s, None), slice(-s, None))]):
        mask[corners == corner, :, rows, cols] = 1.0
    x = base.x * (1 - mask) + shade.view(-1, 1, 1, 1) * mask
    return ArrayDataset(x, base.y.clone(), classes=MNIST_CLASSES, name="decoy-mnist", split=split,
                        extras={"mask": mask})
