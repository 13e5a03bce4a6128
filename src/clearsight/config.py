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
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clearsight.errors import ConfigError
from clearsight.io import read_text
from clearsight.options import (
    Count,
    Fraction,
    NonNegative,
    Positive,
    ProperFraction,
    Seed,
    check_values,
    coerce,
    did_you_mean,
    option_hints,
)


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

    epochs: Count = 10
    batch_size: Count = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Positive = 0.05
    momentum: ProperFraction = 0.9
    nesterov: bool = True
    weight_decay: NonNegative = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[Fraction, ...] = (0.5, 0.75)
    lr_decay: Positive = 0.1
    val_fraction: ProperFraction = 0.1
    keep: Literal["last", "best"] = "last"
    grad_clip: Positive | None = None
    seed: Seed = 0
    device: str = "auto"
    progress: Literal["auto", "bar", "lines", "none"] = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) and hasattr(self.device, "type"):  # a torch.device: its name
            object.__setattr__(self, "device", str(self.device))
        # every field checked against its annotation (type, finite, range, choices) and stored in its type
        for key, hint in typing.get_type_hints(TrainConfig, include_extras=True).items():
            object.__setattr__(self, key, coerce(f"train.{key}", getattr(self, key), hint))
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
    own = _registry(section).options(name, exclude=_EXCLUDED[section])
    return {**DATA_COMMON, **own} if section == "data" else {**own, **_COMMON[section]}


def _registry(section: str) -> Any:
    if section == "data":
        from clearsight.data import DATASETS
        return DATASETS
    if section == "model":
        from clearsight.models import MODELS
        return MODELS
    from clearsight.objectives import OBJECTIVES
    return OBJECTIVES


# Options every entry of a section has beyond its own signature's (data: where the files are; model: the
# Normalize layer), and the signature's parameters that are not options (the loader's, the builder's).
_COMMON: dict[str, dict[str, Any]] = {"model": {"normalize": None}, "objective": {}}
_EXCLUDED = {"data": ("root", "download"), "model": ("num_classes", "input_shape"), "objective": ()}
_COMMON_HINTS: dict[str, dict[str, Any]] = {
    "data": {"root": str | None, "download": bool},
    "model": {"normalize": Sequence[Sequence[float]] | None},
    "objective": {}}


def parse_value(text: str) -> Any:
    """Interpret a --set value as YAML ("0.1" -> 0.1, "true" -> True, "[256, 256]" -> list, "null" -> None)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` assignment to a nested dict."""
    key, sep, value = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set expects section.key=value (e.g. train.lr=0.01), got {assignment!r}; "
                          f"sections: {', '.join(SECTIONS)}")
    _assign(doc, key, parse_value(value), assignment)


def _assign(doc: dict[str, Any], key: str, value: Any, assignment: str) -> None:
    section, dot, option = key.strip().partition(".")
    if not dot or not option:
        raise ConfigError(f"--set expects section.key=value (e.g. train.lr=0.01), got {assignment!r}; "
                          f"sections: {', '.join(SECTIONS)}")
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r} in {assignment!r}{did_you_mean(section, SECTIONS)}; "
                          f"sections: {', '.join(SECTIONS)}")
    doc.setdefault(section, {})[option] = value


SECTIONS = ("data", "model", "objective", "train")


def load_yaml(path: Path) -> dict[str, Any]:
    """A config file's sections (an empty file: none)."""
    text = read_text(path, what="config file", error=ConfigError, fix="Save it as UTF-8 text")
    try:
        doc = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as err:  # PyYAML raises ValueError for a date that does not exist
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
        for key in raw:
            if key not in valid:
                raise ConfigError(f"{section} {name!r} has no option {key!r}{did_you_mean(key, list(valid))}; "
                                  f"valid keys: {', '.join(['name', *valid])}")
        hints = {**option_hints(_registry(section).get(name)), **_COMMON_HINTS[section]}
        check_values(f"{section}.", raw, hints)
        parts[section] = Component(name, {**valid, **raw})
    parts["objective"] = _with_budgets(parts["objective"], parts["data"].name)
    train_raw = migrate_train(_section(doc, "train"), where="the config")
    valid_train = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in train_raw:
        if key not in valid_train:
            raise ConfigError(f"train has no option {key!r}{did_you_mean(key, valid_train)}; valid keys: "
                              f"{', '.join(valid_train)}")
    return RunConfig(train=TrainConfig(**train_raw), **parts)  # TrainConfig checks and coerces every value


def _with_budgets(objective: Component, dataset: str) -> Component:
    """The objective section with its data-dependent budgets (eps left at None) set from the dataset."""
    from clearsight.objectives import fill_budgets

    return Component(objective.name, fill_budgets(objective.name, objective.options, dataset))


def _section(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
    return value


def build_config(*, config_file: Path | None = None, overrides: Sequence[str] = (),
                 base: Mapping[str, Any] | None = None, values: Mapping[str, Any] | None = None) -> RunConfig:
    """Merge, later winning: `base` sections, a YAML file, `values` ({"section.key": value}, the command line's
    own flags such as --dataset) and `--set` overrides; then resolve."""
    doc: dict[str, Any] = {k: dict(v) for k, v in (base or {}).items()}
    if config_file is not None:
        for section, options in load_yaml(config_file).items():
            if not isinstance(options, Mapping):
                raise ConfigError(f"config section {section!r} in {config_file} must be a mapping")
            doc.setdefault(section, {}).update(options)
    for key, value in (values or {}).items():
        _assign(doc, key, value, f"{key}={value}")
    for assignment in overrides:
        apply_override(doc, assignment)
    return resolve(doc)
