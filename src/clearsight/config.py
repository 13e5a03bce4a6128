"""Run configuration: frozen dataclasses, YAML files and `--set a.b=c` overrides, all type-checked.

A run config has four sections::

    data:      {name: mnist-mini, root: null, download: false, <loader options>}
    model:     {name: small-cnn, <model options, e.g. dropout>}
    objective: {name: standard, <objective options, e.g. label_smoothing>}
    train:     TrainConfig fields (epochs, batch_size, optimizer, lr, ...)

`resolve` fills in every default (of the dataclasses and of the chosen loader/model/objective's signature),
so the config.yaml a run writes states every value that produced it. Unknown keys and values of the wrong
type raise ConfigError naming the valid keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clearsight.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Options of `clearsight.fit`.

    Attributes:
        epochs: passes over the training split.
        batch_size: global batch size (split evenly across processes under torchrun).
        optimizer: "sgd" (momentum, optionally Nesterov) or "adam".
        lr: peak learning rate.
        schedule: "cosine" (to 0 over all steps), "step" (times `lr_decay` at each of `milestones`, given as
            fractions of training) or "constant".
        lr_decay: the step schedule's factor (called `gamma` before 0.2, a name it shared with the parameter
            radius of the bounds; `gamma` is still read, with a warning, for one release).
        val_fraction: share of the training data held out for validation (never the test split); 0 disables.
        keep: which weights model.safetensors holds: "last" epoch or "best" validation accuracy.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        seed: seeds initialization-independent randomness (shuffling, dropout, noise in objectives).
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N", ...
        progress: "auto" (a bar on a terminal, plain lines otherwise), "bar", "lines" or "none".
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    val_fraction: float = 0.1
    keep: str = "last"
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    progress: str = "auto"

    def __post_init__(self) -> None:
        choices = {"optimizer": ("sgd", "adam"), "schedule": ("cosine", "step", "constant"),
                   "keep": ("last", "best"), "progress": ("auto", "bar", "lines", "none")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"train.{key} must be one of {', '.join(valid)}, got {getattr(self, key)!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"train.{key} must be positive, got {value}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.keep == "best" and self.val_fraction == 0.0:
            raise ConfigError("train.keep=best selects on validation accuracy; set train.val_fraction > 0")


# train options renamed in 0.2: old name -> new name (read with a warning for one release)
RENAMED_TRAIN = {"gamma": "lr_decay"}


def migrate_train(train: Mapping[str, Any], *, where: str = "the train options") -> dict[str, Any]:
    """`train` with renamed options under their new names (warning once per use); both names is an error."""
    out = dict(train)
    for old, new in RENAMED_TRAIN.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where} give both train.{old} and train.{new}; {old} is the old name of {new} "
                              f"(the step schedule's learning-rate factor): keep only {new}")
        warnings.warn(f"train.{old} in {where} is now train.{new} (the learning-rate decay of the step schedule); "
                      f"it is read as {new} for this release", FutureWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


def train_config(options: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from keyword options (old names migrated); unknown names are refused with the valid ones."""
    options = migrate_train(options, where="fit()")
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"fit() has no option {unknown[0]!r}; valid options: {', '.join(valid)}")
    return TrainConfig(**options)


@dataclass(frozen=True)
class Component:
    """A registry name plus its keyword options (for data, model and objective sections)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    data: Component
    model: Component
    objective: Component
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{s: {"name": c.name, **c.options} for s, c in self.sections().items()},
            "train": dataclasses.asdict(self.train),
        }

    def sections(self) -> dict[str, Component]:
        return {"data": self.data, "model": self.model, "objective": self.objective}


# Options every data section has, whatever the loader (the loader's own come from its signature).
DATA_COMMON = {"root": None, "download": False}


def component_options(section: str, name: str) -> dict[str, Any]:
    """Valid option names of `name` in `section` with their defaults (from the registered signature)."""
    if section == "data":
        from clearsight.data import loader_options
        return {**DATA_COMMON, **loader_options(name)}
    if section == "model":
        from clearsight.models import model_options
        return {**model_options(name), "normalize": None}
    from clearsight.objectives import objective_options
    return objective_options(name)


def parse_value(text: str) -> Any:
    """Interpret a --set value as YAML ("0.1" -> 0.1, "true" -> True, "[256, 256]" -> list, "null" -> None)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` assignment to a nested dict."""
    key, sep, value = assignment.partition("=")
    section, dot, option = key.strip().partition(".")
    if not sep or not dot or not option:
        raise ConfigError(f"--set expects section.key=value (e.g. train.lr=0.01), got {assignment!r}; "
                          f"sections: {', '.join(SECTIONS)}")
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r} in {assignment!r}; sections: {', '.join(SECTIONS)}")
    doc.setdefault(section, {})[option] = parse_value(value)


SECTIONS = ("data", "model", "objective", "train")


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold a mapping with sections {', '.join(SECTIONS)}")
    return doc


def resolve(doc: Mapping[str, Any]) -> RunConfig:
    """Validate a nested dict of sections and fill every default; raise ConfigError on any bad key or type."""
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")
    parts = {}
    for section, default_name in (("data", "mnist-mini"), ("model", "small-cnn"), ("objective", "standard")):
        raw = dict(_section(doc, section))
        name = raw.pop("name", default_name)
        if not isinstance(name, str):
            raise ConfigError(f"{section}.name must be a string, got {name!r}")
        valid = component_options(section, name)  # raises UnknownNameError listing valid names
        for key, value in raw.items():
            if key not in valid:
                raise ConfigError(f"{section} {name!r} has no option {key!r}; valid keys: "
                                  f"{', '.join(['name', *valid])}")
            _check_like(f"{section}.{key}", value, valid[key])
        parts[section] = Component(name, {**valid, **raw})
    parts["objective"] = _with_budgets(parts["objective"], parts["data"].name)
    train_raw = migrate_train(_section(doc, "train"), where="the config")
    hints = typing.get_type_hints(TrainConfig)
    valid_train = [f.name for f in dataclasses.fields(TrainConfig)]
    for key, value in train_raw.items():
        if key not in hints:
            raise ConfigError(f"train has no option {key!r}; valid keys: {', '.join(valid_train)}")
        train_raw[key] = _coerce(f"train.{key}", value, hints[key])
    return RunConfig(train=TrainConfig(**train_raw), **parts)


def _with_budgets(objective: Component, dataset: str) -> Component:
    """The objective section with its data-dependent budgets (eps left at None) set from the dataset."""
    from clearsight.objectives import fill_budgets

    return Component(objective.name, fill_budgets(objective.name, objective.options, dataset))


def _section(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
    return value


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against a type hint; ints are accepted for floats and lists for tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r} "
                      f"({type(value).__name__})")


def _check_like(key: str, value: Any, default: Any) -> None:
    """Options without annotations are checked against the type of their default (None accepts anything)."""
    if default is None or value is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{key} must be {type(default).__name__} like its default {default!r}, got {value!r} "
                          f"({type(value).__name__})")


def build_config(*, config_file: Path | None = None, overrides: Sequence[str] = (),
                 base: Mapping[str, Any] | None = None) -> RunConfig:
    """Merge base values, a YAML file and `--set` overrides (later wins), then resolve."""
    doc: dict[str, Any] = {k: dict(v) for k, v in (base or {}).items()}
    if config_file is not None:
        for section, values in load_yaml(config_file).items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"config section {section!r} in {config_file} must be a mapping")
            doc.setdefault(section, {}).update(values)
    for assignment in overrides:
        apply_override(doc, assignment)
    return resolve(doc)
