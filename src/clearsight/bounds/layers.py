"""The layer walk shared by every bound: which layers are supported, and each layer's interval rules.

A model is bounded as the ordered list of its leaf layers (`bound_layers`), which is exactly what an
nn.Sequential of nested nn.Sequentials computes. Each supported layer has two rules:

- forward: enclose the layer's output for every input in an interval (and every parameter in the relative
  parameter box of radius gamma);
- backward: enclose the vector-Jacobian product v^T J of the layer for every v in an interval, every input in
  the recorded forward interval and every parameter in the box; this is the step of the gradient bound.

Semantics: the bounds describe the network in eval mode, whatever `model.training` is: Dropout and Identity are
the identity and BatchNorm uses its running statistics (a fixed per-channel affine map). The parameter box
(gamma) applies to the weights and biases of Linear and Conv2d only; Normalize has no parameters and BatchNorm
is treated as a fixed affine map (its running statistics are not learnt by gradient, and its affine weights
are commonly folded into the next layer). A parametrized tensor (torch.nn.utils.parametrize, e.g. weight_norm or
spectral_norm) is evaluated once per use of its layer in a bound call, and the forward and backward rules use
that one value; certificates that combine several bound calls run them under `parametrize.cached()`. A layer is
bounded only if its class is exactly a supported one (or parametrize's class made from one): a subclass can
change what the layer computes through any method its forward calls. Anything else, and any forward hook, is
refused with an error naming the layer, since a bound that silently ignored a layer would be unsound. Backward
hooks are not refused and not followed: the gradient bounds enclose the network's derivative, which is what
autograd computes without them.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_mod
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.utils import _pair
from torch.nn.utils import parametrize

from clearsight.bounds.interval import Interval, bilinear, endpoints, midrad, mul_mask_interval
from clearsight.errors import ConfigError
from clearsight.models.layers import Normalize

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
# identity in eval mode; bounds always describe the eval-mode network
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)
_TOP = "the model's top level"  # where a layer that is the whole model is


def bound_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf layers of `model` in execution order, as (dotted name, module); identity layers are dropped.

    Raises:
        ConfigError: a layer has no sound interval rule (MaxPool, unknown layers, subclasses of supported
            layers, containers with their own forward such as residual blocks, or unsupported options), or it
            or every module has forward hooks (global module hooks, e.g. inside torch's FlopCounterMode); the
            message names the layer.
    """
    # hooks registered for every module (nn.modules.module.register_module_forward_hook; also what
    # torch.utils.flop_counter and ModuleTracker install) apply to the model as much as its own hooks do
    count = len(getattr(_module_mod, "_global_forward_hooks", ())) + \
        len(getattr(_module_mod, "_global_forward_pre_hooks", ()))
    if count:
        raise ConfigError(f"interval bounds cannot follow forward hooks, but {count} global module hook(s) are "
                          "registered (torch.nn.modules.module.register_module_forward_hook or "
                          "register_module_forward_pre_hook); remove them")
    layers: list[tuple[str, nn.Module]] = []
    _visit(model, "", layers)
    if not any(isinstance(m, nn.Linear | nn.Conv2d) for _, m in layers):
        raise ConfigError("interval bounds need a model with at least one Linear or Conv2d layer")
    return layers


def _visit(module: nn.Module, name: str, out: list[tuple[str, nn.Module]]) -> None:
    if module._forward_hooks or module._forward_pre_hooks:
        # a hook may change what the layer computes (old-style weight_norm/spectral_norm recompute the weight in
        # a pre-hook); the rules below read the parameters directly, so they would bound another network
        raise ConfigError(f"interval bounds cannot follow forward hooks, but {_where(module, name)} has "
                          f"{len(module._forward_hooks) + len(module._forward_pre_hooks)}; remove them (use "
                          "torch.nn.utils.parametrizations for weight or spectral normalization)")
    role = _role(type(module))
    if role == "layer":
        if isinstance(module, nn.Conv2d | _BatchNorm):
            _check_options(module, name)
        out.append((name, module))
    elif role == "sequential":
        # _modules, not named_children(): Sequential.forward runs a module listed twice twice, named_children
        # would list it once and the bound would skip its second use
        for child_name, child in module._modules.items():
            if child is not None:
                _visit(child, f"{name}.{child_name}" if name else child_name, out)
    elif role == "maxpool":
        raise ConfigError(f"interval bounds do not support {_where(module, name)}; build small-cnn with "
                          "pool='avg' (average pooling has a sound interval rule)")
    elif role is None:
        if issubclass(type(module), (*_FORWARD, nn.Sequential, *_IDENTITY)):
            detail = (" (a subclass: it may compute something other than its base; bounds follow the torch "
                      "classes themselves)")
        elif next(module.children(), None) is not None:
            detail = (" (a container with its own forward, e.g. a residual block: bounds follow only plain "
                      "nn.Sequential models)")
        else:
            detail = ""
        raise ConfigError(f"interval bounds do not support {_where(module, name)}{detail}; supported layers: "
                          f"{SUPPORTED_NAMES}")
    # role "identity": nothing to bound


