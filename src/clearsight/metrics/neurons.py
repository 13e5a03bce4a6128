"""Neuron metrics: consistency of what units respond to (Dong et al., arXiv 1901.09035) and their sensitivity to
the input (Moshe et al., arXiv 2211.08686). Both [recon]: the papers' full texts were not available; every
choice below is an option.

neuron_consistency is a statistic of a pool of images, not of one image: for each unit of `layer`, take its
`k` most-activating images in the pool (real images, their PGD adversarial versions, or both), p = the class
histogram of those images, and consistency = p^T A p (A the identity: the probability that two of them share a
class; or a given class-similarity matrix); the value is the mean over units. The evaluation driver
accumulates the pool over every batch of the dataset (`ConsistencyPool`); called on a batch, the metric uses the
batch as the pool. Per-sample values are each sample's share, c_j = M / (U K) * sum over the units u whose top-k
holds j of (A p_u)_{y_j} (M pool members, U units), so that their mean is the consistency; one sample's value is
no consistency by itself. A unit of a convolutional layer is a channel (its activation averaged over positions).
Ties in activation go to the earlier sample of the pool; units that never fire in the pool (top activation <= 0,
dead ReLUs) have no most-activating images and are left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clearsight.attacks.pgd import pgd
from clearsight.attributions.guard import positive_int
from clearsight.checks import check_inputs, check_labels
from clearsight.errors import ConfigError
from clearsight.metrics.registry import METRICS
from clearsight.neurons import capture, unit_sensitivity

POOLS = ("real", "adversarial", "both")


class ConsistencyPool:
    """The per-unit top-k of a growing pool of images; `update` per batch, `finish` once (see the module docstring).

    Memory: k activations, sample ids and labels per unit, whatever the pool size.
    """

    def __init__(self, *, layer: str = "penultimate", pool: str = "real", k: int = 10, eps: float = 0.1,
                 norm: str = "linf", steps: int = 10, similarity: Sequence[Sequence[float]] | None = None,
                 generator: torch.Generator | None = None) -> None:
        if pool not in POOLS:
            raise ConfigError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
        self.layer, self.pool, self.k = layer, pool, positive_int("k", k)
        self.attack = {"eps": eps, "norm": norm, "steps": positive_int("steps", steps), "generator": generator}
        self.similarity = similarity
        self.values: torch.Tensor | None = None  # [U, k'] activations of the top members
        self.members = self.labels = torch.empty(0)  # [U, k'] pool member ids, their labels
        self.size, self.num_classes = 0, 0

    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, first: int) -> None:
        """Add the batch whose samples are `first`, `first + 1`, ... of the dataset (members i, and N + i for
        the adversarial version of sample i in the "both" pool; `finish` knows N)."""
        check_inputs(x)
        check_labels(y, batch=x.shape[0])
        ids = torch.arange(first, first + x.shape[0], device=x.device)
        parts = []
        if self.pool in ("real", "both"):
            parts.append((self._units(model, x), ids))
        if self.pool in ("adversarial", "both"):
            x_adv = pgd(model, x, y, **self.attack)
            # adversarial members are told apart by a negative id until finish knows the dataset size
            parts.append((self._units(model, x_adv), -1 - ids if self.pool == "both" else ids))
        with torch.no_grad():
            logits_classes = int(y.max()) + 1 if y.numel() else 0
            self.num_classes = max(self.num_classes, logits_classes)
            for acts, members in parts:
                self._merge(acts, members, y)
        self.size = max(self.size, first + x.shape[0])

    def _units(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), capture(model, [self.layer], once=True) as acts:
            model(x)
        out = acts[self.layer][0]
        return (out.flatten(2).mean(2) if out.dim() > 2 else out).detach()  # [B, U]

    def _merge(self, acts: torch.Tensor, members: torch.Tensor, y: torch.Tensor) -> None:
        new_vals, new_ids = acts.T, members.expand(acts.shape[1], -1)
        new_labels = y.expand(acts.shape[1], -1)
        if self.values is not None:
            new_vals = torch.cat([self.values, new_vals], 1)
            new_ids = torch.cat([self.members, new_ids], 1)
            new_labels = torch.cat([self.labels, new_labels], 1)
        # a stable sort: ties go to the earlier sample, whatever the batching (the pool's old members come first)
        top = new_vals.sort(dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values = new_vals.gather(1, top)
        self.members, self.labels = new_ids.gather(1, top), new_labels.gather(1, top)

    def finish(self, n: int | None = None) -> torch.Tensor:
        """Per-sample shares [N] whose mean is the pool's consistency (N = the samples seen, or `n`)."""
        n = self.size if n is None else n
        if self.values is None:
            return torch.zeros(n)
        units, k = self.labels.shape
        classes = self.num_classes if self.similarity is None else len(self.similarity)
        hist = torch.zeros(units, classes, device=self.labels.device).scatter_add_(
            1, self.labels, torch.ones_like(self.labels, dtype=torch.float32)) / k
        sim = (torch.eye(classes, device=hist.device) if self.similarity is None
               else torch.as_tensor(self.similarity, dtype=hist.dtype, device=hist.device))
        if sim.shape != (classes, classes) or int(self.labels.max()) >= classes:
            raise ConfigError(f"similarity must be a {classes} x {classes} matrix (one row per class), got "
                              f"shape {tuple(sim.shape)}")
        alive = self.values[:, 0] > 0  # a unit that never fired in the pool has no top images: left out
        score = (hist @ sim.T).gather(1, self.labels)[alive]  # (A p_u)_{y_j} for each top member j of unit u
        members = self.members.where(self.members >= 0, n - 1 - self.members)[alive]  # -1 - i -> N + i
        size = 2 * n if self.pool == "both" else n
        shares = torch.zeros(size, device=score.device).index_add_(0, members.flatten(), score.flatten())
        if not bool(alive.any()):
            return torch.full((n,), float("nan"), device=score.device)
        shares *= size / (int(alive.sum()) * k)
        return (shares[:n] + shares[n:]) / 2 if self.pool == "both" else shares


