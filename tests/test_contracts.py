"""Contracts every registered entry keeps, iterated over the registries so that new entries are covered on
registration (timm-style registry-driven tests).

Kind-specific contracts live beside their kind and iterate their registry too: attributions
(tests/test_attributions.py: state restored under injected failures, output shapes, input checks), attacks
(tests/test_attacks.py: feasibility, state restored), models (tests/test_models.py: logits and named parts).
This file holds what every kind shares (metadata the reports read, a description for `clearsight list`) and the
contracts of objectives and metrics: the state of the model is left as found, outputs have the documented
shapes, and an objective's loss reaches every parameter.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

from clearsight.attacks import ATTACKS
from clearsight.attributions import ATTRIBUTIONS
from clearsight.cli import _registries
from clearsight.data import DATASETS
from clearsight.metrics import METRICS
from clearsight.models import build
from clearsight.objectives import OBJECTIVES, LossOutput
from clearsight.objectives import build as build_objective

PAPER = re.compile(r"arXiv[ :]\d{4}\.\d{4,5}")

# metadata each kind must declare, and its type: reports and tests read these instead of special-casing names
REQUIRED_META: dict[str, dict[str, type | tuple[type, ...]]] = {
    "datasets": {"kind": str, "num_classes": int, "embedded": bool},
    "models": {"input_shape": tuple},
    "objectives": {"needs_double_backprop": bool, "standard_at": tuple},
    "attributions": {"paper": str, "multi_sample": bool, "output": str, "images_only": bool},
    "attacks": {"norms": tuple, "goal": str, "paper": str},
    "metrics": {"higher_is_better": bool, "needs_grad": bool, "needs": tuple, "example": dict},
}



def test_every_kind_is_listed_by_the_cli_and_has_a_metadata_contract():
    assert set(_registries()) == set(REQUIRED_META)


@pytest.mark.parametrize("kind, name", [(k, n) for k, reg in _registries().items() for n in reg.names()])
def test_every_entry_declares_its_metadata_and_a_description(kind, name):
    registry = _registries()[kind]
    meta = registry.meta(name)
    assert isinstance(meta.get("description"), str) and meta["description"].strip(), f"{kind} {name}"
    for key, types in REQUIRED_META[kind].items():
        assert isinstance(meta.get(key), types), f"{kind} {name}: metadata {key!r} missing or mistyped"
    if meta.get("paper") is not None:  # baselines without a paper (standard training) declare None
        assert PAPER.search(meta["paper"]), f"{kind} {name}: paper {meta['paper']!r} is no arXiv id"
    assert inspect.getdoc(registry.get(name)), f"{kind} {name} has no docstring"


def test_metadata_values_come_from_the_documented_vocabularies():
    for name in ATTACKS.names():
        meta = ATTACKS.meta(name)
        assert meta["goal"] in ("prediction", "explanation") and set(meta["norms"]) <= {"linf", "l2"}
        assert meta["norms"], name
    for name in ATTRIBUTIONS.names():
        assert ATTRIBUTIONS.meta(name)["output"] in ("input", "map")
    for name in DATASETS.names():
        assert DATASETS.meta(name)["kind"] in ("image", "tabular")


# ---------------------------------------------------------------- objectives

def model_state(model: nn.Module) -> tuple:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [{k: list(getattr(m, k)) for k in dir(m) if k.startswith("_") and k.endswith("hooks")
              and isinstance(getattr(m, k), dict)} for m in model.modules()])


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12, 12]).train()


def declared_extras(name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-sample extras objective `name` declares it reads (metadata `extras`), as random maps like x."""
    return {key: torch.rand_like(x) - 0.5 for key in OBJECTIVES.meta(name).get("extras", {})}


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    # average pooling: the certified objectives bound the network, and bounds refuse max pooling
    return build("small-cnn", num_classes=3, input_shape=(1, 8, 8), hidden=12, dropout=0.0, pool="avg").train()