def _where(module: nn.Module, name: str) -> str:
    """'<class> at <dotted name>' for error messages."""
    return f"{type(module).__name__} at {name or _TOP}"


def _check_options(module: nn.Module, name: str) -> None:
    """Refuse the options of a Conv2d or BatchNorm that its rule does not bound."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ConfigError(f"interval bounds support Conv2d with zero padding only; {name or _TOP} uses "
                              f"padding_mode={module.padding_mode!r}")
        _conv_padding(module, name or _TOP)
    elif module.running_mean is None or module.running_var is None:
        raise ConfigError(f"interval bounds need the running statistics of {_where(module, name)} "
                          "(track_running_stats=True): the bounds describe the eval-mode network")


_ROLES: dict[type, str | None] = {}  # classes the program defines; never parametrize's per-module classes


def _role(cls: type[nn.Module]) -> str | None:
    """What the walk does with a module class: "sequential" (descend), "identity" (drop), "maxpool" (refuse),
    "layer" (bound it by its registered rules) or None (unsupported).

    Only the torch classes themselves are accepted, and a parametrized module's class stands for the class it
    was made from. A subclass is refused even if it keeps forward: it can change what the layer computes
    through any method forward calls (Conv2d._conv_forward, Sequential.__iter__, a `weight` property, ...).
    The role depends only on the class, so it is cached per class: the walk runs on every bound call.
    """
    if cls in _ROLES:
        return _ROLES[cls]
    base = _parametrized_base(cls)
    if base is not None:
        return _role(base)  # not cached: parametrize makes a class per module
    role = _ROLES[cls] = _classify(cls)
    return role


def _classify(cls: type[nn.Module]) -> str | None:
    if cls is nn.Sequential:
        return "sequential"
    if cls in _IDENTITY:
        return "identity"
    if issubclass(cls, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d | nn.AdaptiveMaxPool2d):
        return "maxpool"
    return "layer" if cls in _FORWARD else None


def _parametrized_base(cls: type) -> type | None:
    """The class that torch.nn.utils.parametrize made `cls` from, if it made it, else None.

    Such a class has one base and adds nothing but parametrize's own members (the parametrized tensors'
    properties, __getstate__, __deepcopy__): it computes what its base computes with the parametrized tensors.
    """
    if len(cls.__bases__) != 1 or cls.__module__ != parametrize.__name__:
        return None
    for key, value in vars(cls).items():
        member = value.fget if isinstance(value, property) else value
        if key not in ("__module__", "__doc__") and getattr(member, "__module__", None) != parametrize.__name__:
            return None
    return cls.__bases__[0]


def _conv_padding(conv: nn.Conv2d, where: str = "") -> tuple[int, int]:
    """Numeric symmetric padding of `conv` (string paddings converted), as conv_transpose2d needs it."""
    if not isinstance(conv.padding, str):
        return _pair(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    if any(t % 2 for t in total):
        raise ConfigError(f"interval bounds need symmetric padding; Conv2d at {where} uses padding='same' with an "
                          "even kernel; give the padding as numbers")
    return (total[0] // 2, total[1] // 2)


def _channel_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [C] with module(x) = x * scale + shift per channel, for eval BatchNorm."""
    bn = cast(_BatchNorm, module)
    assert bn.running_mean is not None and bn.running_var is not None  # checked by the walk
    scale = torch.rsqrt(bn.running_var + bn.eps)
    weight, bias = bn.weight, bn.bias  # each read once per rule (a parametrized tensor is computed per read)
    if weight is not None:
        scale = scale * weight
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view((1, -1) + (1,) * (like.dim() - 2))


ForwardRule = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, bool, bool],
                      tuple[torch.Tensor, torch.Tensor, tuple]]
BackwardRule = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, tuple, bool], Interval]

