"""SmoothGrad and VarGrad: the mean and the variance of any base attribution over noisy copies of the input.

One mechanism (`_noisy`) feeds n copies x + N(0, sigma^2) of every input through the shared chunked loop and
reduces them to the mean (smoothgrad) or the variance (vargrad).

sigma is relative to the input range, as in Smilkov et al.: noise std = sigma * (x_max - x_min). clearsight
inputs live in [0, 1] (DESIGN.md), so the range is the fixed 1 of the input domain, not the min/max of each
image: the noise level then means the same for every image and never depends on the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from clearsight.attributions.chunks import DEFAULT_MAX_BATCH, NoiseStream, reduce_rows
from clearsight.attributions.gradients import gradient
from clearsight.attributions.guard import guarded, positive_int
from clearsight.attributions.registry import ATTRIBUTIONS
from clearsight.errors import ConfigError

INPUT_RANGE = 1.0
"""x_max - x_min of the input domain [0, 1]; sigma is scaled by it."""

Attribution = Callable[..., torch.Tensor]


def _noisy(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, n: int, sigma: float, base: Attribution,
           generator: torch.Generator | None, clip: bool, max_batch: int, create_graph: bool,
           variance: bool) -> torch.Tensor:
    positive_int("n", n, minimum=2 if variance else 1)
    positive_int("max_batch", max_batch)
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma >= 0:
        raise ConfigError(f"sigma must be a number >= 0 (relative to the input range 1), got {sigma!r}")
    if not callable(base):
        raise ConfigError(f"base must be an attribution callable (e.g. clearsight.attributions.gradient), "
                          f"got {base!r}")
    std = float(sigma) * INPUT_RANGE
    with guarded(model, x, target, freeze=not create_graph) as (x, target):
        src = x if create_graph else x.detach()
        noise = NoiseStream(x.shape[1:], dtype=x.dtype, device=x.device, generator=generator)

        def perturb(sample: torch.Tensor, _copy: torch.Tensor) -> torch.Tensor:
            rows = src[sample] + std * noise.take(sample.shape[0])
            return rows.clamp(0.0, 1.0) if clip else rows

        def attribute(rows: torch.Tensor, rows_target: torch.Tensor) -> torch.Tensor:
            return base(model, rows, rows_target, create_graph=create_graph)

        return reduce_rows(attribute, perturb, target, n=n, max_batch=max_batch, variance=variance)


@ATTRIBUTIONS.register("smoothgrad", paper="arXiv 1706.03825", multi_sample=True, output="input",
                       images_only=False, description="mean of a base attribution over n noisy copies")
def smoothgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, n: int = 50, sigma: float = 0.15,
               base: Attribution = gradient, generator: torch.Generator | None = None, clip: bool = False,
               max_batch: int = DEFAULT_MAX_BATCH, create_graph: bool = False) -> torch.Tensor:
    """Mean of `base` over n noisy copies x + N(0, (sigma * range)^2) (Smilkov et al., arXiv 1706.03825).

    Args:
        x: inputs [B, ...] in [0, 1]; never modified.
        target: int64 [B].
        n: noisy copies per input.
        sigma: noise std relative to the input range (1 for inputs in [0, 1]); sigma=0 gives `base` exactly.
        base: any attribution `base(model, x, target, create_graph=...)`, e.g. `gradient` or
            `functools.partial(integrated_gradients, steps=16)`; it is applied to batches of noisy copies.
        generator: seeds the noise (on x's device); None draws from torch's global RNG. The noise of copy k
            of sample i is row i*n + k of a stream drawn in blocks of `chunks.NOISE_BLOCK` rows, so results do
            not depend on `max_batch`, and sample i's result does not depend on the samples after it.
        clip: clamp the noisy copies to [0, 1] (the paper does not; off by default).
        max_batch: rows (noisy copies) per forward+backward pass; bounds peak memory whatever n is.
        create_graph: keep every chunk's graph so a loss of the result reaches the parameters (memory then
            grows with n; the chunking still bounds the size of each pass).

    Returns:
        Like `base`'s output for x: [B, ...] for gradient-type bases.
    """
    return _noisy(model, x, target, n=n, sigma=sigma, base=base, generator=generator, clip=clip,
                  max_batch=max_batch, create_graph=create_graph, variance=False)


@ATTRIBUTIONS.register("vargrad", paper="arXiv 1810.03307", multi_sample=True, output="input", images_only=False,
                       description="variance of a base attribution over n noisy copies")
def vargrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, n: int = 50, sigma: float = 0.15,
            base: Attribution = gradient, generator: torch.Generator | None = None, clip: bool = False,
            max_batch: int = DEFAULT_MAX_BATCH, create_graph: bool = False) -> torch.Tensor:
    """Variance of `base` over n noisy copies (Adebayo et al., arXiv 1810.03307), population form (1/n).

    The same noisy copies, noise stream and options as `smoothgrad` (same generator seed -> same copies);
    only the reduction differs. n >= 2. Returns [B, ...] like `base`'s output; 0 for a linear model.
    """
    return _noisy(model, x, target, n=n, sigma=sigma, base=base, generator=generator, clip=clip,
                  max_batch=max_batch, create_graph=create_graph, variance=True)
