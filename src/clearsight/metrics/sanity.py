"""Model parameter randomisation (Adebayo et al., "Sanity checks for saliency maps", arXiv 1810.03292).

An explanation that depends on what the model learned must change when the top layers are re-initialized; one
that barely changes (an edge detector) fails the check. The metric is the rank correlation between the map of
the trained model and the map of the same model with its top `layers` layers re-initialized: lower passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from clearsight.attributions.guard import positive_int
from clearsight.checks import check_inputs, check_labels
from clearsight.errors import ConfigError
from clearsight.metrics.maps import Attribution, average_ranks, explain, explainer, flat, pearson, with_generator
from clearsight.metrics.registry import METRICS
from clearsight.metrics.shared import shared


def top_layers(model: nn.Module, layers: int) -> list[tuple[str, nn.Module]]:
    """The last `layers` submodules that have `reset_parameters` (Linear, Conv2d, BatchNorm, ...), top first:
    the cascading top-down order of Adebayo et al. and Quantus MPRT."""
    found = [(name, m) for name, m in model.named_modules() if name and hasattr(m, "reset_parameters")]
    return found[::-1][: positive_int("layers", layers)]


@contextmanager
def randomised(model: nn.Module, *, layers: int = 1, seed: int = 0) -> Iterator[nn.Module]:
    """Inside the block the top `layers` layers of `model` hold freshly initialized values; on exit (also after an
    exception) every parameter and buffer holds its trained data again (the same tensors, so optimizers and other
    references stay valid). Each layer is reset by its own `reset_parameters`, run on copies of its tensors' data,
    with torch's RNG seeded with `seed` just before (as Quantus MPRT does with seed + 1); the global RNG is left as
    it was. Other threads using the model meanwhile see the randomised values."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.random.fork_rng(devices=[torch.device("cuda", i) for i in devices]):
            for name, module in top_layers(model, layers):
                if parametrize.is_parametrized(module):
                    # reset_parameters writes the computed weight, not its original: nothing would change
                    raise ConfigError(f"randomisation cannot re-initialize {name} ({type(module).__name__}): it is "
                                      "parametrized (e.g. spectral_norm), so reset_parameters leaves its weights as "
                                      "they are; remove the parametrization for the check")
                # the module's tensors get copies of their data, which reset_parameters then overwrites in place:
                # the trained data is never written, and no module is deep-copied per call
                for tensor in module.state_dict(keep_vars=True).values():
                    swapped.append((tensor, tensor.data))  # recorded first: an interrupted swap still restores
                    tensor.data = tensor.data.clone()
                torch.manual_seed(seed)
                module.reset_parameters()  # type: ignore[operator]
        yield model
    finally:
        for tensor, data in swapped:
            tensor.data = data


@METRICS.register("randomisation", higher_is_better=False, needs_grad=True, needs=("explainer",),
                  paper="arXiv 1810.03292", example={},
                  description="rank correlation between the maps of the trained and the top-randomised model "
                              "(lower passes the sanity check)")
def randomisation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: Attribution | None = None,
                  layers: int = 1, seed: int = 0, abs: bool = True) -> torch.Tensor:
    """Model parameter randomisation test (Adebayo et al., arXiv 1810.03292) per sample [B] in [-1, 1].

    Spearman rank correlation (average ranks for ties) between a(x) of the model and a(x) of the model with its
    top `layers` layers re-initialized (cascading, see `randomised`), both explaining y. `abs` ranks |a|
    (Adebayo et al. and Quantus MPRT's default). NaN where a map is constant. Lower = the explanation depends on
    the learned weights, which is what the check asks for.

    Args:
        attribution: a callable or a registered name (it is recomputed on the randomised model).
        layers: how many of the top parametrized layers to re-initialize.
        seed: seeds the re-initialization: every batch sees the same randomised model.
    """
    check_inputs(x)
    check_labels(y, batch=x.shape[0])
    fn = explainer(attribution, metric="randomisation")
    trained_map = explain(fn, model, x, y, metric="randomisation")
    trained = flat(trained_map)
    with randomised(model, layers=layers, seed=seed):
        # called directly, not through the batch cache: the cache knows the model by identity, not its weights;
        # its noise (smoothgrad's) from a stream of its own, so the shared map's stream is left alone
        own = with_generator(fn, torch.Generator(device=x.device).manual_seed(seed))
        random = flat(own(model, x, y).detach())
    if abs:
        trained, random = trained.abs(), random.abs()
    # the trained map's ranks once per batch for every randomisation row (layers 1..L of a cascade)
    return pearson(shared(("ranks", abs), lambda: average_ranks(trained), trained_map), average_ranks(random))
