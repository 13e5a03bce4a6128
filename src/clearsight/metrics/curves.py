"""Perturbation curves: deletion and insertion (Petsiuk et al., RISE, arXiv 1806.07421) and pixel flipping
(MoRF and LeRF, Bach et al. 2015; the area between them, Samek et al., arXiv 1509.06321).

Conventions (each an option):
- Features are the map's entries (a pixel of a one-channel map covers all channels of x). They are ordered by
  the signed attribution, most relevant first (MoRF) or least relevant first (LeRF); ties keep feature order
  (a stable sort). Signed, as RISE and Quantus do: a negative attribution is evidence against the class.
- Step k of `steps` (k = 0..steps) has the first (k * F) // steps features of the order perturbed: deleted
  (set to `baseline`: 0, a number, "mean" of the sample or "blur") or inserted (copied from x into `start`:
  "blur", a Gaussian blur as in RISE's code, kernel 11 and sigma 5 with zero padding, or a number).
- The curve is the target class's probability (`output="probability"`, RISE and Quantus) or logit, at every
  step, including the unperturbed start; the AUC is its trapezoidal area over the fraction perturbed in [0, 1].

All steps of a chunk of samples go through one batched forward pass under torch.inference_mode
(`clearsight.attributions.chunks.map_rows`, `max_batch` rows per pass); the floor is B * (steps + 1) forwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.attributions.chunks import DEFAULT_MAX_BATCH, map_rows
from clearsight.attributions.guard import positive_int
from clearsight.checks import check_inputs, check_labels
from clearsight.errors import ConfigError, DataError
from clearsight.metrics.maps import Attribution, explain, flat
from clearsight.metrics.registry import METRICS
from clearsight.metrics.shared import shared

OUTPUTS = ("probability", "logit")
ORDERS = ("morf", "lerf")
Fill = float | str


def scores(logits: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """The target's probability or logit per row [R]."""
    if output == "probability":
        logits = logits.softmax(1)
    return logits.gather(1, target[:, None])[:, 0]


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ConfigError(f"unknown output {output!r}; valid outputs: {', '.join(OUTPUTS)}")


def blur(x: torch.Tensor, *, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Gaussian blur of images [B, C, H, W] per channel, zero padding (RISE's insertion start)."""
    if x.dim() != 4:
        raise DataError(f"blur needs images [B, C, H, W], got shape {tuple(x.shape)}; use a number as the fill for "
                        "other inputs (e.g. start=0.0)")
    r = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :]) / g.sum() ** 2
    c = x.shape[1]
    return F.conv2d(x, kernel.expand(c, 1, size, size), padding=size // 2, groups=c)


def fill(x: torch.Tensor, value: Fill, *, name: str) -> torch.Tensor:
    """The replacement image of each sample like x: a number, "mean" (the sample's mean) or "blur"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.full_like(x, float(value))
    if value == "mean":
        return x.mean(dim=tuple(range(1, x.dim())), keepdim=True).expand_as(x)
    if value == "blur":
        return blur(x)
    raise ConfigError(f"{name} must be a number, 'mean' or 'blur', got {value!r}")


def ranks(a: torch.Tensor, order: str) -> torch.Tensor:
    """int64 [B, F]: the position of each feature in the perturbation order (0 = perturbed first)."""
    if order not in ORDERS:
        raise ConfigError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")
    values = flat(a)
    idx = (values if order == "lerf" else -values).argsort(dim=1, stable=True)
    positions = torch.arange(values.shape[1], device=a.device).expand_as(idx)
    return torch.empty_like(idx).scatter_(1, idx, positions)


def curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, *, steps: int, order: str,
          source: torch.Tensor, replacement: torch.Tensor, output: str, max_batch: int) -> torch.Tensor:
    """[B, steps + 1]: the score after replacing the first (k * F) // steps features of the order in `source` by
    `replacement` (both like x), k = 0..steps."""
    positive_int("steps", steps)
    positive_int("max_batch", max_batch)
    check_output(output)
    rank = ranks(a, order)
    n_features = rank.shape[1]
    counts = torch.arange(steps + 1, device=x.device) * n_features // steps
    feature_shape = a.shape[1:]

    def evaluate(sample: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        swapped = (rank[sample] < counts[step][:, None]).view(-1, *feature_shape)
        rows = torch.where(swapped, replacement[sample], source[sample])
        return scores(model(rows), y[sample], output)

    with torch.inference_mode():
        return map_rows(evaluate, batch=x.shape[0], n=steps + 1, max_batch=max_batch, device=x.device)


def auc(c: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area [B] of curves [B, T] over [0, 1] (T - 1 equal intervals)."""
    return (c[:, 1:] + c[:, :-1]).sum(1) / (2 * (c.shape[1] - 1))


def _prepare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attribution: Attribution | None,
             metric: str) -> torch.Tensor:
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    return explain(attribution, model, x, y, metric=metric)


