"""Hidden units: capture layer activations, and measure how sensitive units are to the input.

Tensor code shared by the neuron metrics (`clearsight.metrics.neurons`) and by training objectives; it imports
nothing from metrics, results or the engine. Every caller reads layers with `capture` (consistency training,
activation sensitivity, the neuron metrics), with `once=True` where a layer must run exactly once.

Two sensitivities of hidden units (Moshe et al., arXiv 2211.08686 [recon]), related but not the same quantity:
- `unit_sensitivity`: ||d a_u / d x||_2 per sampled unit u of one layer, what the `neuron_sensitivity` metric
  averages (METHODS.md: mean over units and samples).
- `sensitivity_from` / `activation_sensitivity`: ||d s / d x||_2^2 for s the sum of the sampled units (or random
  projections) of several layers, what the activation-sensitivity objective penalizes (one backward pass
  instead of one per unit).
Both sample units with `sample_units`, and the summed form of `unit_sensitivity` (its square root, for one
layer) is computed by the objective's own code (`summed_gradient`).

    with capture(model, ["penultimate"], once=True) as acts:
        model(x)
    acts["penultimate"][0]                                   # [B, ...] the layer's output of that forward pass

    norms = unit_sensitivity(model, x, layer="penultimate", units=8, generator=g)   # [B, 8]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, get_args

import torch
from torch import nn

from clearsight.checks import check_inputs
from clearsight.errors import ConfigError
from clearsight.models import get_layer
from clearsight.modes import frozen_parameters


@contextmanager
def capture(model: nn.Module, layers: Sequence[str | nn.Module], *,
            once: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the output of each layer at every forward pass inside the block.

    Args:
        layers: names resolved by `clearsight.models.get_layer` ("features", "penultimate", dotted paths) or
            modules; the dict is keyed by the name given (a module by its name in the model).
        once: the block is one forward pass in which every layer must run exactly once: a second call of a
            layer (a module the model reuses) raises ConfigError at that call, and a layer that did not run at
            all raises ConfigError when the block ends. Callers that read `acts[layer][0]` as "the" output use
            it, so a reused layer is refused instead of its later calls being silently ignored.

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
            handles.append(module.register_forward_hook(_keeper(store[name], name, once)))
        yield store
        idle = [name for name, outputs in store.items() if not outputs]
        if once and idle:
            raise ConfigError(f"layer {idle[0]!r} did not run in the forward pass; choose a layer the model uses")
    finally:
        for handle in handles:
            handle.remove()


def _keeper(out_list: list[torch.Tensor], name: str, once: bool) -> Any:
    def keep(_module: nn.Module, _inputs: Any, out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"layer {name!r} returns {type(out).__name__}, not a tensor; capture another layer")
        if once and out_list:
            raise ConfigError(f"layer {name!r} runs more than once in one forward pass (the model reuses that "
                              "module); choose a layer that runs exactly once")
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
        summed: one gradient of s = sum of the sampled units instead of one per unit (the activation-sensitivity
            objective's form, one backward pass, computed by its code `summed_gradient`): returns [B, 1], the
            square root of `activation_sensitivity` of this layer with the same units.
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
        with capture(model, [layer], once=True) as acts:
            model(xi)
        ((activation,),) = acts.values()  # once=True: one layer, one output
        if summed:
            grad = summed_gradient(xi, [activation], units=units, generator=generator, create_graph=create_graph)
            result = torch.linalg.vector_norm(grad.flatten(1), dim=1, keepdim=True)
            return result if create_graph else result.detach()
        flat = activation.flatten(1)
        idx = units if isinstance(units, torch.Tensor) else sample_units(flat.shape[1], units, generator=generator)
        outputs = list(flat[:, _checked_units(idx, flat.shape[1]).to(flat.device)].unbind(1))
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


def _checked_units(idx: torch.Tensor, numel: int) -> torch.Tensor:
    """`idx` if it is a 1-d integer tensor of flat unit indices of a layer of `numel` units."""
    integer = not (idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool)
    if idx.dim() != 1 or not integer or (idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < numel):
        raise ConfigError(f"units must be integer flat indices [k] in [0, {numel}), got {idx.tolist()}")
    return idx


Mode = Literal["units", "projection"]
MODES: tuple[str, ...] = get_args(Mode)


def relu_layers(model: nn.Module) -> list[str]:
    """Names of the model's nn.ReLU modules after the first (the default layers of activation sensitivity), or
    the only one when there is a single ReLU."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not names:
        raise ConfigError("the model has no nn.ReLU module; name the layers to regularize explicitly")
    return names[1:] or names


