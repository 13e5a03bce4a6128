"""evaluate(): the one evaluation driver, for every kind of row (accuracy, attacks, explanation metrics,
neuron statistics, certificates).

One loop over batches; in each batch every row of the suite runs in order (`_Plan.run`), inside a batch cache
(`clearsight.metrics.shared`), so an attribution map, an explanation attack or a gradient bound is computed once
per batch and shared by every row that reads it. What a row needs comes from its metric's registry metadata:
- `needs` "attribution"/"explainer": the row's attribution spec is bound once per evaluation (a seeded generator
  of its own when it draws noise) and given to the metric as a callable;
- `extras`: the batch's per-sample dataset extras of those names (decoy-mnist's `mask`, IR's `target_map`);
  `optional_extras` {keyword: extra}: passed as that keyword when the dataset has the extra (the localisation
  metrics leave decoy-mnist's patch out of the strokes);
- `context`: dataset-level metadata (sensitive feature groups, feature names);
- `worst_case_over`: a row with a list of n attacks is its one-shorter prefix row's per-sample values (the row
  with the first n-1 attacks and the same other options) plus the last attack, run only on the samples the
  prefix left robust. The prefix is the suite's own row when it has one, else a hidden row computed the same
  way (recursively) and not reported; so every attack of a list draws from the generator of the row that ends
  with it, and a row's values do not depend on whether the suite also has its prefixes;
- `curves`: the curves are computed once, reduced to the values, and their means kept in the row;
- `pooled`: a pool statistic (neuron consistency) accumulated over the batches and finished at the end.
Random rows draw from a generator of their own, seeded from the evaluation seed and the row key (attack random
starts, metric noise, the noise of attribution calls at perturbed inputs, `maps.with_generator`), and a shared
attribution map draws from its attribution's own stream: adding a row does not change another's values. Metric
noise is drawn per sample (`clearsight.metrics.perturb`), so those values do not depend on `batch_size` or
`max_batch`; attack random starts and attribution noise (smoothgrad's, drawn in blocks of rows that can straddle
batches) are drawn per batch, so those rows do depend on the batch size, as any random start does.
The hygiene check is not per sample: it runs once after the loop.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset

from clearsight.checks import check_dtype, check_finite_logits, check_labels, check_logits
from clearsight.data.base import ArrayDataset, as_array_dataset
from clearsight.errors import ConfigError
from clearsight.metrics.registry import METRICS
from clearsight.metrics.shared import batch_cache, clean_logits
from clearsight.metrics.suites import HYGIENE_SAMPLES, Row, Suite
from clearsight.modes import eval_mode, resolve_device
from clearsight.progress import reporter
from clearsight.results import hygiene_row, make_row
from clearsight.specs import Spec, is_spec, spec, spec_list, spec_text


def evaluate(model: nn.Module, ds: Dataset, *, suite: str | Mapping[str, Any] | Suite = "quick",
             batch_size: int = 256, device: str | torch.device = "auto",
             eps_grid: Mapping[str, Sequence[float]] | None = None, seed: int = 0, max_batch: int | None = None,
             progress: str = "auto") -> dict[str, float]:
    """Score `model` on `ds` with the rows of `suite`; returns {row key: mean value}.

    Row keys are the metric name followed by its options, e.g. "accuracy",
    "robust_accuracy/attack=pgd/eps=0.3/norm=linf/steps=20" or
    "deletion_auc/attribution=smoothgrad:n=10/samples=256"; the "hygiene/..." row counts the warnings of
    `clearsight.attacks.check` (signs of gradient masking). `evaluate_rows` gives the full rows (sample count,
    direction, dataset, curves, warnings) that `clearsight evaluate` writes to results.jsonl.

    Args:
        suite: "clean", "quick", "full", "certified" (see `clearsight.metrics.suites`), a suite as data, or a
            `Suite` (`clearsight.metrics.certified_suite(...)`).
        batch_size: samples per batch of the loop (memory budget of attacks and bounds).
        eps_grid: attack budgets {"linf": (...), "l2": (...)}; None -> the dataset's registered grid.
        seed: seeds every random part (attack starts, noise, subsets), so that an evaluation is repeatable;
            torch's global RNG is left as it was.
        max_batch: rows per forward pass given to every metric and attribution that has the option and whose
            row does not set it; None keeps their defaults.
        progress: "auto" (a bar on a terminal, lines otherwise), "bar", "lines" or "none".

    The model is moved to `device` (and stays there); it is evaluated in eval mode, its flags restored after.
    """
    rows = evaluate_rows(model, ds, suite=suite, batch_size=batch_size, device=device, eps_grid=eps_grid, seed=seed,
                         max_batch=max_batch, progress=progress)
    return {row["key"]: row["value"] for row in rows}


def evaluate_rows(model: nn.Module, ds: Dataset, *, suite: str | Mapping[str, Any] | Suite = "quick",
                  batch_size: int = 256, device: str | torch.device = "auto",
                  eps_grid: Mapping[str, Sequence[float]] | None = None, seed: int = 0,
                  max_batch: int | None = None, progress: str = "auto") -> list[dict[str, Any]]:
    """The result rows (`clearsight.results`) of `suite` on `ds`, every row per sample, batch by batch."""
    from clearsight.attacks import check

    data = as_array_dataset(ds)
    spec = suite_for(suite, data, eps_grid=eps_grid)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    report = reporter(progress)
    dev = resolve_device(device)
    model.to(dev)
    plans, shown = _plans(spec.rows, data, dev, seed, max_batch)
    # batches up to the last sample any row (or the hygiene check) reads: no forward on samples nothing scores
    needed = max([p.limit(len(data)) for p in plans]
                 + [min(len(data), HYGIENE_SAMPLES) if spec.hygiene is not None else 0])
    starts = list(range(0, needed, batch_size))
    bar = report.bar(sum(len([i for i in starts if i < p.limit(len(data))]) for p in plans)
                     + (spec.hygiene is not None), f"evaluate ({spec.name})")
    devices = [dev] if dev.type == "cuda" else []
    with ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.random.fork_rng(devices=devices))
        torch.manual_seed(seed)
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            # every batch and row evaluates one value of each parametrized tensor (spectral_norm, weight_norm):
            # cached for the whole loop, filled by the no-grad check below (outside inference mode, so that
            # later autograd passes may use the cached values)
            stack.enter_context(parametrize.cached())
        check_model_output(model, data, dev)
        for number, i in enumerate(starts, 1):
            began = time.perf_counter()
            batch = {k: v.to(dev) for k, v in data.batch(slice(i, i + batch_size)).items()}
            with batch_cache():
                check_finite_logits(clean_logits(model, batch["x"]), first=i)
                for plan in plans:
                    if i < plan.limit(len(data)):
                        plan.run(model, batch, i)
                        bar.update(1)
            report.line({"batch": f"{number}/{len(starts)}", "seconds": time.perf_counter() - began})
        # how the rows were made, for provenance (values do not depend on batch_size; they do on the seed)
        where = {"dataset": data.name, "split": data.split, "suite": spec.name, "seed": seed, "batch_size": batch_size}
        rows = [plan.result(where, len(data)) for plan in shown]
        keys = {plan.row.key for plan in shown}
        for row, plan in zip(rows, shown, strict=True):
            report.line({"row": row["key"], "value": row["value"], "seconds": plan.cost(keys)})
        if spec.hygiene is not None:
            n = min(len(data), HYGIENE_SAMPLES)
            warnings = check(model, data.x[:n].to(dev), data.y[:n].to(dev), **spec.hygiene)
            bar.update(1)
            rows.append(hygiene_row(spec.hygiene, n, warnings, where=where))
    bar.close()
    return rows


def suite_for(suite: str | Mapping[str, Any] | Suite, data: ArrayDataset, *,
              eps_grid: Mapping[str, Sequence[float]] | None = None) -> Suite:
    """The rows `suite` has on `data`: a shipped suite is built for the dataset's budgets (registry metadata
    `eps_grid` unless given), classes, input shape and extras."""
    from clearsight.data import DATASETS
    from clearsight.metrics import suite as make_suite

    if eps_grid is None and data.name in DATASETS:
        eps_grid = DATASETS.meta(data.name).get("eps_grid")
    return make_suite(suite, eps_grid=dict(eps_grid) if eps_grid else None, num_classes=data.num_classes,
                      input_shape=data.input_shape, extras=list(data.extras))


def check_model_output(model: nn.Module, data: ArrayDataset, device: torch.device) -> None:
    """The model takes the dataset's inputs (its parameters are float32, like them) and returns logits [B, C]
    with C covering the dataset's labels (checked on two samples)."""
    check_dtype(model, data.x, name=f"the {data.name or 'dataset'} inputs")
    with eval_mode(model), torch.no_grad():
        out = check_logits(model(data.x[:2].to(device)))
    check_labels(data.y, num_classes=out.shape[1], name=f"{data.name or 'dataset'} labels")


