"""Model parameter randomisation (Adebayo et al., "Sanity checks for saliency maps", arXiv 1810.03292).

An explanation that depends on what the model learned must change when the top layers are re-initialized; one
that barely changes (an edge detector) fails the check. The metric is the rank correlation between the map of
the trained model and the map of the same model with its top `layers` layers re-initialized: lower passes.
"""

from __future__ import annotations

import weakref
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


# the values reset_parameters gives a module after torch.manual_seed(seed) depend on its shapes, not on its trained
# values: made once per (module, seed) and kept while the module lives, so the batches of an evaluation and the
# rows of a cascade (layers 1..L each reset the layers above) do not redraw them
_FRESH: weakref.WeakKeyDictionary[nn.Module, dict[int, dict[str, torch.Tensor]]] = weakref.WeakKeyDictionary()


@contextmanager
def randomised(model: nn.Module, *, layers: int = 1, seed: int = 0) -> Iterator[nn.Module]:
    """Inside the block the top `layers` layers of `model` hold freshly initialized values; on exit (also after an
    exception) every parameter and buffer holds its trained data again (the same tensors, so optimizers and other
    references stay valid). Each layer's values are what its own `reset_parameters` writes with torch's RNG seeded
    with `seed` just before (as Quantus MPRT does with seed + 1), drawn once per layer and seed and handed out as
    copies (a change made inside the block reaches neither the trained nor the kept values); the global RNG is left
    as it was. Other threads using the model meanwhile see the randomised values."""
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for name, module in top_layers(model, layers):
            if parametrize.is_parametrized(module):
                # reset_parameters writes the computed weight, not its original: nothing would change
                raise ConfigError(f"randomisation cannot re-initialize {name} ({type(module).__name__}): it is "
                                  "parametrized (e.g. spectral_norm), so reset_parameters leaves its weights as "
                                  "they are; remove the parametrization for the check")
            fresh = _fresh(module, seed)
            for key, tensor in module.state_dict(keep_vars=True).items():
                swapped.append((tensor, tensor.data))  # recorded first: an interrupted swap still restores
                tensor.data = fresh[key].clone()
        yield model
    finally:
        for tensor, data in swapped:
            tensor.data = data


def _fresh(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """{state key: the value module.reset_parameters() gives it after torch.manual_seed(seed)} (see _FRESH); made
    again if the module's tensors changed shape, dtype or device since."""
    current = module.state_dict(keep_vars=True)
    kept = _FRESH.setdefault(module, {}).get(seed)
    if kept is not None and kept.keys() == current.keys() and all(
            (kept[k].shape, kept[k].dtype, kept[k].device) == (t.shape, t.dtype, t.device) for k, t in current.items()):
        return kept
    saved = [(t, t.data) for t in current.values()]
    devices = sorted({t.device.index or 0 for t in current.values() if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=[torch.device("cuda", i) for i in devices]):
            for t in current.values():  # reset_parameters writes in place: into copies, never the trained data
                t.data = t.data.clone()
            torch.manual_seed(seed)
            module.reset_parameters()  # type: ignore[operator]
            kept = {k: t.data for k, t in current.items()}
    finally:
        for t, data in saved:
            t.data = data
    _FRESH[module][seed] = kept
    return kept


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
