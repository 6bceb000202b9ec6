"""YAML configs: valid ones load (the examples too), wrong keys and types fail with the key's
name and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitter.errors import ConfigError
from splitter.train.config import FitConfig, load_config, parse_config

GOOD = """\
model: test_resnet
model_args: {num_classes: 10}
input_size: [3, 16, 16]
cut: layer1
bottleneck:
  kind: entropy
  channels: 8
stages:
  - kind: features
    epochs: 3
    beta: 0.01
  - kind: kd
    epochs: 1
    alpha: 0.7
seed: 4
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml")
    return str(e.value)


def test_valid_config_loads_with_defaults():
    cfg = parse_config(GOOD)
    assert isinstance(cfg, FitConfig)
    assert cfg.bottleneck.options["channels"] == 8 and cfg.input_size == (3, 16, 16) and cfg.seed == 4
    assert [s.kind for s in cfg.stages] == ["features", "kd"]
    assert cfg.stages[1].alpha == 0.7 and cfg.stages[1].tau == 4.0  # default filled in
    assert cfg.data.train == "digits" and cfg.mode == "insert"


def test_unknown_key_names_key_and_line():
    msg = _error(GOOD.replace("  channels: 8", "  chanels: 8"))
    assert "c.yaml:7: bottleneck.chanels: unknown option 'chanels' for entropy" in msg
    assert "did you mean 'channels'?" in msg


def test_bad_option_value_names_key_line_and_range():
    msg = _error(GOOD.replace("  channels: 8", "  channels: 8.5"))
    assert "c.yaml:7: bottleneck.channels: entropy option channels=8.5" in msg
    assert "fractional part" in msg


def test_unknown_key_inside_a_stage():
    msg = _error(GOOD.replace("    beta: 0.01", "    betta: 0.01"))
    assert "c.yaml:11: stages.0.betta: unknown key" in msg


def test_wrong_type_names_key_and_line():
    msg = _error(GOOD.replace("alpha: 0.7", "alpha: lots"))
    assert "c.yaml:14: stages.1.alpha:" in msg and "number" in msg
    msg = _error(GOOD.replace("seed: 4", "seed: [1, 2]"))
    assert "c.yaml:15: seed:" in msg


def test_out_of_range_and_bad_choice():
    assert "c.yaml:14: stages.1.alpha:" in _error(GOOD.replace("alpha: 0.7", "alpha: 1.5"))
    msg = _error(GOOD.replace("  - kind: kd", "  - kind: distill"))
    assert "c.yaml:12: stages.1.kind:" in msg and "'features' or 'kd'" in msg


def test_missing_required_key():
    msg = _error(GOOD.replace("cut: layer1\n", ""))
    assert "cut: missing required key 'cut'" in msg


def test_not_yaml_or_not_a_mapping():
    assert "c.yaml:2" in _error("model: a\n  cut: [b\n")
    assert "expected a mapping" in _error("- a\n- b\n")


def test_examples_are_valid(tmp_path):
    files = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert files, "examples/*.yaml missing"
    for f in files:
        cfg = load_config(str(f))
        assert cfg.bottleneck.kind in ("entropy", "crbq", "hyperprior")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "nope.yaml"))