@dataclasses.dataclass
class _Plan:
    """One row of the suite being computed: how to call its metric, and what it has gathered so far."""

    row: Row
    call: Callable[..., torch.Tensor]
    options: dict[str, Any]
    meta: dict[str, Any]
    extras: dict[str, str]  # keyword -> the per-sample dataset extra passed as it
    base: _Plan | None = None  # worst case: the one-shorter prefix row this one extends, and its last attack
    last_attack: Spec | None = None
    pool: Any = None
    parts: list[torch.Tensor] = dataclasses.field(default_factory=list)
    curves: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)
    last: torch.Tensor | None = None
    seconds: float = 0.0

    def limit(self, total: int) -> int:
        return min(total, self.row.samples) if self.row.samples is not None else total

    def run(self, model: nn.Module, batch: dict[str, torch.Tensor], first: int) -> None:
        began = time.perf_counter()
        keep = self.limit(first + batch["y"].shape[0]) - first
        x, y = batch["x"][:keep], batch["y"][:keep]
        kwargs = {**self.options, **{kw: batch[extra][:keep] for kw, extra in self.extras.items()}}
        if self.pool is not None:
            self.pool.update(model, x, y, first)
        elif self.base is not None:
            self.last = self._after(model, x, y, kwargs)
        elif "curves" in self.meta:
            curves = self.meta["curves"](model, x, y, **kwargs)
            self.last = self.meta["from_curves"](curves).detach()
            for name, c in curves.items():
                self.curves.setdefault(name, []).append(c.detach())
        else:
            self.last = self.call(model, x, y, **kwargs).detach()
        if self.last is not None:
            self.parts.append(self.last)
        self.seconds += time.perf_counter() - began

    def _after(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The worst case: 0 where the prefix row already broke the sample, else the last attack's value."""
        assert self.base is not None and self.base.last is not None  # the prefix ran first on the same samples
        known = self.base.last
        out = torch.zeros_like(known, dtype=x.dtype)
        idx = known.nonzero().squeeze(1)
        if idx.numel():
            over = self.meta["worst_case_over"]
            out[idx] = self.call(model, x[idx], y[idx], **{**kwargs, over: [self.last_attack]}).detach().to(out.dtype)
        return out

    def cost(self, shown: set[str]) -> float:
        """Seconds this row took, with those of the unreported prefixes it needed (a reported prefix's are its own)."""
        hidden = self.base is not None and self.base.row.key not in shown
        return self.seconds + (self.base.cost(shown) if hidden and self.base is not None else 0.0)

    def result(self, where: dict[str, Any], total: int) -> dict[str, Any]:
        n = self.limit(total)
        values = self.pool.finish(n) if self.pool is not None else (torch.cat(self.parts) if self.parts
                                                                     else torch.zeros(0))
        curves = {name: torch.cat(parts) for name, parts in self.curves.items()}
        return make_row(self.row.metric, self.row.options, values, higher_is_better=self.meta["higher_is_better"],
                        where=where, samples=self.row.samples, curves=curves)


def _plans(rows: Sequence[Row], data: ArrayDataset, device: torch.device, seed: int,
           max_batch: int | None) -> tuple[list[_Plan], list[_Plan]]:
    """The plans in the order they run (a prefix before the rows that extend it, each key once) and the plans of
    the suite's rows in the suite's order (a prefix the suite lacks runs but is not reported)."""
    bound: dict[str, Callable[..., torch.Tensor]] = {}  # attribution spec text -> the callable all rows share
    plans: dict[str, _Plan] = {}  # row key -> plan, in running order
    shown: dict[str, _Plan] = {}  # by the planned (normalised) key: a row repeated, in any spelling, is reported once
    for row in rows:
        plan = _plan(row, data, device, seed, max_batch, bound, plans)
        shown.setdefault(plan.row.key, plan)
    return list(plans.values()), list(shown.values())


def _plan(row: Row, data: ArrayDataset, device: torch.device, seed: int, max_batch: int | None,
          bound: dict[str, Callable[..., torch.Tensor]], plans: dict[str, _Plan]) -> _Plan:
    """The plan of `row`: the one already in `plans` under its key, else a new one added after the prefix rows it
    extends (so a row that also appears earlier or later in the suite, or as another row's prefix, runs once)."""
    meta = METRICS.meta(row.metric)
    over: str | None = meta.get("worst_case_over")
    items = spec_list(row.options[over], what=f"{row.metric} {over}") if over in row.options else []
    if over is not None and items:
        # a hand-built Row may hold a bare name, a pair or mappings: in (name, options) form its key is the one its
        # worst-case rows name as their prefix, and its generator the one a suite row of the same attacks gets
        row = dataclasses.replace(row, options={**row.options, over: items})
    if row.key in plans:
        return plans[row.key]
    fn = METRICS.get(row.metric)
    accepted = METRICS.options(row.metric)
    options = dict(row.options)
    if is_spec(options.get("attribution")):
        text = spec_text(options["attribution"])
        if text not in bound:
            bound[text] = _bind_attribution(options["attribution"], device, seed, max_batch)
        options["attribution"] = bound[text]
    if "generator" in accepted and options.get("generator") is None:
        options["generator"] = _generator(device, seed, row.key)
    if max_batch is not None and "max_batch" in accepted and "max_batch" not in options:
        options["max_batch"] = max_batch
    options.update(_context(meta, data))
    required = tuple(meta.get("extras", ()))
    missing = [e for e in required if e not in data.extras]
    if missing:
        raise ConfigError(f"metric {row.metric!r} needs the per-sample extra {missing[0]!r}, which "
                          f"{data.name or 'this dataset'} does not have (its extras: "
                          f"{', '.join(data.extras) or 'none'}); drop the row or use a dataset that has it")
    # optional extras (metadata keyword -> extra): passed when the dataset has them, e.g. the decoy patch
    # that the localisation metrics leave out of the strokes
    extras = {e: e for e in required} | {kw: e for kw, e in meta.get("optional_extras", {}).items()
                                         if e in data.extras}
    plan = _Plan(row, fn, options, meta, extras)
    if "pooled" in meta:
        plan.pool = meta["pooled"](**options)  # with the row's own generator, like any random row
    if over is not None and len(items) > 1:
        prefix = Row(row.metric, {**row.options, over: items[:-1]}, row.samples)
        plan.base = _plan(prefix, data, device, seed, max_batch, bound, plans)
        plan.last_attack = items[-1]
    plans[row.key] = plan
    return plan


def _context(meta: Mapping[str, Any], data: ArrayDataset) -> dict[str, Any]:
    known = {"feature_groups": data.sensitive, "feature_names": data.feature_names}
    unknown = [c for c in meta.get("context", ()) if c not in known]
    if unknown:
        raise ConfigError(f"no dataset metadata named {unknown[0]!r}; known: {', '.join(known)}")
    return {c: known[c] for c in meta.get("context", ())}


def _generator(device: torch.device, seed: int, key: str) -> torch.Generator:
    # crc32, not hash(): Python salts string hashes per process, and evaluations must repeat across processes
    return torch.Generator(device=device).manual_seed(zlib.crc32(f"{seed}/{key}".encode()))


def _bind_attribution(attribution: Spec, device: torch.device, seed: int,
                      max_batch: int | None) -> Callable[..., torch.Tensor]:
    """The attribution of a spec with its options bound, nested attribution specs (smoothgrad's base) included."""
    from clearsight.attributions import ATTRIBUTIONS

    name, options = attribution
    accepted = ATTRIBUTIONS.options(name)
    bound = dict(options)
    for key, value in options.items():
        if callable(accepted.get(key)) and (isinstance(value, str) or is_spec(value) or isinstance(value, Mapping)):
            bound[key] = _bind_attribution(spec(value, what=f"{name} {key}"), device, seed, max_batch)
    if "generator" in accepted and bound.get("generator") is None:
        bound["generator"] = _generator(device, seed, f"attribution/{spec_text(attribution)}")
    if max_batch is not None and "max_batch" in accepted and "max_batch" not in bound:
        bound["max_batch"] = max_batch
    return ATTRIBUTIONS.bind(name, **bound)
