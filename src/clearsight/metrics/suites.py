"""Evaluation suites: which rows `clearsight.evaluate` computes. A suite is data (YAML-able).

A row is a metric and its options, with an attribution given as a spec (name, options) and an attack list as a
list of specs (`clearsight.specs`), plus an optional sample limit (the row is computed on the first `samples`
samples: expensive explanation metrics on a subset). A suite also carries the options of the hygiene check
(`attacks.check`), or None to skip it. As data (`Suite.to_data`, `suite(mapping)`):

    name: my-suite
    rows:
      - {metric: accuracy}
      - {metric: robust_accuracy, attack: [{name: pgd}, {name: apgd, loss: dlr, steps: 100}], eps: 0.3}
      - {metric: deletion_auc, attribution: {name: smoothgrad, n: 20}, steps: 28, samples: 500}
    hygiene: {eps: 0.3, norm: linf, max_gap: null}

Shipped suites are built for a dataset: its attack budgets (registry metadata `eps_grid`), its number of
classes, input shape and per-sample extras decide the rows.

    clean      accuracy
    quick      accuracy; pgd-20 robust accuracy at the smallest and largest budget of linf (or of the first norm);
               gradient and smoothgrad maps scored for faithfulness (deletion, insertion), sparsity (gini),
               stability (max-sensitivity) and, for images, localisation (relevance mass and the pointing game on
               the strokes, decoy mass on a `mask` extra), target cosine on a `target_map` extra; hygiene checks
               without the steps-and-restarts comparison. 1 to 3 minutes for the full-size small-cnn on
               mnist-mini's 2,000 test images on 2 CPU cores, depending on the machine's load.
    full       accuracy; pgd-40 at every budget of every norm and the worst case of pgd-40 and apgd-100 (dlr loss, ce
               for fewer than 3 classes), computed from the pgd-40 rows' samples; gradient, smoothgrad and
               integrated-gradients maps scored by every map metric; explanation-attack robustness, model
               randomisation, neuron consistency (real, adversarial, both) and sensitivity; all hygiene checks
    certified  certified accuracy and the relative delta bound at every linf budget (`certified_suite` builds
               the rows of `clearsight certify`)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clearsight.errors import ConfigError
from clearsight.metrics.registry import METRICS
from clearsight.options import check_values, did_you_mean, option_hints
from clearsight.results import row_key
from clearsight.specs import is_spec, spec, spec_list

SUITE_NAMES = ("clean", "quick", "full", "certified")
HYGIENE_SAMPLES = 256  # the hygiene check looks at the first samples only: it diagnoses the model, not the data


@dataclass(frozen=True)
class Row:
    """One row of a suite: `metric` called with `options` on the first `samples` samples (None: all)."""

    metric: str
    options: dict[str, Any] = field(default_factory=dict)
    samples: int | None = None

    @property
    def key(self) -> str:
        return row_key(self.metric, self.options, samples=self.samples)


@dataclass(frozen=True)
class Suite:
    name: str
    rows: list[Row]
    hygiene: dict[str, Any] | None = None

    def to_data(self) -> dict[str, Any]:
        """The suite as plain data (specs as mappings with "name"), which `suite()` reads back."""
        rows = [{"metric": r.metric, **{k: _data(v) for k, v in r.options.items()},
                 **({"samples": r.samples} if r.samples is not None else {})} for r in self.rows]
        return {"name": self.name, "rows": rows, "hygiene": self.hygiene}


def _data(value: Any) -> Any:
    if is_spec(value):
        return {"name": value[0], **{k: _data(v) for k, v in value[1].items()}}
    if isinstance(value, list) and value and all(is_spec(v) for v in value):
        return [_data(v) for v in value]
    return value


def make_row(metric: str, /, *, samples: int | None = None, **options: Any) -> Row:
    """A checked row: the metric exists, its options are its own, specs are in (name, options) form."""
    entry = METRICS.entry(metric)
    meta = entry.meta
    if "attribution" in options or {"attribution", "explainer"} & set(meta.get("needs", ())):
        if "attribution" not in options:
            raise ConfigError(f"metric {metric!r} needs an attribution: add attribution: {{name: gradient}}")
        options["attribution"] = spec(options["attribution"], what=f"{metric} attribution")
    if meta.get("worst_case_over") in options:
        options[meta["worst_case_over"]] = spec_list(options[meta["worst_case_over"]], what=f"{metric} attack")
    passed = set(meta.get("extras", ())) | set(meta.get("context", ()))
    bad = sorted(set(options) & passed)
    if bad:
        raise ConfigError(f"metric {metric!r} gets {bad[0]!r} from the dataset in evaluation; leave it out of the row")
    METRICS.check_options(metric, options, exclude=passed)
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ConfigError(f"row samples must be a positive integer (the first N samples), got {samples!r}")
    return Row(metric, options, samples)


def from_data(data: Mapping[str, Any]) -> Suite:
    """A suite from plain data (see the module docstring)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("rows"), Sequence) or not data["rows"]:
        raise ConfigError("a suite must be a mapping with a non-empty list 'rows' of {metric: NAME, option: value}")
    rows = []
    for item in data["rows"]:
        if not isinstance(item, Mapping) or not isinstance(item.get("metric"), str):
            raise ConfigError(f"every suite row needs 'metric: NAME', got {item!r}")
        rest = {k: v for k, v in item.items() if k not in ("metric", "samples")}
        rows.append(make_row(item["metric"], samples=item.get("samples"), **rest))
    hygiene = data.get("hygiene")
    if hygiene is not None and not isinstance(hygiene, Mapping):
        raise ConfigError(f"suite hygiene must be a mapping of attacks.check options or null, got {hygiene!r}")
    if hygiene is not None:
        _check_hygiene(hygiene)
    return Suite(str(data.get("name", "custom")), rows, dict(hygiene) if hygiene is not None else None)


