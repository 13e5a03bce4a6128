"""Saliency examples: the pick is the labels' alone, maps are the attributions' (closed form on a linear model),
the file round-trips and is repeatable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import clearsight as cs
from clearsight.errors import CheckpointError, ConfigError
from clearsight.examples import load_examples, pick, save_examples


def test_pick_takes_the_first_of_each_class_in_class_order_then_the_rest_in_order():
    y = torch.tensor([3, 1, 1, 0, 3, 2, 0])
    assert pick(y, 3).tolist() == [3, 1, 5]  # the first 0, the first 1, the first 2
    assert pick(y, 4).tolist() == [3, 1, 5, 0]  # all classes, then sample 0 (a 3, the first sample of its class)
    assert pick(y, 6).tolist() == [3, 1, 5, 0, 2, 4]
    assert pick(y, 50).tolist() == [3, 1, 5, 0, 2, 4, 6]  # never more than there are
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="positive integer"):
            pick(y, bad)


def _linear(features: int = 12, classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def _data(n: int = 20, classes: int = 3) -> cs.data.ArrayDataset:
    g = torch.Generator().manual_seed(2)
    return cs.data.ArrayDataset(torch.rand(n, 1, 3, 4, generator=g), torch.randint(0, classes, (n,), generator=g),
                                classes=[str(c) for c in range(classes)], name="toy", split="test")


def test_maps_are_the_true_class_attributions_in_closed_form_on_a_linear_model(tmp_path):
    model, data = _linear(), _data()
    path = save_examples(model, data, tmp_path / "ex.safetensors", count=5, device="cpu",
                         attributions=["gradient", ("smoothgrad", {"n": 3}), {"name": "input_x_gradient"}])
    ex = load_examples(path)
    idx = pick(data.y, 5)
    assert ex.indices == idx.tolist()
    assert torch.equal(ex.x, data.x[idx]) and torch.equal(ex.y, data.y[idx])
    weight = model[1].weight.detach()
    assert torch.equal(ex.pred, (data.x[idx].flatten(1) @ weight.T + model[1].bias.detach()).argmax(1))
    rows = weight[ex.y].reshape(ex.x.shape)  # d f_y / d x of a linear model: the label's weight row
    assert list(ex.maps) == ["gradient", "smoothgrad:n=3", "input_x_gradient"]
    torch.testing.assert_close(ex.maps["gradient"], rows)
    torch.testing.assert_close(ex.maps["smoothgrad:n=3"], rows)  # noise moves no gradient of a linear model
    torch.testing.assert_close(ex.maps["input_x_gradient"], ex.x * rows)
    assert ex.attributions == [("gradient", {}), ("smoothgrad", {"n": 3}), ("input_x_gradient", {})]
    assert ex.metadata["dataset"] == "toy" and ex.metadata["split"] == "test"


def test_examples_are_the_same_images_for_every_model_and_repeat_with_the_seed(tmp_path):
    data = _data()
    torch.manual_seed(3)
    relu = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    relu.train()
    specs = [("smoothgrad", {"n": 4, "sigma": 0.3})]
    a = load_examples(save_examples(relu, data, tmp_path / "a.safetensors", attributions=specs, device="cpu"))
    b = load_examples(save_examples(relu, data, tmp_path / "b.safetensors", attributions=specs, device="cpu"))
    c = load_examples(save_examples(relu, data, tmp_path / "c.safetensors", attributions=specs, seed=1,
                                    device="cpu"))
    other = load_examples(save_examples(_linear(), data, tmp_path / "d.safetensors", attributions=specs,
                                        device="cpu"))
    assert relu.training  # the mode is restored
    assert a.indices == other.indices and torch.equal(a.x, other.x)
    assert torch.equal(a.maps["smoothgrad:n=4,sigma=0.3"], b.maps["smoothgrad:n=4,sigma=0.3"])
    assert not torch.equal(a.maps["smoothgrad:n=4,sigma=0.3"], c.maps["smoothgrad:n=4,sigma=0.3"])


def test_bad_examples_input_and_files_get_clear_errors(tmp_path):
    model, data = _linear(), _data()
    with pytest.raises(ConfigError, match="at least one attribution"):
        save_examples(model, data, tmp_path / "x.safetensors", attributions=[])
    with pytest.raises(ConfigError, match="repeat"):
        save_examples(model, data, tmp_path / "x.safetensors", attributions=["gradient", ("gradient", {})])
    with pytest.raises(cs.errors.UnknownNameError, match="gradiant"):
        save_examples(model, data, tmp_path / "x.safetensors", attributions=["gradiant"])
    assert not (tmp_path / "x.safetensors").exists()
    cs.io.save_weights(tmp_path / "w.safetensors", {"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="not an examples file"):
        load_examples(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_examples(tmp_path / "missing.safetensors")


def test_tabular_examples_keep_their_feature_shape(tmp_path):
    g = torch.Generator().manual_seed(4)
    data = cs.data.ArrayDataset(torch.rand(9, 7, generator=g), torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 0]),
                                classes=["no", "yes"], name="rows", split="test")
    torch.manual_seed(5)
    model = nn.Linear(7, 2)
    ex = load_examples(save_examples(model, data, tmp_path / "t.safetensors", attributions=["gradient"], count=3,
                                     device="cpu"))
    assert ex.indices == [2, 0, 1] and ex.maps["gradient"].shape == (3, 7)
    torch.testing.assert_close(ex.maps["gradient"], model.weight.detach()[data.y[[2, 0, 1]]])
