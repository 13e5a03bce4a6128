"""Building the pieces of a run from its config, and reopening a finished run directory."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clearsight import data as data_mod
from clearsight import io, models, targets
from clearsight.config import SECTIONS, RunConfig, resolve
from clearsight.data.base import ArrayDataset
from clearsight.engine import CHECKPOINT, RUN_CONFIG_FIX
from clearsight.errors import CheckpointError, ClearsightError
from clearsight.objectives import OBJECTIVES


def load_data(cfg: RunConfig, split: str) -> ArrayDataset:
    """Split `split` of the run's dataset, with the per-sample extras its objective reads from files attached
    (objective metadata `extras`: extra name -> the option naming the file, e.g. ir's target maps).

    For training, each file is checked against where it came from (ir's maps: the teacher's current config and
    weights, and the objective's options); a stale or mismatched file is refused. For a trained run (the config
    `open_run` returns, a `TrainedConfig`), each file is the one config.yaml recorded: read from the absolute
    path recorded at training, whatever the working directory, and checked against the recorded sha256 only
    (retraining the teacher later does not matter). A recorded file that is gone or changed is left out with a
    warning naming it and its recorded hash: the run stays evaluable, and the rows that need its extra (ir's
    `target_cosine`) are not built. Data of another shape or other classes than the run recorded (a config.yaml
    edited to another dataset) raise CheckpointError.
    """
    opts = dict(cfg.data.options)
    root, download = opts.pop("root", None), opts.pop("download", False)
    data = data_mod.load(cfg.data.name, split, root, download=download, **opts)
    if isinstance(cfg, TrainedConfig):
        _check_trained_on(data, cfg)
    recorded = cfg.files if isinstance(cfg, TrainedConfig) else {}
    folder = Path(cfg.source).parent if isinstance(cfg, TrainedConfig) and cfg.source else None
    for extra, option in OBJECTIVES.meta(cfg.objective.name).get("extras", {}).items():
        path = cfg.objective.options.get(option)
        if path is None:
            continue
        record = recorded.get(f"objective.{option}")
        if record is None:
            data = EXTRA_FILES[extra](data, path, options=cfg.objective.options, verified=False)
        elif (found := _recorded_file(record, f"objective.{option}", extra, folder)) is not None:
            data = EXTRA_FILES[extra](data, found, options=cfg.objective.options, verified=True)
    return data


def _recorded_file(record: Mapping[str, str], key: str, extra: str, folder: Path | None) -> Path | None:
    """The file config.yaml recorded for `key`, with its recorded sha256: at its absolute path, else (the run moved
    with its files) at its path relative to the run directory; None, with a warning, when neither holds it."""
    path = Path(record["path"])
    found = io.sha256_file(path) if path.is_file() else None
    if found == record["sha256"]:
        return path
    also = ""
    if "relative" in record and folder is not None:
        moved = folder / record["relative"]
        there = io.sha256_file(moved) if moved.is_file() else None
        if there == record["sha256"]:
            return moved
        also = (f", nor is it at {moved} (its path relative to the run), which "
                + ("does not exist" if there is None else f"holds another file (sha256 {there})"))
    what = "no longer exists" if found is None else f"has changed since (sha256 now {found})"
    warnings.warn(f"{key}: the file {path} this run was trained with (sha256 {record['sha256']}) {what}{also}; its "
                  f"per-sample extra {extra!r} is left out, so the rows that need it are not computed. Put the "
                  "file back to evaluate them.", stacklevel=3)
    return None


def input_files(cfg: RunConfig, *, run_dir: Path | None = None) -> dict[str, dict[str, str]]:
    """{"objective.<option>": {"path": absolute path, "sha256": ..., "relative": path from `run_dir`}} of the files
    the objective's extras are read from, for config.yaml when a run is configured for training: a run resumed
    with a changed file is refused like any other changed setting, and the trained run is later evaluated with
    exactly that file, from any working directory, and still when the run and its files moved together (a study
    directory moved elsewhere: `load_data` tries the relative path when the absolute one is gone)."""
    options = OBJECTIVES.meta(cfg.objective.name).get("extras", {}).values()
    files = {}
    for opt in options:
        if cfg.objective.options.get(opt) is not None:
            path = Path(cfg.objective.options[opt]).resolve()
            files[f"objective.{opt}"] = {"path": str(path), "sha256": io.sha256_file(path)}
            if run_dir is not None:
                # on another drive (Windows) there is no relative path: the absolute one alone
                with contextlib.suppress(ValueError):
                    files[f"objective.{opt}"]["relative"] = os.path.relpath(path, Path(run_dir).resolve())
    return files


# how a per-sample extra that an objective declares is read from its file: extra name ->
# reader(data, path, *, options=the objective's options, verified=checked against a trained run's recorded hash)
EXTRA_FILES: dict[str, Callable[..., ArrayDataset]] = {targets.EXTRA: targets.read_extra}


@dataclass(frozen=True)
class TrainedConfig(RunConfig):
    """The config of a trained run (`open_run`) with the input files its config.yaml recorded, {"objective.<option>":
    {"path", "sha256"}}, so that `load_data` reads those files and checks them against their recorded hashes, and
    the shapes it recorded ({"num_classes", "input_shape", "classes"}; `source`: the config.yaml), so that it
    refuses data the model was not trained on."""

    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    shapes: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


def _check_trained_on(data: ArrayDataset, cfg: TrainedConfig) -> None:
    got = {"num_classes": data.num_classes, "input_shape": list(data.input_shape), "classes": data.classes}
    differ = [k for k, v in cfg.shapes.items() if k in got and got[k] != v]
    if differ:
        raise CheckpointError(f"{cfg.source}: its data section ({cfg.data.name!r}) gives "
                              f"{', '.join(f'{k} {got[k]}' for k in differ)}, but the model was trained on "
                              f"{', '.join(f'{k} {cfg.shapes[k]}' for k in differ)} (its shapes section): the "
                              f"config was edited after training. {RUN_CONFIG_FIX}")


def _recorded_files(doc: Mapping[str, Any], cfg: RunConfig) -> dict[str, dict[str, str]]:
    """config.yaml's "files" ({key: {"path", "sha256"}}; a run of 0.1 recorded {key: sha256}, with the path as
    the option gave it)."""
    files = {}
    for key, value in (doc.get("files") or {}).items():
        if isinstance(value, str):
            value = {"path": str(cfg.objective.options.get(key.partition(".")[2])), "sha256": value}
        files[key] = {"path": str(value["path"]), "sha256": str(value["sha256"]),
                      **({"relative": str(value["relative"])} if "relative" in value else {})}
    return files


def build_model(cfg: RunConfig, *, num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    opts = dict(cfg.model.options)
    normalize = opts.pop("normalize", None)
    return models.build(cfg.model.name, num_classes=num_classes, input_shape=input_shape,
                        normalize=tuple(normalize) if normalize is not None else None, **opts)


def shapes(ds: ArrayDataset) -> dict[str, Any]:
    """What a model needs to know about its data, recorded in config.yaml so a run can be rebuilt."""
    return {"num_classes": ds.num_classes, "input_shape": list(ds.input_shape), "classes": ds.classes}


def train_run(cfg: RunConfig, out: Path, *, resume: bool, on_epoch: Callable[[dict[str, Any]], None] | None = None,
              **train_overrides: Any) -> tuple[nn.Sequential, ArrayDataset]:
    """Train the run `cfg` describes into `out` (what `clearsight train` and each study cell do): data with the
    objective's extras, the seeded initialization, config.yaml with shapes and input-file hashes. Returns the
    trained model and the training split. `train_overrides` replace fields of cfg.train that are not recorded as
    settings (progress)."""
    from clearsight import engine, objectives

    train = load_data(cfg, "train")
    torch.manual_seed(cfg.train.seed)  # initialization is part of the seeded run
    model = build_model(cfg, num_classes=train.num_classes, input_shape=train.input_shape)
    objective = objectives.build(cfg.objective.name, **cfg.objective.options)
    doc = {**{k: v for k, v in cfg.to_dict().items() if k != "train"}, "shapes": shapes(train)}
    if files := input_files(cfg, run_dir=out):
        doc["files"] = files
    options = {**{k: getattr(cfg.train, k) for k in cfg.train.__dataclass_fields__}, **train_overrides}
    engine.fit(model, objective, train, out_dir=out, resume=resume, run_config=doc, on_epoch=on_epoch, **options)
    return model, train


@dataclass
class Run:
    path: Path
    config: RunConfig
    shapes: dict[str, Any]
    model: nn.Sequential


def open_run(path: str | Path, *, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of the run in `path` from config.yaml and load model.safetensors into it.

    Raises CheckpointError naming the file when config.yaml is missing, unreadable or not a valid run config
    (its sections, its shapes), or model.safetensors is missing or does not fit the model config.yaml describes.
    """
    path = Path(path)
    config = path / "config.yaml"
    if not config.exists():
        if (path / "model.safetensors").exists() or (path / CHECKPOINT).exists():
            raise CheckpointError(f"{path} holds a run's files but no config.yaml. {RUN_CONFIG_FIX}")
        raise CheckpointError(f"{path} is not a run directory (no config.yaml); train one with `clearsight train`")
    doc = io.read_yaml(config, what="run config", fix=RUN_CONFIG_FIX)
    info = _recorded_shapes(doc, config)
    try:
        resolved = resolve({k: v for k, v in doc.items() if k in SECTIONS})
        cfg = TrainedConfig(**{f.name: getattr(resolved, f.name) for f in fields(RunConfig)},
                            files=_recorded_files(doc, resolved), shapes=info, source=str(config))
        model = build_model(cfg, num_classes=info["num_classes"], input_shape=tuple(info["input_shape"]))
    except ClearsightError as err:  # a config that resolves but was edited into nonsense
        raise CheckpointError(f"{config} is not a valid run config: {err}. {RUN_CONFIG_FIX}") from err
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{path} has no model.safetensors yet (training did not finish an epoch); "
                              "resume it with `clearsight train ... --resume`")
    state = io.load_weights(weights)
    broken = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise CheckpointError(f"{weights} holds NaN or infinite values (in {', '.join(broken[:3])}"
                              f"{', ...' if len(broken) > 3 else ''}): the model cannot be evaluated. Retrain it, "
                              "or resume it from a checkpoint taken before it diverged")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(io.one_line(f"{weights} does not fit the model in {config}: {err}")) from err
    return Run(path, cfg, info, model.to(device))


