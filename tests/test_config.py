import re

import pytest
import yaml

from curvenet_dist.config import Config, ConfigError, load_config
from curvenet_dist.engine.lr_schedule import step_lr
from tests.conftest import QUICKSTART


def test_yaml_then_overrides_are_typed_and_applied_in_order():
    config = load_config(QUICKSTART, ["data.batch_size=7", "allocate.milestones=[3,5]", "optim.lr=1",
                                      "curvenet.skip_layers=0"])
    assert config.data.batch_size == 7
    assert config.allocate.milestones == [3, 5]
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.source == "digits"  # from the YAML
    assert config.curvenet.skip_layers == 0


@pytest.mark.parametrize("override, message", [
    ("data.bogus=1", "unknown key 'data.bogus'"),
    ("data.loader=spark", "data.loader='spark' is not allowed; choose one of: torch, dali"),
    ("data.batch_size=many", "data.batch_size='many' must be an integer"),
    ("bias.noise_rate=1.5", "bias.noise_rate=1.5 must be in [0, 1)"),
    ("method=focal", "method='focal' is not allowed; choose one of: ce, balanced_ce, logit_adjust, mwnet, curvenet, "
                     "dynamic_loss"),
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


def test_each_method_section_has_its_own_defaults():
    config = Config()
    meta_learning = ("meta_lr", "meta_weight_decay", "meta_interval", "skip_layers")
    assert [getattr(config.curvenet, key) for key in meta_learning] == [1e-3, 1e-4, 2, 2]
    assert [getattr(config.mwnet, key) for key in meta_learning] == [1e-3, 1e-4, 1, 2]
    assert [getattr(config.dynamic_loss, key) for key in meta_learning] == [3e-3, 0.0, 2, 3]
    assert (config.curvenet.weight_scale, config.curvenet.scale_samples) == ("class", 1024)
    assert (config.mwnet.hidden, config.mwnet.weight_scale) == (100, "none")
    assert config.dynamic_loss.clean_meta is False
    assert config.logit_adjust.tau == 1.0
    assert config.allocate.probe_dir == ""


@pytest.mark.parametrize("method", ["ce", "balanced_ce", "logit_adjust", "mwnet", "curvenet", "dynamic_loss"])
def test_one_set_of_overrides_serves_every_method(method):
    # The benchmarks pass the same overrides to every method's run: each section is read by its own method only.
    overrides = ["curvenet.weight_scale=batch", "mwnet.weight_scale=batch", "mwnet.skip_layers=0",
                 "dynamic_loss.clean_meta=true", "logit_adjust.tau=0.5", "allocate.probe_dir=runs/probe"]
    config = load_config(QUICKSTART, [f"method={method}", *overrides])
    assert (config.method, config.mwnet.skip_layers, config.logit_adjust.tau) == (method, 0, 0.5)
    assert config.allocate.probe_dir == "runs/probe"


@pytest.mark.parametrize("override, message", [
    ("mwnet.weight_scale=class", "mwnet.weight_scale='class' is not allowed; choose one of: batch, none"),
    ("mwnet.weight_scale=dataset", "mwnet.weight_scale='dataset' is not allowed; choose one of: batch, none"),
    ("curvenet.weight_scale=auto", "curvenet.weight_scale='auto' is not allowed; choose one of: class, dataset, "
                                   "batch, none"),
    ("dynamic_loss.weight_scale=batch", "unknown key 'dynamic_loss.weight_scale'"),
    ("meta.source=everything", "meta.source='everything' is not allowed; choose one of: carved, split, lowest_loss"),
])
def test_a_method_section_takes_only_values_its_method_can_use(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(QUICKSTART, [override])


MOVED = [
    ("probe.dir=runs/probe", "probe.dir has moved: set allocate.probe_dir"),
    ("probe.record=false", "probe.record is removed: the probe always records every sample's loss"),
    ("slmo.skip_layers=1", "slmo.skip_layers has moved: set curvenet.skip_layers (CurveNet), mwnet.skip_layers "
                           "(Meta-Weight-Net) or dynamic_loss.skip_layers"),
    ("meta.lr=0.01", "meta.lr has moved: set curvenet.meta_lr (CurveNet) or mwnet.meta_lr (Meta-Weight-Net)"),
    ("meta.weight_decay=0", "meta.weight_decay has moved: set curvenet.meta_weight_decay (CurveNet) or "
                            "mwnet.meta_weight_decay (Meta-Weight-Net)"),
    ("meta.interval=2", "meta.interval has moved: set curvenet.meta_interval (CurveNet) or mwnet.meta_interval "
                        "(Meta-Weight-Net)"),
    ("meta.weight_scale=auto", "meta.weight_scale has moved: set curvenet.weight_scale (CurveNet) or "
                               "mwnet.weight_scale (Meta-Weight-Net)"),
    ("meta.scale_samples=512", "meta.scale_samples has moved: set curvenet.scale_samples"),
    ("curvenet.mwnet_hidden=50", "curvenet.mwnet_hidden has moved: set mwnet.hidden"),
    ("dynamic_loss.lr=0.01", "dynamic_loss.lr has moved: set dynamic_loss.meta_lr"),
    ("dynamic_loss.weight_decay=0", "dynamic_loss.weight_decay has moved: set dynamic_loss.meta_weight_decay"),
]


@pytest.mark.parametrize("override, message", MOVED)
def test_a_moved_key_stops_with_one_line_naming_its_new_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, ["method=dynamic_loss", override])
    assert str(error.value) == f"command line: {message}"


@pytest.mark.parametrize("source, message", [
    ("hierarchical", "meta.source='hierarchical' has moved: set method=dynamic_loss with "
                     "dynamic_loss.clean_meta=false"),
    ("hierarchical_clean", "meta.source='hierarchical_clean' has moved: set method=dynamic_loss with "
                           "dynamic_loss.clean_meta=true (the clean set is the one meta.source names)"),
])
def test_a_hierarchical_meta_source_stops_with_one_line_naming_dynamic_loss_clean_meta(source, message):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, ["method=dynamic_loss", f"meta.source={source}"])
    assert str(error.value) == message


def test_a_yaml_of_the_earlier_layout_names_the_file_and_the_new_key(tmp_path):
    # The clothing1m config's SLMO depth as it used to be written: a section that no longer exists.
    path = tmp_path / "old.yaml"
    path.write_text("slmo:\n  skip_layers: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {dict(MOVED)['slmo.skip_layers=1']}"
    path.write_text("probe:\n  epochs: 3\n  dir: runs/probe\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: probe.dir has moved: set allocate.probe_dir"
    path.write_text("slmo:\n  depth: 4\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: unknown key 'slmo'")):
        load_config(path)


def test_the_allocate_warmup_ramps_the_lr_up_then_hands_over_to_the_step_schedule():
    config = load_config(QUICKSTART, ["optim.lr=0.1", "allocate.warmup_epochs=4", "allocate.milestones=[6,8]"])
    lrs = [step_lr(config.allocate, config.optim.lr, epoch) for epoch in range(10)]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    without = load_config(QUICKSTART, ["optim.lr=0.1", "allocate.milestones=[6,8]"])
    assert step_lr(without.allocate, 0.1, 0) == pytest.approx(0.1)


def test_a_warmup_that_outlasts_the_first_decay_is_refused():
    with pytest.raises(ConfigError, match=r"allocate.warmup_epochs=7 must end by the first of allocate.milestones=\[6, 8\]"):
        load_config(QUICKSTART, ["allocate.warmup_epochs=7", "allocate.milestones=[6,8]"])


FLOAT_KEYS = [key for key, value in Config().flat().items() if isinstance(value, float)]


@pytest.mark.parametrize("key", FLOAT_KEYS + ["data.mean", "data.std"])
@pytest.mark.parametrize("value, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")])
def test_a_value_that_is_not_finite_is_refused_naming_its_key(key, value, shown):
    # A NaN learning rate used to train every epoch on NaN losses and exit 0.
    override, named = (f"{key}=[0.5,{value},0.5]", f"{key}[1]") if key in ("data.mean", "data.std") else (
        f"{key}={value}", key)
    with pytest.raises(ConfigError, match=re.escape(f"{named}={shown} must be a finite number")):
        load_config(QUICKSTART, [override])


