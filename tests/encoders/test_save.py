"""Save -> `sentence_transformers.SentenceTransformer(path)` -> the same embeddings as kdistill's encode."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.encoders.models import StaticEmbeddingStudent, cut_layers, encoder_from_config, load_encoder
from kdistill.encoders.save import load_saved_encoder, save_sentence_transformer

st = pytest.importorskip("sentence_transformers")


def _st_encode(path, texts):
    model = st.SentenceTransformer(str(path), device="cpu")
    return model.encode(texts, batch_size=4, convert_to_tensor=True).cpu()


def test_teacher_files_written_by_hand_load_the_same_in_sentence_transformers(
    teacher_dir, teacher, sentences
) -> None:
    # the premise of the tests below: kdistill's teacher computes what sentence-transformers computes
    texts = sentences[:10]
    assert torch.allclose(_st_encode(teacher_dir, texts), teacher.encode(texts, batch_size=4), atol=1e-5)


def test_layer_cut_student_round_trip(tmp_path, teacher, sentences) -> None:
    texts = sentences[:12] + [" ".join(sentences[:6])]  # the last one is truncated at 48 tokens
    student = cut_layers(teacher, [0, 3])
    path = save_sentence_transformer(student, tmp_path / "cut")
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    ours = student.encode(texts, batch_size=5)
    assert torch.allclose(_st_encode(path, texts), ours, atol=1e-5)
    again = load_saved_encoder(path)
    assert (again.pooling, again.normalize, again.max_seq_length) == ("mean", True, 48)
    assert torch.allclose(again.encode(texts), ours, atol=1e-6)


def test_cls_pooled_unnormalised_student_round_trip(tmp_path, teacher, sentences) -> None:
    config = {"model_type": "bert", "vocab_size": len(teacher.tokenizer), "hidden_size": 16}
    config |= {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    config |= {"max_position_embeddings": 32}
    student = encoder_from_config(config, teacher.tokenizer, pooling="cls", normalize=False, seed=1)
    assert student.max_seq_length == 32  # the model's limit: the tokenizer has none
    texts = sentences[:8]
    path = save_sentence_transformer(student, tmp_path / "cls")
    assert not (path / "2_Normalize").exists()
    assert torch.allclose(_st_encode(path, texts), student.encode(texts), atol=1e-5)
    assert load_encoder(path).pooling == "cls"


@pytest.mark.parametrize("normalize", [True, False])
def test_static_student_round_trip(tmp_path, teacher, sentences, normalize) -> None:
    student = StaticEmbeddingStudent.from_teacher(teacher, dims=12, sif_texts=sentences, normalize=normalize)
    with torch.no_grad():  # as after training: vectors no longer a function of the teacher's
        student.embedding.weight.add_(
            0.01 * torch.randn(student.embedding.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    texts = sentences[:12] + ["", "ZZZ unknown-ish tokens ###"]
    path = save_sentence_transformer(student, tmp_path / "static")
    modules = json.loads((path / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    assert kinds == (["StaticEmbedding", "Normalize"] if normalize else ["StaticEmbedding"])
    ours = student.encode(texts)
    assert torch.allclose(_st_encode(path, texts), ours, atol=1e-5)
    again = load_saved_encoder(path)
    assert isinstance(again, StaticEmbeddingStudent) and again.normalize is normalize
    assert torch.equal(again.encode(texts), ours)


def test_saving_replaces_an_old_directory_and_refuses_other_objects(tmp_path, teacher) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_sentence_transformer(StaticEmbeddingStudent.from_teacher(teacher, dims=4), target)
    assert not (target / "stale.txt").exists()
    with pytest.raises(TypeError, match="cannot save"):
        save_sentence_transformer(torch.nn.Linear(2, 2), tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp directory left behind


def test_do_lower_case_is_applied_as_sentence_transformers_does(tmp_path, teacher_dir, sentences) -> None:
    import shutil

    from transformers import AutoTokenizer

    cased = tmp_path / "cased"
    shutil.copytree(teacher_dir, cased)
    spec = json.loads((cased / "tokenizer.json").read_text())
    spec["normalizer"] = None  # a case-sensitive tokenizer: upper-case letters are other tokens
    (cased / "tokenizer.json").write_text(json.dumps(spec))
    (cased / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 48, "do_lower_case": True})
    )
    teacher = load_encoder(cased)
    texts = [s.upper() for s in sentences[:6]]
    raw = AutoTokenizer.from_pretrained(cased)  # the files alone do not lowercase
    assert raw(texts[0])["input_ids"] != raw(texts[0].lower())["input_ids"]
    assert torch.allclose(teacher.encode(texts), teacher.encode([s.lower() for s in texts]), atol=1e-6)
    assert torch.allclose(_st_encode(cased, texts), teacher.encode(texts), atol=1e-5)
    path = save_sentence_transformer(cut_layers(teacher, [1]), tmp_path / "student")
    assert torch.allclose(_st_encode(path, texts), load_saved_encoder(path).encode(texts), atol=1e-5)
