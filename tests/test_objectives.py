import functools

import pytest
import torch

from clearsight import objectives
from clearsight.errors import ConfigError
from clearsight.models import build


def test_standard_is_cross_entropy_literal():
    torch.manual_seed(1)
    model = build("mlp", num_classes=4, input_shape=(6,), widths=[8]).eval()
    x, y = torch.rand(5, 6), torch.tensor([0, 3, 1, 1, 2])
    out = objectives.build("standard")(model, x, y)
    z = model(x)
    literal = -sum(z[i, y[i]] - torch.log(torch.exp(z[i]).sum()) for i in range(5)) / 5  # -mean log softmax
    torch.testing.assert_close(out.loss, literal)
    assert out.logs == {"ce": pytest.approx(float(literal.detach()))}
    torch.testing.assert_close(out.logits, z.detach())
    smoothed = objectives.build("standard", label_smoothing=0.2)(model, x, y).loss
    target = torch.full((5, 4), 0.2 / 4).scatter_add_(1, y[:, None], torch.full((5, 1), 0.8))
    torch.testing.assert_close(smoothed, -(target * z.log_softmax(1)).sum(1).mean())


def test_build_binds_options_and_describe_records_them():
    obj = objectives.build("standard", label_smoothing=0.1)
    assert isinstance(obj, functools.partial) and obj.keywords == {"label_smoothing": 0.1}
    assert objectives.describe(obj) == {"name": "standard", "label_smoothing": 0.1}
    assert objectives.describe(objectives.build("standard")) == {"name": "standard", "label_smoothing": 0.0}
    with pytest.raises(ConfigError, match="valid options: label_smoothing"):
        objectives.build("standard", lam=1.0)


@pytest.mark.parametrize("name", objectives.OBJECTIVES.names())
def test_every_objective_declares_metadata(name):
    meta = objectives.OBJECTIVES.meta(name)
    assert isinstance(meta["needs_double_backprop"], bool)
    assert meta["description"]
