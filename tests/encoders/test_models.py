"""Teacher loading (pooling from sentence-transformers files), layer-cut and static students."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdistill.encoders.models import (
    StaticEmbeddingStudent,
    choose_encoder_layers,
    cut_layers,
    encoder_from_config,
    evenly_spaced_layers,
    layer_influence,
    load_encoder,
    pca_reduce,
    pool,
    read_sentence_transformers_layout,
    sif_weights,
)

TEXTS = ["The quick brown fox.", "def f(x): return x ** 2", "Exceptions are raised by the raise statement."]


# --- the sentence-transformers files -----------------------------------------------------------------


def _st_dir(tmp_path: Path, modules: list[str], pooling_config: dict | None = None) -> Path:
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    entries = [
        {"idx": i, "name": str(i), "path": paths[kind], "type": f"sentence_transformers.models.{kind}"}
        for i, kind in enumerate(modules)
    ]
    (tmp_path / "modules.json").write_text(json.dumps(entries))
    if pooling_config is not None:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return tmp_path


def test_teacher_layout_is_read_from_its_files(teacher_dir, teacher) -> None:
    layout = read_sentence_transformers_layout(teacher_dir)
    assert (layout.pooling, layout.normalize, layout.max_seq_length) == ("mean", True, 48)
    assert layout.source == "modules.json"
    assert not (teacher_dir / "2_Normalize").exists()  # listed in modules.json only, as all-MiniLM-L6-v2
    assert (teacher.pooling, teacher.normalize, teacher.max_seq_length) == ("mean", True, 48)
    long = teacher.tokenize([" ".join(["word"] * 200)])
    assert long["input_ids"].shape == (1, 48)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {
                "word_embedding_dimension": 8,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False,
            },
            "cls",
        ),
        ({"word_embedding_dimension": 8, "pooling_mode_max_tokens": True}, "max"),
        ({"word_embedding_dimension": 8}, "mean"),  # no flag set: sentence-transformers means mean
        ({"embedding_dimension": 8, "pooling_mode": "cls"}, "cls"),  # sentence-transformers >= 6
        ({"embedding_dimension": 8, "pooling_mode": ["max"]}, "max"),
    ],
)
def test_pooling_modes_from_config(tmp_path, config, expected) -> None:
    layout = read_sentence_transformers_layout(_st_dir(tmp_path, ["Transformer", "Pooling"], config))
    assert (layout.pooling, layout.normalize) == (expected, False)


def test_unsupported_layouts_raise_and_plain_models_get_defaults(tmp_path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    with pytest.raises(ValueError, match="not supported"):
        read_sentence_transformers_layout(_st_dir(a, ["Transformer", "Pooling", "Dense"], {}))
    with pytest.raises(ValueError, match="not supported"):
        read_sentence_transformers_layout(
            _st_dir(
                b,
                ["Transformer", "Pooling"],
                {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
            )
        )
    layout = read_sentence_transformers_layout(c)
    assert (layout.pooling, layout.normalize, layout.source) == ("mean", False, "default (no modules.json)")


def test_pool_against_hand_computation() -> None:
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # (B=2, T=3, D=2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right padding, then left padding
    assert torch.equal(pool(h, mask, "mean"), torch.tensor([[1.0, 2.0], [9.0, 10.0]]))
    assert torch.equal(pool(h, mask, "cls"), torch.tensor([[0.0, 1.0], [8.0, 9.0]]))
    assert torch.equal(pool(h, mask, "max"), torch.tensor([[2.0, 3.0], [10.0, 11.0]]))


def test_teacher_encode_is_mean_pooled_normalised_last_hidden_state(teacher) -> None:
    batch = teacher.tokenize(TEXTS)
    with torch.no_grad():
        hidden = teacher.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(teacher.encode(TEXTS, batch_size=2), expected, atol=1e-6)
    # batch size does not change a text's embedding (beyond float noise from padding)
    one_by_one = torch.cat([teacher.encode([t]) for t in TEXTS])
    assert torch.allclose(teacher.encode(TEXTS, batch_size=3), one_by_one, atol=1e-6)


def test_encode_batches_by_length_but_returns_the_callers_order(teacher, sentences) -> None:
    texts = [sentences[0] * 3, "short", sentences[1], "x", sentences[2] * 2, sentences[3]]  # mixed lengths
    one_by_one = torch.cat([teacher.encode([t]) for t in texts])
    assert torch.allclose(teacher.encode(texts, batch_size=2), one_by_one, atol=1e-5)
    static = StaticEmbeddingStudent.from_teacher(teacher, dims=8)
    assert torch.allclose(static.encode(texts, batch_size=4), torch.cat([static.encode([t]) for t in texts]))
    assert teacher.encode([], batch_size=4).shape == (0, teacher.embedding_dim)


def test_explicit_arguments_override_the_files(teacher_dir) -> None:
    enc = load_encoder(teacher_dir, pooling="cls", normalize=False)
    batch = enc.tokenize(TEXTS[:1])
    with torch.no_grad():
        first = enc.model(**batch).last_hidden_state[:, 0]
    assert torch.allclose(enc.encode(TEXTS[:1]), first, atol=1e-6)


def test_fingerprint_follows_weights_and_pooling(teacher_dir, teacher) -> None:
    again = load_encoder(teacher_dir)
    assert again.fingerprint() == teacher.fingerprint()
    assert load_encoder(teacher_dir, pooling="cls").fingerprint() != teacher.fingerprint()
    with torch.no_grad():
        again.model.embeddings.word_embeddings.weight[5, 0] += 1e-3
    assert again.fingerprint() != teacher.fingerprint()


# --- transformer students --------------------------------------------------------------------------


def test_cut_layers_runs_exactly_the_kept_teacher_layers(teacher) -> None:
    student = cut_layers(teacher, [0, 2])
    assert student.num_layers == 2 and student.model.config.num_hidden_layers == 2
    assert teacher.num_layers == 4  # the teacher is untouched
    batch = student.tokenize(TEXTS[:1])  # one text: no padding, so the layers need no mask
    with torch.no_grad():
        h = teacher.model.embeddings(input_ids=batch["input_ids"])
        for i in (0, 2):
            h = teacher.model.encoder.layer[i](h)
        out = student.token_states(batch).last_hidden_state
    assert torch.allclose(out, h, atol=1e-6)
    student.model.encoder.layer[0].output.dense.weight.data.zero_()  # no storage shared with the teacher
    assert teacher.model.encoder.layer[0].output.dense.weight.abs().sum() > 0


def test_cut_to_every_layer_is_the_teacher(teacher) -> None:
    assert torch.allclose(cut_layers(teacher, range(4)).encode(TEXTS), teacher.encode(TEXTS), atol=1e-6)
    with pytest.raises(ValueError, match="distinct"):
        cut_layers(teacher, [1, 1])


def test_layer_influence_against_hand_computation(teacher, sentences) -> None:
    text = sentences[0]
    batch = teacher.tokenize([text])
    with torch.no_grad():
        hidden = teacher.model(**batch, output_hidden_states=True).hidden_states
    expected = [
        (1 - F.cosine_similarity(hidden[i][0], hidden[i + 1][0], dim=-1)).mean().item() for i in range(4)
    ]
    assert layer_influence(teacher, [text]) == pytest.approx(expected, rel=1e-5)


def test_choose_layers_by_influence_keeps_first_last_and_the_most_influential(teacher, sentences) -> None:
    kept, influence = choose_encoder_layers(teacher, 3, sentences[:8])
    middle = max((1, 2), key=lambda i: (influence[i], -i))
    assert kept == sorted({0, 3, middle})
    assert evenly_spaced_layers(12, 4) == [0, 4, 7, 11]
    assert evenly_spaced_layers(6, 6) == list(range(6))


def test_encoder_from_config_is_seeded_and_small(teacher) -> None:
    config = {"model_type": "bert", "vocab_size": len(teacher.tokenizer), "hidden_size": 16}
    config |= {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    a = encoder_from_config(config, teacher.tokenizer, pooling="cls", seed=3)
    b = encoder_from_config(config, teacher.tokenizer, pooling="cls", seed=3)
    assert (a.embedding_dim, a.num_layers, a.pooling) == (16, 1, "cls")
    assert torch.equal(a.encode(TEXTS), b.encode(TEXTS))
    other = encoder_from_config(config, teacher.tokenizer, pooling="cls", seed=4)
    assert not torch.allclose(a.encode(TEXTS), other.encode(TEXTS), atol=1e-3)


# --- the static student ----------------------------------------------------------------------------


def test_static_student_from_input_embeddings(teacher) -> None:
    student = StaticEmbeddingStudent.from_teacher(teacher)
    vocab = len(teacher.tokenizer)
    assert student.embedding.weight.shape == (vocab, teacher.embedding_dim)
    assert torch.equal(student.embedding.weight, teacher.model.embeddings.word_embeddings.weight[:vocab])
    assert student.normalize is True  # the teacher's

    # encode = mean of the tokens' vectors (no [CLS]/[SEP]), L2-normalised; an empty text gives zeros
    ids = teacher.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    expected = F.normalize(student.embedding.weight[ids].mean(0), dim=0)
    out = student.encode([TEXTS[0], ""])
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.equal(out[1], torch.zeros(teacher.embedding_dim))


def test_static_student_pca_matches_sklearn(teacher) -> None:
    from sklearn.decomposition import PCA

    student = StaticEmbeddingStudent.from_teacher(teacher, dims=8)
    assert student.embedding.weight.shape == (len(teacher.tokenizer), 8)
    source = teacher.model.embeddings.word_embeddings.weight.detach().double().numpy()
    expected = PCA(n_components=8, svd_solver="full").fit_transform(source)
    ours = student.embedding.weight.detach().double().numpy()
    signs = np.sign((ours * expected).sum(0))  # components are defined up to sign
    np.testing.assert_allclose(ours, expected * signs, atol=1e-5)
    with pytest.raises(ValueError, match="dims"):
        pca_reduce(torch.randn(5, 4), 6)


def test_sif_weights_against_hand_computation(teacher) -> None:
    backend = StaticEmbeddingStudent.from_teacher(teacher).tokenizer
    texts = ["the the function", "the"]
    the, function = backend.token_to_id("the"), backend.token_to_id("function")
    assert the is not None and function is not None
    w = sif_weights(backend, texts, a=0.1)  # 4 tokens: p(the) = 3/4, p(function) = 1/4, others 0
    assert w[the].item() == pytest.approx(0.1 / (0.1 + 0.75))
    assert w[function].item() == pytest.approx(0.1 / (0.1 + 0.25))
    assert w[backend.token_to_id("class")].item() == 1.0
    student = StaticEmbeddingStudent.from_teacher(teacher, sif_texts=texts, sif_a=0.1)
    source = teacher.model.embeddings.word_embeddings.weight
    assert torch.allclose(student.embedding.weight[the], source[the] * w[the])


def test_static_student_pooled_init_is_the_teacher_embedding_of_each_token(teacher) -> None:
    student = StaticEmbeddingStudent.from_teacher(teacher, init="pooled", normalize=False)
    cls, sep = teacher.tokenizer.cls_token_id, teacher.tokenizer.sep_token_id
    for token in (7, 123, 599):
        ids = torch.tensor([[cls, token, sep]])
        with torch.no_grad():
            hidden = teacher.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        assert torch.allclose(student.embedding.weight[token], hidden[0].mean(0), atol=1e-5)


def test_static_student_sif_weights_do_not_depend_on_whether_the_teacher_has_run(teacher_dir) -> None:
    # A fast tokenizer keeps the truncation of its last call in its backend; SIF counts must not inherit it.
    from kdistill.encoders.models import StaticEmbeddingStudent, load_encoder

    texts = [" ".join(["loop", "class", "module", "yield", "import"] * 30) + f" number {i}" for i in range(8)]
    fresh = StaticEmbeddingStudent.from_teacher(
        load_encoder(str(teacher_dir), max_seq_length=16), sif_texts=texts
    )
    used = load_encoder(str(teacher_dir), max_seq_length=16)
    used.encode(texts)  # truncates every text at 16 tokens
    after_use = StaticEmbeddingStudent.from_teacher(used, sif_texts=texts)
    torch.testing.assert_close(after_use.embedding.weight, fresh.embedding.weight, rtol=0, atol=0)


def test_pooled_start_is_cached_per_teacher_and_equals_computing_it(tmp_path, teacher, monkeypatch) -> None:
    from kdistill.encoders import models, recipe
    from kdistill.encoders.models import StaticEmbeddingStudent

    first = recipe.pooled_vectors(teacher, tmp_path)
    (stored,) = (tmp_path / "static-init").iterdir()
    assert stored.name == f"{teacher.fingerprint()}-pooled.safetensors"

    def no_second_pass(*_: object, **__: object) -> None:
        raise AssertionError("the cached vectors should be read back")

    monkeypatch.setattr(models, "pooled_token_vectors", no_second_pass)
    torch.testing.assert_close(recipe.pooled_vectors(teacher, tmp_path), first, rtol=0, atol=0)
    monkeypatch.undo()
    direct = StaticEmbeddingStudent.from_teacher(teacher, init="pooled", dims=8)
    cached = StaticEmbeddingStudent.from_teacher(teacher, init="pooled", dims=8, token_vectors=first)
    torch.testing.assert_close(cached.embedding.weight, direct.embedding.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="token_vectors has 3 rows for 600 tokens"):
        StaticEmbeddingStudent.from_teacher(teacher, init="pooled", token_vectors=first[:3])
