"""The feasible set of an attack: the eps ball around x (linf or l2) intersected with the image box [0, 1].

`project` maps any point into the set, `direction` turns a gradient into the steepest-ascent step of unit size
for the norm, `random_point` draws a uniform random start and `normal_point` a Gaussian one. All work per
sample on batches [B, ...].
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from clearsight.checks import check_radius
from clearsight.errors import ConfigError

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = get_args(Norm)


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each sample of a batch, shape [B]."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


class Ball:
    """{x' : ||x' - center|| <= eps} ∩ [0, 1]^D for a batch of centers [B, ...], optionally restricted to the
    features where `mask` is 1 (elsewhere x' = center).

    Projection onto the intersection is done as projection onto the ball followed by clipping to the box. For
    linf that is the exact projection; for l2 it is the usual approximation and clipping can only move a point
    towards the center (the center lies in the box), so the result is always feasible. A mask restricts the set
    to a coordinate subspace through the center: linf gets corners lo = hi = center on the masked-out features
    (clamping is then still the exact projection); l2 projects the masked delta.
    """

    def __init__(self, center: torch.Tensor, eps: float, norm: str, mask: torch.Tensor | None = None) -> None:
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
        eps = float(check_radius(eps, "eps"))
        if mask is not None and mask.shape != center.shape:
            raise ConfigError(f"the perturbation mask has shape {tuple(mask.shape)}, the inputs "
                              f"{tuple(center.shape)}; give one mask entry per input feature")
        self.center, self.eps, self.norm = center, eps, norm
        self.mask = None if mask is None else mask.to(device=center.device, dtype=torch.bool)
        self._view = (-1,) + (1,) * (center.dim() - 1)  # broadcast a per-sample [B] tensor over the sample
        if norm == "linf":  # the linf ball ∩ box is itself a box: precompute its corners once
            self.lo = (center - eps).clamp_(min=0.0)
            self.hi = (center + eps).clamp_(max=1.0)
            if self.mask is not None:
                self.lo = torch.where(self.mask, self.lo, center)
                self.hi = torch.where(self.mask, self.hi, center)

    def __getitem__(self, idx: torch.Tensor) -> Ball:
        """The ball of the samples `idx` (int64 indices)."""
        return Ball(self.center[idx], self.eps, self.norm, None if self.mask is None else self.mask[idx])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return torch.clamp(x, self.lo, self.hi)
        delta = x - self.center
        if self.mask is not None:
            delta = delta * self.mask
        scale = (self.eps / per_sample_norm(delta).clamp_min(1e-12)).clamp_(max=1.0)
        return (self.center + delta * scale.view(self._view)).clamp_(0.0, 1.0)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest ascent direction of unit norm within the set's subspace: sign(g) for linf, g / ||g||_2 for
        l2 (0 where g = 0 or the mask is 0)."""
        if self.mask is not None:
            grad = grad * self.mask
        if self.norm == "linf":
            return grad.sign()
        return grad / per_sample_norm(grad).clamp_min(1e-12).view(self._view)

    def normal_point(self, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """center + sigma * N(0, I), projected into the set (TRADES's start, Zhang et al.: sigma 0.001)."""
        c = self.center
        return self.project(c + sigma * torch.randn(c.shape, generator=generator, device=c.device, dtype=c.dtype))

    def random_point(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A point drawn uniformly from the ball (linf: the cube, l2: the solid ball), then clipped to [0, 1]."""
        c = self.center
        if self.norm == "linf":
            u = torch.rand(c.shape, generator=generator, device=c.device, dtype=c.dtype)
            return torch.clamp(c + (2.0 * u - 1.0) * self.eps, self.lo, self.hi)
        # uniform in the l2 ball: a uniform direction (normalized Gaussian) and a radius eps * U^(1/D)
        g = torch.randn(c.shape, generator=generator, device=c.device, dtype=c.dtype)
        u = torch.rand(c.shape[0], generator=generator, device=c.device, dtype=c.dtype)
        dim = c[0].numel()
        if self.mask is not None:  # uniform in the ball of the free coordinates (D = their count, per sample)
            g = g * self.mask
            free = self.mask.flatten(1).sum(1).clamp_min(1).to(c.dtype)
            radius = self.eps * u.pow(1.0 / free)
            return self.project(c + g * (radius / per_sample_norm(g).clamp_min(1e-12)).view(self._view))
        radius = self.eps * u.pow(1.0 / max(dim, 1))
        delta = g * (radius / per_sample_norm(g).clamp_min(1e-12)).view(self._view)
        return self.project(c + delta)