def _check_hygiene(options: Mapping[str, Any]) -> None:
    """The hygiene options against `attacks.check`'s signature: names, types, finite values in range."""
    from clearsight.attacks import check

    hints = {k: v for k, v in option_hints(check).items() if k != "generator"}
    for key in options:
        if key not in hints:
            raise ConfigError(f"suite hygiene has no option {key!r}{did_you_mean(key, list(hints))}; valid options: "
                              f"{', '.join(hints)}")
    check_values("suite hygiene.", options, hints)


def suite(name: str | Mapping[str, Any] | Suite, *, eps_grid: Mapping[str, Sequence[float]] | None,
          num_classes: int, input_shape: Sequence[int] | None = None, extras: Sequence[str] = ()) -> Suite:
    """The suite `name` (a shipped name, a mapping as in the module docstring, or a Suite) for a dataset with
    attack budgets `eps_grid`, `num_classes` classes, inputs of `input_shape` and per-sample `extras`."""
    if isinstance(name, Suite):
        return name
    if isinstance(name, Mapping):
        return from_data(name)
    if name not in SUITE_NAMES:
        raise ConfigError(f"unknown suite {name!r}; valid suites: {', '.join(SUITE_NAMES)} (or a suite mapping)")
    if name == "clean":
        return Suite(name, [make_row("accuracy")])
    norm, budgets = _budgets(name, eps_grid)
    images = input_shape is not None and len(input_shape) == 3
    if name == "certified":
        if norm != "linf":
            raise ConfigError("the certified suite bounds l-inf boxes, but the dataset declares no linf budgets; "
                              "use certified_suite(eps=...) (clearsight certify --eps)")
        return certified_suite(eps=budgets, name=name)
    features = 1
    for s in input_shape or ():
        features *= int(s)
    build = _quick if name == "quick" else _full
    rows, hygiene = build(eps_grid or {}, norm, budgets, num_classes, images, features, set(extras))
    return Suite(name, rows, hygiene)


def _budgets(name: str, eps_grid: Mapping[str, Sequence[float]] | None) -> tuple[str, list[float]]:
    if not eps_grid:
        raise ConfigError(f"suite {name!r} attacks or bounds the model but the dataset declares no attack budgets; "
                          "pass eps_grid={'linf': (...), 'l2': (...)} to evaluate, or use suite='clean'")
    for norm, grid in eps_grid.items():
        if not grid or any(not float(e) >= 0 for e in grid):
            raise ConfigError(f"eps_grid[{norm!r}] must be a non-empty list of budgets >= 0, got {grid!r}")
    norm = "linf" if "linf" in eps_grid else sorted(eps_grid)[0]
    return norm, sorted(float(e) for e in eps_grid[norm])


def _map_rows(attribution: tuple[str, dict[str, Any]], metrics: Sequence[tuple[str, dict[str, Any]]],
              samples: int | None) -> list[Row]:
    return [make_row(metric, attribution=attribution, samples=samples, **options) for metric, options in metrics]


