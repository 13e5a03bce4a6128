"""Faithfulness by perturbation: faithfulness correlation (Bhatt et al., arXiv 2005.00631) and infidelity
(Yeh et al., arXiv 1901.09392).

Both compare what the map predicts a perturbation does (the attribution mass it removes) with what the model
does (the change of the target's output), over many perturbations of each sample. All perturbations of a chunk
of samples go through one batched forward under torch.inference_mode (`map_rows`, `max_batch` rows per pass);
random perturbations are drawn per sample (`clearsight.metrics.perturb`), so values do not depend on batching.
The floor is B * (perturbations + 1) forwards.
"""

from __future__ import annotations

import torch
from torch import nn

from clearsight.attributions.chunks import DEFAULT_MAX_BATCH, map_rows
from clearsight.attributions.guard import positive_int
from clearsight.checks import check_inputs, check_labels, check_radius
from clearsight.errors import ConfigError, DataError
from clearsight.metrics.curves import Fill, check_output, fill, scores
from clearsight.metrics.maps import Attribution, explain, flat, pearson
from clearsight.metrics.perturb import SampleNoise
from clearsight.metrics.registry import METRICS

PERTURBATIONS = ("gaussian", "patches")


def _start(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attribution: Attribution | None, metric: str,
           output: str, max_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    check_output(output)
    positive_int("max_batch", max_batch)
    a = explain(attribution, model, x, y, metric=metric)
    with torch.inference_mode():
        return a, scores(model(x), y, output)


@METRICS.register("faithfulness_correlation", higher_is_better=True, needs_grad=False, needs=("attribution",),
                  paper="arXiv 2005.00631", example={"runs": 8, "subset": 4},
                  description="correlation of the attribution removed with the output drop, over random subsets")
def faithfulness_correlation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                             attribution: Attribution | None = None, runs: int = 100, subset: int = 224,
                             baseline: Fill = 0.0, output: str = "logit", subsets: torch.Tensor | None = None,
                             generator: torch.Generator | None = None,
                             max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Faithfulness correlation (Bhatt et al., arXiv 2005.00631) per sample [B], in [-1, 1].

    For `runs` random subsets S of `subset` features: the Pearson correlation, over the runs, of sum_{i in S} a_i
    with f(x) - f(x with S set to `baseline`). Conventions as Quantus 0.6's defaults: signed attributions, the
    target's logit (`output`), baseline 0, 100 runs of 224 features. NaN where either side is constant.

    Args:
        subsets: explicit feature indices int64 [B, runs, subset] instead of random ones (to reproduce another
            tool's draws); `runs` and `subset` are then read from its shape.
        generator: seeds the subsets (CPU generator for CPU inputs); None draws from torch's global RNG.
        max_batch: perturbed inputs per forward pass.
    """
    a, f0 = _start(model, x, y, attribution, "faithfulness_correlation", output, max_batch)
    a_flat = flat(a)
    n_features = a_flat.shape[1]
    if subsets is not None:
        if subsets.dim() != 3 or subsets.shape[0] != x.shape[0] or subsets.dtype != torch.int64:
            raise DataError(f"subsets must be int64 feature indices [B, runs, subset], got "
                            f"{getattr(subsets, 'shape', subsets)}")
        runs, subset = subsets.shape[1], subsets.shape[2]
        subsets = subsets.to(x.device)
    positive_int("runs", runs, minimum=2)
    if not isinstance(subset, int) or not 1 <= subset < n_features:
        raise ConfigError(f"subset must be an integer in 1..{n_features - 1} (the map has {n_features} features), "
                          f"got {subset!r}")
    base = fill(x, baseline, name="baseline")
    keys = SampleNoise(runs, (n_features,), kind="uniform", generator=generator, dtype=torch.float32,
                       device=x.device)

    def evaluate(sample: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
        # a uniformly random k-subset: the k smallest of F uniform keys
        chosen = subsets[sample, run] if subsets is not None else keys.rows(sample, run).topk(
            subset, dim=1, largest=False).indices
        mask = torch.zeros_like(a_flat[sample], dtype=torch.bool).scatter_(1, chosen, True)
        rows = torch.where(mask.view(-1, *a.shape[1:]), base[sample], x[sample])
        drop = f0[sample] - scores(model(rows), y[sample], output)
        return torch.stack([(a_flat[sample] * mask).sum(1), drop], dim=1)

    with torch.inference_mode():
        pairs = map_rows(evaluate, batch=x.shape[0], n=runs, max_batch=max_batch, device=x.device)
    return pearson(pairs[..., 0], pairs[..., 1])


def patch_ids(shape: torch.Size, patch: int, device: torch.device) -> torch.Tensor:
    """int64 [H, W]: the row-major index of the patch x patch block each pixel falls in (edge blocks smaller)."""
    h, w = shape[-2:]
    rows = torch.arange(h, device=device) // patch
    cols = torch.arange(w, device=device) // patch
    return rows[:, None] * (-(-w // patch)) + cols[None, :]


@METRICS.register("infidelity", higher_is_better=False, needs_grad=False, needs=("attribution",),
                  paper="arXiv 1901.09392", example={"n": 4},
                  description="mean squared gap between attribution-predicted and actual output changes under noise")
def infidelity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
               n: int = 10, sigma: float = 0.1, perturbation: str = "gaussian", patch: int = 4,
               baseline: Fill = 0.0, normalize: bool = False, output: str = "logit",
               generator: torch.Generator | None = None, max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Infidelity (Yeh et al., arXiv 1901.09392) per sample [B]: E_I[(I . a - (f(x) - f(x - I)))^2], lower = better.

    Args:
        n: Gaussian perturbations per sample.
        sigma: their standard deviation, I ~ N(0, sigma^2) per input entry [recon: Yeh et al. tune it per
            dataset]; x - I is not clipped (the formula's perturbation, whatever the input range).
        perturbation: "gaussian" (the paper's I) or "patches" (Quantus 0.6's default: square patches of `patch`
            pixels set to `baseline` cumulatively, in row-major order, so perturbation k removes the first k
            patches and I_k = x - x_k; deterministic, images only, one perturbation per patch).
        normalize: the scale-invariant form of Yeh et al.'s code: a is first scaled per sample by the factor
            beta = sum(I.a * delta) / sum((I.a)^2) that minimizes the loss.
        output: the target's "logit" (Yeh et al., Quantus) or "probability".
        generator: seeds the Gaussian noise; None draws from torch's global RNG.
    """
    if perturbation not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {perturbation!r}; valid perturbations: {', '.join(PERTURBATIONS)}")
    a, f0 = _start(model, x, y, attribution, "infidelity", output, max_batch)
    a_x = a.expand_as(x)
    if perturbation == "gaussian":
        positive_int("n", n)
        std = float(check_radius(sigma, "sigma"))
        noise = SampleNoise(n, tuple(x.shape[1:]), kind="normal", generator=generator, dtype=x.dtype,
                            device=x.device)

        def perturb(sample: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
            return std * noise.rows(sample, copy)
    else:
        if x.dim() != 4:
            raise DataError(f"perturbation='patches' needs images [B, C, H, W], got {tuple(x.shape)}")
        ids = patch_ids(x.shape, positive_int("patch", patch), x.device)
        n = int(ids.max()) + 1
        base = fill(x, baseline, name="baseline")

        def perturb(sample: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
            removed = (ids[None] <= copy[:, None, None])[:, None]  # [R, 1, H, W]: patches 0..k
            return torch.where(removed, x[sample] - base[sample], torch.zeros_like(x[sample]))

    def evaluate(sample: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        i = perturb(sample, copy)
        predicted = (i * a_x[sample]).flatten(1).sum(1)
        actual = f0[sample] - scores(model(x[sample] - i), y[sample], output)
        return torch.stack([predicted, actual], dim=1)

    with torch.inference_mode():
        pairs = map_rows(evaluate, batch=x.shape[0], n=n, max_batch=max_batch, device=x.device)
    predicted, actual = pairs[..., 0], pairs[..., 1]
    if normalize:
        den = (predicted**2).sum(1, keepdim=True)
        predicted = predicted * ((predicted * actual).sum(1, keepdim=True) / den.where(den > 0, torch.ones_like(den)))
    return ((predicted - actual) ** 2).mean(1)