@pytest.mark.parametrize("override, message", [
    ("allocate.gamma=-5", "allocate.gamma=-5.0 must be in (0, 1]"),
    ("allocate.gamma=0", "allocate.gamma=0.0 must be in (0, 1]"),
    ("allocate.gamma=1.5", "allocate.gamma=1.5 must be in (0, 1]"),
    ("allocate.milestones=[5,5]", "allocate.milestones=[5, 5] must be increasing positive epochs"),
    ("curvenet.curve_hidden=[128,0]", "curvenet.curve_hidden[1]=0 must be > 0"),
    ("curvenet.head_hidden=[]", "curvenet.head_hidden=[] must list at least one layer size"),
    ("curvenet.scale_samples=0", "curvenet.scale_samples=0 must be > 0"),
    ("curvenet.meta_weight_decay=-0.1", "curvenet.meta_weight_decay=-0.1 must be >= 0"),
    ("mwnet.hidden=0", "mwnet.hidden=0 must be > 0"),
    ("mwnet.meta_lr=0", "mwnet.meta_lr=0.0 must be > 0"),
    ("mwnet.meta_interval=0", "mwnet.meta_interval=0 must be > 0"),
    ("mwnet.skip_layers=-1", "mwnet.skip_layers=-1 must be >= 0"),
    ("dynamic_loss.meta_lr=0", "dynamic_loss.meta_lr=0.0 must be > 0"),
    ("dynamic_loss.skip_layers=-1", "dynamic_loss.skip_layers=-1 must be >= 0"),
    ("logit_adjust.tau=-0.5", "logit_adjust.tau=-0.5 must be >= 0"),
    ("meta.per_class=0", "meta.per_class=0 must be > 0"),
    ("data.std=[0.5,0,0.5]", "data.std[1]=0.0 must be > 0"),
    ("run.seed=-1", "run.seed=-1 must be >= 0"),
    ("bias.seed=-1", "bias.seed=-1 must be >= 0"),
    ("run.dir=", "run.dir must name the run folder"),
    ("tracking.experiment=", "tracking.experiment must name the MLflow experiment"),
])
def test_a_value_out_of_its_range_is_refused_naming_its_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(QUICKSTART, [override])


