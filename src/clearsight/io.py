"""Atomic, pickle-free reading and writing of run files.

Every write goes to a temporary file in the destination folder and is renamed over the target, so a run killed
mid-write leaves either the old file or the new one, never half of one; a write that fails (a full disk, no
permission) raises `WriteError` naming the file, which keeps its old content. Weights are safetensors; resumable
state is read with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects.

Every text file is read through `read_text`, which turns a missing, unreadable or non-UTF-8 file into one
clear error naming the file, what it is and what to do; `read_yaml` and `read_jsonl` build on it and do the
same for structure (invalid YAML or JSON, a YAML file that is not a mapping).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from clearsight.errors import CheckpointError, ClearsightError, WriteError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp creates 0600 files; give run files the user's usual permissions


def atomic_write(path: Path, write: Callable[[Path], None], *, failures: tuple[type[Exception], ...] = ()) -> None:
    """Call `write(tmp)` on a temporary path next to `path`, then rename it over `path`.

    A write that fails with an OSError, or with one of `failures` (what the library behind `write` raises when
    the disk is full: torch's RuntimeError, safetensors' SafetensorError), raises `WriteError` naming `path`;
    `path` keeps its previous content and the temporary file is removed. The temporary file is held under an
    exclusive `flock` while it exists, so that `remove_stale_tmp` can tell it from one a killed process left.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from err
    tmp = Path(tmp_name)
    held = _hold(fd)
    caught: tuple[type[Exception], ...] = (OSError, *failures)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # make the content durable before it becomes visible
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except WriteError:
        raise
    except caught as err:
        raise _write_error(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)
        if held:
            os.close(fd)  # releases the lock


def _hold(fd: int) -> bool:
    """Lock a new temporary file for the writer's lifetime (POSIX); returns whether `fd` stays open for it.
    Without flock the descriptor is closed at once (Windows cannot rename a file that is open)."""
    if fcntl is None:
        os.close(fd)
        return False
    # a new file nobody else locks: granted at once; a file system without locks raises, and remove_stale_tmp
    # then goes by the file's age alone
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def _write_error(path: Path, err: BaseException) -> WriteError:
    why = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
    return WriteError(one_line(f"cannot write {path}: {why}. The file keeps its previous content (if it had "
                               "any); make room on the disk or check the folder's permissions, then run again"))


# the temporary files of atomic_write: ".<target name>.<8 characters of tempfile's alphabet>.tmp"
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
STALE_SECONDS = 60.0  # a temporary file untouched this long, and unlocked, was left by a killed process


def remove_stale_tmp(folder: Path, *, target: str | None = None) -> list[Path]:
    """Delete the temporary files that killed `atomic_write` calls left in `folder` (those of the file `target`
    only, when given); returns the paths removed.

    Conservative: a file counts as left behind only when its name has atomic_write's pattern, no process holds
    its lock (a live writer does, from just after creating it until it is renamed) and it has not changed for
    `STALE_SECONDS` (which covers the moment before the writer locks it, and writers that take no lock). Where
    `flock` is missing (Windows) nothing is removed.
    """
    if fcntl is None or not folder.is_dir():
        return []
    prefix = None if target is None else f".{target}."
    candidates = sorted(p for p in folder.iterdir()
                        if _TMP_NAME.match(p.name) and (prefix is None or p.name.startswith(prefix)))
    return [p for p in candidates if _remove_if_stale(p)]


