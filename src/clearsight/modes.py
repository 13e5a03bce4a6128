"""Context managers that change model state and always restore it, also after an exception."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from clearsight.errors import ConfigError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` (every submodule) in eval mode; restore each submodule's own flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off `requires_grad` of every parameter (e.g. while attacking inputs); restore each flag on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def channels_last(model: nn.Module, x: torch.Tensor) -> Iterator[bool]:
    """Hold the 4-d parameters and buffers of `model` in channels-last (NHWC) layout while inputs like `x` pass.

    On CPU, convolutions and max pooling run 10-20% faster in channels-last layout than in the default NCHW one
    (BENCHMARKS.md), which is most of an attack's time. Only a layout changes, not the values: each tensor is
    swapped for a channels-last copy of its data, and on exit the original data (same storage) is put back, so
    references to the parameters and optimizer state stay valid. The swap is for frozen use (attacks): an
    update made to a swapped tensor inside the block is discarded on exit, and other threads using the same
    model meanwhile see the swapped layout.

    Yields whether any tensor was swapped. None is for inputs that are not images [B, C, H, W], for tensors not
    on the CPU (the gain is measured there only), or when the model does not compute the same outputs in that
    layout: a probe runs it on two samples of `x` in both layouts (eval mode, no autograd, the CPU random state
    restored afterwards) and keeps channels-last only if both runs succeed and agree to float rounding. So a
    model that calls `.view` on a convolution's output, or reads raw memory, is left as it is. The probe runs
    the model's forward (and its hooks) twice more.
    """
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        if x.dim() == 4 and x.shape[0] > 0 and x.device.type == "cpu":
            probe = x[:2]  # two samples: some reshapes only fail once the batch axis is not of size 1
            with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
                reference = _outputs(model, probe)
                if reference is not None:
                    _swap(model, swapped)
                    if swapped and not _agree(_outputs(model, probe), reference):
                        _restore(swapped)
                        swapped.clear()
        yield bool(swapped)
    finally:
        _restore(swapped)


def _swap(model: nn.Module, swapped: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for m in model.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and t.dim() == 4 and t.device.type == "cpu" and t.stride() != _nhwc_strides(t.shape):
                swapped.append((t, t.data))  # recorded first: an interrupted clone still restores
                t.data = t.data.clone(memory_format=torch.channels_last)


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """model(x) if it runs and returns a tensor, else None (its errors surface again in the caller's own run)."""
    try:
        out = model(x)
    except Exception:  # any failure only means: do not use the layout
        return None
    return out if isinstance(out, torch.Tensor) else None


def _agree(out: torch.Tensor | None, reference: torch.Tensor) -> bool:
    """Equal up to the float rounding of other convolution kernels (relative to the outputs' scale)."""
    if out is None or out.shape != reference.shape:
        return False
    scale = 1.0 + float(reference.abs().max()) if reference.numel() else 1.0
    return bool(((out - reference).abs() <= 1e-4 * scale).all())


def _nhwc_strides(shape: torch.Size) -> tuple[int, ...]:
    # explicit strides, not is_contiguous(channels_last): with one channel both layouts pass that test, but
    # convolutions choose their kernels from the strides' order, so a [32, 1, 5, 5] weight must be restrided too
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def _restore(swapped: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for t, data in swapped:
        t.data = data


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu", "cuda", "cuda:N", "mps" as torch understands them."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no usable CUDA; use auto or cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s), numbered from 0")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asked for, but MPS is not available here; use auto or cpu")
    return resolved
