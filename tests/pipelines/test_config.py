from pathlib import Path

import pytest

from selfsup.errors import ConfigError
from selfsup.pipelines.config import (
    RunConfig,
    load_config,
    load_saved_config,
    save_config,
    valid_keys,
    with_section_overrides,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    assert isinstance(load_config(recipe), RunConfig)


def test_demo_inherits_from_its_base_recipe():
    demo = load_config(CONFIGS / "demo.yaml")
    base = load_config(CONFIGS / "simclr_resnet18_cifar10.yaml")
    assert demo.name == "demo" and demo.model.cifar_stem is False
    assert demo.optim.name == base.optim.name == "lars"  # inherited
    assert demo.optim.weight_decay == base.optim.weight_decay


def test_dotted_overrides_are_typed():
    config = load_config(None, ["optim.base_lr=0.5", "data.batch_size=64", "model.cifar_stem=true"])
    assert config.optim.base_lr == 0.5
    assert config.data.batch_size == 64
    assert config.model.cifar_stem is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'.*did you mean 'optim.base_lr'"),
        ("optim.bse_lr=1", "did you mean 'optim.base_lr'"),
        ("trian.epochs=3", "unknown config key 'trian'"),
        ("data.batch_size=abc", "'data.batch_size' expects an integer, got 'abc'"),
        ("optim.base_lr=fast", "'optim.base_lr' expects a number"),
        ("model.cifar_stem=maybe", "'model.cifar_stem' expects true or false"),
        ("optim.name=lras", "'optim.name' is 'lras' \\(did you mean 'lars'\\?\\)"),
        ("train.precision=fp8", "valid values: fp32, bf16, fp16"),
        ("data.image_size=0", "'data.image_size' must be positive"),
        ("optim.base_lr=-1", "'optim.base_lr' must be a finite number >= 0, got -1"),
        ("optim.base_lr=nan", "'optim.base_lr' must be a finite number >= 0, got nan"),
        ("optim.base_lr=inf", "'optim.base_lr' must be a finite number >= 0, got inf"),
        ("probe.knn_temperature=0", "'probe.knn_temperature' must be positive"),
        ("data.num_workers=many", "'data.num_workers' must be auto or an integer >= 0"),
        ("probe.num_workers=-1", "'probe.num_workers' must be auto or an integer >= 0"),
        ("method.temperature=0", "'method.temperature' must be positive"),
        ("method.temperature=nan", "'method.temperature' must be positive"),
        ("augment.crop_scale=[0.5,0.1]", "0 < min <= max <= 1"),
        ("probe.datasets=[cifar100]", "'probe.datasets' holds 'cifar100'"),
        ("no_equals_sign", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match=r"optim.momentun.*r.yaml.*did you mean 'optim.momentum'"):
        load_config(recipe)


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


def test_base_loops_are_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_saved_config_round_trips(tmp_path):
    config = load_config(CONFIGS / "demo.yaml", ["optim.base_lr=0.7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_saved_config(tmp_path / "config.yaml") == config


def test_section_overrides_accept_bare_keys():
    config = with_section_overrides(RunConfig(), "probe", ["epochs=7", "probe.knn_k=20"])
    assert config.probe.epochs == 7 and config.probe.knn_k == 20
    with pytest.raises(ConfigError, match="probe.epoch"):
        with_section_overrides(RunConfig(), "probe", ["epoch=7"])


def test_valid_keys_cover_nested_sections():
    keys = valid_keys()
    assert "optim.base_lr" in keys and "data.path" in keys and "probe.knn_k" in keys


def test_a_fine_tune_optimizer_key_of_earlier_releases_names_where_it_moved():
    with pytest.raises(
        ConfigError, match=r"'finetune.base_lr'.*did you mean 'finetune.optim.base_lr'"
    ):
        load_config(None, ["finetune.base_lr=0.01"])
    assert load_config(None, ["finetune.optim.base_lr=0.01"]).finetune.optim.base_lr == 0.01
