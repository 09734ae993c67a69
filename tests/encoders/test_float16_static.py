"""float16 static students: the saved file, its loaders (ours and sentence-transformers'), the config's
refusal for other kinds, and the run scoring the student both as trained (float32) and as saved."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from pydantic import ValidationError

from kdistill.config import ConfigError, load_config, parse_config
from kdistill.encoders.config import EncoderRunConfig, EncoderStudentConfig
from kdistill.encoders.models import StaticEmbeddingStudent, cut_layers
from kdistill.encoders.recipe import build_encoder_data, run_encoder
from kdistill.encoders.save import load_saved_encoder, save_sentence_transformer

st = pytest.importorskip("sentence_transformers")

# sentence-transformers keeps a float16 weight and pools and normalises in float16, so its unit vectors
# differ from ours (float32 arithmetic on the same rounded vectors) by float16 rounding: a few units of
# 2**-11 ~= 4.9e-4 per component (3.5e-4 at most on these texts). 4e-3 is 8 such units; the vector of
# another text, or of the float32 file read as float16 bits, is off by more than 1e-1.
_ST_FLOAT16_ATOL = 4e-3


def _trained_static(teacher, sentences, *, normalize: bool = True) -> StaticEmbeddingStudent:
    student = StaticEmbeddingStudent.from_teacher(teacher, dims=12, sif_texts=sentences, normalize=normalize)
    with torch.no_grad():  # as after training: values no longer those of the teacher's
        student.embedding.weight.add_(
            0.01 * torch.randn(student.embedding.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    return student


def _safetensors_layout(path) -> tuple[int, dict]:
    """(header bytes, header) of a safetensors file: 8-byte little-endian length, then that much JSON."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


@pytest.mark.parametrize("normalize", [True, False])
def test_float16_file_is_the_float32_vectors_rounded_in_half_the_bytes(
    tmp_path, teacher, sentences, normalize
) -> None:
    from safetensors.torch import load_file

    student = _trained_static(teacher, sentences, normalize=normalize)
    full = save_sentence_transformer(student, tmp_path / "f32")
    half = save_sentence_transformer(student, tmp_path / "f16", dtype="float16")

    w32 = load_file(str(full / "model.safetensors"))["embedding.weight"]
    w16 = load_file(str(half / "model.safetensors"))["embedding.weight"]
    assert w32.dtype == torch.float32 and w16.dtype == torch.float16
    assert torch.equal(w32, student.embedding.weight.detach())
    assert torch.equal(w16, student.embedding.weight.detach().half())  # round to nearest, element by element
    assert json.loads((half / "kdistill_encoder.json").read_text())["dtype"] == "float16"

    sizes = {}
    for name, path in (("f32", full), ("f16", half)):
        file = path / "model.safetensors"
        header_bytes, header = _safetensors_layout(file)
        sizes[name] = file.stat().st_size - 8 - header_bytes  # the tensor data alone
        assert header["embedding.weight"]["shape"] == [600, 12]
    assert sizes == {"f32": 600 * 12 * 4, "f16": 600 * 12 * 2}

    texts = sentences[:12] + ["", "ZZZ unknown-ish tokens ###"]
    again = load_saved_encoder(half)
    assert isinstance(again, StaticEmbeddingStudent) and again.normalize is normalize
    assert again.embedding.weight.dtype == torch.float32  # computed in float32
    rounded = StaticEmbeddingStudent(student.tokenizer, w16.float(), normalize=normalize)
    assert torch.equal(again.encode(texts), rounded.encode(texts))


def test_sentence_transformers_encodes_a_float16_student_like_our_loader(
    tmp_path, teacher, sentences
) -> None:
    student = _trained_static(teacher, sentences)
    path = save_sentence_transformer(student, tmp_path / "f16", dtype="float16")
    texts = sentences[:16] + ["ZZZ unknown-ish tokens ###"]
    model = st.SentenceTransformer(str(path), device="cpu")
    assert model[0].embedding.weight.dtype == torch.float16  # it keeps the file's dtype
    theirs = model.encode(texts, batch_size=4, convert_to_tensor=True).cpu()
    ours = load_saved_encoder(path).encode(texts)
    assert theirs.dtype == torch.float16
    torch.testing.assert_close(theirs.float(), ours, atol=_ST_FLOAT16_ATOL, rtol=0)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)


