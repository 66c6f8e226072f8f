import pytest

from scaleprotoseg.config import RunConfig, load_config
from scaleprotoseg.errors import ConfigError


def test_repository_params_resolve(params):
    cfg = load_config(params)
    assert cfg.dataset == params["experiment"]["dataset"] and cfg.method == "deeplab"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"experiment.dataset": "pascl"}, "Unknown dataset 'pascl' (experiment.dataset)"),
        ({"experiment.methods": ["deeplab", "protoseeg"]}, "experiment.methods"),
        ({"presets.embedded.deeplab.steps": -5}, "presets.embedded.deeplab.steps must be > 0"),
        ({"presets.embedded.deeplab.steps": 2.5}, "presets.embedded.deeplab.steps must be an integer"),
        ({"presets.embedded.deeplab.lr": "fast"}, "presets.embedded.deeplab.lr must be a number"),
        ({"presets.embedded.data.flip": "yes"}, "presets.embedded.data.flip must be true or false"),
        ({"presets.embedded.data.crop": 400}, "presets.embedded.data.crop (400) is larger than the embedded images"),
        ({"presets.embedded.data.scale_range": [1.5, 0.5]}, "presets.embedded.data.scale_range"),
        ({"presets.embedded.model.backbone": "vgg"}, "presets.embedded.model.backbone is 'vgg'"),
        ({"presets.embedded.model.aspp_rates": []}, "presets.embedded.model.aspp_rates"),
        ({"presets.embedded.deeplab.optimizer": "rmsprop"}, "presets.embedded.deeplab.optimizer"),
        ({"experiment.device": "tpu"}, "experiment.device"),
    ],
)
def test_bad_values_name_the_key(params, overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(params, overrides=overrides)
    assert fragment in str(err.value)


def test_unknown_method_argument(params):
    with pytest.raises(ConfigError, match="Unknown method 'segformer'"):
        load_config(params, method="segformer")


def test_unknown_and_missing_keys_are_listed(params):
    params["presets"]["embedded"]["deeplab"]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\]; valid keys"):
        load_config(params)
    del params["presets"]["embedded"]["deeplab"]["stepz"]
    del params["presets"]["embedded"]["deeplab"]["lr"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['lr'\]"):
        load_config(params)


def test_override_of_missing_key_is_rejected(params):
    with pytest.raises(ConfigError, match="no key 'nope'"):
        load_config(params, overrides={"presets.embedded.deeplab.nope": 1})