# the two interval rules of each supported layer class, registered below. A table rather than an isinstance
# chain: the rules are looked up per layer in every bound call, and a small MLP's bound is short enough that
# Python dispatch shows
_FORWARD: dict[type[nn.Module], ForwardRule] = {}
_BACKWARD: dict[type[nn.Module], BackwardRule] = {}


def _forward_rule(*classes: type[nn.Module]) -> Callable[[ForwardRule], ForwardRule]:
    """Register the forward rule of `classes`.

    forward(module, mid, rad, gamma, inplace, record) -> (mid, rad, ctx): enclose module(x) for x in
    [mid ± rad] (parameters in the gamma box), the IBP step of one layer. ctx holds what the backward rule needs
    (W and |W|, the ReLU's output endpoints, per-channel scales, shapes) and must stay intact if `record`;
    without autograd its |W| is scratch memory (`_weight_abs`), valid for the backward pass of the same bound
    call. `inplace` lets the rule overwrite mid and rad (only without autograd).
    """
    def register(rule: ForwardRule) -> ForwardRule:
        _FORWARD.update(dict.fromkeys(classes, rule))
        return rule
    return register


def _backward_rule(*classes: type[nn.Module]) -> Callable[[BackwardRule], BackwardRule]:
    """Register the backward rule of `classes`.

    backward(module, mid, rad, gamma, ctx, inplace) -> (mid, rad): enclose v^T J_module(x) for v in
    [mid ± rad], x in the forward interval (ctx from the forward rule) and the parameters in the box.
    `inplace` lets the rule overwrite mid, rad and ctx (only without autograd; each ctx is used once).
    """
    def register(rule: BackwardRule) -> BackwardRule:
        _BACKWARD.update(dict.fromkeys(classes, rule))
        return rule
    return register


def _param(module: nn.Module, name: str) -> torch.Tensor | None:
    """module.<name> for a parameter, read from `_parameters` when it is there.

    The same tensor as the attribute for the classes the walk accepts: the torch classes define no class
    attribute of a parameter's name, and parametrize, which adds a property, takes the parameter out of
    `_parameters`. It skips nn.Module.__getattr__'s fallback search, which costs a microsecond per read here.
    """
    params = module._parameters
    return params[name] if name in params else getattr(module, name)


def _affine_forward(op: Callable[..., torch.Tensor], module: nn.Module, mid: torch.Tensor, rad: torch.Tensor,
                    gamma: float, inplace: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    # read once, and kept for the backward rule: a parametrized weight (torch.nn.utils.parametrizations) is
    # recomputed at every read, and spectral_norm in train mode gives a different weight each time, so more
    # reads would bound the midpoint, the radius and the backward product of different networks
    weight = cast(torch.Tensor, _param(module, "weight"))
    weight_abs = _weight_abs(weight, scratch=inplace)
    out_mid, out_rad = bilinear(op, mid, rad, weight, gamma, _param(module, "bias"), weight_abs=weight_abs)
    return out_mid, out_rad, (mid, weight, weight_abs)


@_forward_rule(nn.Linear)
def _linear_forward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, inplace: bool,
                    record: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    return _affine_forward(F.linear, module, mid, rad, gamma, inplace)


@_backward_rule(nn.Linear)
def _linear_backward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, ctx: tuple,
                     inplace: bool) -> Interval:
    # v^T W by the transposed weight interval; a full interval product when gamma > 0
    return bilinear(torch.matmul, mid, rad, ctx[1], gamma, weight_abs=ctx[2])


@_forward_rule(nn.Conv2d)
def _conv_forward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, inplace: bool,
                  record: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    return _affine_forward(_conv(cast(nn.Conv2d, module)), module, mid, rad, gamma, inplace)


@_backward_rule(nn.Conv2d)
def _conv_backward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, ctx: tuple,
                   inplace: bool) -> Interval:
    # the adjoint of the convolution (a transposed convolution) by the weight interval
    adjoint = _conv_transpose(cast(nn.Conv2d, module), mid, ctx[0])
    return bilinear(adjoint, mid, rad, ctx[1], gamma, weight_abs=ctx[2])


@_forward_rule(nn.ReLU)
def _relu_forward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, inplace: bool,
                  record: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    if inplace and not record:
        return (*_relu_inplace(mid, rad), ())
    # ReLU is monotone: the image of [l, u] is [relu(l), relu(u)]; relu(l) > 0 iff l > 0, so the relu'd
    # endpoints also give the derivative interval [1(l > 0), 1(u > 0)] for the backward pass
    lower, upper = endpoints(mid, rad, inplace=inplace)
    lower, upper = lower.relu_(), upper.relu_()
    return (*midrad(lower, upper), (lower, upper))  # ctx keeps lower and upper intact