def _localisation(images: bool, extras: set[str]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if images:
        out += [("relevance_mass", {}), ("pointing_game", {})]
    if images and "mask" in extras:
        out.append(("decoy_mass", {}))
    if "target_map" in extras:
        out.append(("target_cosine", {}))
    return out


QUICK_SAMPLES = 256  # attribution rows of the quick suite: the first 256 test samples
QUICK_ATTACK_SAMPLES = 1000


def _quick(eps_grid: Mapping[str, Sequence[float]], norm: str, budgets: list[float], num_classes: int, images: bool,
           features: int, extras: set[str]) -> tuple[list[Row], dict[str, Any]]:
    rows = [make_row("accuracy")]
    for eps in sorted({budgets[0], budgets[-1]}):
        rows.append(make_row("robust_accuracy", attack="pgd", norm=norm, eps=eps, steps=20,
                             samples=QUICK_ATTACK_SAMPLES))
    start = "blur" if images else 0.0
    for attribution, sensitivity_samples in ((("gradient", {}), QUICK_SAMPLES), (("smoothgrad", {"n": 10}), 64)):
        rows += _map_rows(attribution, [("deletion_auc", {}), ("insertion_auc", {"start": start}), ("gini", {}),
                                        *_localisation(images, extras)], QUICK_SAMPLES)
        rows += _map_rows(attribution, [("max_sensitivity", {"n": 5, "radius": 0.1})], sensitivity_samples)
    return rows, {"eps": budgets[-1], "norm": norm, "max_gap": None}


FULL_SAMPLES = 500  # attribution metrics of the full suite
FULL_ATTACK_SAMPLES = 128  # explanation attacks (20 steps of double backprop per sample)


def _full(eps_grid: Mapping[str, Sequence[float]], norm: str, budgets: list[float], num_classes: int, images: bool,
          features: int, extras: set[str]) -> tuple[list[Row], dict[str, Any]]:
    rows = [make_row("accuracy")]
    apgd_loss = "dlr" if num_classes >= 3 else "ce"
    for grid_norm, grid in sorted(eps_grid.items()):
        for eps in sorted(float(e) for e in grid):
            rows.append(make_row("robust_accuracy", attack="pgd", norm=grid_norm, eps=eps, steps=40))
            rows.append(make_row("robust_accuracy", attack=[("pgd", {}), ("apgd", {"loss": apgd_loss, "steps": 100})],
                                 norm=grid_norm, eps=eps, steps=40))
    start = "blur" if images else 0.0
    small = budgets[0] if norm == "linf" else None
    topk = max(1, features // 10)
    for attribution in (("gradient", {}), ("smoothgrad", {"n": 50}), ("integrated_gradients", {"steps": 32})):
        rows += _map_rows(attribution, [
            ("deletion_auc", {}), ("insertion_auc", {"start": start}), ("pixel_flipping", {}),
            ("faithfulness_correlation", {"subset": max(1, features // 4)}), ("infidelity", {}),
            ("gini", {}), ("entropy", {}), ("alignment", {}), ("alignment_cosine", {}),
            ("max_sensitivity", {}), ("avg_sensitivity", {}), *_localisation(images, extras),
            *([("relevance_rank", {})] if images else []), ("randomisation", {"layers": 1}),
            ("randomisation", {"layers": 2})], FULL_SAMPLES)
        if small is not None:
            rows += _map_rows(attribution, [("topk_intersection", {"eps": small, "topk": topk}),
                                            ("rank_correlation", {"eps": small, "topk": topk})],
                              FULL_ATTACK_SAMPLES)
    for pool in ("real", "adversarial", "both"):
        rows.append(make_row("neuron_consistency", pool=pool, eps=budgets[0], norm=norm))
    rows.append(make_row("neuron_sensitivity", samples=FULL_SAMPLES))
    return rows, {"eps": budgets[-1], "norm": norm}


def certified_suite(*, eps: Sequence[float], gamma: float = 0.0, topk: int | None = None,
                    sensitive: str | Sequence[int | str] | None = None, delta: float | None = None,
                    p: float = 2.0, of: str = "logit", relative: bool = True, name: str = "certified") -> Suite:
    """The rows of `clearsight certify`, per eps: certified_accuracy, delta_bound (relative to ||g(x)|| unless
    `relative` is False), certified_delta with `delta`, and certified_topk with `topk` and `sensitive`."""
    if (topk is None) != (sensitive is None or sensitive == ""):
        raise ConfigError("the top-k certificate needs both topk and sensitive (e.g. --topk 5 --sensitive sex)")
    if not eps:
        raise ConfigError("the certified suite needs at least one eps")
    rows = []
    for e in eps:
        box: dict[str, Any] = {"eps": float(e), "gamma": float(gamma)}
        rows.append(make_row("certified_accuracy", **box))
        rows.append(make_row("delta_bound", **box, p=p, of=of, relative=relative))
        if delta is not None:
            rows.append(make_row("certified_delta", **box, delta=float(delta), p=p, of=of, relative=relative))
        if topk is not None and sensitive is not None:
            rows.append(make_row("certified_topk", **box, topk=int(topk), sensitive=sensitive, of=of))
    return Suite(name, rows)
