"""Model definitions: mlp, small-cnn, resnet18.

Every model is an nn.Sequential with named parts so objectives, Grad-CAM and neuron metrics can hook them:

    normalize    optional Normalize layer (absent when no normalization is asked for)
    features     the trunk: the last convolutional feature map of a CNN, the hidden layers of an MLP
    penultimate  the representation fed to the logit layer (an alias of `features` for the MLP)
    logits       the final Linear layer; models return logits, never probabilities

Plain Sequential composition (no custom forward) lets interval bounds walk the layers in order.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from torch import nn

from clearsight.errors import ConfigError
from clearsight.models.registry import MODELS
from clearsight.options import Count, ProperFraction


def _sequential(parts: list[tuple[str, nn.Module]], aliases: dict[str, str] | None = None) -> nn.Sequential:
    model = nn.Sequential(OrderedDict(parts))
    model.layer_aliases = dict(aliases or {})  # type: ignore[assignment]
    return model


@MODELS.register("mlp", input_shape=(784,), aliases={"penultimate": "features"},
                 description="fully connected ReLU network (tabular data, bounds)")
def mlp(*, num_classes: int, input_shape: Sequence[int], widths: Sequence[Count] = (256, 256)) -> list:
    """Flatten -> [Linear -> ReLU] per entry of `widths` -> Linear logits."""
    if not widths or any(int(w) < 1 for w in widths):
        raise ConfigError(f"mlp widths must be a non-empty list of positive ints, got {list(widths)}")
    layers: list[tuple[str, nn.Module]] = []
    fan_in = math.prod(input_shape)
    for i, w in enumerate(widths, 1):
        layers += [(f"fc{i}", nn.Linear(fan_in, int(w))), (f"relu{i}", nn.ReLU())]
        fan_in = int(w)
    return [("flatten", nn.Flatten()), ("features", nn.Sequential(OrderedDict(layers))),
            ("logits", nn.Linear(fan_in, num_classes))]


@MODELS.register("small-cnn", input_shape=(1, 28, 28),
                 description="conv32 5x5 - pool - conv64 5x5 - pool - fc1024 - dropout - fc (IR paper, MNIST)")
def small_cnn(*, num_classes: int, input_shape: Sequence[int], dropout: ProperFraction = 0.5,
              hidden: Count = 1024, pool: Literal["max", "avg"] = "max", channels: Sequence[Count] = (32, 64)) -> list:
    """The MNIST network of Noack et al. (arXiv 1912.03430), i.e. the TensorFlow tutorial CNN ("same" padding).

    `pool="avg"` swaps max pooling for average pooling, which interval bounds support. `channels` (the two
    convolutions' widths) and `hidden` shrink it: the quick study's (8, 16) and 128 cost about 15x less per pass.
    """
    if pool not in ("max", "avg"):
        raise ConfigError(f"small-cnn pool must be 'max' or 'avg', got {pool!r}")
    if len(channels) != 2 or not all(isinstance(n, int) and n > 0 for n in channels) or hidden < 1:
        raise ConfigError(f"small-cnn needs two positive channel widths and hidden >= 1, got channels "
                          f"{list(channels)!r}, hidden {hidden!r}")
    if len(input_shape) != 3:
        raise ConfigError(f"small-cnn needs image inputs [C, H, W], got input_shape {tuple(input_shape)}")
    c, h, w = input_shape
    pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
    c1, c2 = (int(n) for n in channels)
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, c1, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", pool_cls(2)),
        ("conv2", nn.Conv2d(c1, c2, 5, padding=2)), ("relu2", nn.ReLU()), ("pool2", pool_cls(2)),
    ]))
    flat = c2 * (h // 4) * (w // 4)
    penultimate = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()), ("fc", nn.Linear(flat, hidden)), ("relu", nn.ReLU())]))
    return [("features", features), ("penultimate", penultimate), ("dropout", nn.Dropout(dropout)),
            ("logits", nn.Linear(hidden, num_classes))]


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., arXiv 1603.05027): BN-ReLU-conv3x3, BN-ReLU-conv3x3 + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        # the projection shortcut sees the pre-activated input, the identity shortcut the raw input
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


@MODELS.register("resnet18", input_shape=(3, 32, 32), description="pre-activation ResNet-18 (CIFAR-10)")
def resnet18(*, num_classes: int, input_shape: Sequence[int], width: Count = 64) -> list:
    """Pre-activation ResNet-18 for 32x32 inputs: 3x3 stem, stages of 2 blocks at widths w, 2w, 4w, 8w."""
    if len(input_shape) != 3:
        raise ConfigError(f"resnet18 needs image inputs [C, H, W], got input_shape {tuple(input_shape)}")
    stages: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False))]
    cin = width
    for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], 1):
        cout = width * mult
        stages.append((f"layer{i}", nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1))))
        cin = cout
    stages += [("bn", nn.BatchNorm2d(cin)), ("relu", nn.ReLU())]
    penultimate = nn.Sequential(OrderedDict([("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]))
    return [("features", nn.Sequential(OrderedDict(stages))), ("penultimate", penultimate),
            ("logits", nn.Linear(cin, num_classes))]