@_backward_rule(nn.ReLU)
def _relu_backward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, ctx: tuple,
                   inplace: bool) -> Interval:
    # elementwise product with the derivative interval by the four-product rule, at every hidden ReLU. ctx holds
    # relu(l), relu(u) >= 0, so sign() is the float mask [1(l > 0), 1(u > 0)] in one pass (strict inequalities:
    # relu'(0) = 0 in autograd)
    masks = [c.sign_() if inplace else c.detach().sign() for c in ctx]
    product = mul_mask_interval(*endpoints(mid, rad, inplace=inplace), *masks, inplace=inplace)
    return midrad(*product, inplace=inplace)


@_forward_rule(nn.Flatten)
def _flatten_forward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, inplace: bool,
                     record: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    flat = cast(nn.Flatten, module)
    return mid.flatten(flat.start_dim, flat.end_dim), rad.flatten(flat.start_dim, flat.end_dim), (mid,)


@_backward_rule(nn.Flatten)
def _flatten_backward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, ctx: tuple,
                      inplace: bool) -> Interval:
    return mid.reshape(ctx[0].shape), rad.reshape(ctx[0].shape)


@_forward_rule(nn.AvgPool2d)
def _avgpool_forward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, inplace: bool,
                     record: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    # linear with non-negative weights: maps the midpoint and the radius separately
    return module(mid), module(rad), (mid,)


@_backward_rule(nn.AvgPool2d)
def _avgpool_backward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, ctx: tuple,
                      inplace: bool) -> Interval:
    pool = cast(nn.AvgPool2d, module)
    args = (ctx[0], _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding), pool.ceil_mode,
            pool.count_include_pad, pool.divisor_override)

    def adjoint(v: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.avg_pool2d_backward(v, *args)

    return adjoint(mid), adjoint(rad)  # non-negative weights: the radius maps by the same adjoint


@_forward_rule(Normalize)
def _normalize_forward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, inplace: bool,
                       record: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    norm = cast(Normalize, module)
    std = norm.std  # kept for the backward rule, like the weights above
    per = _per_channel(std, mid)
    return (mid - _per_channel(norm.mean, mid)) / per, rad / per, (std,)


@_backward_rule(Normalize)
def _normalize_backward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, ctx: tuple,
                        inplace: bool) -> Interval:
    std = _per_channel(ctx[0], mid)  # the std the forward rule used
    return mid / std, rad / std


@_forward_rule(*_BATCHNORM)
def _batchnorm_forward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, inplace: bool,
                       record: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    scale, shift = _channel_affine(module)
    return (mid * _per_channel(scale, mid) + _per_channel(shift, mid), rad * _per_channel(scale.abs(), rad),
            (scale,))


@_backward_rule(*_BATCHNORM)
def _batchnorm_backward(module: nn.Module, mid: torch.Tensor, rad: torch.Tensor, gamma: float, ctx: tuple,
                        inplace: bool) -> Interval:
    scale = ctx[0]  # the per-channel scale the forward rule used
    return mid * _per_channel(scale, mid), rad * _per_channel(scale.abs(), rad)


# for error messages; the identity layers and BatchNorm's mode noted
SUPPORTED_NAMES = ", ".join(cls.__name__ for cls in _FORWARD) + " (BatchNorm in eval mode), " + \
    ", ".join(cls.__name__ for cls in _IDENTITY) + " (identity in eval mode)"


class _Store(dict):
    """id(weight) -> (weakref to the weight, buffer like it); a dict subclass so callbacks can hold a weakref."""


_SCRATCH = threading.local()  # one _Store per thread