@pytest.mark.parametrize("name", OBJECTIVES.names())
@pytest.mark.parametrize("progress", [None, 0.0, 0.7])
@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn], ids=["mlp", "cnn"])
def test_every_objective_returns_a_loss_that_reaches_every_parameter(name, progress, make):
    model = make()
    x = torch.rand(6, 1, 4, 4) if make is tiny_mlp else torch.rand(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    before, x_copy = model_state(model), x.clone()
    batch = {} if progress is None else {"progress": progress, "epoch": 0, "epochs": 2}
    batch.update(declared_extras(name, x))
    out = build_objective(name, dataset="mnist-mini")(model, x, y, **batch)  # budgets: mnist's (eps 0.3)
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and bool(torch.isfinite(out.loss))
    assert out.logs and all(isinstance(v, float) for v in out.logs.values())
    if out.logits is not None:
        assert out.logits.shape == (6, 3) and not out.logits.requires_grad
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model_state(model) == before and torch.equal(x, x_copy)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_declared_extra_has_a_file_reader_and_an_option_naming_its_file(name):
    """Metadata `extras` {extra: option}: the run loader reads the file the option names with
    `runs.EXTRA_FILES[extra]`, so an extra without a reader would fail only when a run is configured."""
    from clearsight.objectives import objective_options
    from clearsight.runs import EXTRA_FILES

    for extra, option in OBJECTIVES.meta(name).get("extras", {}).items():
        assert callable(EXTRA_FILES.get(extra)), f"{name}: extra {extra!r} has no reader in runs.EXTRA_FILES"
        assert option in objective_options(name), f"{name}: extra {extra!r} names no option {option!r}"


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_equals_standard_at_its_declared_standard_points(name):
    """Metadata `standard_at`: option sets (a zero weight, eps 0) at which the objective is exactly `standard`,
    in loss value and in every parameter gradient."""
    points = OBJECTIVES.meta(name)["standard_at"]
    assert name == "standard" or points, f"{name} declares no standard_at point"
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for options in points:
        results = []
        for objective in (build_objective("standard"), build_objective(name, dataset="mnist-mini", **options)):
            model = tiny_mlp()  # the same weights for both; no dropout, so train mode is deterministic
            out = objective(model, x, y, progress=0.5, epoch=0)
            results.append((out.loss.detach(), torch.autograd.grad(out.loss, list(model.parameters()))))
        (loss_a, grads_a), (loss_b, grads_b) = results
        assert torch.equal(loss_a, loss_b), (name, options)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True)), (name, options)


# ---------------------------------------------------------------- metrics

def metric_options(name: str, x: torch.Tensor, *, attribution: object = "gradient") -> dict:
    """The options a call of metric `name` needs, from its metadata alone: `example` plus what `needs` asks for."""
    meta = METRICS.meta(name)
    options = dict(meta["example"])
    needs = set(meta["needs"])
    if needs & {"attribution", "explainer"}:
        options["attribution"] = attribution
    if "mask" in needs:
        options["mask"] = x > 0.5
    if "reference" in needs:
        options["target_map"] = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    return options


def test_every_metric_declares_needs_from_the_vocabulary_and_can_be_called_from_its_metadata():
    from clearsight.metrics import NEEDS

    for name in METRICS.names():
        meta = METRICS.meta(name)
        assert set(meta["needs"]) <= set(NEEDS), name
        given = set(metric_options(name, torch.rand(2, 1, 4, 4))) | set(meta.get("context", ()))
        required = [p.name for p in inspect.signature(METRICS.get(name)).parameters.values()
                    if p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty]
        assert set(required) <= given, f"{name}: declare its required options in metadata 'example'"
        for extra in meta.get("extras", ()):  # the driver passes extras under their own names
            assert extra in inspect.signature(METRICS.get(name)).parameters, (name, extra)


def parameters(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_is_per_sample_and_leaves_the_model_alone(name):
    model = tiny_mlp().eval()
    model.features.train()  # mixed per-submodule flags, which a metric must leave as it found them
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    before, weights, x_copy = model_state(model), parameters(model), x.clone()
    options = metric_options(name, x)
    torch.manual_seed(1)  # the same random draws for both calls of a randomized metric
    values = METRICS.get(name)(model, x, y, **options)
    assert values.shape == (5,) and values.is_floating_point() and bool(torch.isfinite(values).all())
    assert model_state(model) == before and torch.equal(x, x_copy)
    assert all(torch.equal(a, b) for a, b in zip(parameters(model), weights, strict=True))
    if "pooled" not in METRICS.meta(name):  # a pool statistic depends on the whole pool, by definition
        # per sample: the first samples' values do not depend on the samples after them
        head_options = {k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in options.items()}
        torch.manual_seed(1)
        head = METRICS.get(name)(model, x[:2], y[:2], **head_options)
        torch.testing.assert_close(head, values[:2])
    if not METRICS.meta(name)["needs_grad"]:  # a metric that does not differentiate also runs in inference mode
        with torch.inference_mode():
            torch.manual_seed(1)
            torch.testing.assert_close(METRICS.get(name)(model, x, y, **options), values)


@pytest.mark.parametrize("name", [n for n in METRICS.names()
                                  if {"attribution", "explainer"} & set(METRICS.meta(n)["needs"])])
def test_every_metric_takes_the_attribution_as_a_name_or_a_callable_and_a_map_where_it_only_reads_it(name):
    from functools import partial

    from clearsight import attributions
    from clearsight.errors import ConfigError

    model = tiny_mlp().eval()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    calls = {"name": "gradient", "callable": partial(attributions.gradient),
             "tensor": attributions.gradient(model, x, y)}
    results = {}
    for form, attribution in calls.items():
        options = metric_options(name, x, attribution=attribution)
        torch.manual_seed(1)
        if form == "tensor" and "explainer" in METRICS.meta(name)["needs"]:
            with pytest.raises(ConfigError, match="callable"):
                METRICS.get(name)(model, x, y, **options)
            continue
        results[form] = METRICS.get(name)(model, x, y, **options)
    for form, values in results.items():
        torch.testing.assert_close(values, results["name"], msg=f"{name} with the attribution as a {form}")
