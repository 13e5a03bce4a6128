"""Build the embedded mnist-mini files from the official MNIST IDX files.

    python scripts/build_mnist_mini.py [--source ../shared/datasets/mnist] [--out src/clearsight/data/mnist_mini]

train = the 5,000-image train5k subset (500 per class), copied as is;
test  = the first 200 images of each class in t10k order (2,000 images), a fixed, balanced subset.
The output is byte-reproducible (gzip with a zero timestamp); it prints the md5 of each file, which
clearsight/data/images.py checks on every load.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from clearsight.data.files import check_md5, md5sum, read_idx, write_idx

SOURCE_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "train5k-images-idx3-ubyte.gz": "6057ca5a67cd8660e9946050476aec42",
    "train5k-labels-idx1-ubyte.gz": "f4e4f8640ad2a3b028472f5598c37e79",
}
TEST_PER_CLASS = 200


def test_indices(labels: np.ndarray, per_class: int = TEST_PER_CLASS) -> np.ndarray:
    """Indices of the first `per_class` samples of each class, in file order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return np.sort(keep)


def build(source: Path, out: Path) -> dict[str, str]:
    for name, md5 in SOURCE_MD5.items():
        check_md5(source / name, md5)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "train5k-images-idx3-ubyte.gz", out / "train-images-idx3-ubyte.gz")
    shutil.copyfile(source / "train5k-labels-idx1-ubyte.gz", out / "train-labels-idx1-ubyte.gz")
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    keep = test_indices(labels)
    write_idx(out / "test-images-idx3-ubyte.gz", read_idx(source / "t10k-images-idx3-ubyte.gz")[keep])
    write_idx(out / "test-labels-idx1-ubyte.gz", labels[keep])
    return {f.name: md5sum(f) for f in sorted(out.glob("*.gz"))}


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=root.parent / "shared" / "datasets" / "mnist")
    parser.add_argument("--out", type=Path, default=root / "src" / "clearsight" / "data" / "mnist_mini")
    args = parser.parse_args(argv)
    for name, md5 in build(args.source, args.out).items():
        print(f"{name} {md5} {(args.out / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