def test_an_exponent_without_a_dot_is_a_number_for_a_float_key_only(tmp_path):
    # YAML 1.1 reads 1e-3 as a string.
    assert load_config(QUICKSTART, ["optim.lr=1e-3"]).optim.lr == 0.001
    path = tmp_path / "x.yaml"
    path.write_text("curvenet:\n  meta_lr: 5e-4\n")
    assert load_config(path).curvenet.meta_lr == 0.0005
    with pytest.raises(ConfigError, match=re.escape("optim.lr='fast' must be a number")):
        load_config(QUICKSTART, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=re.escape("data.batch_size='1e3' must be an integer")):
        load_config(QUICKSTART, ["data.batch_size=1e3"])


@pytest.mark.parametrize("text, location, problem", [
    ("optim:\n  lr: 0.1\n  momentum: 0.9\n data: 3\n", "4:2", "expected <block end>, but found '<block mapping start>'"),
    ("optim:\n  lr: 0.1\n  momentum: [0.9\n", "4:1", "expected ',' or ']', but got '<stream end>'"),
])
def test_a_yaml_error_is_one_line_naming_file_line_and_column(tmp_path, text, location, problem):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:{location}: not valid YAML: {problem}"


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, ["data.mean=[1,2"])
    assert str(error.value) == ("command line: data.mean='[1,2' is not valid YAML: expected ',' or ']', "
                                "but got '<stream end>'")


def test_a_config_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"run:\n  dir: runs/caf\xe9\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (f"{path}:2: not UTF-8 text (byte offset 20: invalid continuation byte); "
                                "save it as UTF-8")


def test_every_method_the_config_accepts_is_one_the_allocate_stage_builds():
    from curvenet_dist.config import METHODS as ACCEPTED
    from curvenet_dist.methods.registry import METHODS as BUILT

    assert set(ACCEPTED) == set(BUILT)
