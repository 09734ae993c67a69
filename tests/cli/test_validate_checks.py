"""`kdistill validate` finds what files and models reveal before any training: unusable teacher checkpoints,
layers no model has, a missing CUDA device, pickled LM weights. One line each, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from kdistill.classic.data import load_classification_data
from kdistill.classic.methods.scratch import LabelsOnly
from kdistill.classic.teacher import load_teacher
from kdistill.classic.zoo import build_model
from kdistill.cli.app import app
from kdistill.config import parse_config
from kdistill.preflight import INPUT_SHAPES, PreflightError

DIGITS = (1, 8, 8)


def validate(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(app, ["validate", str(path)])


def assert_one_error(result, line: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {line}\n"


def with_checkpoint(config: dict, path) -> dict:
    config["teacher"]["checkpoint"] = str(path)
    return config


# -- 1. teacher.checkpoint ---------------------------------------------------------------------------------


def test_a_missing_checkpoint(tmp_path, tiny_config):
    path = tmp_path / "nowhere.safetensors"
    result = validate(tmp_path, with_checkpoint(tiny_config, path))
    assert_one_error(result, f"teacher.checkpoint: no file {path}")


def test_a_folder_as_checkpoint(tmp_path, tiny_config):
    result = validate(tmp_path, with_checkpoint(tiny_config, tmp_path))
    assert_one_error(result, f"teacher.checkpoint: {tmp_path} is a directory; expected a .safetensors file")


def test_a_text_file_as_checkpoint(tmp_path, tiny_config):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(SafetensorError) as reader:
        safe_open(str(path), framework="pt")
    result = validate(tmp_path, with_checkpoint(tiny_config, path))
    assert_one_error(
        result,
        f"teacher.checkpoint: {path} is not a safetensors file ({reader.value}); expected weights saved with "
        "safetensors.torch.save_file",
    )


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save", "legacy torch.save"])
def test_a_pickle_checkpoint_is_refused_without_being_loaded(tmp_path, tiny_config, monkeypatch, zip_format):
    path = tmp_path / "teacher.pt"
    torch.save(build_model("cnn_s", DIGITS, 10).state_dict(), path, _use_new_zipfile_serialization=zip_format)

    def unpickle(*args, **kwargs):
        raise AssertionError("the pickle was loaded")

    monkeypatch.setattr(torch, "load", unpickle)
    result = validate(tmp_path, with_checkpoint(tiny_config, path))
    assert_one_error(
        result,
        f"teacher.checkpoint: refused: {path} is a pickle checkpoint, which can run code when loaded; convert "
        "it to safetensors (where you trust it: safetensors.torch.save_file(state_dict, path))",
    )


def test_a_checkpoint_of_another_architecture(tmp_path, tiny_config):
    path = tmp_path / "xs.safetensors"
    save_file(build_model("cnn_xs", DIGITS, 10).state_dict(), str(path))  # channels 8-16; cnn_s has 16-32
    result = validate(tmp_path, with_checkpoint(tiny_config, path))
    assert_one_error(
        result,
        f"teacher.checkpoint: {path} does not fit arch 'cnn_s': "
        "block1.0.weight is [8, 1, 3, 3] in the file, [16, 1, 3, 3] in cnn_s; "
        "block1.0.bias is [8] in the file, [16] in cnn_s; "
        "block2.0.weight is [16, 8, 3, 3] in the file, [32, 16, 3, 3] in cnn_s; "
        "block2.0.bias is [16] in the file, [32] in cnn_s",
    )


def test_a_checkpoint_with_missing_and_extra_tensors(tmp_path, tiny_config):
    state = build_model("cnn_s", DIGITS, 10).state_dict()
    del state["head.bias"]
    state["head.scale"] = torch.ones(10)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    result = validate(tmp_path, with_checkpoint(tiny_config, path))
    assert_one_error(
        result,
        f"teacher.checkpoint: {path} does not fit arch 'cnn_s': missing head.bias; unexpected head.scale",
    )


def test_the_cached_teachers_own_weights_are_a_valid_checkpoint(tmp_path, tiny_config):
    """The cache trains LabelsOnly(model): its model.safetensors names every tensor `model.<name>`."""
    cfg = parse_config(tiny_config)
    data = load_classification_data("digits", labeled_fraction=0.2)
    cached, origin = load_teacher(cfg.teacher, data, torch.device("cpu"))  # the tests' shared cache
    weights = Path(origin["path"]) / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert all(name.startswith("model.") for name in f.keys())  # noqa: SIM118
    result = validate(tmp_path, with_checkpoint(tiny_config, weights))
    assert result.exit_code == 0, result.output
    cfg = parse_config(with_checkpoint(tiny_config, weights))
    loaded, origin = load_teacher(cfg.teacher, data, torch.device("cpu"))
    assert origin == {"source": "checkpoint", "path": str(weights)}
    with torch.no_grad():
        assert torch.equal(loaded(data.x_test), cached(data.x_test))


def test_a_wrapped_checkpoint_loads_the_same_weights(tmp_path, tiny_config):
    torch.manual_seed(3)
    model = build_model("cnn_s", DIGITS, 10)
    path = tmp_path / "wrapped.safetensors"
    save_file(LabelsOnly(model).state_dict(), str(path))
    cfg = parse_config(with_checkpoint(tiny_config, path))
    data = load_classification_data("digits", labeled_fraction=0.2)
    loaded, _ = load_teacher(cfg.teacher, data, torch.device("cpu"))
    for (name, a), (_, b) in zip(loaded.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_prefix_on_only_some_names_is_not_stripped(tmp_path, tiny_config):
    state = build_model("cnn_s", DIGITS, 10).state_dict()
    state["model.head.bias"] = state.pop("head.bias")
    path = tmp_path / "half.safetensors"
    save_file(state, str(path))
    result = validate(tmp_path, with_checkpoint(tiny_config, path))
    assert_one_error(
        result,
        f"teacher.checkpoint: {path} does not fit arch 'cnn_s': missing head.bias; unexpected model.head.bias",
    )


def test_the_api_raises_the_same_line(tmp_path, tiny_config):
    path = tmp_path / "nowhere.safetensors"
    cfg = parse_config(with_checkpoint(tiny_config, path))
    data = load_classification_data("digits", labeled_fraction=0.2)
    with pytest.raises(PreflightError) as err:
        load_teacher(cfg.teacher, data, torch.device("cpu"))
    assert str(err.value) == f"teacher.checkpoint: no file {path}"


# -- 3. tapped layers --------------------------------------------------------------------------------------


def test_layers_that_no_model_has_name_the_loss_term(tmp_path, tiny_config):
    tiny_config["loss"] = [
        {"name": "cross_entropy"},
        {"name": "hinton_kd"},
        {"name": "fitnet_hint", "student_layer": "blocks.9", "teacher_layer": "block2"},
        {"name": "fitnet_hint", "student_layer": "block2", "teacher_layer": "block3"},
    ]
    result = validate(tmp_path, tiny_config)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: loss.2.student_layer: no module 'blocks.9' in cnn_xs; modules: block1, block2, pool, head",
        "error: loss.3.teacher_layer: no module 'block3' in cnn_s; modules: block1, block2, pool, head",
    ]


def test_layers_are_named_against_an_mlp_too(tmp_path, tiny_config):
    tiny_config["student"]["arch"] = "mlp_xs"
    tiny_config["loss"] = [{"name": "fitnet_hint", "student_layer": "fc2", "teacher_layer": "block2"}]
    result = validate(tmp_path, tiny_config)
    assert_one_error(result, "loss.0.student_layer: no module 'fc2' in mlp_xs; modules: flatten, fc1, head")


def test_nested_layers_that_exist_pass(tmp_path, tiny_config):
    tiny_config["loss"] = [{"name": "fitnet_hint", "student_layer": "block2.1", "teacher_layer": "block2.1"}]
    result = validate(tmp_path, tiny_config)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["loss"][0]["student_layer"] == "block2.1"


# -- 4. device ---------------------------------------------------------------------------------------------


def test_cuda_without_a_cuda_device(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tiny_config["device"] = "cuda"
    result = validate(tmp_path, tiny_config)
    assert_one_error(
        result, "device: cuda was asked for but torch sees no CUDA device; use device: cpu (or auto)"
    )


# -- 5. pickled LM weights ---------------------------------------------------------------------------------


@pytest.fixture
def pickled_lm(tmp_path):
    """A tiny Llama folder whose weights are only a torch.save-d state dict (no safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "pickled-llama"
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config.save_pretrained(folder)
    torch.save(LlamaForCausalLM(config).state_dict(), folder / "pytorch_model.bin")
    return folder


def _refusal(folder) -> str:
    return (
        f"refused: {folder / 'pytorch_model.bin'} is a pickle checkpoint, which can run code when loaded; "
        "convert it to safetensors (where you trust it: load the model and save_pretrained(folder), which "
        "writes model.safetensors)"
    )


@pytest.fixture
def no_unpickling(monkeypatch):
    def unpickle(*args, **kwargs):
        raise AssertionError("the pickle was loaded")

    monkeypatch.setattr(torch, "load", unpickle)


def test_a_pickled_lm_teacher_is_refused(tmp_path, pickled_lm, no_unpickling):
    result = validate(tmp_path, {"task": "lm", "teacher": {"model": str(pickled_lm)}})
    assert_one_error(result, f"teacher.model: {_refusal(pickled_lm)}")


def test_a_pickled_pretrained_student_is_refused(tmp_path, pickled_lm, no_unpickling):
    """The teacher is a safetensors folder (the default teacher is a package this machine may not have)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    teacher = tmp_path / "safetensors-llama"
    tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
    LlamaForCausalLM(LlamaConfig(vocab_size=64, num_key_value_heads=2, **tiny)).save_pretrained(teacher)
    config = {
        "task": "lm",
        "teacher": {"model": str(teacher)},
        "student": {"init": "pretrained", "model": str(pickled_lm)},
    }
    result = validate(tmp_path, config)
    assert_one_error(result, f"student.model: {_refusal(pickled_lm)}")


def test_a_pickled_encoder_teacher_is_refused(tmp_path, pickled_lm, no_unpickling):
    result = validate(tmp_path, {"task": "encoder", "teacher": {"model": str(pickled_lm)}})
    assert_one_error(result, f"teacher.model: {_refusal(pickled_lm)}")


def test_load_causal_lm_refuses_a_pickle_too(pickled_lm, no_unpickling):
    from kdistill.lm.models import load_causal_lm

    with pytest.raises(PreflightError) as err:
        load_causal_lm(pickled_lm)
    assert str(err.value) == _refusal(pickled_lm)


def test_lm_references_that_name_nothing(tmp_path):
    missing = tmp_path / "no-model"
    config = {
        "task": "lm",
        "teacher": {"model": str(missing)},
        "prompts": {"file": "no_such_prompts"},
        "distill": {"signal": "cached", "signal_dir": str(tmp_path / "no-signal")},
    }
    result = validate(tmp_path, config)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: teacher.model '{missing}': no such directory (a hub id has the form namespace/name)",
        "error: prompts.file 'no_such_prompts': no such file and no built-in prompt set of that name",
        f"error: distill.signal_dir: no signal directory {tmp_path / 'no-signal'}",
    ]


# -- the shapes preflight assumes are the data's -----------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(INPUT_SHAPES))
def test_preflight_input_shapes_are_the_datasets(dataset):
    if dataset == "mnist1d":
        pytest.importorskip("mnist1d")
    data = load_classification_data(dataset, **({"num_samples": 100} if dataset == "mnist1d" else {}))
    assert (data.input_shape, data.num_classes) == (INPUT_SHAPES[dataset], 10)
