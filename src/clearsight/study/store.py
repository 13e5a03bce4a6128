"""A cell's folder on disk: its state file, its lock, and moving a stale cell aside.

    DIR/cells/<method>-seed<s>/     a run directory (config.yaml, model.safetensors, checkpoint/, log.jsonl,
                                    results.jsonl) plus cell.json, examples.safetensors and, for a teacher, its
                                    target maps targets-<hash>.safetensors
    DIR/locks/<method>-seed<s>.lock held while a worker works on the cell
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
    """Hold the lock file `path` (created exclusively, so two workers on a shared file system never both hold it).

    A lock left by a dead process on this host is taken over; one held by a live process, or by a process on
    another host (which this host cannot check), raises Busy with its owner.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is not None and owner.get("host") == me["host"] and not _alive(owner.get("pid")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # left by a killed worker on this host
                continue
            if owner is None:  # removed (or being written) by its owner just now: try again
                time.sleep(0.05)
                continue
            raise Busy(owner) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # a lock whose owner died between creating and writing it: old enough means it will never be written
        try:
            return None if time.time() - path.stat().st_mtime < 5 else {"host": socket.gethostname(), "pid": -1}
        except FileNotFoundError:
            return None
    return owner if isinstance(owner, dict) else {"host": socket.gethostname(), "pid": -1}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