def sampled_sum(activations: Sequence[torch.Tensor], *, units: int | torch.Tensor = 8, mode: str = "units",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """s [B]: per sample, the sum over the layers of `units` sampled activations ("units", the same units for
    the batch) or of one random unit-norm projection of the whole layer ("projection").

    Units and directions are drawn on the CPU from `generator` (the same draw on every device), layer by layer
    in the order given. `units` may also be the flat indices (int64 [k]) to take from every layer.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    total: torch.Tensor | None = None
    for a in activations:
        flat = a.flatten(1)
        if mode == "units":
            idx = (_checked_units(units, flat.shape[1]) if isinstance(units, torch.Tensor)
                   else sample_units(flat.shape[1], units, generator=generator))
            part = flat[:, idx.to(flat.device)].sum(1)
        else:
            v = torch.randn(flat.shape[1], generator=generator, dtype=flat.dtype)
            part = flat @ (v / torch.linalg.vector_norm(v)).to(flat.device)
        total = part if total is None else total + part
    if total is None:
        raise ConfigError("no layers to sample activations from")
    return total


def activation_sensitivity(model: nn.Module, x: torch.Tensor, *, layers: Sequence[str] | None = None,
                           units: int = 8, mode: str = "units", generator: torch.Generator | None = None,
                           create_graph: bool = False) -> torch.Tensor:
    """||d s / d x_i||_2^2 per sample [B], s = `sampled_sum` of the activations of `layers` (Moshe et al., arXiv
    2211.08686 [recon]): what the activation-sensitivity objective penalizes, one forward and one backward.

    Args:
        layers: layer names (`clearsight.models.get_layer`); None -> `relu_layers(model)`.
        create_graph: keep the graph so a loss of the result reaches the parameters; otherwise the parameters
            are frozen for the call (flags restored) and the result is detached.
    """
    check_inputs(x)
    names = list(layers) if layers is not None else relu_layers(model)
    freeze = frozen_parameters(model) if not create_graph else nullcontext()
    with freeze, torch.inference_mode(False), torch.enable_grad():
        xi = x.detach().clone().requires_grad_()
        with capture(model, names, once=True) as acts:
            model(xi)
        result = sensitivity_from(xi, [acts[n][0] for n in names], units=units, mode=mode, generator=generator,
                                  create_graph=create_graph)
    return result if create_graph else result.detach()


def sensitivity_from(x: torch.Tensor, activations: Sequence[torch.Tensor], *, units: int | torch.Tensor = 8,
                     mode: str = "units", generator: torch.Generator | None = None,
                     create_graph: bool = False) -> torch.Tensor:
    """||d s / d x_i||_2^2 [B] for activations already computed from the leaf `x` (a forward pass the caller made,
    e.g. the training loss's own): `activation_sensitivity` without its forward pass."""
    grad = summed_gradient(x, activations, units=units, mode=mode, generator=generator, create_graph=create_graph)
    return grad.flatten(1).pow(2).sum(1)


def summed_gradient(x: torch.Tensor, activations: Sequence[torch.Tensor], *, units: int | torch.Tensor = 8,
                    mode: str = "units", generator: torch.Generator | None = None,
                    create_graph: bool = False) -> torch.Tensor:
    """d s / d x [B, ...] for s = `sampled_sum(activations)` computed from the leaf `x`: one backward pass of the
    batch sum (per sample unless the samples interact, as in train-mode batch norm). The graph is kept, so the
    caller's own loss can still be differentiated; zeros when s does not depend on x."""
    s = sampled_sum(activations, units=units, mode=mode, generator=generator)
    if not s.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(s.sum(), x, create_graph=create_graph, retain_graph=True, allow_unused=True,
                                  materialize_grads=True)
    return grad
