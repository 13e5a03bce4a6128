"""Certificates from interval bounds: explanation change (delta), top-k sensitive features, robust accuracy.

Wicker et al., arXiv 2212.08507 (explanation certificates); Gowal et al., arXiv 1810.12715 (certified accuracy).
Every certificate is sound: a sample it certifies satisfies the property for every input in the box (and every
parameter in the gamma box); it may fail to certify samples that do satisfy it (the bounds are not tight).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset

from clearsight.bounds.forward import margin_bounds
from clearsight.bounds.gradient import gradient_bounds
from clearsight.bounds.interval import input_box
from clearsight.checks import check_inputs, check_radius
from clearsight.data.base import as_array_dataset
from clearsight.errors import ConfigError
from clearsight.metrics.registry import METRICS, ROW_FIELDS, row_key
from clearsight.modes import eval_mode, resolve_device
from clearsight.progress import reporter


def delta_bound(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, eps: float, gamma: float = 0.0,
                p: float = 2.0, of: str = "logit", relative: bool = False) -> torch.Tensor:
    """Bound on how far the explanation (input gradient) can move inside the box: the delta-certificate.

    For x' in the box both g(x) and g(x') lie in [lower, upper], so |g(x') - g(x)| <= upper - lower
    elementwise and ||g(x') - g(x)||_p <= ||upper - lower||_p (arXiv 2212.08507). With `relative`, the bound is
    divided by ||g(x)||_p (the exact gradient at x), which makes it comparable across models whose gradients
    differ in scale (a model with tiny gradients would otherwise certify trivially).

    Args:
        x: inputs [B, ...] in [0, 1]; target: class indices [B].
        eps, gamma, of: as in `gradient_bounds`.
        p: the norm (2, 1, float("inf"), ...).

    Returns:
        [B] per-sample bound (inf when `relative` and g(x) = 0 but the bound is positive). Sound: for every x' in
        the box and every Linear/Conv2d parameter in the gamma box, ||g(x') - g(x)||_p <= bound (times
        ||g(x)||_p if relative).
    """
    check_norm(p)
    with parametrize.cached():  # the relative bound's two gradient bounds see one value of each parametrization
        return _delta(model, x, target, *gradient_bounds(model, x, target, eps=eps, gamma=gamma, of=of), p=p,
                      of=of, relative=relative)


def _delta(model: nn.Module, x: torch.Tensor, target: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, *,
           p: float, of: str, relative: bool) -> torch.Tensor:
    """The delta bound [B] from gradient bounds already computed for x's box."""
    bound = torch.linalg.vector_norm((upper - lower).flatten(1), ord=p, dim=1)
    if not relative:
        return bound
    clean, _ = gradient_bounds(model, x, target, eps=0.0, of=of)  # exact gradient (tested against autograd)
    scale = torch.linalg.vector_norm(clean.flatten(1), ord=p, dim=1)
    return torch.where(bound == 0, torch.zeros_like(bound), bound / scale)


def check_norm(p: float) -> None:
    if not (isinstance(p, int | float) and p > 0):  # also refuses NaN
        raise ConfigError(f"the norm p of the delta bound must be > 0 (e.g. 1, 2 or inf), got {p!r}")


def delta_certified(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, delta: float, eps: float,
                    gamma: float = 0.0, p: float = 2.0, of: str = "logit", relative: bool = False) -> torch.Tensor:
    """bool [B]: the explanation provably moves by at most `delta` (see `delta_bound`) inside the box."""
    return delta_bound(model, x, target, eps=eps, gamma=gamma, p=p, of=of, relative=relative) <= delta


def check_topk(n: int, sensitive: Sequence[int], k: int) -> list[int]:
    """The sorted sensitive indices, or a clear error when they or k do not fit n features."""
    idx = sorted({int(i) for i in sensitive})
    if not idx or idx[0] < 0 or idx[-1] >= n:
        raise ConfigError(f"sensitive feature indices must be a non-empty subset of 0..{n - 1}, got {list(sensitive)}")
    if not 1 <= int(k) <= n - len(idx):
        raise ConfigError(f"topk must be in 1..{n - len(idx)} (the number of non-sensitive features), got {k}")
    return idx


def topk_rule(lower: torch.Tensor, upper: torch.Tensor, sensitive: Sequence[int], k: int) -> torch.Tensor:
    """bool [B]: no sensitive feature can be among the k largest attribution magnitudes, given gradient bounds.

    Derivation. The ranking is by magnitude |g_i|. With g_i in [l_i, u_i], |g_i| lies in
    [mag_lo_i, mag_hi_i]: mag_hi = max(|l|, |u|), and mag_lo = min(|l|, |u|) if the interval excludes 0, else 0.
    Let s* be the sensitive feature of largest |g| for some g in the box. No sensitive feature is in the top-k
    iff s* is not, i.e. at least k features rank strictly above s*; none of them can be sensitive (s* is the
    largest of those), so they are k non-sensitive features with |g_j| > |g_s*|. This holds for every g in the
    box if the k-th largest mag_lo among non-sensitive features exceeds every sensitive mag_hi: then those k
    features satisfy |g_j| >= mag_lo_j > mag_hi_s >= |g_s| for every s. (Ties count against the certificate.)
    This is the authors' test (sensitive features at their upper, others at their lower bounds) made explicit
    for magnitudes.

    Args:
        lower, upper: gradient bounds [B, ...] (flattened to features).
        sensitive: indices of the sensitive features in the flattened input.
        k: size of the top set, 1 <= k <= number of non-sensitive features.
    """
    lower, upper = lower.flatten(1), upper.flatten(1)
    n = lower.shape[1]
    idx = check_topk(n, sensitive, k)
    mag_hi = torch.maximum(lower.abs(), upper.abs())
    mag_lo = torch.where((lower > 0) | (upper < 0), torch.minimum(lower.abs(), upper.abs()), torch.zeros_like(lower))
    is_sensitive = torch.zeros(n, dtype=torch.bool, device=lower.device)
    is_sensitive[idx] = True
    kth_other = mag_lo[:, ~is_sensitive].topk(int(k), dim=1).values[:, -1]
    return mag_hi[:, is_sensitive].amax(dim=1) < kth_other


def topk_certified(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, sensitive: Sequence[int], k: int,
                   eps: float, gamma: float = 0.0, of: str = "logit") -> torch.Tensor:
    """bool [B]: for every x' in the box, no sensitive feature is among the top-k of |g(x')| (see `topk_rule`)."""
    return topk_rule(*gradient_bounds(model, x, target, eps=eps, gamma=gamma, of=of), sensitive, k)


def certified_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, gamma: float = 0.0
                     ) -> torch.Tensor:
    """bool [B]: the prediction is provably y for every x' in the box: the IBP lower bound of z_y - z_j > 0 for all
    j != y (margins bounded through the last layer, see `margin_bounds`). Its mean is the certified accuracy."""
    check_inputs(x)
    check_radius(eps, "eps")
    margins = margin_bounds(model, *input_box(x, eps), y, gamma=gamma)
    margins = margins.scatter(1, y[:, None], float("inf"))
    return (margins > 0).all(dim=1)


def certify(model: nn.Module, ds: Dataset, *, eps: float, gamma: float = 0.0, topk: int | None = None,
            sensitive: str | Sequence[str] | None = None, delta: float | None = None, p: float = 2.0,
            of: str = "logit", relative: bool = True, batch_size: int = 256, device: str | torch.device = "auto",
            progress: str = "auto") -> list[dict[str, Any]]:
    """Certified fractions of `model` on `ds` at input radius eps (and relative parameter radius gamma).

    Rows (one dict each, with key, metric, eps, gamma, value, n, higher_is_better, dataset, split):
    - certified_accuracy: fraction whose prediction is certified correct over the box;
    - delta_bound: mean delta-certificate ||upper - lower||_p of the true-class logit gradient (relative to
      ||g(x)||_p by default), lower is better; with `delta`, also certified_delta: the fraction with bound <= delta;
    - with `topk` and `sensitive`: certified_topk, the fraction for which no sensitive feature can enter the top-k
      attribution magnitudes (see `topk_rule`).

    These are the means of the registered metrics of the same names (`clearsight.metrics`). The model runs in
    eval mode (its flags are restored after) and each parametrized weight is evaluated once for the whole call.

    Args:
        sensitive: names of sensitive attributes of a tabular dataset (keys of `ds.sensitive`, e.g. "sex", or
            "sex,race"), or feature names from `ds.feature_names`.
        batch_size: samples per bound computation (memory budget).
        progress: "auto" (a bar on a terminal), "bar", "lines" or "none".
    """
    check_radius(eps, "eps")  # before any work
    check_radius(gamma, "gamma")
    data = as_array_dataset(ds)
    if (topk is None) != (sensitive is None or sensitive == ""):
        raise ConfigError("the top-k certificate needs both topk and sensitive (e.g. --topk 5 --sensitive sex)")
    check_norm(p)
    features = _sensitive_features(data, sensitive) if topk is not None else None
    if features is not None:  # before any bound is computed
        check_topk(data.x[0].numel(), features, int(topk or 0))
    dev = resolve_device(device)
    model.to(dev)
    parts: dict[str, list[torch.Tensor]] = {"certified_accuracy": [], "delta_bound": [], "certified_topk": []}
    starts = range(0, len(data), batch_size)
    bar = reporter(progress).bar(len(starts), f"certify (eps {eps:g})")
    # eval mode: a train-mode parametrization (spectral_norm) would update its state at every read; cached: every
    # batch and certificate bounds the same value of each parametrized weight, i.e. one network
    with torch.no_grad(), eval_mode(model), parametrize.cached():
        for i in starts:
            x, y = data.x[i : i + batch_size].to(dev), data.y[i : i + batch_size].to(dev)
            parts["certified_accuracy"].append(certified_robust(model, x, y, eps=eps, gamma=gamma))
            lower, upper = gradient_bounds(model, x, y, eps=eps, gamma=gamma, of=of)  # shared by both certificates
            parts["delta_bound"].append(_delta(model, x, y, lower, upper, p=p, of=of, relative=relative))
            if features is not None and topk is not None:
                parts["certified_topk"].append(topk_rule(lower, upper, features, topk))
            bar.update(1)
    bar.close()
    common = {"eps": float(eps), "gamma": float(gamma), "n": len(data), "dataset": data.name, "split": data.split}
    bounds = torch.cat(parts["delta_bound"])
    rows = [_row("certified_accuracy", torch.cat(parts["certified_accuracy"]), common),
            _row("delta_bound", bounds, {**common, "p": p, "of": of, "relative": relative})]
    if delta is not None:
        rows.append(_row("certified_delta", bounds <= delta,
                         {**common, "delta": float(delta), "p": p, "of": of, "relative": relative}))
    if features is not None:
        names = sensitive if isinstance(sensitive, str) else ",".join(sensitive or [])
        rows.append(_row("certified_topk", torch.cat(parts["certified_topk"]),
                         {**common, "topk": int(topk or 0), "sensitive": names, "of": of}))
    return rows


def _row(metric: str, values: torch.Tensor, opts: dict[str, Any]) -> dict[str, Any]:
    """A result row of the registered metric `metric` (its direction read from the registry) over `values`."""
    keyed = {k: v for k, v in opts.items() if k not in ROW_FIELDS}
    return {"key": row_key(metric, keyed), "metric": metric, **opts, "value": float(values.float().mean()),
            "higher_is_better": METRICS.meta(metric)["higher_is_better"]}


def _sensitive_features(data: Any, sensitive: str | Sequence[str] | None) -> list[int]:
    """Feature indices of the named sensitive attributes (or feature names) of a tabular dataset."""
    names = [s.strip() for s in (sensitive.split(",") if isinstance(sensitive, str) else sensitive or []) if s.strip()]
    groups, features = getattr(data, "sensitive", {}) or {}, getattr(data, "feature_names", None) or []
    out: list[int] = []
    for name in names:
        if name in groups:
            out += groups[name]
        elif name in features:
            out.append(features.index(name))
        else:
            valid = ", ".join(groups) or "(none: this dataset marks no sensitive attributes)"
            raise ConfigError(f"unknown sensitive attribute {name!r} for {data.name or 'this dataset'}; "
                              f"valid attributes: {valid} (or a feature name)")
    return sorted(set(out))