@METRICS.register("neuron_consistency", higher_is_better=True, needs_grad=True, needs=("attack",),
                  pooled=ConsistencyPool, paper="arXiv 1901.09035", example={"k": 2, "steps": 2},
                  description="class purity of each unit's most-activating images (real, adversarial or both), "
                              "layer mean; per-sample shares of a pool statistic")
def neuron_consistency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, layer: str = "penultimate",
                       pool: str = "real", k: int = 10, eps: float = 0.1, norm: str = "linf", steps: int = 10,
                       similarity: Sequence[Sequence[float]] | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Neuron consistency (Dong et al., arXiv 1901.09035 [recon]) with the batch as the pool; per-sample shares
    [B] whose mean is the consistency in [0, 1] (see the module docstring).

    Args:
        layer: the layer whose units are scored (a name for `clearsight.models.get_layer`).
        pool: "real", "adversarial" (PGD images at `eps`, `norm`, `steps`, labelled with their true class) or
            "both".
        k: most-activating images per unit.
        similarity: the class-similarity matrix A (C x C); None -> the identity (class purity).
        generator: seeds the PGD random starts of the adversarial pool; None draws from torch's global RNG.
    """
    state = ConsistencyPool(layer=layer, pool=pool, k=k, eps=eps, norm=norm, steps=steps, similarity=similarity,
                            generator=generator)
    state.update(model, x, y, 0)
    return state.finish(x.shape[0]).to(x.dtype)


@METRICS.register("neuron_sensitivity", higher_is_better=False, needs_grad=True, needs=(), paper="arXiv 2211.08686",
                  example={"units": 2},
                  description="mean input-gradient norm of sampled units of a layer (lower = less sensitive)")
def neuron_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, layer: str = "penultimate",
                       units: int = 8, seed: int = 0) -> torch.Tensor:
    """Mean over `units` sampled units u of `layer` of ||d a_u(x) / d x||_2, per sample [B] (Moshe et al.,
    arXiv 2211.08686 [recon]; `clearsight.neurons.unit_sensitivity`). y is not used.

    This is METHODS.md's per-unit quantity, not the activation-sensitivity objective's penalty (the squared
    input-gradient norm of a sum of sampled units, `clearsight.neurons.activation_sensitivity`): lowering one
    tends to lower the other, but they are not equal.

    Args:
        units: how many units; they are drawn with a CPU generator seeded by `seed`, so every batch (and every
            model of a study) is scored on the same units. A unit is one entry of the layer's output.
    """
    check_labels(y, batch=x.shape[0])
    generator = torch.Generator().manual_seed(int(seed))
    return unit_sensitivity(model, x, layer=layer, units=units, generator=generator).mean(1)
