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
        ({"presets.embedded.deeplab.steps": -5}, "presets.embedded.deeplab.steps must be a finite number > 0"),
        ({"presets.embedded.deeplab.lr": float("inf")}, "presets.embedded.deeplab.lr must be a finite number > 0"),
        ({"presets.embedded.runtime.log_every": 0}, "presets.embedded.runtime.log_every must be a finite number > 0"),
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
    del params["defaults"]["deeplab"]["lr"]
    with pytest.raises(ConfigError, match=r"defaults.deeplab: missing key\(s\) \['lr'\]"):
        load_config(params)


def test_override_of_missing_key_is_rejected(params):
    with pytest.raises(ConfigError, match="no key 'nope'"):
        load_config(params, overrides={"presets.embedded.deeplab.nope": 1})


def test_presets_are_defaults_with_their_differences_on_top(params):
    """`folder` is the embedded CPU preset without copying it; a paper preset changes only what it lists."""
    emb, fol = load_config(params, "embedded", "protoseg"), load_config(params, "folder", "protoseg")
    assert emb.to_dict() | {"dataset": None, "extra": None} == fol.to_dict() | {"dataset": None, "extra": None}
    pascal = load_config(params, "pascal", "protoseg")
    assert pascal.train.lr_joint_trunk == 2.5e-5 and pascal.project.rule == "any"
    assert pascal.train.loss_kld == params["defaults"]["protoseg"]["loss_kld"]  # not listed: from defaults


def test_a_preset_names_every_section(params):
    del params["presets"]["pascal"]["eval"]
    with pytest.raises(ConfigError, match=r"presets.pascal: missing section\(s\) \['eval'\]; write `eval: {}`"):
        load_config(params, "pascal")


def test_an_override_may_add_a_defaults_key_to_a_preset_section(params):
    cfg = load_config(params, "embedded", "deeplab", overrides={"presets.embedded.deeplab.steps": 7})
    assert cfg.train.steps == 7 and params["presets"]["embedded"]["deeplab"] == {}  # the caller's dict untouched


def test_data_sources_are_checked_with_their_types(params):
    from scaleprotoseg.config import data_source

    params["data_sources"]["pascal"]["skip_corrupt"] = "false"
    with pytest.raises(ConfigError, match="data_sources.pascal.skip_corrupt must be true or false"):
        data_source(params, "pascal")
    params["data_sources"]["pascal"]["skip_corrupt"] = False
    params["data_sources"]["pascal"]["workers"] = 0
    with pytest.raises(ConfigError, match="data_sources.pascal.workers must be a finite number > 0"):
        data_source(params, "pascal")


@pytest.mark.parametrize("seeds,fragment", [
    ([], "non-empty list"), (5, "non-empty list"), ([1, "2"], "non-empty list"), ([1, True], "non-empty list"),
    ([-1], "non-negative"), ([3, 3], "lists a seed twice"),
])
def test_seeds_are_a_checked_list(params, seeds, fragment):
    with pytest.raises(ConfigError, match=f"experiment.seeds.*{fragment}"):
        load_config(params, overrides={"experiment.seeds": seeds})


def test_each_seed_is_a_run_and_the_old_single_seed_key_says_what_changed(params):
    seeds = [11, 22]
    cfgs = [load_config(params, method="scaleprotoseg_groups", seed=s, overrides={"experiment.seeds": seeds}) for s in seeds]
    assert [c.seed for c in cfgs] == seeds and [c.start.seed for c in cfgs] == seeds  # groups start from their seed
    assert load_config(params, overrides={"experiment.seeds": seeds}).seed == 11  # None: the first
    with pytest.raises(ConfigError, match="seed 33 is not in experiment.seeds"):
        load_config(params, seed=33, overrides={"experiment.seeds": seeds})
    old = {**params, "experiment": {k: v for k, v in params["experiment"].items() if k != "seeds"} | {"seed": 5}}
    with pytest.raises(ConfigError, match=r"experiment.seed is now experiment.seeds.*seeds: \[5\]"):
        load_config(old)


def test_export_only_for_datasets_with_an_evaluation_server(params):
    with pytest.raises(ConfigError, match="embedded has no evaluation server.*experiment.export: \\[\\]"):
        load_config(params, overrides={"experiment.export": ["scaleprotoseg"]})
    with pytest.raises(ConfigError, match="experiment.export lists 'protoseg', which does not run"):
        load_config(params, overrides={"experiment.export": ["protoseg"], "experiment.methods": ["deeplab"],
                                       "experiment.groups": []})
    cfg = load_config(params, dataset="pascal", overrides={"experiment.export": ["deeplab"]})
    assert cfg.dataset == "pascal"
