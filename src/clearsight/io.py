"""Atomic, pickle-free reading and writing of run files.

Every write goes to a temporary file in the destination folder and is renamed over the target, so a run killed
mid-write leaves either the old file or the new one, never half of one. Weights are safetensors; resumable state
is read with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from clearsight.errors import CheckpointError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp creates 0600 files; give run files the user's usual permissions


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path next to `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # make the content durable before it becomes visible
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    write_text(path, yaml.safe_dump(plain(data), sort_keys=False))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a mapping of config sections")
    return data


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Rows as standard JSON, one per line; non-finite floats become the strings "inf", "-inf", "nan" (Python's
    json would write the non-standard Infinity/NaN tokens that jq and JavaScript refuse)."""
    write_text(path, "".join(_json_line(r) + "\n" for r in rows))


def _json_line(row: Mapping[str, Any]) -> str:
    return json.dumps(_finite(plain(row)), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{path} line {i} is not valid JSON: {err}") from err
    return rows


def append_jsonl(path: Path, rows: Iterable[Mapping[str, Any]], *, skip_present: bool = False) -> None:
    """Add rows to a JSON-lines file by atomically rewriting it (earlier rows are never at risk).

    `skip_present` leaves out rows the file already holds exactly (as written, i.e. in standard JSON form).

    The read and the rewrite happen under an exclusive lock on the file's folder, so processes appending at
    once (say `evaluate` and `certify` on one run) wait for each other instead of each rewriting the file
    without the other's rows. The folder, not the file, is locked: the rewrite replaces the file's inode, and a
    lock file would add a file to the run directory. The lock is advisory (POSIX `flock`; where it is missing,
    appends are not serialized).
    """
    with _exclusive(path.parent):
        existing = read_jsonl(path)
        new = [r for r in rows if not skip_present or json.loads(_json_line(r)) not in existing]
        write_jsonl(path, [*existing, *new])


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
        yield
    finally:
        os.close(fd)


def save_weights(path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {k: json.dumps(plain(v)) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {path}: {err}. The file is missing or corrupted") from err


def load_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a safetensors file and its metadata (JSON values written by `save_weights`, decoded)."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no iterator)
        return tensors, {k: json.loads(v) for k, v in raw.items()}
    except (SafetensorError, OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"cannot read {path}: {err}. The file is missing, corrupted or not a safetensors "
                              "file written by clearsight") from err


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_state(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load resumable state without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or hostile file; all mean "unusable"
        raise CheckpointError(f"cannot load checkpoint {path}: {type(err).__name__}: {err}. It is corrupted or "
                              "was not written by clearsight; delete the run's checkpoint folder to start "
                              "over") from err


def plain(value: Any) -> Any:
    """Tuples -> lists, Paths -> str, numpy/torch scalars -> Python numbers, recursively (for YAML/JSON)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (Path, str)):  # str subclasses such as torch.__version__ too
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
