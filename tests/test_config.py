"""Typed YAML configs: defaults, shipped files, and one-line errors naming the file or the --set."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnkit.config import Config, load_config, parse_override
from cnnkit.errors import ConfigError
from cnnkit.models import MODELS
from cnnkit.optim.registry import OPTIMIZERS, SCHEDULES

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def test_defaults_validate():
    config = load_config()
    assert config == Config()
    assert config.model.name in MODELS
    assert config.optim.name in OPTIMIZERS
    assert config.schedule.name in SCHEDULES
    assert config.train.epochs >= 1 and config.train.batch_size >= 1
    assert config.output.name is None
    # The resolved YAML reloads to the same config.
    assert Config.model_validate(config.to_dict()) == config


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert "edge.yaml" in names and "lenet.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_builds_its_model(path):
    from cnnkit.build import input_shape, model_from_config
    from cnnkit.shapes import trace_model

    config = load_config(path)
    assert config.output.name == path.stem
    model = model_from_config(config)
    trace_model(model, input_shape(config))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_round_trips_through_yaml(tmp_path, path):
    # What `config show` prints loads back to the same config.
    config = load_config(path)
    assert load_config(_write(tmp_path, config.to_yaml(), path.name)) == config


# ------------------------------------------------------------------------------------- file errors


def test_unknown_key_with_did_you_mean(tmp_path):
    path = _write(tmp_path, "train:\n  epoch: 3\n")
    message = _error(path)
    assert str(path) in message
    assert "train.epoch" in message
    assert "did you mean 'epochs'" in message


def test_unknown_section_with_did_you_mean(tmp_path):
    path = _write(tmp_path, "optimiser:\n  lr: 0.1\n")
    message = _error(path)
    assert str(path) in message and "'optimiser'" in message and "optim" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("train:\n  epochs: lots\n", ["train.epochs", "integer", "lots"]),
        ("train:\n  batch_size: [1, 2]\n", ["train.batch_size"]),
        ("optim:\n  lr: fast\n", ["optim.lr", "fast"]),
        ("data:\n  augment: maybe\n", ["data.augment", "maybe"]),
        ("model: lenet\n", ["model"]),
        ("train:\n  device: tpu\n", ["train.device", "cuda"]),
        ("train:\n  precision: fp8\n", ["train.precision", "fp16"]),
        ("data:\n  dataset: imagenet\n", ["data.dataset", "cifar10"]),
    ],
)
def test_wrong_type(tmp_path, text, words):
    path = _write(tmp_path, text)
    message = _error(path)
    assert str(path) in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  batch_size: 0\n", "train.batch_size"),
        ("optim:\n  lr: 0\n", "optim.lr"),
        ("optim:\n  lr: -0.1\n", "optim.lr"),
        ("data:\n  val_split: -1\n", "data.val_split"),
        ("train:\n  label_smoothing: 1.0\n", "train.label_smoothing"),
        ("model:\n  input_size: [0, 32]\n", "model.input_size"),
    ],
)
def test_out_of_range(tmp_path, text, key):
    path = _write(tmp_path, text)
    message = _error(path)
    assert str(path) in message and key in message
    assert "greater than" in message or "less than" in message or "positive" in message


@pytest.mark.parametrize(
    ("text", "key", "valid"),
    [
        ("model:\n  name: lenett\n", "model.name", list(MODELS)),
        ("optim:\n  name: adamm\n", "optim.name", list(OPTIMIZERS)),
        ("schedule:\n  name: cosin\n", "schedule.name", list(SCHEDULES)),
    ],
)
def test_unknown_registry_name_lists_the_valid_ones(tmp_path, text, key, valid):
    path = _write(tmp_path, text)
    message = _error(path)
    assert str(path) in message and key in message and "did you mean" in message
    for name in valid:
        assert name in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = _error(path)
    assert str(path) in message and "not found" in message


def test_folder_instead_of_file(tmp_path):
    assert str(tmp_path) in _error(tmp_path)


def test_malformed_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "model:\n  name: lenet\ntrain:\n  epochs: [3\n  batch_size: 4\n")
    message = _error(path)
    assert str(path) in message and "malformed YAML" in message
    assert "line " in message


def test_malformed_yaml_tab_indent(tmp_path):
    path = _write(tmp_path, "train:\n\tepochs: 3\n")
    message = _error(path)
    assert str(path) in message and "line 2" in message


@pytest.mark.parametrize("text", ["- train\n- model\n", "just a string\n", "42\n"])
def test_not_a_mapping(tmp_path, text):
    path = _write(tmp_path, text)
    message = _error(path)
    assert str(path) in message and "mapping" in message


def test_empty_file_is_defaults(tmp_path):
    config = load_config(_write(tmp_path, "# nothing here\n", "empty.yaml"))
    assert config.train == Config().train
    assert config.output.name == "empty"


def test_several_problems_reported_on_one_line(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 0\n  batch_size: 0\n")
    message = _error(path)
    assert "+1 more problem" in message


# ------------------------------------------------------------------------------------------ --set


def test_set_overrides_yaml_which_overrides_defaults(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 5\n  batch_size: 32\n")
    config = load_config(path, ["train.epochs=3"])
    assert config.train.epochs == 3  # --set beats YAML
    assert config.train.batch_size == 32  # YAML beats defaults
    assert config.train.eval_batch_size == Config().train.eval_batch_size  # default kept
    # Repeated --set: the last one wins.
    assert load_config(path, ["train.epochs=3", "train.epochs=4"]).train.epochs == 4


def test_set_without_a_file():
    assert load_config(None, ["model.name=bn_cnn"]).model.name == "bn_cnn"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.epochs=3", 3),
        ("optim.lr=0.05", 0.05),
        ("optim.lr=1.5e-4", 1.5e-4),
        ("train.deterministic=true", True),
        ("train.deterministic=false", False),
        ("model.input_size=[28, 28]", [28, 28]),
        ("data.mean=[0.5,0.4,0.3]", [0.5, 0.4, 0.3]),
        ("output.name=my run", "my run"),
        ("model.kwargs={backend: scratch}", {"backend": "scratch"}),
        ("data.root=", None),
    ],
)
def test_set_value_parsing(text, expected):
    _, value = parse_override(text)
    assert value == expected
    assert type(value) is type(expected)


def test_set_values_reach_the_typed_config():
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4  # YAML 1.1 reads '1e-4' as text; the field coerces
    config = load_config(None, ["train.epochs=3", "optim.lr=0.05", "train.deterministic=true",
                                "model.input_size=[28, 28]", "data.mean=[0.5,0.4,0.3]",
                                "model.kwargs.backend=scratch", "model.name=edge"])
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.optim.lr == 0.05
    assert config.train.deterministic is True
    assert config.model.input_size == (28, 28)
    assert config.data.mean == [0.5, 0.4, 0.3]
    assert config.model.kwargs == {"backend": "scratch"}


@pytest.mark.parametrize("text", ["train.epochs", "=3", "train.epochs 3"])
def test_set_without_equals(text):
    message = _error(None, [text])
    assert "--set" in message and text in message and "section.key=value" in message


def test_set_unknown_key():
    message = _error(None, ["train.epoch=3"])
    assert "--set train.epoch=3" in message and "did you mean 'epochs'" in message
    message = _error(None, ["trian.epochs=3"])
    assert "--set trian.epochs=3" in message and "'train'" in message


def test_set_invalid_value_names_the_set_not_the_file(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 5\n")
    message = _error(path, ["train.epochs=0"])
    assert "--set train.epochs=0" in message and "train.epochs" in message
    message = _error(path, ["train.batch_size=big"])
    assert "--set train.batch_size=big" in message


_GROUPS = """\
optim:
  name: sgd
  lr: 0.1
  groups:
    - {params: ["conv*"], name: adam, lr: 0.01}
    - {params: ["fc*"], name: sgd, lr: 0.1, kwargs: {momentum: 0.9}}
