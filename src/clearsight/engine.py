"""fit(): a plain loop over in-memory batches, checkpoint/resume, torchrun-aware. evaluate() and evaluate_rows()
live in `clearsight.evaluation` and are re-exported here.

Run directory written by fit (see DESIGN.md): config.yaml, model.safetensors, checkpoint/state.pt, log.jsonl.
Every file is written atomically; the checkpoint holds the whole resumable state (weights, optimizer, RNG
states, epoch, step and the epoch history) in one file, so weights and optimizer can never disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from clearsight import __version__, distributed, io
from clearsight.checks import check_dtype, check_logits
from clearsight.config import TrainConfig, migrate_train, train_config
from clearsight.data.base import ArrayDataset, as_array_dataset
from clearsight.errors import CheckpointError, ConfigError, DataError, TrainingError
from clearsight.evaluation import check_model_output as _check_model_fits
from clearsight.evaluation import evaluate as evaluate  # re-exported: engine.evaluate is a public name (DESIGN.md)
from clearsight.evaluation import evaluate_rows as evaluate_rows
from clearsight.modes import eval_mode, resolve_device
from clearsight.objectives import LossOutput, describe, with_budgets
from clearsight.objectives import build as build_objective
from clearsight.progress import Reporter, reporter

CHECKPOINT = Path("checkpoint") / "state.pt"
# train options that do not change what a run computes (where it runs, how it reports progress): a resume may
# change them, and a study leaves them out of its cells' settings hash
NEUTRAL_TRAIN = ("device", "progress")
# what to do about a run's config.yaml that is missing, damaged or edited
RUN_CONFIG_FIX = ("config.yaml records how the run was trained: put the run's original config.yaml back, or train "
                  "again into another folder")


def fit(model: nn.Module, objective: Callable[..., LossOutput] | str, train_ds: Dataset, *,
        val_ds: Dataset | None = None, out_dir: str | Path | None = None, resume: bool = False,
        run_config: Mapping[str, Any] | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
        **options: Any) -> list[dict[str, Any]]:
    """Train `model` in place by minimizing `objective` over `train_ds`; return the per-epoch log.

    Args:
        objective: a callable `(model, x, y, **batch) -> LossOutput` (see `clearsight.objectives.build`) or
            the name of a registered objective with default options. A registered objective's budgets left at
            None (the eps of pgd-at, trades, ...) are set to the training budget of `train_ds`'s dataset.
        val_ds: validation data; None -> hold out `val_fraction` of `train_ds` (never pass the test split).
        out_dir: run directory for config.yaml, model.safetensors, checkpoint/ and log.jsonl; None keeps
            everything in memory.
        resume: continue the run in `out_dir` from its last checkpoint (a run killed after epoch k resumed
            ends with the same weights as an uninterrupted run); without it an existing run is never touched.
        run_config: extra sections (data, model, ...) to record in config.yaml beside train and objective.
        on_epoch: called on the main process with each epoch's log row once its checkpoint is written (a study's
            progress bar); epochs a resumed run had already finished are not reported again.
        options: fields of `TrainConfig` (epochs, batch_size, optimizer, lr, schedule, seed, device, ...).

    Raises:
        TrainingError: the loss became NaN or infinite; the last good checkpoint is kept.
        CheckpointError: `out_dir` holds a run and `resume` is False, or its checkpoint cannot be used.
    """
    cfg = train_config(options)
    train = as_array_dataset(train_ds)
    objective = with_budgets(build_objective(objective) if isinstance(objective, str) else objective, train.name)
    device = distributed.local_device(resolve_device(cfg.device))
    with distributed.joined(device) as world:
        return _fit(model, objective, train, val_ds, cfg, device, world,
                    Path(out_dir) if out_dir is not None else None, resume, dict(run_config or {}), on_epoch)


@dataclasses.dataclass
class RunState:
    """Where a run stands after `epoch` epochs: their log, the best validation accuracy and (keep="best") the
    weights that reached it. A fresh run starts at epoch 0; a resumed one from its checkpoint."""

    epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: float = -1.0
    best_weights: dict[str, torch.Tensor] | None = None

    def record(self, row: dict[str, Any], model: nn.Module, keep: str) -> bool:
        """Add an epoch's row; returns whether its validation accuracy is the best so far (kept weights)."""
        improved = "val_accuracy" in row and row["val_accuracy"] > self.best
        self.best = max(self.best, row.get("val_accuracy", self.best))
        if keep == "best" and improved:
            row["kept"] = True
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.history.append(row)
        self.epoch += 1
        return improved


