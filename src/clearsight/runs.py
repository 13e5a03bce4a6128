"""Building the pieces of a run from its config, and reopening a finished run directory."""

from __future__ import annotations

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
from clearsight.errors import CheckpointError
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
    `target_cosine`) are not built.
    """
    opts = dict(cfg.data.options)
    root, download = opts.pop("root", None), opts.pop("download", False)
    data = data_mod.load(cfg.data.name, split, root, download=download, **opts)
    recorded = cfg.files if isinstance(cfg, TrainedConfig) else {}
    for extra, option in OBJECTIVES.meta(cfg.objective.name).get("extras", {}).items():
        path = cfg.objective.options.get(option)
        if path is None:
            continue
        record = recorded.get(f"objective.{option}")
        if record is None:
            data = EXTRA_FILES[extra](data, path, options=cfg.objective.options, verified=False)
        elif _unchanged(record, f"objective.{option}", extra):
            data = EXTRA_FILES[extra](data, record["path"], options=cfg.objective.options, verified=True)
    return data


def _unchanged(record: Mapping[str, str], key: str, extra: str) -> bool:
    """Whether the file config.yaml recorded for `key` is still there with its recorded sha256 (warns if not)."""
    path = Path(record["path"])
    found = io.sha256_file(path) if path.is_file() else None
    if found == record["sha256"]:
        return True
    what = "no longer exists" if found is None else f"has changed since (sha256 now {found})"
    warnings.warn(f"{key}: the file {path} this run was trained with (sha256 {record['sha256']}) {what}; its "
                  f"per-sample extra {extra!r} is left out, so the rows that need it are not computed. Put the "
                  "file back to evaluate them.", stacklevel=3)
    return False


def input_files(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """{"objective.<option>": {"path": absolute path, "sha256": ...}} of the files the objective's extras are read
    from, for config.yaml when a run is configured for training: a run resumed with a changed file is refused
    like any other changed setting, and the trained run is later evaluated with exactly that file, from any
    working directory (`load_data`)."""
    options = OBJECTIVES.meta(cfg.objective.name).get("extras", {}).values()
    files = {}
    for opt in options:
        if cfg.objective.options.get(opt) is not None:
            path = Path(cfg.objective.options[opt]).resolve()
            files[f"objective.{opt}"] = {"path": str(path), "sha256": io.sha256_file(path)}
    return files


# how a per-sample extra that an objective declares is read from its file: extra name ->
# reader(data, path, *, options=the objective's options, verified=checked against a trained run's recorded hash)
EXTRA_FILES: dict[str, Callable[..., ArrayDataset]] = {targets.EXTRA: targets.read_extra}


@dataclass(frozen=True)
class TrainedConfig(RunConfig):
    """The config of a trained run (`open_run`) with the input files its config.yaml recorded, {"objective.<option>":
    {"path", "sha256"}}, so that `load_data` reads those files and checks them against their recorded hashes."""

    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def _recorded_files(doc: Mapping[str, Any], cfg: RunConfig) -> dict[str, dict[str, str]]:
    """config.yaml's "files" ({key: {"path", "sha256"}}; a run of 0.1 recorded {key: sha256}, with the path as
    the option gave it)."""
    files = {}
    for key, value in (doc.get("files") or {}).items():
        if isinstance(value, str):
            value = {"path": str(cfg.objective.options.get(key.partition(".")[2])), "sha256": value}
        files[key] = {"path": str(value["path"]), "sha256": str(value["sha256"])}
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
    if files := input_files(cfg):
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
    """Rebuild the model of the run in `path` from config.yaml and load model.safetensors into it."""
    path = Path(path)
    if not (path / "config.yaml").exists():
        raise CheckpointError(f"{path} is not a run directory (no config.yaml); train one with `clearsight train`")
    doc = io.read_yaml(path / "config.yaml")
    if "shapes" not in doc:
        raise CheckpointError(f"{path}/config.yaml has no 'shapes' section; it was not written by clearsight train")
    resolved = resolve({k: v for k, v in doc.items() if k in SECTIONS})
    cfg = TrainedConfig(**{f.name: getattr(resolved, f.name) for f in fields(RunConfig)},
                        files=_recorded_files(doc, resolved))
    info = doc["shapes"]
    model = build_model(cfg, num_classes=int(info["num_classes"]), input_shape=tuple(info["input_shape"]))
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
        raise CheckpointError(f"{weights} does not fit the model in {path}/config.yaml: {err}") from err
    return Run(path, cfg, info, model.to(device))