def test_save_dtype_is_refused_for_other_kinds(teacher) -> None:
    with pytest.raises(ValidationError, match="save_dtype applies to static students only"):
        EncoderStudentConfig(name="a", kind="layers", keep_layers=1, save_dtype="float16")
    with pytest.raises(ConfigError, match=r"students\.0: .*save_dtype applies to static students only"):
        parse_config(
            {
                "task": "encoder",
                "students": [{"name": "a", "kind": "layers", "keep_layers": 1, "save_dtype": "float16"}],
            }
        )
    with pytest.raises(ConfigError, match=r"students\.0\.save_dtype"):
        parse_config({"task": "encoder", "students": [{"name": "a", "kind": "static", "save_dtype": "int8"}]})
    assert EncoderStudentConfig(name="s", kind="static", save_dtype="float16").save_dtype == "float16"
    with pytest.raises(ValueError, match="dtype float16 applies to static students only, got a TextEncoder"):
        save_sentence_transformer(cut_layers(teacher, [0]), "unused", dtype="float16")


def test_float16_values_beyond_its_range_are_refused(tmp_path, teacher, sentences) -> None:
    student = _trained_static(teacher, sentences)
    with torch.no_grad():
        student.embedding.weight[3, 0] = 1e5
    with pytest.raises(ValueError, match=r"magnitude 100000 overflows float16 \(at most 65504\)"):
        save_sentence_transformer(student, tmp_path / "f16", dtype="float16")
    assert not (tmp_path / "f16").exists()


def _brute_force_recall(student, queries: list[str], documents: list[str], k: int) -> float:
    """Query i's document is document i; found when fewer than k other documents score at least as high."""
    q = torch.nn.functional.normalize(student.encode(queries), dim=-1)
    d = torch.nn.functional.normalize(student.encode(documents), dim=-1)
    found = 0
    for i in range(len(queries)):
        scores = d @ q[i]
        found += int(sum(1 for j in range(len(documents)) if scores[j] >= scores[i]) <= k)
    return found / len(queries)


def test_the_run_scores_a_float16_student_as_trained_and_as_saved(tmp_path, teacher_dir) -> None:
    small = [
        "corpus.limit=150",
        "corpus.held_out_pairs=20",
        "evaluation.spearman_texts=12",
        "evaluation.throughput_texts=16",
        "evaluation.batch_size=16",
        "evaluation.off_domain=[]",
        "threads=1",
    ]
    cfg = load_config(
        "minilm",
        [
            f"teacher.model={teacher_dir}",
            "teacher.max_seq_length=32",
            "students.0.layer_choice=even",
            "students.0.train.steps=1",
            "students.1.dims=16",
            "students.1.init=input",
            "students.1.train.steps=2",
            "students.1.save_dtype=float16",
            *small,
        ],
    )
    assert isinstance(cfg, EncoderRunConfig)
    result = run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    rows = {m["name"]: m for m in metrics["models"]}
    assert list(rows)[-2:] == ["static", "static (float16 as saved)"]
    assert "layers-2 (float32 as saved)" not in rows  # float32 students are saved exactly as trained
    trained, saved = rows["static"], rows["static (float16 as saved)"]
    assert (trained["role"], saved["role"]) == ("distilled", "saved")
    assert metrics["students"]["static"]["save_dtype"] == "float16"
    assert metrics["students"]["layers-2"]["save_dtype"] == "float32"

    out_dir = result.run_dir / "students" / "static"
    weights = out_dir / "model.safetensors"
    header_bytes, _ = _safetensors_layout(weights)
    assert saved["size_bytes"] == weights.stat().st_size == 8 + header_bytes + 600 * 16 * 2
    assert trained["size_bytes"] - 600 * 16 * 4 == saved["size_bytes"] - 600 * 16 * 2  # same header size
    assert saved["params"] == trained["params"] == 600 * 16
    assert "saved_bytes" not in trained  # the folder holds the float16 copy, reported on its own row

    data = build_encoder_data(cfg.corpus)
    as_saved = load_saved_encoder(out_dir)
    for k in (1, 10):
        expected = _brute_force_recall(as_saved, data.queries, data.documents, k)
        assert saved[f"recall@{k}"] == pytest.approx(expected)
    teacher_row = rows["teacher"]
    assert saved["recall@10_kept"] == pytest.approx(saved["recall@10"] / teacher_row["recall@10"])
    assert "static (float16 as saved)" in (result.run_dir / "report.html").read_text()

    # A rerun reads every evaluation back: the float32 row is never recomputed from the rounded copy.
    job = result.run_dir / "jobs" / "static"
    assert json.loads((job / "eval_after.json").read_text())["recall@10"] == trained["recall@10"]
    (result.run_dir / "metrics.json").unlink()
    again = run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    assert again.resumed
    speed = {"texts_per_s", "latency_ms", "speedup"}  # the timing phase runs again in every session

    def quality(rows):
        return [{k: v for k, v in row.items() if k not in speed} for row in rows]

    assert quality(again.metrics["models"][-2:]) == quality(metrics["models"][-2:])