@dataclasses.dataclass
class Batches:
    """This process's share of the shuffled training data, batch by batch (the epoch seeds the shuffle)."""

    data: ArrayDataset
    sampler: DistributedSampler
    local_batch: int
    device: torch.device

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.local_batch)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.int64)
        for i in range(self.steps_per_epoch):
            batch = self.data.batch(order[i * self.local_batch : (i + 1) * self.local_batch])
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def _fit(model: nn.Module, objective: Callable[..., LossOutput], train: ArrayDataset, val_ds: Dataset | None,
         cfg: TrainConfig, device: torch.device, world: distributed.World, out: Path | None, resume: bool,
         run_config: dict[str, Any], on_epoch: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    if cfg.batch_size % world.size:
        raise ConfigError(f"train.batch_size {cfg.batch_size} must be divisible by the {world.size} processes")
    train, val = _split(train, val_ds, cfg)
    model.to(device)
    _check_model_fits(model, train, device)
    _check_objective(model, objective, train, device, cfg.epochs)
    doc = {**run_config, "objective": run_config.get("objective", describe(objective)),
           "train": dataclasses.asdict(cfg)}
    torch.manual_seed(cfg.seed + world.rank)
    optimizer = _optimizer(model, cfg)
    made = out is not None and not out.exists()
    state = _start(out, doc, resume, world, model, optimizer, device, cfg)
    distributed.broadcast_state(model, world)
    batches = Batches(train, DistributedSampler(train, num_replicas=world.size, rank=world.rank, shuffle=True,
                                                seed=cfg.seed), cfg.batch_size // world.size, device)
    report = reporter(cfg.progress, is_main=world.is_main)
    try:
        _epochs(model, objective, optimizer, batches, state, val, cfg, device, world, report, out, on_epoch)
    except TrainingError:
        if out is not None and world.is_main and not _trained(out):
            # a run that diverged before its first checkpoint holds nothing training made, only a config.yaml
            # (this call's or an earlier start's): removed, so the folder is not taken by a run with no weights
            (out / "config.yaml").unlink(missing_ok=True)
            if made:
                with contextlib.suppress(OSError):
                    out.rmdir()  # the folder this run made, if nothing else was put in it
        raise
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    return state.history


def _trained(out: Path) -> bool:
    """Whether `out` holds anything training produced (a checkpoint or weights)."""
    return (out / CHECKPOINT).exists() or (out / "model.safetensors").exists()


def _epochs(model: nn.Module, objective: Callable[..., LossOutput], optimizer: torch.optim.Optimizer,
            batches: Batches, state: RunState, val: ArrayDataset | None, cfg: TrainConfig, device: torch.device,
            world: distributed.World, report: Reporter, out: Path | None,
            on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Train the epochs left in `state`, saving and reporting each."""
    while state.epoch < cfg.epochs:
        t0 = time.perf_counter()
        sums = _train_epoch(model, objective, optimizer, batches, state.epoch, cfg, world, report, out)
        row = _epoch_row(state.epoch, sums, world, time.perf_counter() - t0, optimizer)
        if val is not None:
            row.update(_validate(model, val, device, world))
        improved = state.record(row, model, cfg.keep)
        if out is not None:
            _save_epoch(out, model, optimizer, state, world, save_model=cfg.keep == "last" or improved)
        report.line(row)
        if on_epoch is not None and world.is_main:
            on_epoch(row)


def _train_epoch(model: nn.Module, objective: Callable[..., LossOutput], optimizer: torch.optim.Optimizer,
                 batches: Batches, epoch: int, cfg: TrainConfig, world: distributed.World, report: Reporter,
                 out: Path | None) -> dict[str, float]:
    """One pass over the training split: an optimizer step per batch; returns the sums of the logged terms."""
    sums: dict[str, float] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    steps, total = batches.steps_per_epoch, batches.steps_per_epoch * cfg.epochs
    model.train()
    bar = report.bar(steps, f"epoch {epoch + 1}/{cfg.epochs}")
    for i, batch in enumerate(batches.epoch(epoch)):
        step = epoch * steps + i
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step, total)
        x, y = batch.pop("x"), batch.pop("y")
        result = objective(model, x, y, progress=step / total, epoch=epoch, epochs=cfg.epochs, **batch)
        finite = bool(torch.isfinite(result.loss.detach()))
        if not finite and world.size <= 1:
            raise _diverged(result, epoch, i, out)
        optimizer.zero_grad(set_to_none=True)
        # backward even of a NaN loss under torchrun: layers that communicate in their backward (SyncBatchNorm)
        # must see every rank; the NaN gradients are never applied, as every rank stops below
        result.loss.backward()
        # the ranks agree on divergence in the gradients' all-reduce: a rank whose loss alone is NaN must not
        # leave the others waiting in the next collective
        failed = distributed.average_gradients(params, world, failed=not finite)
        if failed:
            raise _diverged(result, epoch, i, out, failed=(failed, world.size))
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        _accumulate(sums, result, y)
        bar.update(1)
    bar.close()
    return sums


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step` of `total_steps` (schedules advance per step)."""
    t = step / max(total_steps, 1)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return cfg.lr_decay ** sum(t >= m for m in cfg.milestones)
    return 1.0


def _split(train: ArrayDataset, val_ds: Dataset | None, cfg: TrainConfig
           ) -> tuple[ArrayDataset, ArrayDataset | None]:
    if val_ds is not None:
        return train, as_array_dataset(val_ds)
    if cfg.val_fraction == 0.0:
        return train, None
    n_val = max(1, round(len(train) * cfg.val_fraction))
    if n_val >= len(train):
        raise DataError(f"val_fraction {cfg.val_fraction} leaves no training data out of {len(train)} samples")
    # the split depends on the seed only, so a resumed run validates on the same samples
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values, split="val")


def _check_objective(model: nn.Module, objective: Callable[..., LossOutput], train: ArrayDataset,
                     device: torch.device, epochs: int) -> None:
    """Call the objective once on two training samples, as at the end of training (full radii), before anything
    is written: a wrong option or a missing extra then fails here, not after config.yaml and checkpoints exist.
    Eval mode, RNG state restored, no backward: the run itself is unchanged by it."""
    batch = {k: v.to(device) for k, v in train.batch(torch.arange(min(2, len(train)))).items()}
    x, y = batch.pop("x"), batch.pop("y")
    devices = [device] if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        result = objective(model, x, y, progress=1.0, epoch=epochs - 1, epochs=epochs, **batch)
    if not isinstance(result, LossOutput) or result.loss.dim() != 0:
        raise ConfigError(f"the objective must return a LossOutput with a scalar loss; it returned {result!r:.200}")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def _diverged(result: LossOutput, epoch: int, step: int, out: Path | None, *,
              failed: tuple[int, int] | None = None) -> TrainingError:
    """The error of a loss that became NaN or infinite; under torchrun `failed` is (ranks whose loss did, ranks),
    and the terms shown are this rank's, which may be finite."""
    if out is None:
        kept = "Nothing was saved (no out_dir)."
    elif _trained(out):
        kept = f"The last good checkpoint is kept in {out / CHECKPOINT.parent}."
    else:
        kept = f"No epoch had finished, so nothing was kept: {out} can be used again."
    loss = float(result.loss.detach())
    if failed is None:
        what, terms = f"the loss became {loss}", "terms"
    else:
        mine = f"here {loss}" if not math.isfinite(loss) else "finite here"
        what = f"the loss became NaN or infinite on {failed[0]} of {failed[1]} ranks ({mine})"
        terms = "this rank's terms"
    return TrainingError(f"{what} at epoch {epoch + 1}, step {step + 1} ({terms}: {result.logs}); training "
                         f"stopped. {kept} Lower the learning rate or check the data and objective options, then "
                         "start a new run.")


def _accumulate(sums: dict[str, float], result: LossOutput, y: torch.Tensor) -> None:
    """Add a step's terms, weighted by its batch size, and its correct predictions; each term keeps its own
    sample count ("n/<term>"), so a term logged at some steps only (the accuracy of an objective that returns
    clean logits at some steps) is averaged over those steps' samples."""
    n = float(y.shape[0])
    terms = {"loss": float(result.loss.detach()) * n, **{k: float(v) * n for k, v in result.logs.items()}}
    if result.logits is not None:
        terms["accuracy"] = float((result.logits.argmax(1) == y).sum())  # a count: exact, like the old sums
    for key, value in terms.items():
        sums[key] = sums.get(key, 0.0) + value
        sums[f"n/{key}"] = sums.get(f"n/{key}", 0.0) + n


def _epoch_row(epoch: int, sums: dict[str, float], world: distributed.World, seconds: float,
               optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    total: dict[str, float] = {}
    for part in distributed.gather(sums, world):
        for key, value in part.items():  # type: ignore[attr-defined]
            total[key] = total.get(key, 0.0) + value
    means = {k: v / total[f"n/{k}"] for k, v in total.items() if not k.startswith("n/")}
    return {"epoch": epoch + 1, **means, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}


def _validate(model: nn.Module, val: ArrayDataset, device: torch.device, world: distributed.World
              ) -> dict[str, float]:
    logits = predict(model, val.x, device=device)
    y = val.y.to(logits.device)
    return {"val_loss": float(F.cross_entropy(logits, y)),
            "val_accuracy": float((logits.argmax(1) == y).float().mean())}


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device: str | torch.device = "auto"
            ) -> torch.Tensor:
    """Logits [N, C] of `model` on inputs x [N, ...] in eval mode, batch by batch (mode restored after)."""
    device = resolve_device(device)
    check_dtype(model, x)
    with eval_mode(model):
        return torch.cat([check_logits(model(x[i : i + batch_size].to(device)))
                          for i in range(0, x.shape[0], batch_size)])


# ---- run directory -------------------------------------------------------------------------------------------

def _start(out: Path | None, doc: dict[str, Any], resume: bool, world: distributed.World, model: nn.Module,
           optimizer: torch.optim.Optimizer, device: torch.device, cfg: TrainConfig) -> RunState:
    """A fresh RunState, or (resume) the one the checkpoint in `out` holds, with model and optimizer restored.

    Once the run is accepted, the main process tidies its directory: temporary files a killed write left are
    removed, log.jsonl is rewritten from the checkpoint's history when it differs (damaged, truncated, or
    one epoch ahead of a checkpoint a kill kept from being written), and config.yaml records where an input file
    lies now when it moved (same content, `_moved_files`)."""
    if out is None:
        return RunState()
    saved, moved = _open_run(out, doc, resume, world)
    state = RunState()
    if saved is not None:
        state = _restore(_checked_state(saved, out / CHECKPOINT, epochs=cfg.epochs), model, optimizer, world, device,
                         out / CHECKPOINT)
        if cfg.keep == "best" and (out / "model.safetensors").exists():
            state.best_weights = io.load_weights(out / "model.safetensors", device)
    if world.is_main:
        for folder in (out, out / CHECKPOINT.parent):
            io.remove_stale_tmp(folder)
        if saved is not None:
            _rewrite_log(out / "log.jsonl", state.history)
        if moved is not None:  # so later commands (evaluate's target_cosine) find the file where it is
            io.write_yaml(out / "config.yaml", moved)
    return state


def _open_run(out: Path, doc: dict[str, Any], resume: bool, world: distributed.World
              ) -> tuple[Any, dict[str, Any] | None]:
    """Start a fresh run in `out` (refusing to touch an existing one) or return what its checkpoint holds; and
    the resumed run's config with its input files' new paths when they moved (written once the run is accepted)."""
    config_path, state_path = out / "config.yaml", out / CHECKPOINT
    exists = config_path.exists() or state_path.exists()
    moved = None
    if exists and not resume:
        raise CheckpointError(f"{out} already holds a run; pass resume=True (CLI: --resume) to continue it, or "
                              "choose another output directory. Nothing was changed.")
    if exists:
        if not config_path.exists():
            raise CheckpointError(f"cannot resume {out}: it has a checkpoint but no config.yaml. {RUN_CONFIG_FIX}. "
                                  "Nothing was changed.")
        saved = io.read_yaml(config_path, what="run config", fix=RUN_CONFIG_FIX)
        as_written = dict(saved)  # what a moved file's rewrite keeps, apart from the paths
        if isinstance(saved.get("train"), dict):  # a run written before a train option was renamed
            saved["train"] = migrate_train(saved["train"], where=str(config_path))
        differences = _differences(_compared(saved), _compared(io.plain(doc)))
        if differences:
            raise CheckpointError(f"cannot resume {out}: its config differs from this one in "
                                  f"{', '.join(differences)}. Resume with the same config or start a new run.")
        moved = _moved_files(as_written, io.plain(doc))
    distributed.barrier(world)  # every rank has decided before rank 0 writes, or a late rank would see its own run
    if world.is_main and not config_path.exists():
        io.write_yaml(config_path, {**doc, "versions": {"clearsight": __version__, "torch": torch.__version__}})
    distributed.barrier(world)
    return (io.load_state(state_path) if state_path.exists() else None), moved


def _compared(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What of a run config must be equal to resume: everything but the versions and the NEUTRAL_TRAIN options.

    An input file recorded under "files" ({"objective.<option>": {"path", "sha256"}}, `runs.input_files`) counts
    by its content, not by where it lies: a study directory moved elsewhere, or a copy of the same targets file,
    resumes; a file with other content is still refused."""
    out = {k: v for k, v in doc.items() if k != "versions"}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in NEUTRAL_TRAIN}
    files, objective = out.get("files"), out.get("objective")
    if isinstance(files, dict):
        out["files"] = {k: v.get("sha256") if isinstance(v, dict) else v for k, v in files.items()}
        if isinstance(objective, dict):  # {"name": ..., option: value, ...}: drop the options naming the files
            located = {k.partition(".")[2] for k in files if k.startswith("objective.")}
            out["objective"] = {k: v for k, v in objective.items() if k not in located}
    return out


def _moved_files(saved: dict[str, Any], doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """`saved` with the input files' paths (under "files" and their objective options) of `doc`, when the files
    `_compared` accepted as equal lie elsewhere now; None when nothing moved."""
    files, objective, before = doc.get("files"), doc.get("objective"), saved.get("files")
    if not isinstance(files, dict) or not isinstance(before, dict):
        return None
    paths = {k: v.get("path") if isinstance(v, dict) else None for k, v in before.items()}
    if all(paths.get(k) == (v.get("path") if isinstance(v, dict) else None) for k, v in files.items()):
        return None  # nothing moved (a record without "relative", from an older version, is left as it is)
    out = {**saved, "files": files}
    if isinstance(objective, dict) and isinstance(saved.get("objective"), dict):
        located = {k.partition(".")[2] for k in files if k.startswith("objective.")}
        out["objective"] = {**saved["objective"], **{k: objective[k] for k in located if k in objective}}
    return out


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]} ({a!r} -> {b!r})"]


def _checked_state(saved: Any, path: Path, *, epochs: int) -> dict[str, Any]:
    """`saved` if it has the structure `_save_epoch` writes, for a run of `epochs` epochs; else CheckpointError
    saying what is wrong. A valid pickle of anything else (a foreign or edited file) is refused before any of it
    is restored."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is not usable: {why}. It is damaged or was not written by "
                               "clearsight; delete the run's checkpoint folder to start over")

    if not isinstance(saved, dict):
        raise bad(f"it holds a {type(saved).__name__}, not the mapping clearsight writes")
    missing = [k for k in ("model", "optimizer", "rng", "epoch", "history", "best") if k not in saved]
    if missing:
        raise bad(f"it has no {', '.join(missing)}")
    epoch = saved["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise bad(f"its epoch {epoch!r} is not a whole number of epochs in 0..{epochs}")
    history = saved["history"]
    if not isinstance(history, list) or [r.get("epoch") if isinstance(r, dict) else None for r in history] != list(
            range(1, epoch + 1)):
        raise bad(f"its history is not one row per epoch 1..{epoch}")
    model = saved["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise bad("its model is not a mapping of tensors")
    optimizer = saved["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) or not isinstance(
            optimizer.get("param_groups"), list):
        raise bad("its optimizer is not an optimizer state (state and param_groups)")
    rng = saved["rng"]
    if not isinstance(rng, list) or not all(isinstance(r, dict) and isinstance(r.get("cpu"), torch.Tensor)
                                            for r in rng):
        raise bad("its rng is not a list of random-generator states")
    best = saved["best"]
    if isinstance(best, bool) or not isinstance(best, (int, float)):
        raise bad(f"its best validation accuracy {best!r} is not a number")
    return saved


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             world: distributed.World, device: torch.device, path: Path) -> RunState:
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        _check_optimizer_state(optimizer)
        rng = saved["rng"]
        if len(rng) != world.size:
            raise CheckpointError(f"the checkpoint {path} was written by {len(rng)} processes, this run has "
                                  f"{world.size}; resume with the same number of processes")
        torch.set_rng_state(rng[world.rank]["cpu"])
        if device.type == "cuda" and rng[world.rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rng[world.rank]["cuda"], device)
        return RunState(saved["epoch"], list(saved["history"]), float(saved["best"]))
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(io.one_line(f"the checkpoint {path} does not match this model or optimizer: "
                                          f"{str(err).rstrip('.')}. "
                                          "Resume with the model and optimizer it was trained with, or delete "
                                          "the run's checkpoint folder to start over")) from err


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    # load_state_dict checks the parameter groups but not the shapes of the state it restores (momentum, Adam's
    # averages), which would fail at the first step, deep inside it
    for param, state in optimizer.state.items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise ValueError(f"its optimizer state {name!r} has shape {list(value.shape)} for a parameter of "
                                 f"shape {list(param.shape)}")


def _rewrite_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Make log.jsonl hold exactly the checkpoint's history (the checkpoint is the record); a log that already
    does is left untouched."""
    text = io.jsonl_text(history)
    try:
        if path.read_bytes() == text.encode():
            return
    except OSError:  # missing or unreadable: written afresh
        pass
    io.write_text(path, text)


def _save_epoch(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: RunState,
                world: distributed.World, *, save_model: bool) -> None:
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    rngs = distributed.gather(rng, world)
    if world.size > 1:  # buffers (batch-norm statistics) are per process; keep rank 0's everywhere
        for b in model.buffers():
            torch.distributed.broadcast(b.data, src=0)
    if world.is_main:
        # the checkpoint last: a kill before it is written resumes from the previous epoch and redoes this one,
        # rewriting the model and the log; written first, a kill between it and the model would leave a
        # finished checkpoint beside an older model.safetensors that a resume (with nothing left to train)
        # never rewrites
        if save_model:
            io.save_weights(out / "model.safetensors", model.state_dict(), {"epoch": state.epoch})
        io.write_jsonl(out / "log.jsonl", state.history)
        io.save_state(out / CHECKPOINT, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "rng": rngs, "epoch": state.epoch, "history": state.history,
                                         "best": state.best})
    distributed.barrier(world)