"""


def test_set_reaches_one_entry_of_a_list_of_sections(tmp_path):
    # optim.groups.1.lr: one parameter group's setting, so that a sweep can vary it like any key.
    path = _write(tmp_path, _GROUPS)
    config = load_config(path, ["optim.groups.1.lr=0.3", "optim.groups.1.kwargs.momentum=0.8"])
    assert config.optim.groups[1].lr == 0.3 and config.optim.groups[1].kwargs == {"momentum": 0.8}
    assert config.optim.groups[0].lr == 0.01 and config.optim.groups[0].name == "adam"
    config = load_config(path, ["optim.groups.0={params: [conv1.weight], name: sgd, lr: 0.2}"])
    assert config.optim.groups[0].params == ["conv1.weight"] and config.optim.groups[0].name == "sgd"
    assert len(config.optim.groups) == 2


@pytest.mark.parametrize(("override", "needles"), [
    ("optim.groups.2.lr=0.3", ["--set optim.groups.2.lr=0.3", "has 2 entries", "0 to 1"]),
    ("optim.groups.x.lr=0.3", ["--set optim.groups.x.lr=0.3", "their position"]),
    ("optim.groups.0.lrr=0.3", ["unknown key 'optim.groups.0.lrr'", "did you mean 'lr'"]),
    ("optim.groups.0.lr=-1", ["--set optim.groups.0.lr=-1", "optim.groups.0.lr", "greater than 0"]),
    ("optim.groups.0.lr.x=1", ["'optim.groups.0.lr' is a value"]),
])
def test_set_into_a_list_names_what_is_wrong(tmp_path, override, needles):
    message = _error(_write(tmp_path, _GROUPS), [override])
    for needle in needles:
        assert needle in message, message


def test_set_into_a_list_the_config_does_not_have():
    message = _error(None, ["optim.groups.0.lr=0.3"])
    assert "'optim.groups' has no entries" in message and "--set optim.groups=[...]" in message


def test_set_cannot_hide_a_file_error(tmp_path):
    path = _write(tmp_path, "train:\n  epoch: 5\n")
    message = _error(path, ["train.epochs=3"])
    assert str(path) in message and "train.epoch" in message


def test_data_dataset_is_checked_against_the_dataset_registry(monkeypatch):
    """Like model.name: the registry is the list (a new dataset is one function and one DATASETS line,
    with no config edit), and an unknown name gets a 'did you mean' and the choices."""
    from cnnkit.data.datasets import DATASETS

    message = _error(None, ["data.dataset=cifar1"])
    assert "--set data.dataset=cifar1" in message and "did you mean 'cifar10'" in message
    assert "choose one of: " + ", ".join(DATASETS) in message
    monkeypatch.setitem(DATASETS, "tiny_stripes", DATASETS["stripes"])
    assert load_config(None, ["data.dataset=tiny_stripes"]).data.dataset == "tiny_stripes"
