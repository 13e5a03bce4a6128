"""Studies: many training methods x seeds on one dataset, trained, evaluated with one set of suites, reported.

    group = clearsight.study.load("quick")                    # a preset name or a YAML file: its studies
    report = clearsight.study.run(group.studies[0], "runs/quick")  # resumable; returns runs/quick/report.html

`clearsight.study.plan` says what a study config holds, `clearsight.study.runner` how it runs (cells, stages,
locks, shards), `clearsight.study.store` what a cell folder holds.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from clearsight.study.plan import Cell, Group, Method, Study, Teacher, cells, parse, parse_file
from clearsight.study.runner import folders, load, run

# the shipped presets (src/clearsight/study/presets/<name>.yaml; the repository's configs/ links there)
PRESETS = ("quick", "paper-mnist", "tabular", "decoy")


def preset_path(name: str) -> Path | None:
    """The YAML file of preset `name`, or None when `name` is not a preset."""
    if name not in PRESETS:
        return None
    return Path(str(resources.files("clearsight.study") / "presets" / f"{name}.yaml"))


def preset_text(name: str) -> str:
    """A preset's YAML, to print and edit."""
    from clearsight.errors import ConfigError

    path = preset_path(name)
    if path is None:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return path.read_text()


__all__ = ["PRESETS", "Cell", "Group", "Method", "Study", "Teacher", "cells", "folders", "load", "parse", "parse_file",
           "preset_path", "preset_text", "run"]