def removal_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, *, steps: int, order: str,
                  baseline: Fill, output: str, max_batch: int) -> torch.Tensor:
    """The curve of features of x set to `baseline` in `order`: deletion's curve is pixel flipping's MoRF curve,
    so within an evaluation batch it is computed once for both (`clearsight.metrics.shared`)."""
    def compute() -> torch.Tensor:
        return curve(model, x, y, a, steps=steps, order=order, source=x, replacement=fill(x, baseline, name="baseline"),
                     output=output, max_batch=max_batch)

    return shared(("removal_curve", steps, order, baseline, output), compute, model, x, y, a)


def deletion_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                    steps: int = 28, baseline: Fill = 0.0, output: str = "probability",
                    max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, torch.Tensor]:
    """{"deletion": [B, steps + 1]}: the score as the most relevant features are set to `baseline`."""
    a = _prepare(model, x, y, attribution, "deletion_auc")
    return {"deletion": removal_curve(model, x, y, a, steps=steps, order="morf", baseline=baseline, output=output,
                                      max_batch=max_batch)}


def insertion_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                     steps: int = 28, start: Fill = "blur", output: str = "probability",
                     max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, torch.Tensor]:
    """{"insertion": [B, steps + 1]}: the score as the most relevant features of x are put into `start`."""
    a = _prepare(model, x, y, attribution, "insertion_auc")
    return {"insertion": curve(model, x, y, a, steps=steps, order="morf", source=fill(x, start, name="start"),
                               replacement=x, output=output, max_batch=max_batch)}


def flipping_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                    steps: int = 28, baseline: Fill = 0.0, output: str = "probability",
                    max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, torch.Tensor]:
    """{"morf": [B, steps + 1], "lerf": [B, steps + 1]}: features flipped to `baseline` in both orders."""
    a = _prepare(model, x, y, attribution, "pixel_flipping")
    return {order: removal_curve(model, x, y, a, steps=steps, order=order, baseline=baseline, output=output,
                                 max_batch=max_batch) for order in ORDERS}


def _deletion_value(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return auc(c["deletion"])


def _insertion_value(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return auc(c["insertion"])


def _flipping_value(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return auc(c["lerf"]) - auc(c["morf"])


@METRICS.register("deletion_auc", higher_is_better=False, needs_grad=False, needs=("attribution",),
                  paper="arXiv 1806.07421", curves=deletion_curves, from_curves=_deletion_value, example={},
                  description="area under the class-probability curve as the most relevant features are deleted")
def deletion_auc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                 steps: int = 28, baseline: Fill = 0.0, output: str = "probability",
                 max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Deletion AUC (RISE, arXiv 1806.07421) per sample [B]; lower = the map found what the model needs.

    Args:
        x: inputs [B, ...] in [0, 1]; y: labels int64 [B] (the class scored and explained).
        attribution: the map of x, a callable or a registered name (see `clearsight.metrics.maps`).
        steps: equal chunks of features deleted; the curve has steps + 1 points.
        baseline: what a deleted feature becomes: a number (0, RISE), "mean" or "blur".
        output: "probability" (softmax of the class, RISE) or "logit".
        max_batch: perturbed inputs per forward pass.
    """
    return _deletion_value(deletion_curves(model, x, y, attribution=attribution, steps=steps, baseline=baseline,
                                           output=output, max_batch=max_batch))


@METRICS.register("insertion_auc", higher_is_better=True, needs_grad=False, needs=("attribution",),
                  paper="arXiv 1806.07421", curves=insertion_curves, from_curves=_insertion_value,
                  example={"start": 0.0},
                  description="area under the class-probability curve as the most relevant features are inserted")
def insertion_auc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                  steps: int = 28, start: Fill = "blur", output: str = "probability",
                  max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Insertion AUC (RISE, arXiv 1806.07421) per sample [B]; higher = the map found what the model needs.

    Args:
        start: the image features are inserted into: "blur" (RISE; images only), a number, or "mean".
        steps, output, max_batch: as in `deletion_auc`.
    """
    return _insertion_value(insertion_curves(model, x, y, attribution=attribution, steps=steps, start=start,
                                             output=output, max_batch=max_batch))


@METRICS.register("pixel_flipping", higher_is_better=True, needs_grad=False, needs=("attribution",),
                  paper="arXiv 1509.06321", curves=flipping_curves, from_curves=_flipping_value, example={},
                  description="LeRF minus MoRF area of the pixel-flipping curves (area between perturbation curves)")
def pixel_flipping(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                   steps: int = 28, baseline: Fill = 0.0, output: str = "probability",
                   max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Pixel flipping (Bach et al. 2015) in both orders; per sample [B] the AUC of the LeRF curve minus that of the
    MoRF curve (Samek et al., arXiv 1509.06321): higher = relevant features matter and irrelevant ones do not.

    Both curves are kept (metadata `curves`: "morf" and "lerf", [B, steps + 1] each). The MoRF curve alone is
    `deletion_auc`'s; cost 2 * B * (steps + 1) forwards.
    """
    return _flipping_value(flipping_curves(model, x, y, attribution=attribution, steps=steps, baseline=baseline,
                                           output=output, max_batch=max_batch))
