"""Saliency examples of a trained model: the maps the study report shows side by side for every method.

    save_examples(model, test_ds, "cell/examples.safetensors", attributions=["gradient", ("smoothgrad", {"n": 20})])
    ex = load_examples("cell/examples.safetensors")      # ex.x [E, ...], ex.maps["smoothgrad:n=20"] [E, ...]

The examples are picked from the data alone (`pick`), never from the model, so every method of a study shows the
same images: the first sample of each class in class order, then the samples that follow in data order. Each
attribution explains the true class. One safetensors file holds them (written atomically, `clearsight.io`):

    x                       inputs [E, ...]
    y, pred                 labels and the model's predictions, int64 [E]
    map/<attribution key>   one map per attribution [E, ...] (shaped like x, or [E, 1, H, W] for grad_cam);
                            the key is the attribution's text in row keys (`clearsight.specs.spec_text`)
    metadata                attributions (the specs, in order), indices (into the data), dataset, split, seed

This module only attributes and reads data; the report reads the file with `load_examples`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clearsight import io
from clearsight.attributions import ATTRIBUTIONS
from clearsight.data.base import as_array_dataset
from clearsight.errors import CheckpointError, ConfigError
from clearsight.modes import eval_mode, resolve_device
from clearsight.specs import Spec, is_spec, plain, spec, spec_text

MAP_PREFIX = "map/"


@dataclass(frozen=True)
class Examples:
    """What `save_examples` wrote: inputs, labels, predictions and one map per attribution key (in order)."""

    x: torch.Tensor
    y: torch.Tensor
    pred: torch.Tensor
    maps: dict[str, torch.Tensor]
    attributions: list[Spec]
    indices: list[int]
    metadata: dict[str, Any]


def pick(y: torch.Tensor, count: int) -> torch.Tensor:
    """Indices int64 [min(count, N)]: the first sample of each class (class order), then further samples in order.

    Depends on the labels alone, so every model evaluated on the same data gets the same examples.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"examples count must be a positive integer, got {count!r}")
    y = y.detach().cpu().long()
    first = [int((y == c).nonzero()[0]) for c in torch.unique(y).tolist()]  # unique is sorted: class order
    chosen, order = set(first), list(first)
    for i in range(y.numel()):
        if len(order) >= count:
            break
        if i not in chosen:
            order.append(i)
    return torch.tensor(order[:count], dtype=torch.long)


def save_examples(model: nn.Module, data: Any, path: str | Path, *, attributions: Sequence[Any], count: int = 8,
                  seed: int = 0, device: str | torch.device = "auto") -> Path:
    """Attribute `count` examples of `data` (see `pick`) for their true class; write them to `path` atomically.

    Args:
        data: a dataset of (x, y) (an `ArrayDataset` keeps its name and split in the metadata).
        attributions: specs of registered attributions: a name, (name, options) or {name: ..., option: ...}.
        seed: seeds the noise of the attributions that draw any (smoothgrad, vargrad), one stream each, so a
            file is repeatable and adding an attribution does not change another's maps.
        device: where the model runs ("auto": CUDA when available); the model stays there, its flags restored.

    Returns the path written.
    """
    specs = [spec(a, what="examples attribution") for a in attributions]
    if not specs:
        raise ConfigError("examples need at least one attribution, e.g. attributions=['gradient']")
    keys = [spec_text(s) for s in specs]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"examples attributions repeat: {keys}")
    ds = as_array_dataset(data)
    if len(ds) == 0:
        raise ConfigError("examples need a dataset with at least one sample")
    dev = resolve_device(device)
    idx = pick(ds.y, count)
    x, y = ds.x[idx].to(dev), ds.y[idx].to(dev)
    model.to(dev)
    with eval_mode(model):
        with torch.no_grad():
            pred = model(x).argmax(1)
        maps = {MAP_PREFIX + key: _bind(s, dev, seed)(model, x, y).detach() for key, s in zip(keys, specs, strict=True)}
    tensors = {"x": x, "y": y, "pred": pred, **maps}
    meta = {"attributions": plain(specs), "indices": idx.tolist(), "dataset": ds.name, "split": ds.split,
            "seed": int(seed)}
    out = Path(path)
    io.save_weights(out, tensors, metadata=meta)
    return out


def _bind(attribution: Spec, device: torch.device, seed: int) -> Callable[..., torch.Tensor]:
    """The attribution with its options bound, nested specs (smoothgrad's base) bound too, and a generator of its
    own where it draws noise (crc32 of the seed and the spec: repeatable across processes, unlike hash())."""
    name, options = attribution
    accepted = ATTRIBUTIONS.options(name)
    bound = dict(options)
    for key, value in options.items():
        if callable(accepted.get(key)) and (isinstance(value, str) or is_spec(value) or isinstance(value, Mapping)):
            bound[key] = _bind(spec(value, what=f"{name} {key}"), device, seed)
    if "generator" in accepted and bound.get("generator") is None:
        stream = f"{seed}/examples/{spec_text(attribution)}".encode()
        bound["generator"] = torch.Generator(device=device).manual_seed(zlib.crc32(stream))
    return ATTRIBUTIONS.bind(name, **bound)


def load_examples(path: str | Path) -> Examples:
    """The examples `save_examples` wrote to `path` (on the CPU).

    Raises:
        CheckpointError: the file is missing, unreadable or not an examples file.
    """
    path = Path(path)
    tensors, meta = io.load_tensors(path)
    missing = [k for k in ("x", "y", "pred") if k not in tensors] + [k for k in ("attributions", "indices")
                                                                      if k not in meta]
    if missing:
        raise CheckpointError(f"{path} is not an examples file (no {missing[0]!r}); write it with save_examples")
    specs = [spec(s, what="examples attribution") for s in meta["attributions"]]
    maps = {spec_text(s): tensors.get(MAP_PREFIX + spec_text(s)) for s in specs}
    absent = [k for k, v in maps.items() if v is None]
    if absent:
        raise CheckpointError(f"{path} lists attribution {absent[0]!r} but holds no map of it")
    return Examples(tensors["x"], tensors["y"], tensors["pred"], {k: v for k, v in maps.items() if v is not None},
                    specs, [int(i) for i in meta["indices"]], meta)
