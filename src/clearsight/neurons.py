"""Hidden units: capture layer activations, and measure how sensitive units are to the input.

Tensor code shared by the neuron metrics (`clearsight.metrics.neurons`) and by training objectives (the
activation-sensitivity objective differentiates `unit_sensitivity` with create_graph=True; consistency
training reads representations with `capture`). It imports nothing from metrics, results or the engine.

    with capture(model, ["penultimate"]) as acts:
        model(x)
    acts["penultimate"][0]                                   # [B, ...] the layer's output of that forward pass

    norms = unit_sensitivity(model, x, layer="penultimate", units=8, generator=g)   # [B, 8]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from clearsight.checks import check_inputs
from clearsight.errors import ConfigError
from clearsight.models import get_layer
from clearsight.modes import frozen_parameters


@contextmanager
def capture(model: nn.Module, layers: Sequence[str | nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the output of each layer at every forward pass inside the block.

    Args:
        layers: names resolved by `clearsight.models.get_layer` ("features", "penultimate", dotted paths) or
            modules; the dict is keyed by the name given (a module by its name in the model).

    Yields:
        {layer: [output of each forward pass, in order]}. Each output is the tensor in the autograd graph (so
        gradients of it reach the input), and the model continues with a copy, so an in-place operation after
        the layer (ReLU(inplace=True)) cannot change what was captured. The hooks are removed on exit, also
        when the block raises.
    """
    names = {id(m): n for n, m in model.named_modules()}
    modules: dict[str, nn.Module] = {}
    for layer in layers:
        if isinstance(layer, str):
            modules[layer] = get_layer(model, layer)
        elif isinstance(layer, nn.Module) and id(layer) in names:
            modules[names[id(layer)]] = layer
        else:
            raise ConfigError(f"capture needs layer names or submodules of the model, got {layer!r}")
    store: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(_keeper(store[name], name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _keeper(out_list: list[torch.Tensor], name: str) -> Any:
    def keep(_module: nn.Module, _inputs: Any, out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"layer {name!r} returns {type(out).__name__}, not a tensor; capture another layer")
        out_list.append(out)
        return out.clone()

    return keep


def sample_units(numel: int, k: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """k distinct flat unit indices out of `numel`, uniformly at random (drawn on the CPU so a seed gives the same
    units on every device); int64 [k]."""
    if not 1 <= int(k) <= numel:
        raise ConfigError(f"cannot sample {k} units from a layer of {numel} units; choose 1 <= units <= {numel}")
    return torch.randperm(numel, generator=generator)[: int(k)].to(device)


def unit_sensitivity(model: nn.Module, x: torch.Tensor, *, layer: str | nn.Module, units: int | torch.Tensor = 8,
                     generator: torch.Generator | None = None, summed: bool = False,
                     create_graph: bool = False) -> torch.Tensor:
    """||d a_u(x) / d x||_2 per sample for sampled units u of `layer` (Moshe et al., arXiv 2211.08686 [recon]).

    A unit is one entry of the layer's output (flattened per sample: a neuron of a Linear layer, a position of a
    channel of a conv map). The same units are used for every sample of the batch.

    Args:
        x: inputs [B, ...] in [0, 1].
        units: how many units to sample (with `generator`, on the CPU), or their flat indices (int64 [k]).
        summed: one gradient of s = sum of the sampled units instead of one per unit (the regularizer's form,
            one backward pass): returns [B, 1].
        create_graph: keep the graph so a loss of the result reaches the parameters (training); otherwise the
            parameters are frozen for the call (flags restored) and the result is detached.

    Returns:
        [B, k] (or [B, 1] when summed): the l2 norm over the input of each unit's input gradient. Cost: one
        forward pass and k backward passes through the layers below `layer` (one when summed).
    """
    check_inputs(x)
    freeze = frozen_parameters(model) if not create_graph else nullcontext()
    with freeze, torch.inference_mode(False), torch.enable_grad():
        xi = x if create_graph and x.requires_grad else x.detach().clone().requires_grad_()
        with capture(model, [layer]) as acts:
            model(xi)
        key = next(iter(acts))
        if len(acts[key]) != 1:
            raise ConfigError(f"layer {layer!r} ran {len(acts[key])} times in one forward pass; choose a layer that "
                              "runs exactly once")
        flat = acts[key][0].flatten(1)
        idx = units if isinstance(units, torch.Tensor) else sample_units(flat.shape[1], units, generator=generator)
        chosen = flat[:, idx.to(flat.device)]
        outputs = [chosen.sum(1)] if summed else list(chosen.unbind(1))
        norms = []
        for i, out in enumerate(outputs):
            if not out.requires_grad:  # a unit that does not depend on the input
                norms.append(torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
                continue
            (grad,) = torch.autograd.grad(out.sum(), xi, retain_graph=create_graph or i + 1 < len(outputs),
                                          create_graph=create_graph, allow_unused=True, materialize_grads=True)
            norms.append(torch.linalg.vector_norm(grad.flatten(1), dim=1))
        result = torch.stack(norms, dim=1)
    return result if create_graph else result.detach()
