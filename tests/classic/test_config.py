"""Bad configs fail with one clear line naming the field path; good ones round-trip."""

import subprocess
import sys

import pytest
import yaml

from kdistill.config import ConfigError, apply_overrides, load_config, parse_config


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml")
    return str(info.value)


def test_unknown_key_names_its_path():
    msg = error_of({"train": {"stepz": 10}})
    assert msg == "cfg.yaml: train.stepz: unknown key"


def test_wrong_type_names_path_and_value():
    msg = error_of({"train": {"steps": "many"}})
    assert msg.startswith("cfg.yaml: train.steps:")
    assert "'many'" in msg and "integer" in msg


def test_unknown_loss_suggests_the_closest_name():
    msg = error_of({"loss": [{"name": "hinton_kd"}, {"name": "hinton_dk"}]})
    assert "loss.1" in msg
    assert "unknown loss 'hinton_dk'; did you mean 'hinton_kd'?" in msg


def test_unknown_loss_parameter():
    msg = error_of({"loss": [{"name": "hinton_kd", "params": {"temprature": 2}}]})
    assert "loss.0" in msg and "no parameter 'temprature'" in msg and "temperature" in msg


def test_feature_loss_needs_layers():
    msg = error_of({"loss": [{"name": "fitnet_hint"}]})
    assert "needs student_layer and teacher_layer" in msg


def test_mutual_rejects_feature_losses():
    msg = error_of(
        {
            "method": {"name": "mutual"},
            "loss": [{"name": "attention_transfer", "student_layer": "block1", "teacher_layer": "block1"}],
        }
    )
    assert "mutual learning exchanges logits only" in msg


def test_unknown_arch_lists_known_models():
    msg = error_of({"student": {"arch": "cnn_xxs"}})
    assert "student.arch" in msg and "did you mean 'cnn_xs'" in msg


def test_resolved_config_round_trips(tiny_config):
    cfg = parse_config(tiny_config)
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    changed = parse_config({**tiny_config, "seeds": [1]})
    assert changed.config_hash() != cfg.config_hash()


def test_overrides_reach_lists_and_nested_keys():
    data = apply_overrides(
        {"loss": [{"name": "cross_entropy"}, {"name": "hinton_kd"}]},
        ["loss.1.params.temperature=2.5", "train.steps=7", "seeds=[3, 4]"],
    )
    cfg = parse_config(data)
    assert cfg.loss[1].params == {"temperature": 2.5}
    assert cfg.train.steps == 7 and cfg.seeds == [3, 4]


def test_invalid_yaml_reports_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  steps: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(bad) in str(info.value) and "line" in str(info.value)


def test_builtin_recipe_is_valid():
    cfg = load_config(None)
    assert cfg.name == "digits" and cfg.data.labeled_fraction < 1


@pytest.mark.parametrize(
    "body, expected",
    [
        ("train:\n  stepz: 3\n", "train.stepz: unknown key"),
        ("loss:\n  - name: fwd_kl\n", "unknown loss 'fwd_kl'"),
        ("train:\n  lr: -1\n", "train.lr: Input should be greater than 0"),
    ],
)
def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path, body, expected):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    proc = subprocess.run(
        [sys.executable, "-m", "kdistill.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
