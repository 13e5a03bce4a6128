"""Random perturbations for metrics, drawn per sample so that results do not depend on how samples are batched.

`SampleNoise` hands out the noise of n copies of each sample, sample by sample in order, in the row layout of
`clearsight.attributions.chunks` (sample-major). Sample i's noise is the i-th block of the generator's stream:
`torch.rand(m)` (uniform) or `torch.randn(m)` (normal) with m = n * numel(shape) rounded up to a multiple of 16,
the first n * numel(shape) values used. Blocks of many samples are drawn in one call, which on the CPU gives
exactly the per-sample blocks (torch fills normals in groups of 16 values, hence the rounding; tests check
this). So with one generator that lives across batches (the evaluation driver gives every random row its own),
the noise of sample i is the same whatever the batch size or `max_batch`; a slow per-sample loop drawing
`torch.rand(m)` per sample reproduces it. On CUDA one call is not the same as many, so there the noise depends on
the chunking (it is still independent noise of the right distribution).
"""

from __future__ import annotations

import math

import torch

from clearsight.errors import ConfigError

KINDS = ("uniform", "normal")
_GROUP = 16  # torch's CPU normal sampler fills values in groups of 16


def block_size(n: int, shape: tuple[int, ...]) -> int:
    """Values drawn per sample: n * numel(shape) rounded up to a multiple of 16."""
    m = n * math.prod(shape)
    return -(-m // _GROUP) * _GROUP


def draw(samples: int, n: int, shape: tuple[int, ...], *, kind: str, generator: torch.Generator | None,
         dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The next `samples` per-sample blocks of the stream, [samples, n, *shape] (see the module docstring)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    size = (samples, block_size(n, shape))
    sample = torch.rand if kind == "uniform" else torch.randn
    values = sample(size, generator=generator, dtype=dtype, device=device)
    return values[:, : n * math.prod(shape)].reshape(samples, n, *shape)


class SampleNoise:
    """Noise rows for (sample, copy) index pairs given chunk by chunk in sample-major order.

    Each chunk draws the blocks of the samples it reaches first; the block of a sample split between two chunks
    is kept for the next one, so nothing of size B * n is held at once.
    """

    def __init__(self, n: int, shape: tuple[int, ...], *, kind: str, generator: torch.Generator | None,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        if generator is not None and torch.device(generator.device).type != torch.device(device).type:
            raise ConfigError(f"generator lives on {generator.device} but the inputs on {device}; "
                              f"make it with torch.Generator(device={str(device)!r})")
        self.n, self.shape, self.kind = n, tuple(shape), kind
        self.generator, self.dtype, self.device = generator, dtype, device
        self._start = 0
        self._blocks = torch.empty((0, n, *self.shape), dtype=dtype, device=device)

    def rows(self, sample: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        """Noise [R, *shape] of the rows (sample[r], copy[r]); samples must come in non-decreasing order."""
        if sample.numel() == 0:
            return self._blocks.new_zeros((0, *self.shape))
        first, last = int(sample[0]), int(sample[-1])
        have = self._start + self._blocks.shape[0]
        if not self._start <= first <= have:
            raise ConfigError("SampleNoise rows must be asked for in sample order, without gaps")
        keep = self._blocks[first - self._start :]
        if last >= have:
            fresh = draw(last + 1 - have, self.n, self.shape, kind=self.kind, generator=self.generator,
                         dtype=self.dtype, device=self.device)
            keep = torch.cat([keep, fresh]) if keep.shape[0] else fresh
        self._start, self._blocks = first, keep
        return keep[sample - first, copy]
