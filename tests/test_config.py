import pytest
import yaml

from curvenet_dist.config import ConfigError, load_config
from curvenet_dist.engine.lr_schedule import step_lr
from tests.conftest import QUICKSTART


def test_yaml_then_overrides_are_typed_and_applied_in_order():
    config = load_config(QUICKSTART, ["data.batch_size=7", "allocate.milestones=[3,5]", "optim.lr=1", "slmo.skip_layers=0"])
    assert config.data.batch_size == 7
    assert config.allocate.milestones == [3, 5]
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.source == "digits"  # from the YAML
    assert config.slmo.skip_layers == 0


@pytest.mark.parametrize("override, message", [
    ("data.bogus=1", "unknown key 'data.bogus'"),
    ("data.loader=spark", "data.loader='spark' is not allowed; choose one of: torch, dali"),
    ("data.batch_size=many", "data.batch_size='many' must be an integer"),
    ("bias.noise_rate=1.5", "bias.noise_rate=1.5 must be in [0, 1)"),
    ("method=focal", "method='focal' is not allowed; choose one of: curvenet, mwnet, dynamic_loss, ce"),
    ("data=3", "data is a section"),
    ("no_equals_sign", "must look like key.sub=value"),
    ("optim.momentum=0", "optim.nesterov=true needs optim.momentum > 0"),
    ("model.depth=7", "model.depth=7: a CIFAR ResNet has depth 6n"),
    ("model.width=0", "model.width=0 must be > 0"),
])
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=".*" + message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(QUICKSTART, [override])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  depht: 20\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'model.depht'"):
        load_config(path)


def test_saved_config_round_trips(tmp_path):
    config = load_config(QUICKSTART, ["probe.epochs=7"])
    config.save(tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["probe"]["epochs"] == 7
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("scale", ["dataset", "class"])
def test_a_scale_over_fixed_inputs_is_refused_for_meta_weight_net(scale):
    with pytest.raises(ConfigError, match=f"meta.weight_scale='{scale}' needs inputs fixed per sample"):
        load_config(QUICKSTART, ["method=mwnet", f"meta.weight_scale={scale}"])


def test_a_weight_scale_given_to_every_method_leaves_the_fixed_weight_methods_alone():
    # The benchmarks pass one set of overrides to every method: CE has no weighting net for the scale to act on.
    for method in ("ce", "balanced_ce"):
        assert load_config(QUICKSTART, [f"method={method}", "meta.weight_scale=class"]).weight_scale() == "none"


def test_the_allocate_warmup_ramps_the_lr_up_then_hands_over_to_the_step_schedule():
    config = load_config(QUICKSTART, ["optim.lr=0.1", "allocate.warmup_epochs=4", "allocate.milestones=[6,8]"])
    lrs = [step_lr(config.allocate, config.optim.lr, epoch) for epoch in range(10)]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    without = load_config(QUICKSTART, ["optim.lr=0.1", "allocate.milestones=[6,8]"])
    assert step_lr(without.allocate, 0.1, 0) == pytest.approx(0.1)


def test_a_warmup_that_outlasts_the_first_decay_is_refused():
    with pytest.raises(ConfigError, match=r"allocate.warmup_epochs=7 must end by the first of allocate.milestones=\[6, 8\]"):
        load_config(QUICKSTART, ["allocate.warmup_epochs=7", "allocate.milestones=[6,8]"])
