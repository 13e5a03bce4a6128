"""The one chunked loop behind every multi-sample attribution (smoothgrad, vargrad, integrated_gradients) and
every multi-sample metric (perturbation curves, sensitivity, infidelity, faithfulness correlation).

A multi-sample attribution of B inputs with n copies each (noise draws, path steps) is a reduction over B * n
rows. Rows are laid out sample-major (row r = sample r // n, copy r % n) and processed in contiguous chunks of
at most `max_batch` rows: one batched forward+backward per chunk, so peak memory is bounded by `max_batch`
whatever n or B is, and chunks near the best batch size run at the speed floor. Chunks are balanced
(ceil(B*n / max_batch) chunks of equal size) so no tiny tail chunk is run at poor throughput.

Each chunk is reduced at once to per-sample statistics of the few samples it touches (a contiguous range, since
rows are sample-major): the weighted sum (IG, mean), or the count, mean and sum of squared deviations
(vargrad). Nothing of size B * n is kept, and no chunk touches the [B, ...] totals, so the bookkeeping costs
O(rows) per chunk. The chunks' statistics are combined at the end with one index_add: sums add; variances combine
by the parallel formula of Chan et al. (1979), M2 = sum_c [M2_c + n_c (mean_c - mean)^2], exact however a
sample's copies are split across chunks.
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


def chunk_bounds(total: int, max_batch: int) -> list[tuple[int, int]]:
    """[start, end) of ceil(total / max_batch) contiguous chunks of equal size (the last may be smaller by less
    than the number of chunks): no tiny tail chunk run at poor throughput."""
    if total <= 0:
        return []
    size = -(-total // -(-total // max_batch))
    return [(r0, min(r0 + size, total)) for r0 in range(0, total, size)]


def map_rows(evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, batch: int, n: int,
             max_batch: int, device: torch.device | str) -> torch.Tensor:
    """Evaluate n copies of each of `batch` samples, chunk by chunk, keeping every row's result.

    The rows are laid out sample-major as in `reduce_rows` and cut by the same `chunk_bounds`; `evaluate` gets
    the (sample [R], copy [R]) indices of one chunk and returns its results [R, ...] (one batched pass). Metrics
    use it for per-copy values (curve points, per-perturbation scores) that are not reduced to a mean.

    Returns:
        [batch, n, ...]: row (b, k) is the result of sample b's copy k.
    """
    total = batch * n
    idx = torch.arange(total, device=device)
    parts = [evaluate(rows.div(n, rounding_mode="floor"), rows.remainder(n))
             for rows in (idx[r0:r1] for r0, r1 in chunk_bounds(total, max_batch))]
    if not parts:  # no samples: still call once so the output has the right trailing shape
        parts = [evaluate(idx, idx)]
    out = torch.cat(parts)
    return out.view(batch, n, *out.shape[1:])


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
    owners, counts, sums, m2s = [], [], [], []  # per chunk: its samples' ids [S], copies [S], sums, M2 [S, ...]
    for r0, r1 in chunk_bounds(total, max_batch):
        rows = idx[r0:r1]
        sample, copy = rows.div(n, rounding_mode="floor"), rows.remainder(n)
        a = attribute(perturb(sample, copy), target[sample])
        if weights is not None:
            a = a * _expand(weights[copy], a)
        first, last = r0 // n, (r0 + rows.shape[0] - 1) // n  # the samples this chunk touches, in Python ints
        local = sample - first
        zeros = a.new_zeros((last - first + 1, *a.shape[1:]))
        chunk_sum = zeros.index_add(0, local, a)
        owners.append(torch.arange(first, last + 1, device=a.device))
        sums.append(chunk_sum)
        if variance:
            count = a.new_zeros(last - first + 1).index_add(0, local, a.new_ones(a.shape[0]))
            counts.append(count)
            m2s.append(zeros.index_add(0, local, (a - (chunk_sum / _expand(count, a))[local]) ** 2))
    owner = torch.cat(owners)
    total_sum = sums[0].new_zeros((batch, *sums[0].shape[1:])).index_add(0, owner, torch.cat(sums))
    if not variance:
        return total_sum if weights is not None else total_sum / n
    mean = total_sum / n
    count = torch.cat(counts)
    shift = torch.cat(sums) / _expand(count, total_sum) - mean[owner]  # chunk mean - overall mean
    m2 = torch.zeros_like(total_sum).index_add(0, owner, torch.cat(m2s) + _expand(count, shift) * shift * shift)
    return m2 / n