def _remove_if_stale(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # gone meanwhile, a link, or not ours to read: leave it
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < STALE_SECONDS:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            return False
        if os.stat(path, follow_symlinks=False).st_ino != st.st_ino:  # another file took the name meanwhile
            return False
        os.unlink(path)  # while locked: no writer can have started on this file in between
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    write_text(path, yaml.safe_dump(plain(data), sort_keys=False))


def read_text(path: Path, *, what: str = "file", fix: str = "",
              error: type[ClearsightError] = CheckpointError) -> str:
    """The text of `path`, decoded as UTF-8: how clearsight reads every text file.

    A file that is missing or cannot be read (no permission, a folder) or is not UTF-8 text raises `error` with
    one line naming `what` the file is, its path and the problem, followed by `fix` (what to do about it).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise error(_problem(f"cannot read {what} {path}", err.strerror or str(err), fix)) from err
    return decode_text(raw, path, what=what, fix=fix, error=error)


def decode_text(raw: bytes, path: Path, *, what: str = "file", fix: str = "",
                error: type[ClearsightError] = CheckpointError) -> str:
    """`raw`, the bytes of `path` (after decompression, say), decoded as UTF-8; other bytes raise `error` as in
    `read_text`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise error(_problem(f"{what} {path} is not UTF-8 text",
                             f"byte {raw[err.start]:#04x} at offset {err.start} (line {line})", fix)) from err


def read_yaml(path: Path, *, what: str = "file", fix: str = "",
              error: type[ClearsightError] = CheckpointError) -> dict[str, Any]:
    """The mapping a YAML file holds. Besides `read_text`'s errors, invalid YAML and a document that is not a
    mapping raise `error` naming the file, followed by `fix`."""
    text = read_text(path, what=what, fix=fix, error=error)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a date that does not exist (2024-13-01)
        raise error(_problem(f"{what} {path} is not valid YAML", str(err), fix)) from err
    if not isinstance(data, dict):
        raise error(_problem(f"{what} {path} does not hold a YAML mapping",
                             f"it holds {'nothing' if data is None else type(data).__name__}", fix))
    return data


def _problem(head: str, why: str, fix: str) -> str:
    return one_line(f"{head}: {why}" + (f". {fix}" if fix else ""))


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of white space made single spaces (error messages are one line)."""
    return " ".join(text.split())


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    write_text(path, jsonl_text(rows))


def jsonl_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as standard JSON, one per line; non-finite floats become the strings "inf", "-inf", "nan" (Python's
    json would write the non-standard Infinity/NaN tokens that jq and JavaScript refuse)."""
    return "".join(_json_line(r) + "\n" for r in rows)


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


def read_jsonl(path: Path, *, what: str = "file", fix: str = "",
               error: type[ClearsightError] = CheckpointError) -> list[dict[str, Any]]:
    """The rows (JSON objects, one per line) of a JSON-lines file; [] when it does not exist. Besides
    `read_text`'s errors, a line that is not a JSON object raises `error` naming the file and line, then `fix`."""
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(read_text(path, what=what, fix=fix, error=error).splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(_problem(f"{what} {path} line {i} is not valid JSON", str(err), fix)) from err
            if not isinstance(row, dict):
                raise error(_problem(f"{what} {path} line {i} is not a JSON object",
                                     f"it holds {type(row).__name__}", fix))
            rows.append(row)
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
        remove_stale_tmp(path.parent, target=path.name)  # a rewrite killed before its rename; none runs now
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
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), failures=(SafetensorError,))


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
    # torch reports a failed write (a full disk) as a RuntimeError ("PytorchStreamWriter failed writing file",
    # "unexpected pos"), not an OSError
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp), failures=(RuntimeError,))


def load_state(path: Path, device: str | torch.device = "cpu") -> Any:
    """Load resumable state without unpickling arbitrary objects. What it holds is for the caller to check (a
    foreign file can be a valid pickle of anything made of tensors and plain data)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or hostile file; all mean "unusable"
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
            # weights_only refused what the file holds, and torch's message advises loading it with
            # weights_only=False: never pass that on about a file that may be hostile; say what it holds instead
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            why = (f"it holds the Python object {found[1]}, not only tensors and plain data, so it was not written by "
                   "clearsight" if found else "it is damaged, or holds more than tensors and plain data")
            raise CheckpointError(f"refusing to load checkpoint {path}: {why}. Delete the run's checkpoint folder to "
                                  "start over") from None  # the chain would show torch's advice too
        raise CheckpointError(one_line(f"cannot load checkpoint {path}: {type(err).__name__}: {err}. It is "
                                       "corrupted or was not written by clearsight; delete the run's checkpoint "
                                       "folder to start over")) from err


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