def _weight_abs(weight: torch.Tensor, *, scratch: bool) -> torch.Tensor:
    """|weight|; with `scratch` (no autograd) on CPU, written into a buffer kept per weight and thread.

    The values are recomputed on every call; only the storage is reused, and it stays valid until the next
    scratch call on the same weight in the same thread. A fresh weight-sized buffer per call costs page faults
    on CPU once the allocator has returned freed memory to the system, which for a 784-wide first layer took
    longer than both products of the layer's bound (other devices have caching allocators). A buffer is
    dropped with its weight.
    """
    if not scratch or not weight.is_cpu:
        return weight.abs()
    try:
        store = _SCRATCH.store
    except AttributeError:
        store = _SCRATCH.store = _Store()
    key = id(weight)
    entry = store.get(key)
    if entry is None or entry[0]() is not weight or entry[1].shape != weight.shape or \
            entry[1].dtype != weight.dtype:
        # the callback holds the store weakly (no cycle keeps a finished thread's buffers alive) and runs when the
        # weight dies, before its id can be reused; a stale entry of a reused id is replaced here anyway
        store_ref = weakref.ref(store)

        def drop(_: weakref.ref, key: int = key) -> None:
            alive = store_ref()
            if alive is not None:
                alive.pop(key, None)

        with torch.inference_mode(False):  # a normal tensor can be written under inference mode and outside it
            entry = (weakref.ref(weight, drop), torch.empty_like(weight))
        store[key] = entry
    return torch.abs(weight, out=entry[1])


def _relu_inplace(mid: torch.Tensor, rad: torch.Tensor) -> Interval:
    """The ReLU interval rule in four in-place passes over mid and rad (the IBP path without autograd).

    With h = max((m + r)/2, 0) the image of [m - r, m + r] is [m' - r', m' + r'] with m' = max(m, h) and
    r' = 2h - m': if m - r >= 0 that is (m, r); if m + r <= 0, (0, 0); otherwise both are (m + r)/2 (the image
    is [0, m + r]). Exact at r = 0. No temporary: on CPU an activation-sized allocation can cost page faults
    comparable to the arithmetic.
    """
    # lerp(m, r, 1/2) = r - (r - m)/2: finite r with m = -inf gives -inf (relu'd to 0), not inf - inf = NaN
    half = torch.lerp(mid, rad, 0.5, out=rad).clamp_(min=0.0)
    out_mid = torch.maximum(mid, half, out=mid)
    return out_mid, half.lerp_(out_mid, -1.0)  # h + (-1)(m' - h) = 2h - m'


def _conv(conv: nn.Conv2d):
    return functools.partial(F.conv2d, stride=conv.stride, padding=_conv_padding(conv), dilation=conv.dilation,
                             groups=conv.groups)


def _conv_transpose(conv: nn.Conv2d, out: torch.Tensor, inp: torch.Tensor):
    """The adjoint of `conv` as op(v, w): conv_transpose2d sized back to the conv's input `inp`."""
    stride, dilation, padding = _pair(conv.stride), _pair(conv.dilation), _conv_padding(conv)
    k = conv.kernel_size
    # a strided conv maps several input sizes to one output size; output_padding picks the recorded one
    output_padding = tuple(
        inp.shape[2 + i] - ((out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1)
        for i in range(2))
    return functools.partial(F.conv_transpose2d, stride=stride, padding=padding, output_padding=output_padding,
                             groups=conv.groups, dilation=dilation)


def _rule_class(module: nn.Module) -> type:
    """The supported class whose rules bound `module`, a layer the walk accepted: its class, or for a
    parametrized module the one base of parametrize's class."""
    cls = type(module)
    return cls if cls in _FORWARD else cls.__bases__[0]


def propagate(layers: list[tuple[str, nn.Module]], mid: torch.Tensor, rad: torch.Tensor, gamma: float, *,
              record: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[tuple]]:
    """Forward interval walk over `layers`; with `record`, every layer's ctx for `backpropagate`.

    `mid` and `rad` belong to the walk (callers pass fresh tensors, e.g. from `midrad`): without autograd the
    rules overwrite intermediate tensors instead of allocating new ones.
    """
    trace: list[tuple] = []
    inplace = not torch.is_grad_enabled()
    for _, module in layers:
        mid, rad, ctx = _FORWARD[_rule_class(module)](module, mid, rad, gamma, inplace, record)
        if record:
            trace.append(ctx)
    return mid, rad, trace


def backpropagate(layers: list[tuple[str, nn.Module]], trace: list[tuple], mid: torch.Tensor, rad: torch.Tensor,
                  gamma: float) -> Interval:
    """Backward interval walk: enclose v^T J(x) from an output interval v, given the forward `trace`.

    As in `propagate`, `mid` and `rad` belong to the walk; without autograd the rules work in place and consume
    the trace.
    """
    inplace = not torch.is_grad_enabled()
    for (_, module), ctx in zip(reversed(layers), reversed(trace), strict=True):
        mid, rad = _BACKWARD[_rule_class(module)](module, mid, rad, gamma, ctx, inplace)
    return mid, rad
