import pytest
import torch
from torch import nn

import clearsight as cs
from clearsight.errors import ConfigError
from clearsight.models import MODELS, Normalize, build, get_layer


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_small_cnn_is_the_ir_paper_network():
    model = build("small-cnn", num_classes=10)
    # closed form: conv 1->32 5x5, conv 32->64 5x5, fc 7*7*64 -> 1024, fc 1024 -> 10 ("same" padding)
    expected = (25 * 32 + 32) + (25 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
    assert n_params(model) == expected
    assert isinstance(get_layer(model, "features.pool1"), nn.MaxPool2d)
    assert isinstance(build("small-cnn", num_classes=10, pool="avg").features.pool1, nn.AvgPool2d)
    assert get_layer(model, "dropout").p == 0.5
    slim = build("small-cnn", num_classes=10, channels=(8, 16), hidden=128)  # the quick study's
    assert n_params(slim) == (25 * 8 + 8) + (25 * 8 * 16 + 16) + (7 * 7 * 16 * 128 + 128) + (128 * 10 + 10)
    with pytest.raises(ConfigError, match="two positive channel widths"):
        build("small-cnn", num_classes=10, channels=(8,))
    with pytest.raises(ConfigError, match=r"channels\[1\] must be an int >= 1, got 0"):
        build("small-cnn", num_classes=10, channels=(8, 0))
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, 64, 7, 7)  # the Grad-CAM layer
    assert model.penultimate(model.features(x)).shape == (3, 1024)


def test_mlp_widths_and_alias():
    model = build("mlp", num_classes=2, input_shape=(61,), widths=(256, 256))
    assert n_params(model) == (61 * 256 + 256) + (256 * 256 + 256) + (256 * 2 + 2)
    assert get_layer(model, "penultimate") is model.features
    assert model(torch.rand(5, 61)).shape == (5, 2)
    image_mlp = build("mlp", num_classes=10, input_shape=(1, 28, 28), widths=[32])
    assert image_mlp(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_resnet18_preactivation_shapes_and_size():
    model = build("resnet18", num_classes=10)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert model.features(x).shape == (2, 512, 4, 4)
    # pre-activation ResNet-18 on CIFAR: 11.17M parameters (stem 3x3, no bias; final BN before the pool)
    assert n_params(model) == 11_172_170
    first_block = model.features.layer1[0]
    assert list(first_block._modules)[:2] == ["bn1", "relu1"]  # BN-ReLU before the first conv


def test_normalize_layer_math_and_placement():
    model = build("small-cnn", num_classes=10, normalize=([0.1307], [0.3081]))
    assert next(iter(model._modules)) == "normalize"
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model.normalize(x), (x - 0.1307) / 0.3081)
    tab = Normalize([0.0, 1.0], [2.0, 4.0])
    torch.testing.assert_close(tab(torch.tensor([[2.0, 5.0]])), torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ConfigError, match="positive"):
        Normalize([0.0], [0.0])


def test_bad_options_name_the_valid_ones():
    with pytest.raises(ConfigError, match="valid options: dropout, hidden, pool, channels"):
        build("small-cnn", num_classes=10, widths=[3])
    with pytest.raises(ConfigError, match="pool must be"):
        build("small-cnn", num_classes=10, pool="median")
    with pytest.raises(ConfigError, match="no layer 'conv9'.*features.conv1"):
        get_layer(build("small-cnn", num_classes=10), "conv9")
    with pytest.raises(cs.errors.UnknownNameError, match="Valid models: mlp, resnet18, small-cnn"):
        build("vgg", num_classes=10)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_returns_logits_and_has_named_parts(name):
    shape = MODELS.meta(name)["input_shape"]
    model = build(name, num_classes=7, input_shape=shape)
    model.eval()
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # logits, not probabilities
    for part in ("features", "penultimate", "logits"):
        get_layer(model, part)
