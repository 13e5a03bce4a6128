"""Reading and fetching dataset files safely: checksums, downloads, archive extraction, IDX and pickle parsing.

Nothing here executes code from a file: tar members are checked before extraction, and the CIFAR-10 pickle
batches are read with an unpickler that refuses every global except the numpy array reconstructors.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clearsight.errors import DataError


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_md5(path: Path, md5: str) -> None:
    """Raise DataError naming `path` if its md5 is not `md5`."""
    got = md5sum(path)
    if got != md5:
        raise DataError(f"checksum mismatch for {path}: md5 {got}, expected {md5}. The file is corrupted or "
                        "not the official one; delete it and download again")


def download(urls: Sequence[str], dest: Path, md5: str, *, timeout: float = 60.0) -> Path:
    """Fetch `dest` from the first of `urls` that works and whose content has checksum `md5`.

    The download goes to a temporary file in `dest`'s folder and is renamed only once verified, so a failed or
    corrupted download never leaves a file that a later load would trust.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
            got = md5sum(tmp)
            if got != md5:
                failures.append(f"{url}: md5 {got}, expected {md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
            # HTTPException: e.g. a connection closed before Content-Length bytes (IncompleteRead); try the next
            failures.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name}:\n  " + "\n  ".join(failures))


def ensure_file(path: Path, md5: str | None, urls: Sequence[str], *, download_ok: bool, how: str,
                verify_present: bool = True) -> Path:
    """Return `path` if present, else download it (md5-verified) or explain where to put it.

    A present file is checked against `md5` too unless `verify_present=False` (for files of which several
    legitimate copies circulate; their parser validates them instead).
    """
    if path.exists():
        if md5 is not None and verify_present:
            check_md5(path, md5)
        return path
    if not download_ok:
        raise DataError(f"missing {path}. {how} Or let clearsight fetch it from the official mirror: download=True "
                        "in Python, data.download: true in a run's config (`clearsight train --set "
                        "data.download=true`).")
    if md5 is None:
        raise DataError(f"missing {path} and no checksum is known to verify a download; put the file there")
    return download(urls, path, md5)


def safe_extract_tar(archive: Path, dest: Path) -> None:
    """Extract `archive` into `dest`, refusing links, devices, absolute paths and paths that leave `dest`."""
    dest = dest.resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"refusing to extract {archive}: member {m.name!r} is a link or special file")
                if os.path.isabs(m.name) or (target != dest and dest not in target.parents):
                    raise DataError(f"refusing to extract {archive}: member {m.name!r} would land outside {dest}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters; members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error) as err:  # not a tar, or corrupted: not a traceback
        raise DataError(f"cannot extract {archive}: it is not a valid tar archive ({err}); delete it and "
                        "download again") from err


_IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, checking header and size."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a corrupted deflate stream inside the .gz
        raise DataError(f"cannot read {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod would wrap around in int64 for huge headers
    if len(body) != expected:
        raise DataError(f"{path} holds {len(body)} data bytes, the header (dimensions {list(shape)}) says "
                        f"{expected}: the file is truncated or damaged; delete it and download it again")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    """Write `array` as an IDX file (uint8 only); gzip with a zero timestamp so the bytes are reproducible."""
    if array.dtype != np.uint8:
        raise ValueError("write_idx writes uint8 arrays only")
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode` restricted to what Python 3 pickles (protocol <= 2) use it for: bytes from latin-1 text."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to rebuild bytes from latin-1 text")
    return text.encode("latin-1")


def _empty_bytes() -> bytes:
    """`bytes()` with no argument: how Python 3 pickles (protocol <= 2) store an empty bytes object."""
    return b""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers and numpy arrays; any other global is refused.

    The official CIFAR-10 batches are Python 2 pickles (byte strings stored inline). A batch re-pickled by
    Python 3 with protocol 2 stores each bytes object as a call `_codecs.encode(text, "latin1")` (or `bytes()`
    when empty); those two globals are replaced by functions that can do nothing else.
    """

    _ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    })

    _BYTES_BUILDERS: ClassVar[dict[tuple[str, str], Any]] = {
        ("_codecs", "encode"): _latin1_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._BYTES_BUILDERS:
            return self._BYTES_BUILDERS[module, name]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_array_pickle(path: Path) -> Any:
    """Load a pickle that may contain only dicts, lists, strings, bytes, numbers and numpy arrays."""
    try:
        with open(path, "rb") as f:
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as err:
        # A corrupted or crafted stream fails in many ways (UnpicklingError, EOFError, OverflowError or
        # MemoryError from a huge declared length, errors raised inside numpy); each means: not usable data.
        raise DataError(f"refusing to load {path}: it is not a plain data pickle ({err})") from err
