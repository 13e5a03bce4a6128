"""Building the pieces of a run from its config, and reopening a finished run directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    (objective metadata `extras`: extra name -> the option naming the file, e.g. ir's target maps)."""
    opts = dict(cfg.data.options)
    root, download = opts.pop("root", None), opts.pop("download", False)
    data = data_mod.load(cfg.data.name, split, root, download=download, **opts)
    for extra, option in OBJECTIVES.meta(cfg.objective.name).get("extras", {}).items():
        path = cfg.objective.options.get(option)
        if path is not None:
            data = EXTRA_FILES[extra](data, path)
    return data


def input_files(cfg: RunConfig) -> dict[str, str]:
    """{"objective.<option>": sha256} of the files the objective's extras are read from, for config.yaml: a run
    resumed with a changed file is refused like any other changed setting."""
    options = OBJECTIVES.meta(cfg.objective.name).get("extras", {}).values()
    return {f"objective.{opt}": io.sha256_file(Path(cfg.objective.options[opt])) for opt in options
            if cfg.objective.options.get(opt) is not None}


# how a per-sample extra that an objective declares is read from its file: extra name -> attach(data, path)
EXTRA_FILES = {targets.EXTRA: targets.attach}


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
    cfg = resolve({k: v for k, v in doc.items() if k in SECTIONS})
    info = doc["shapes"]
    model = build_model(cfg, num_classes=int(info["num_classes"]), input_shape=tuple(info["input_shape"]))
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{path} has no model.safetensors yet (training did not finish an epoch); "
                              "resume it with `clearsight train ... --resume`")
    try:
        model.load_state_dict(io.load_weights(weights))
    except RuntimeError as err:
        raise CheckpointError(f"{weights} does not fit the model in {path}/config.yaml: {err}") from err
    return Run(path, cfg, info, model.to(device))
