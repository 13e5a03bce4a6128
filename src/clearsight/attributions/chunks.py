"""The one chunked loop behind every multi-sample attribution (smoothgrad, vargrad, integrated_gradients).

A multi-sample attribution of B inputs with n copies each (noise draws, path steps) is a reduction over B * n
rows. Rows are laid out sample-major (row r = sample r // n, copy r % n) and processed in contiguous chunks of
at most `max_batch` rows: one batched forward+backward per chunk, so peak memory is bounded by `max_batch`
whatever n or B is, and chunks near the best batch size run at the speed floor. Chunks are balanced
(ceil(B*n / max_batch) chunks of equal size) so no tiny tail chunk is run at poor throughput.

Per-sample results are reduced on the fly into [B, ...] buffers: a weighted sum (IG, mean), or the mean and
variance (vargrad) with Chan et al.'s pairwise update of each chunk's statistics, so a sample whose copies
straddle chunks is merged exactly and nothing of size B * n is ever kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clearsight.errors import ConfigError

# Rows of noise drawn per call of torch.randn. Fixed, so the noise of row r is the same whatever max_batch is
# (one randn call of 2k rows is not, in general, two calls of k rows), and sample i's noise depends on its
# position i only, not on the other samples in the batch.
NOISE_BLOCK = 32

DEFAULT_MAX_BATCH = 256
"""Rows per forward+backward pass. 128-512 images of 28x28 run at the floor on CPU (see PERFORMANCE.md); larger
inputs or models want less (resnet18 at 32x32: ~64)."""


class NoiseStream:
    """Standard normal noise rows [*shape], handed out in order, drawn in fixed blocks of NOISE_BLOCK rows.

    Row r of the stream is row r % NOISE_BLOCK of the (r // NOISE_BLOCK)-th call
    `torch.randn((NOISE_BLOCK, *shape), generator=generator, dtype=dtype, device=device)`.
    """

    def __init__(self, shape: torch.Size, *, dtype: torch.dtype, device: torch.device,
                 generator: torch.Generator | None) -> None:
        if generator is not None and torch.device(generator.device).type != torch.device(device).type:
            raise ConfigError(f"generator lives on {generator.device} but the inputs on {device}; "
                              f"make it with torch.Generator(device={str(device)!r})")
        self.shape, self.dtype, self.device, self.generator = tuple(shape), dtype, device, generator
        self._left = torch.empty((0, *self.shape), dtype=dtype, device=device)

    def take(self, rows: int) -> torch.Tensor:
        """The next `rows` rows of noise, [rows, *shape]."""
        parts, have = [self._left], self._left.shape[0]
        while have < rows:
            parts.append(torch.randn((NOISE_BLOCK, *self.shape), generator=self.generator, dtype=self.dtype,
                                     device=self.device))
            have += NOISE_BLOCK
        block = torch.cat(parts) if len(parts) > 1 else parts[0]
        self._left = block[rows:]
        return block[:rows]


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def reduce_rows(attribute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                target: torch.Tensor, *, n: int, max_batch: int, weights: torch.Tensor | None = None,
                variance: bool = False) -> torch.Tensor:
    """Reduce `attribute` over n perturbed copies of each of B = len(target) samples, in chunks.

    Args:
        attribute: (rows [R, ...], target [R]) -> attributions [R, ...out]; one batched pass per chunk.
        perturb: (sample [R], copy [R]) int64 indices -> the rows [R, ...] to attribute; called once per chunk,
            in row order (so a noise stream it reads from is consumed in order).
        target: [B] class of each sample; row r gets target[r // n].
        weights: [n] weight of each copy -> returns sum_k weights[k] * a[b, k] (IG's quadrature).
        variance: return the population variance over copies (1/n) instead of the mean.

    Returns:
        [B, ...out]: the mean over copies, the weighted sum, or the variance.
    """
    batch = target.shape[0]
    total = batch * n
    idx = torch.arange(total, device=target.device)
    if total == 0:  # still call once so the output has the attribution's shape
        return attribute(perturb(idx, idx), target[:0])
    size = -(-total // -(-total // max_batch))  # equal chunks: no tiny tail chunk at poor throughput
    count = sums = m2 = None  # running per-sample statistics, [B] and [B, ...out]
    for r0 in range(0, total, size):
        rows = idx[r0 : r0 + size]
        sample, copy = rows.div(n, rounding_mode="floor"), rows.remainder(n)
        a = attribute(perturb(sample, copy), target[sample])
        if sums is None:
            count = a.new_zeros(batch)
            sums, m2 = a.new_zeros((batch, *a.shape[1:])), a.new_zeros((batch, *a.shape[1:]))
        assert count is not None and m2 is not None
        if not variance:
            sums = sums.index_add(0, sample, a if weights is None else a * _expand(weights[copy], a))
            continue
        # this chunk's count, mean and squared deviations per sample, merged into the running ones
        # (Chan et al. 1979), exact however a sample's copies are split across chunks
        n_b = a.new_zeros(batch).index_add(0, sample, torch.ones_like(sample, dtype=a.dtype))
        mean_b = a.new_zeros(sums.shape).index_add(0, sample, a) / _expand(n_b.clamp_min(1), a)
        m2_b = a.new_zeros(sums.shape).index_add(0, sample, (a - mean_b[sample]) ** 2)
        n_ab = count + n_b
        delta = mean_b - sums  # `sums` holds the running mean in variance mode
        share = _expand(n_b / n_ab.clamp_min(1), a)
        sums = sums + delta * share
        m2 = m2 + m2_b + delta * delta * _expand(count, a) * share
        count = n_ab
    assert sums is not None and m2 is not None
    if variance:
        return m2 / n
    return sums if weights is not None else sums / n
