"""A cell's folder on disk: its state file, its lock, and moving a stale cell aside.

    DIR/cells/<method>-seed<s>/     a run directory (config.yaml, model.safetensors, checkpoint/, log.jsonl,
                                    results.jsonl) plus cell.json, examples.safetensors and, for a teacher, its
                                    target maps targets-<hash>.safetensors
    DIR/locks/<method>-seed<s>.lock flock-ed while a worker works on the cell (released when it dies)
    DIR/stale/<method>-seed<s>-<hash>/   a cell whose settings changed, kept (nothing is ever deleted)

cell.json records the settings hash, which stages are done, the evaluation settings and the row keys the study
asks for (`rows`: the report reads only these from results.jsonl), and `complete` once every stage is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clearsight import io

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
from clearsight.errors import CheckpointError

STATE = "cell.json"


def read_state(folder: Path) -> dict[str, Any] | None:
    """The cell's state, or None when the folder has none (a fresh cell)."""
    path = folder / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); move the cell folder away to retrain it") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a cell state; move the cell folder away to retrain it")
    return state


def write_state(folder: Path, state: dict[str, Any]) -> None:
    io.write_text(folder / STATE, json.dumps(state, indent=1, sort_keys=True) + "\n")


def set_aside(study_dir: Path, folder: Path, old_hash: str) -> Path:
    """Move a cell trained with other settings to DIR/stale/ (kept for the user, out of the report)."""
    target = study_dir / "stale" / f"{folder.name}-{old_hash}"
    target.parent.mkdir(exist_ok=True)
    n = 1
    while target.exists():  # the same settings can go stale twice (edited back and forth)
        target = target.with_name(f"{folder.name}-{old_hash}.{n}")
        n += 1
    folder.rename(target)
    return target


class Busy(Exception):
    """The cell is locked by another live worker."""

    def __init__(self, owner: dict[str, Any]) -> None:
        super().__init__(owner)
        self.owner = owner


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lock file `path`: an exclusive `flock` on it, so two workers never both hold it.

    The kernel (or, on NFS, the lock server when the client's lease ends) releases the lock when its holder
    dies, however it dies: a killed worker never leaves a cell locked. A lock held by a live worker raises Busy
    with its owner (host, pid, since when), which the holder writes into the file. The file itself stays: a lock
    file removed and re-created while another worker waits on it would let two workers in.
    """
    if fcntl is None:  # no flock (Windows): one worker per study directory
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(_owner(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # no owner named while nobody holds it
    finally:
        os.close(fd)  # releases the lock


def _owner(path: Path) -> dict[str, Any]:
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        owner = {}
    return owner if isinstance(owner, dict) else {}
