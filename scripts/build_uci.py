"""Build the embedded UCI files (german-credit, adult) from copies of the official files.

    python scripts/build_uci.py [--source ../shared/datasets] [--out src/clearsight/data/uci]

Each output is the official UCI file, gzip-compressed with a zero timestamp (byte-reproducible for one zlib).
clearsight checks the md5 of the *decompressed* bytes against the official UCI md5 on every load, so the
embedded copy is provably the official file whatever zlib compressed it.

The shared German Credit copy codes the risk label as 1 = good, 0 = bad; the UCI file codes it 1 = good,
2 = bad. The script writes the UCI coding back (the last field only) and refuses the result unless it has the
official md5, which proves that this was the only difference.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

from clearsight.data.tabular import ADULT_MD5, GERMAN_MD5

OFFICIAL_MD5 = {"german.data": GERMAN_MD5, "adult.data": ADULT_MD5}


def uci_german(raw: bytes) -> bytes:
    """German Credit with the label field in the UCI coding (1 good, 2 bad); a UCI copy is returned unchanged."""
    lines = raw.split(b"\n")
    out = []
    for line in lines:
        head, sep, label = line.rpartition(b" ")
        out.append(head + sep + (b"2" if sep and label == b"0" else label))
    return b"\n".join(out)


def build(source: Path, out: Path) -> dict[str, str]:
    """Write german.data.gz and adult.data.gz into `out`; return {file: md5 of its decompressed bytes}."""
    out.mkdir(parents=True, exist_ok=True)
    contents = {"german.data": uci_german((source / "german-credit" / "german.data").read_bytes()),
                "adult.data": (source / "adult" / "adult.data").read_bytes()}
    md5s = {}
    for name, data in contents.items():
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if md5 != OFFICIAL_MD5[name]:
            raise SystemExit(f"{name}: md5 {md5} is not the official UCI {OFFICIAL_MD5[name]}; not writing it")
        with open(out / f"{name}.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(data)
        md5s[f"{name}.gz"] = md5
    return md5s


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=root.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=root / "src" / "clearsight" / "data" / "uci")
    args = parser.parse_args(argv)
    for name, md5 in build(args.source, args.out).items():
        print(f"{name} content md5 {md5}, {(args.out / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
