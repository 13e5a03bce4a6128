"""Models: `build(name, num_classes=..., input_shape=...)` returns an nn.Sequential producing logits.

See `clearsight.models.zoo` for the named parts (normalize, features, penultimate, logits) every model has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from clearsight.errors import ConfigError
from clearsight.models import zoo
from clearsight.models.layers import Normalize
from clearsight.models.registry import MODELS

BUILD_ARGS = ("num_classes", "input_shape")  # every builder takes these; its other keyword-only ones are options


def build(name: str, *, num_classes: int, input_shape: Sequence[int] | None = None,
          normalize: tuple[Sequence[float], Sequence[float]] | None = None, **options: Any) -> nn.Sequential:
    """Build model `name` for `num_classes` classes.

    Args:
        input_shape: shape of one input without the batch axis; None -> the model's default
            ((784,) mlp, (1, 28, 28) small-cnn, (3, 32, 32) resnet18).
        normalize: optional (mean, std) per channel/feature, applied by a Normalize layer inside the model.
        options: model-specific keyword options (see `model_options(name)`), e.g. mlp `widths`.
    """
    fn = MODELS.get(name)
    MODELS.check_options(name, options, exclude=BUILD_ARGS)
    if int(num_classes) < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    shape = tuple(int(s) for s in (input_shape or MODELS.meta(name)["input_shape"]))
    parts = fn(num_classes=int(num_classes), input_shape=shape, **options)
    if normalize is not None:
        parts = [("normalize", Normalize(*normalize)), *parts]
    return zoo._sequential(parts, aliases=MODELS.meta(name).get("aliases"))


def model_options(name: str) -> dict[str, Any]:
    """Keyword options of model `name` beyond num_classes/input_shape, with their defaults."""
    return MODELS.options(name, exclude=BUILD_ARGS)


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (a dotted path from named_modules, or an alias such as "penultimate")."""
    modules = dict(model.named_modules())
    resolved = getattr(model, "layer_aliases", {}).get(name, name)
    if resolved in modules and resolved != "":
        return modules[resolved]
    valid = [n for n in modules if n] + list(getattr(model, "layer_aliases", {}))
    raise ConfigError(f"model has no layer {name!r}; valid layers: {', '.join(valid)}")


__all__ = ["MODELS", "Normalize", "build", "get_layer", "model_options"]