def _recorded_shapes(doc: Mapping[str, Any], config: Path) -> dict[str, Any]:
    """config.yaml's "shapes" section, checked: the class count (an int >= 2), the input shape (positive ints)
    and, when recorded, the class names (one string per class)."""
    info = doc.get("shapes")
    if not isinstance(info, dict):
        raise CheckpointError(f"{config} has no 'shapes' section (num_classes, input_shape, classes); it was not "
                              f"written by clearsight train, or was edited. {RUN_CONFIG_FIX}")

    def whole(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    n, shape, classes = info.get("num_classes"), info.get("input_shape"), info.get("classes")
    problems = []
    if not whole(n, 2):
        problems.append(f"num_classes {n!r} is not a whole number >= 2")
    if not isinstance(shape, list) or not shape or not all(whole(d, 1) for d in shape):
        problems.append(f"input_shape {shape!r} is not a list of positive whole numbers")
    if classes is not None and whole(n, 2) and (not isinstance(classes, list) or len(classes) != n
                                                or not all(isinstance(c, str) for c in classes)):
        problems.append(f"classes {classes!r} is not a list of {n} names")
    if problems:
        raise CheckpointError(f"{config}: its shapes section is invalid ({'; '.join(problems)}). {RUN_CONFIG_FIX}")
    return dict(info)
