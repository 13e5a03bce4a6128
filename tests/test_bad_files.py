"""Bad files (issue 17): never a broken model trained, never garbage scored, never a traceback, nothing changed.

Most cases are rows of one table: a way to damage a copy of a tiny trained run (or to give a bad file), a
command run through `clearsight.cli.main`, the exit code, a phrase the one-line error must contain (and phrases
it must not), and a check that every file present before the command is byte-identical after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import clearsight as cs
from clearsight import io
from clearsight.cli import main
from clearsight.engine import CHECKPOINT
from clearsight.errors import CheckpointError, DataError, WriteError

TRAIN = ["train", "--dataset", "german-credit", "--model", "mlp", "--epochs", "1", "--set", "model.widths=[8]",
         "--set", "train.progress=none"]
NOT_UTF8 = b"\xff\xfe not text \x80\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-epoch german-credit mlp: config.yaml, model.safetensors, checkpoint/state.pt, log.jsonl, results.jsonl."""
    out = tmp_path_factory.mktemp("bad-files") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- ways to damage a run (each takes the run directory and the test's tmp_path) ------------------------------

def replace_text(name: str, old: str, new: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, tmp: Path) -> None:
        text = (run / name).read_text()
        assert old in text, f"{old!r} is not in {name}"
        (run / name).write_text(text.replace(old, new, 1))
    return damage


def write_bytes(name: str, data: bytes, *, append: bool = False) -> Callable[[Path, Path], None]:
    def damage(run: Path, tmp: Path) -> None:
        path = tmp / name[len("{tmp}/"):] if name.startswith("{tmp}/") else run / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((path.read_bytes() if append else b"") + data)
    return damage


def edit_state(change: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    """Rewrite the checkpoint with `change(state)` (a valid weights_only pickle of the wrong structure)."""
    def damage(run: Path, tmp: Path) -> None:
        state = torch.load(run / CHECKPOINT, weights_only=True)
        changed = change(state)
        torch.save(state if changed is None else changed, run / CHECKPOINT)
    return damage


def remove(name: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, tmp: Path) -> None:
        (run / name).unlink()
    return damage


def nothing(run: Path, tmp: Path) -> None:
    pass


def idx_bytes(dims: tuple[int, ...], body: bytes = b"") -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


def mnist_root(images: bytes) -> Callable[[Path, Path], None]:
    """A data root whose (decompressed, so not md5-checked) MNIST test images file is `images`."""
    def damage(run: Path, tmp: Path) -> None:
        folder = tmp / "data" / "mnist"
        folder.mkdir(parents=True)
        (folder / "t10k-images-idx3-ubyte").write_bytes(images)
        (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes((1,), b"\x00"))
    return damage


class Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def hostile(run: Path, tmp: Path) -> None:
    torch.save({"model": Evil()}, run / CHECKPOINT)


def wrong_momentum(state: dict) -> None:
    buffers = state["optimizer"]["state"]
    first = next(iter(buffers))
    buffers[first]["momentum_buffer"] = torch.zeros(3)


def duplicated_history(state: dict) -> None:
    state["history"] = state["history"] * 2


EVALUATE = ["evaluate", "{run}", "--suite", "clean"]
RESUME = [*TRAIN, "--out", "{run}", "--resume"]

# id, damage, command, exit code, a phrase of the message, phrases the message must not hold
CASES = [
    # 1. bytes that are not UTF-8 (and other structure problems of text files)
    ("run-config-not-utf8", write_bytes("config.yaml", NOT_UTF8, append=True), EVALUATE, 1,
     "run config {run}/config.yaml is not UTF-8 text", ()),
    ("run-config-not-utf8-resume", write_bytes("config.yaml", NOT_UTF8, append=True), RESUME, 1,
     "is not UTF-8 text: byte 0xff", ()),
    ("run-config-not-yaml", write_bytes("config.yaml", b"data: [unclosed\n"), EVALUATE, 1,
     "run config {run}/config.yaml is not valid YAML", ()),
    ("run-config-not-a-mapping", write_bytes("config.yaml", b"- a list\n"), EVALUATE, 1,
     "does not hold a YAML mapping", ()),
    ("results-not-utf8", write_bytes("results.jsonl", NOT_UTF8), EVALUATE, 1,
     "results file {run}/results.jsonl is not UTF-8 text", ()),
    ("results-not-json-objects", write_bytes("results.jsonl", b"[1, 2]\n"), EVALUATE, 1,
     "results.jsonl line 1 is not a JSON object", ()),
    ("german-credit-csv-not-utf8", write_bytes("{tmp}/data/german-credit/german.data", b"A11 6 \xe9\n"),
     [*TRAIN, "--set", "data.root={tmp}/data", "--out", "{tmp}/new"], 1,
     "german-credit data file {tmp}/data/german-credit/german.data is not UTF-8 text", ()),
    ("adult-csv-not-utf8", write_bytes("{tmp}/data/adult/adult.data", b"39, State-gov, \xe9\n"),
     ["train", "--dataset", "adult", "--model", "mlp", "--set", "data.root={tmp}/data", "--out", "{tmp}/new"], 1,
     "adult data file {tmp}/data/adult/adult.data is not UTF-8 text", ()),
    # 2. a checkpoint that torch loads safely but that is not what clearsight writes
    ("checkpoint-a-list", edit_state(lambda s: [1, 2]), RESUME, 1, "it holds a list", ()),
    ("checkpoint-missing-keys", edit_state(lambda s: {"model": s["model"]}), RESUME, 1,
     "it has no optimizer, rng, epoch, history, best", ()),
    ("checkpoint-negative-epoch", edit_state(lambda s: {**s, "epoch": -1}), RESUME, 1, "its epoch -1 is not", ()),
    ("checkpoint-fractional-epoch", edit_state(lambda s: {**s, "epoch": 0.5}), RESUME, 1, "its epoch 0.5", ()),
    ("checkpoint-history-not-per-epoch", edit_state(duplicated_history), RESUME, 1, "its history is not one row", ()),
    ("checkpoint-tensor-shapes", edit_state(lambda s: {**s, "model": {k: torch.zeros(3) for k in s["model"]}}),
     RESUME, 1, "does not match this model or optimizer", ()),
    ("checkpoint-optimizer-shapes", edit_state(wrong_momentum), RESUME, 1,
     "optimizer state 'momentum_buffer' has shape [3]", ()),
    # 3. config.yaml edited away from what the weights were trained on
    ("config-other-dataset", replace_text("config.yaml", "name: german-credit", "name: adult"), EVALUATE, 1,
     "was edited after training", ("mat1",)),
    ("config-class-count-a-word", replace_text("config.yaml", "num_classes: 2", "num_classes: two"), EVALUATE, 1,
     "num_classes 'two' is not a whole number", ()),
    ("config-class-count-fractional", replace_text("config.yaml", "num_classes: 2", "num_classes: 2.5"), EVALUATE,
     1, "num_classes 2.5 is not a whole number", ()),
    ("config-negative-input-shape", replace_text("config.yaml", "  - 61", "  - -3"), EVALUATE, 1,
     "input_shape [-3] is not a list of positive whole numbers", ()),
    ("config-shapes-not-a-mapping", replace_text("config.yaml", "shapes:\n", "shapes: 3\nold_shapes:\n"), EVALUATE,
     1, "has no 'shapes' section", ()),
    ("config-model-options-nonsense", replace_text("config.yaml", "  widths:\n  - 8\n", "  widths: eight\n"),
     EVALUATE, 1, "is not a valid run config: model.widths must be", ()),
    # 5. IDX headers whose dimensions overflow a 64-bit size (2**64 wraps to 0 bytes) or are huge
    ("idx-dimensions-overflow", mnist_root(idx_bytes((65536,) * 4)),
     ["train", "--dataset", "mnist", "--set", "data.root={tmp}/data", "--out", "{tmp}/new"], 1,
     "holds 0 data bytes, the header (dimensions [65536, 65536, 65536, 65536]) says 18446744073709551616", ()),
    ("idx-dimensions-huge", mnist_root(idx_bytes((2**32 - 1,) * 3, b"\x00" * 10)),
     ["train", "--dataset", "mnist", "--set", "data.root={tmp}/data", "--out", "{tmp}/new"], 1,
     "t10k-images-idx3-ubyte holds 10 data bytes", ()),
    # 6. a hostile checkpoint: refused, without torch's advice to load it with weights_only=False
    ("checkpoint-hostile", hostile, RESUME, 1, "refusing to load checkpoint {run}/checkpoint/state.pt: it holds the "
     "Python object posix.system", ("weights_only", "trusted", "Re-running")),
    # 7. config.yaml missing
    ("config-missing-resume", remove("config.yaml"), RESUME, 1, "it has a checkpoint but no config.yaml",
     ("differs",)),
    ("config-missing-evaluate", remove("config.yaml"), EVALUATE, 1, "holds a run's files but no config.yaml", ()),
    # 8. harmless differences are accepted on --resume (the finished run is left as it was); others are not
    ("resume-on-another-device", nothing, [*RESUME, "--device", "cpu"], 0, "", ()),
    ("resume-with-other-progress", nothing, [*RESUME, "--set", "train.progress=lines"], 0, "", ()),
    ("resume-with-another-seed", nothing, [*RESUME, "--set", "train.seed=1"], 1, "differs from this one in "
     "train.seed (0 -> 1)", ("device", "progress")),
]


@pytest.mark.parametrize("damage, command, code, phrase, absent", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_a_bad_file_gives_one_clear_line_and_changes_nothing(run, tmp_path, capsys, damage, command, code, phrase,
                                                             absent):
    damage(run, tmp_path)
    before = hashes(tmp_path)
    fill = {"run": str(run), "tmp": str(tmp_path)}
    assert main([a.format(**fill) for a in command]) == code  # main returns: no exception escaped
    err = capsys.readouterr().err
    if code:
        assert err.startswith("clearsight: error: ") and err.count("\n") == 1, err
        assert phrase.format(**fill) in err
        assert not any(a in err for a in absent), err
    assert hashes(tmp_path) == before
    assert not (tmp_path / "new").exists()


def test_a_config_file_that_is_not_utf8(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_bytes(b"train:\n  lr: \xff\n")
    assert main([*TRAIN, "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "new")]) == 1
    assert "bad.yaml is not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_read_text_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"cannot read the thing .*missing.txt: No such file or directory\. Do X"):
        io.read_text(tmp_path / "missing.txt", what="the thing", fix="Do X", error=DataError)
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(CheckpointError, match=r"latin1.txt is not UTF-8 text: byte 0xe9 at offset 12 \(line 2\)"):
        io.read_text(tmp_path / "latin1.txt")
    with pytest.raises(CheckpointError, match="cannot read file .*: Is a directory"):
        io.read_yaml(tmp_path)


# ---- 4. a write that fails: a clear error, the old file kept ---------------------------------------------------

@contextlib.contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past `nbytes` in any file fail with EFBIG, as on a full disk (a real failed write, not a mock)."""
    resource = pytest.importorskip("resource")
    import signal

    if not hasattr(signal, "SIGXFSZ"):
        pytest.skip("no SIGXFSZ on this platform")
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal would kill the process
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_checkpoint_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.pt"
    io.save_state(path, {"small": torch.zeros(4)})
    old = path.read_bytes()
    with file_size_limit(8192), pytest.raises(WriteError, match=f"cannot write {path}: RuntimeError") as err:
        io.save_state(path, {"large": torch.zeros(10_000)})  # torch raises RuntimeError, not OSError
    assert isinstance(err.value, OSError) and "keeps its previous content" in str(err.value)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with file_size_limit(8192), pytest.raises(WriteError, match="File too large"):
        io.save_weights(tmp_path / "w.safetensors", {"w": torch.zeros(10_000)})
    with file_size_limit(8192), pytest.raises(WriteError, match="File too large"):
        io.write_text(tmp_path / "big.txt", "x" * 10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_a_full_disk_during_training_is_one_line_and_the_run_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    with file_size_limit(8192):  # config, weights and log fit; the checkpoint (about 14 KB) does not
        assert main([*TRAIN, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"clearsight: error: cannot write {out / CHECKPOINT}") and err.count("\n") == 1
    assert not (out / CHECKPOINT).exists() and not list(out.rglob("*.tmp"))
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0  # with room again the run trains to its end
    assert torch.load(out / CHECKPOINT, weights_only=True)["epoch"] == 1


# ---- 9. a finished run's damaged log is rebuilt from the checkpoint on --resume --------------------------------

@pytest.mark.parametrize("damage", [write_bytes("log.jsonl", b'{"epoch": 1, "lo'), write_bytes("log.jsonl", NOT_UTF8),
                                    remove("log.jsonl")], ids=["truncated", "not-utf8", "missing"])
def test_resuming_rebuilds_a_damaged_log_from_the_checkpoint(trained, run, tmp_path, damage):
    damage(run, tmp_path)
    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0
    assert hashes(run) == hashes(trained)  # the log as it was written, everything else untouched
    history = torch.load(run / CHECKPOINT, weights_only=True)["history"]
    assert io.read_jsonl(run / "log.jsonl") == history


# ---- 10. temporary files a killed write left are removed, conservatively ---------------------------------------

def leave_tmp(folder: Path, target: str, *, age: float) -> Path:
    path = folder / f".{target}.k1ll3d_x.tmp"
    path.write_bytes(b"half of a file")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_stale_temporary_files_are_removed_when_the_run_is_opened_for_writing(run):
    old = 3600.0
    stale = [leave_tmp(run, "log.jsonl", age=old), leave_tmp(run / "checkpoint", "state.pt", age=old)]
    fresh = leave_tmp(run, "model.safetensors", age=0.0)  # perhaps just created by a live writer
    held = leave_tmp(run, "config.yaml", age=old)  # a live writer holds its lock
    other = run / ".notes.tmp"  # not atomic_write's name pattern
    other.write_text("mine")
    os.utime(other, (time.time() - old, time.time() - old))
    import fcntl

    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert main([*TRAIN, "--out", str(run), "--resume"]) == 0
    finally:
        os.close(fd)
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and held.exists() and other.exists()
    results = leave_tmp(run, "results.jsonl", age=old)
    unrelated = leave_tmp(run, "log.jsonl", age=old)
    assert main(["evaluate", str(run), "--suite", "clean"]) == 0  # an append tidies its own file's leftovers
    assert not results.exists() and unrelated.exists()


def test_a_live_write_is_never_taken_for_a_stale_one(tmp_path):
    seen = []

    def write(tmp: Path) -> None:
        tmp.write_text("content")
        os.utime(tmp, (0, 0))  # looks abandoned by its age; its lock says otherwise
        seen.append(io.remove_stale_tmp(tmp_path))

    io.atomic_write(tmp_path / "file.txt", write)
    assert seen == [[]] and (tmp_path / "file.txt").read_text() == "content"


# ---- 11. the Python API: float64 inputs and models returning tuples --------------------------------------------

class Pair(nn.Module):
    """Returns (logits, features): a model clearsight cannot explain as is."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


def _data() -> cs.data.ArrayDataset:
    gen = torch.Generator().manual_seed(0)
    return cs.data.ArrayDataset(torch.rand(20, 4, generator=gen), torch.arange(20) % 3, classes=["a", "b", "c"])


FIT = {"epochs": 1, "progress": "none", "val_fraction": 0.0}
API_CASES = [
    ("fit-tuple", lambda: cs.fit(Pair(), "standard", _data(), **FIT), "returned a tuple"),
    ("evaluate-tuple", lambda: cs.evaluate(Pair(), _data(), suite="clean", progress="none"), "returned a tuple"),
    ("gradient-tuple", lambda: cs.attributions.build("gradient")(Pair(), _data().x, _data().y), "returned a tuple"),
    ("smoothgrad-tuple", lambda: cs.attributions.build("smoothgrad", n=2)(Pair(), _data().x, _data().y),
     "returned a tuple"),
    ("predict-tuple", lambda: cs.predict(Pair(), _data().x, device="cpu"), "returned a tuple"),
    ("fit-float64-model", lambda: cs.fit(nn.Linear(4, 3).double(), "standard", _data(), **FIT),
     "the dataset inputs have dtype torch.float32 but the model's parameters have torch.float64"),
    ("evaluate-float64-model", lambda: cs.evaluate(nn.Linear(4, 3).double(), _data(), suite="clean", progress="none"),
     "model.to(torch.float32)"),
    ("gradient-float64-inputs", lambda: cs.attributions.build("gradient")(nn.Linear(4, 3), _data().x.double(),
                                                                          _data().y),
     "the inputs x have dtype torch.float64 but the model's parameters have torch.float32"),
    ("integrated-float64-inputs", lambda: cs.attributions.build("integrated_gradients", steps=4)(
        nn.Linear(4, 3), _data().x.double(), _data().y), "x.to(torch.float32)"),
]


@pytest.mark.parametrize("call, phrase", [pytest.param(*c[1:], id=c[0]) for c in API_CASES])
def test_the_python_api_refuses_what_it_cannot_use_at_once(call, phrase):
    with pytest.raises(DataError) as err:
        call()
    assert phrase in str(err.value)


def test_float64_data_is_converted_and_a_float64_model_explains_float64_inputs():
    """What does work: float64 data sets become float32 (as_array_dataset), and a float64 model keeps float64
    inputs exact (nothing is cast behind the caller's back)."""
    data = _data()
    model = nn.Linear(4, 3)
    history = cs.fit(model, "standard", TensorDataset(data.x.double(), data.y), **FIT)
    assert len(history) == 1
    double = nn.Linear(4, 3).double()
    grad = cs.attributions.build("gradient")(double, data.x.double(), data.y)
    assert grad.dtype == torch.float64
    torch.testing.assert_close(grad, double.weight.detach()[data.y])  # a linear model's gradient: its weight row
