from pathlib import Path

import pytest

from clearsight.config import TrainConfig, build_config, resolve
from clearsight.errors import ConfigError, UnknownNameError


def test_resolve_makes_every_default_explicit():
    cfg = resolve({})
    doc = cfg.to_dict()
    assert doc["data"] == {"name": "mnist-mini", "root": None, "download": False}
    assert doc["model"] == {"name": "small-cnn", "dropout": 0.5, "hidden": 1024, "pool": "max", "channels": (32, 64),
                            "normalize": None}
    assert doc["objective"] == {"name": "standard", "label_smoothing": 0.0}
    assert doc["train"]["lr"] == TrainConfig().lr and doc["train"]["schedule"] == "cosine"


def test_set_values_are_parsed_and_type_checked():
    cfg = build_config(overrides=["train.lr=0.01", "train.epochs=3", "train.nesterov=false", "model.name=mlp",
                                  "model.widths=[64, 32]", "train.milestones=[0.3, 0.6]", "train.grad_clip=1"])
    assert cfg.train.lr == 0.01 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.train.nesterov is False
    assert cfg.model.options["widths"] == [64, 32]
    assert cfg.train.milestones == (0.3, 0.6) and cfg.train.grad_clip == 1.0
    for bad, message in [("train.epochs=2.5", "train.epochs must be an int >= 1, got 2.5"),
                         ("train.lr=fast", "train.lr must be a finite number > 0, got 'fast'"),
                         ("train.nesterov=2", "train.nesterov must be true or false, got 2"),
                         ("model.dropout=high", r"model.dropout must be a finite number in \[0, 1\), got 'high'"),
                         ("train.optimizer=rmsprop", "train.optimizer must be one of 'sgd', 'adam', got 'rmsprop'")]:
        with pytest.raises(ConfigError, match=message):
            build_config(overrides=[bad])


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"train has no option 'learning_rate'; valid keys: epochs, batch_size"):
        build_config(overrides=["train.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"model 'small-cnn' has no option 'widths'; valid keys: name, dropout"):
        build_config(overrides=["model.widths=[3]"])
    with pytest.raises(ConfigError, match="unknown config section 'optim'.*data, model, objective, train"):
        build_config(overrides=["optim.lr=0.1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        build_config(overrides=["lr=0.1"])
    with pytest.raises(UnknownNameError, match="Valid datasets:.*mnist-mini"):
        build_config(overrides=["data.name=imagenet"])
    with pytest.raises(ConfigError, match="has no option 'source'"):
        build_config(overrides=["data.source=mnist"])  # mnist-mini has no source option; decoy-mnist does
    assert build_config(overrides=["data.name=decoy-mnist", "data.source=mnist"]).data.options["source"] == "mnist"


def test_yaml_file_then_overrides_later_wins(tmp_path: Path):
    f = tmp_path / "run.yaml"
    f.write_text("model: {name: mlp, widths: [16]}\ntrain: {lr: 0.2, epochs: 4}\n")
    cfg = build_config(config_file=f, overrides=["train.lr=0.3"], base={"data": {"name": "mnist-mini"}})
    assert cfg.model.name == "mlp" and cfg.model.options["widths"] == [16]
    assert cfg.train.lr == 0.3 and cfg.train.epochs == 4
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(config_file=f)
    f.write_text("train: {lr: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(config_file=f)
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_config(config_file=tmp_path / "missing.yaml")


def test_train_config_validates_values():
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(ConfigError, match="keep=best"):
        TrainConfig(keep="best", val_fraction=0.0)
    with pytest.raises(ConfigError, match="train.epochs must be an int >= 1, got 0"):
        TrainConfig(epochs=0)
