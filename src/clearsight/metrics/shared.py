"""Work shared between the rows of one evaluation batch: attribution maps, explanation attacks, gradient bounds.

The evaluation driver opens `batch_cache()` around the rows of a batch. Inside it, `shared(key, compute, *args)`
computes a value once per distinct (key, arguments) and hands the same value to every later row: the map of
smoothgrad on this batch is made once and scored by deletion, gini, sensitivity and localisation rows alike.
Outside a cache (a metric called directly) `shared` just computes.

Arguments are identified by object for modules and callables, and for tensors by storage, shape, strides, dtype
and version counter: a detached view of the batch (same data) hits, a perturbed copy or an in-place change does
not. The cache holds on to its arguments, so no other tensor can reuse their memory while it is open. A metric
that changes a model's parameters for a while (randomisation) must not route that model through `shared`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_CACHE: ContextVar[dict[tuple, tuple[tuple, Any]] | None] = ContextVar("clearsight_batch_cache", default=None)


@contextmanager
def batch_cache() -> Iterator[None]:
    """Share work between the metric calls inside the block (see the module docstring)."""
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def shared(key: Hashable, compute: Callable[[], T], *args: Any) -> T:
    """`compute()`, or the value it gave for the same key and arguments earlier in the open batch cache."""
    cache = _CACHE.get()
    if cache is None:
        return compute()
    ident = (key, *(_identity(a) for a in args))
    if None in ident[1:]:  # an argument that cannot be identified safely: no sharing
        return compute()
    if ident not in cache:
        cache[ident] = (args, compute())
    return cache[ident][1]


def clean_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f(x) under inference mode, once per batch cache: the evaluation driver's finiteness check and the accuracy
    row share one forward pass."""
    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return shared("clean_logits", forward, model, x)


def _identity(value: Any) -> Hashable | None:
    if isinstance(value, torch.Tensor):
        if value.is_inference():  # no version counter: an in-place change could not be seen
            return None
        return ("tensor", value.data_ptr(), tuple(value.shape), value.stride(), value.dtype, str(value.device),
                value._version)
    return ("object", id(value))
