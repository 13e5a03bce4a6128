"""What a study is: its config (YAML-able data), checked in full before any training, and the cells it makes.

A study trains several methods on one dataset and model, each with every seed, and evaluates every trained model
with the same suites. As data (`clearsight study --print quick` writes a complete example):

    name: quick
    dataset: {name: mnist-mini}                 # a registered dataset and its options
    model: {name: small-cnn, pool: avg}         # one architecture for every method (the bounds need avg pooling)
    train: {epochs: 2, batch_size: 128, lr: 0.05}            # every method's training settings ...
    seeds: [0]
    evaluate: {suites: [quick, certified], samples: 500, batch_size: 250, seed: 0}
    examples: {count: 8, attributions: [gradient, {name: smoothgrad, n: 20}]}
    methods:
      - {name: standard, objective: standard}
      - {name: pgd-at, objective: pgd-at, options: {steps: 3}, train: {epochs: 3}}   # ... overridden per method
      - {name: ir, objective: ir, teacher: {method: pgd-at, attribution: smoothgrad, n: 50}}

A method's `teacher` names another method of the study; the runner trains the teacher first (with the same seed),
computes its target maps (`clearsight targets` with the teacher's settings) and trains the method on them. A
cell is one (method, seed); its settings hash covers everything that decides its trained weights (the resolved run
config, and a teacher's hash and target settings), so an edited study retrains exactly the cells whose hash moved.
Evaluation settings are kept apart (`evaluate`, `examples`): changing them re-evaluates, never retrains.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from clearsight.config import RunConfig, resolve
from clearsight.engine import NEUTRAL_TRAIN
from clearsight.errors import ClearsightError, ConfigError
from clearsight.options import Count, NonNegative, Seed, check_values, coerce

TOP_KEYS = ("name", "description", "dataset", "model", "train", "seeds", "evaluate", "examples", "methods")
METHOD_KEYS = ("name", "objective", "options", "train", "model", "teacher", "description")
TEACHER_KEYS = {"method": None, "attribution": "smoothgrad", "n": 50, "sigma": 0.15, "threshold": 1.0,
                "abs": False, "seed": 0}
EVALUATE_KEYS = {"suites": ["quick"], "samples": None, "batch_size": 256, "seed": 0}
EXAMPLES_KEYS = {"count": 8, "attributions": ["gradient", {"name": "smoothgrad", "n": 20},
                                              {"name": "integrated_gradients", "steps": 32}]}
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Teacher:
    method: str
    attribution: Literal["smoothgrad", "gradient"] = "smoothgrad"
    n: Count = 50
    sigma: NonNegative = 0.15
    threshold: NonNegative = 1.0
    abs: bool = False
    seed: Seed = 0

    def settings(self) -> dict[str, Any]:
        """The target-map settings (everything but the teacher's name), as `clearsight.targets.compute` takes
        them."""
        return {"attribution": self.attribution, "n": self.n, "sigma": self.sigma, "threshold": self.threshold,
                "absolute": self.abs, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    objective: str
    options: dict[str, Any]
    train: dict[str, Any]
    model: dict[str, Any]
    teacher: Teacher | None
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    seeds: tuple[int, ...]
    evaluate: dict[str, Any]
    examples: dict[str, Any]
    methods: tuple[Method, ...]  # in the user's order
    description: str = ""

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)

    def run_config(self, method: Method, seed: int) -> RunConfig:
        """The resolved run config of one cell (the teacher's target file is set by the runner)."""
        return resolve({"data": self.dataset, "model": {**self.model, **method.model},
                        "objective": {"name": method.objective, **method.options},
                        "train": {**self.train, **method.train, "seed": seed}})

    def to_data(self) -> dict[str, Any]:
        """The study as plain data in the user's method order: what study.yaml holds and `parse` reads back."""
        return {"name": self.name, "description": self.description, "dataset": self.dataset, "model": self.model,
                "train": self.train, "seeds": list(self.seeds), "evaluate": self.evaluate,
                "examples": self.examples,
                "methods": [{**dataclasses.asdict(m), "teacher": dataclasses.asdict(m.teacher) if m.teacher
                             else None} for m in self.methods]}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (method, seed) of a study: trained into DIR/cells/<method>-seed<seed>."""

    method: Method
    seed: int
    hash: str
    teacher: Cell | None

    @property
    def name(self) -> str:
        return f"{self.method.name}-seed{self.seed}"


def parse(doc: Mapping[str, Any], *, where: str = "the study") -> Study:
    """A checked Study from its data: every key, name, option and teacher is validated here, and every cell's
    run config resolved, so a mistake is refused before anything trains."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(TOP_KEYS)}")
    _known(doc, TOP_KEYS, where)
    for key in ("name", "dataset", "methods"):
        if key not in doc:
            raise ConfigError(f"{where} has no {key!r}; a study needs name, dataset and methods "
                              "(`clearsight study --print quick` writes a complete example)")
    name = _name(doc["name"], f"{where}: name")
    seeds = doc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    coerce(f"{where}: seeds", seeds, list[Seed])  # each an int in torch's seed range
    methods_doc = doc["methods"]
    if not isinstance(methods_doc, list) or not methods_doc:
        raise ConfigError(f"{where}: methods must be a non-empty list of {{name, objective, ...}}")
    methods = [_method(m, f"{where}: methods[{i}]") for i, m in enumerate(methods_doc)]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{where}: two methods are named {dup!r}; give each a distinct name")
    study = Study(name=name, description=str(doc.get("description", "")), dataset=_component(doc, "dataset", where),
                  model=_component(doc, "model", where), train=_mapping(doc.get("train"), f"{where}: train"),
                  seeds=tuple(seeds), evaluate=_options(doc.get("evaluate"), EVALUATE_KEYS, f"{where}: evaluate"),
                  examples=_options(doc.get("examples"), EXAMPLES_KEYS, f"{where}: examples"),
                  methods=tuple(methods))
    _ordered(methods, where)  # an unknown teacher or a cycle is refused now
    _check_evaluate(study, where)
    for method in study.methods:
        try:
            study.run_config(method, seeds[0])
        except ClearsightError as err:  # an unknown objective or option, a bad value
            raise ConfigError(f"{where}: method {method.name!r}: {err}") from None
    _check_teachers(study, where)
    return study


@dataclasses.dataclass(frozen=True)
class Group:
    """What a study file holds: one study, or several (`studies: [...]`, e.g. one per dataset), each of which runs
    into a folder of its own named after it."""

    name: str
    studies: tuple[Study, ...]
    single: bool


def parse_file(doc: Mapping[str, Any], *, where: str = "the study") -> Group:
    """A study file's Group: a study mapping, or {name, description, studies: [study, ...]}."""
    if isinstance(doc, Mapping) and "studies" in doc:
        _known(doc, ("name", "description", "studies"), where)
        name = _name(doc.get("name"), f"{where}: name")
        docs = doc["studies"]
        if not isinstance(docs, list) or not docs:
            raise ConfigError(f"{where}: studies must be a non-empty list of studies")
        studies = tuple(parse(d, where=f"{where}: studies[{i}]") for i, d in enumerate(docs))
        names = [s.name for s in studies]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: two studies are named {next(n for n in names if names.count(n) > 1)!r}")
        return Group(name, studies, single=False)
    study = parse(doc, where=where)
    return Group(study.name, (study,), single=True)


def cells(study: Study) -> list[Cell]:
    """Every (method, seed) cell, teachers first, with the settings hash that decides its trained weights."""
    made: dict[tuple[str, int], Cell] = {}
    for method in _ordered(list(study.methods), "the study"):
        for seed in study.seeds:
            teacher = made[(method.teacher.method, seed)] if method.teacher else None
            cfg = study.run_config(method, seed).to_dict()
            for key in NEUTRAL_TRAIN:  # set by the runner; a resume may change them too
                cfg["train"].pop(key)
            cfg["objective"].pop("targets", None)  # a path: the teacher's hash and target settings stand for it
            identity = {"run": cfg, "teacher": None if teacher is None else
                        {"hash": teacher.hash, **method.teacher.settings()}}  # type: ignore[union-attr]
            made[(method.name, seed)] = Cell(method, seed, digest(identity), teacher)
    return list(made.values())


def digest(data: Any) -> str:
    """A stable hash of plain data (sorted keys), 16 hex digits."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard(items: Sequence[Cell], spec: str | None) -> list[Cell]:
    """Every N-th cell for `spec` "K/N" (K in 1..N); all cells for None."""
    if spec is None:
        return list(items)
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard expects K/N with 1 <= K <= N (e.g. 2/4), got {spec!r}")
    k, n = int(match[1]), int(match[2])
    return [c for i, c in enumerate(items) if i % n == k - 1]


# ---- checks -----------------------------------------------------------------------------------------------------

def _known(doc: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    for key in doc:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} has no key {key!r}{hint}; valid keys: {', '.join(valid)}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ConfigError(f"{where} must be a lower-case name of letters, digits, '-', '_' or '.' (it names "
                          f"folders), got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def _options(value: Any, defaults: Mapping[str, Any], where: str) -> dict[str, Any]:
    given = _mapping(value, where)
    _known(given, list(defaults), where)
    return {**defaults, **given}


def _component(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {"name": "small-cnn"} if key == "model" else None)
    if isinstance(value, str):
        return {"name": value}
    out = _mapping(value, f"{where}: {key}")
    if "name" not in out:
        raise ConfigError(f"{where}: {key} needs a name, e.g. {key}: {{name: ...}}")
    return out


def _method(doc: Any, where: str) -> Method:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where} must be a mapping {{name, objective, options, ...}}, got {doc!r}")
    _known(doc, METHOD_KEYS, where)
    if "name" not in doc:
        raise ConfigError(f"{where} needs a name")
    name = _name(doc["name"], f"{where}: name")
    teacher = None
    if doc.get("teacher") is not None:
        raw = _options(doc["teacher"], TEACHER_KEYS, f"{where}: teacher")
        if raw["method"] is None:
            raise ConfigError(f"{where}: teacher needs the name of another method (teacher: {{method: NAME}})")
        teacher = Teacher(**raw)
        _check_teacher(teacher, f"{where}: teacher")
    train = _mapping(doc.get("train"), f"{where}: train")
    if "seed" in train:
        raise ConfigError(f"{where}: train.seed is set by the study's seeds; remove it")
    return Method(name=name, objective=str(doc.get("objective", name)),
                  options=_mapping(doc.get("options"), f"{where}: options"), train=train,
                  model=_mapping(doc.get("model"), f"{where}: model"), teacher=teacher,
                  description=str(doc.get("description", "")))


def _ordered(methods: list[Method], where: str) -> list[Method]:
    """Teachers before their students (a depth-first order that keeps the user's order otherwise); an unknown
    teacher or a cycle is refused."""
    by_name = {m.name: m for m in methods}
    out: list[Method] = []
    state: dict[str, str] = {}

    def visit(m: Method, chain: list[str]) -> None:
        if state.get(m.name) == "done":
            return
        if state.get(m.name) == "open":
            raise ConfigError(f"{where}: teachers form a cycle: {' -> '.join([*chain, m.name])}")
        state[m.name] = "open"
        if m.teacher is not None:
            if m.teacher.method not in by_name:
                close = difflib.get_close_matches(m.teacher.method, list(by_name), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}: method {m.name!r} names teacher {m.teacher.method!r}, which is not a "
                                  f"method of the study{hint}")
            visit(by_name[m.teacher.method], [*chain, m.name])
        state[m.name] = "done"
        out.append(m)

    for m in methods:
        visit(m, [])
    return out


def _check_teacher(t: Teacher, where: str) -> None:
    """Every target-map setting against its declared type and range (finite: an infinite sigma or threshold
    would pass `>= 0` and make meaningless maps after the teacher trained)."""
    hints = typing.get_type_hints(Teacher, include_extras=True)
    check_values(f"{where}.", {k: getattr(t, k) for k in hints if k != "method"}, hints)


def _check_teachers(study: Study, where: str) -> None:
    """A teacher only for an objective that reads files an objective declares (metadata `extras`, ir's target
    maps), and such an objective needs a teacher or the file named in its options."""
    from clearsight.objectives import OBJECTIVES

    for m in study.methods:
        extras = OBJECTIVES.meta(m.objective).get("extras", {})
        if m.teacher is not None and not extras:
            raise ConfigError(f"{where}: method {m.name!r} has a teacher, but objective {m.objective!r} reads no "
                              "teacher maps (only objectives such as ir do); remove the teacher")
        missing = [opt for opt in extras.values() if m.options.get(opt) is None]
        if missing and m.teacher is None:
            raise ConfigError(f"{where}: method {m.name!r} (objective {m.objective!r}) needs a teacher (teacher: "
                              f"{{method: NAME}}, another method of the study whose maps it learns) or "
                              f"options.{missing[0]} naming a target file")


def _check_evaluate(study: Study, where: str) -> None:
    ev = study.evaluate
    suites = ev["suites"]
    if not isinstance(suites, list) or not suites:
        raise ConfigError(f"{where}: evaluate.suites must be a non-empty list of suite names or suite mappings")
    samples = ev["samples"]
    if samples is not None and (type(samples) is not int or samples < 1):
        raise ConfigError(f"{where}: evaluate.samples must be a positive integer or null (all), got {samples!r}")
    for key, least in (("batch_size", 1), ("seed", 0)):
        if type(ev[key]) is not int or ev[key] < least:
            raise ConfigError(f"{where}: evaluate.{key} must be an integer >= {least}, got {ev[key]!r}")
    count = study.examples["count"]
    if type(count) is not int or count < 0:
        raise ConfigError(f"{where}: examples.count must be a non-negative integer, got {count!r}")
