"""`kdistill run` with `task: encoder`: the built-in recipe end to end on a tiny teacher, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.config import ConfigError, load_config, parse_config
from kdistill.encoders.config import EncoderRunConfig
from kdistill.encoders.recipe import run_encoder
from kdistill.encoders.save import load_saved_encoder

_SMALL = [
    "corpus.limit=150",
    "corpus.held_out_pairs=20",
    "evaluation.spearman_texts=12",
    "evaluation.throughput_texts=16",
    "evaluation.batch_size=16",
    "evaluation.off_domain=[]",  # the machine's own texts: test_off_domain_run.py
    "threads=1",
]


def _recipe(teacher_dir, *extra: str) -> EncoderRunConfig:
    cfg = load_config(
        "minilm",
        [f"teacher.model={teacher_dir}", "teacher.max_seq_length=32", "students.1.dims=16", *_SMALL, *extra],
    )
    assert isinstance(cfg, EncoderRunConfig)
    return cfg


def test_minilm_recipe_runs_end_to_end_in_two_steps_on_a_tiny_teacher(tmp_path, teacher_dir) -> None:
    from sentence_transformers import SentenceTransformer

    cfg = _recipe(teacher_dir, "students.0.train.steps=2", "students.1.train.steps=2")
    result = run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["task"] == "encoder"
    names = [m["name"] for m in metrics["models"]]
    assert names == ["teacher", "layers-2 (before)", "layers-2", "static (before)", "static"]
    teacher = metrics["models"][0]
    for m in metrics["models"]:
        assert 0 <= m["recall@1"] <= m["recall@10"] <= 1
        assert m["params"] > 0
    # speeds come from one timing phase after training: the trained models in turns, the same 16 texts
    timing = metrics["timing"]
    assert set(timing["models"]) == {"teacher", "layers-2", "static"}
    assert timing["texts"] == 16 and timing["batch_size"] == 16 and timing["max_seq_length"] == 32
    assert timing["rounds"] == 5 and timing["warmup_rounds"] == 1 and timing["threads"] == 1
    assert isinstance(timing["busy"], bool) and timing["load"]["cores"] >= 1
    for m in metrics["models"]:
        if m["role"] == "before":
            assert (
                m["texts_per_s"] is None and m["latency_ms"] is None
            )  # the same architecture, not timed again
            continue
        times = timing["models"][m["name"]]
        assert len(times["rounds_ms"]) == 5 and times["min_ms"] <= times["median_ms"] <= times["max_ms"]
        assert m["texts_per_s"] == pytest.approx(16 / (times["median_ms"] / 1000))
    assert metrics["models"][2]["speedup"] == pytest.approx(
        metrics["models"][2]["texts_per_s"] / teacher["texts_per_s"]
    )
    for m in metrics["models"][1:]:
        assert m["recall@10_kept"] == pytest.approx(m["recall@10"] / teacher["recall@10"])
        assert -1 <= m["spearman_vs_teacher"] <= 1
    static = metrics["models"][-1]
    assert static["params"] == 600 * 16 and static["embedding_dim"] == 16  # one PCA-reduced vector per token
    assert metrics["students"]["layers-2"]["kept_layers"] == sorted(
        metrics["students"]["layers-2"]["kept_layers"]
    )
    assert len(metrics["students"]["layers-2"]["kept_layers"]) == 2
    assert all(metrics["students"][n]["train_seconds"] > 0 for n in ("layers-2", "static"))
    assert {h["model"] for h in metrics["history"]} == {"layers-2", "static"}
    assert all(h["step"] <= 2 for h in metrics["history"])
    report = (result.run_dir / "report.html").read_text()
    assert "recall@10 kept" in report and "layers-2" in report

    texts = ["How does a for loop bind its target?", "Exceptions propagate up the call stack."]
    for name in ("layers-2", "static"):
        saved = result.run_dir / "students" / name
        ours = load_saved_encoder(saved).encode(texts)
        theirs = SentenceTransformer(str(saved), device="cpu").encode(texts, convert_to_tensor=True)
        torch.testing.assert_close(theirs.cpu(), ours, atol=1e-5, rtol=0)


def test_interrupted_encoder_run_resumes_to_the_same_students(tmp_path, teacher_dir) -> None:
    steps = ["students.0.train.steps=6", "students.0.train.checkpoint_every=2", "students.1.train.steps=4"]
    cfg = _recipe(teacher_dir, *steps, "students.1.init=input")
    reference = run_encoder(cfg, runs_dir=tmp_path / "ref", cache_root=tmp_path / "cache")

    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="layers-2: training stopped after step 3 of 6"):
        run_encoder(cfg, runs_dir=runs, cache_root=tmp_path / "cache", stop_after=3)
    (interrupted,) = [d for d in runs.iterdir() if d.name != ".locks"]
    assert (interrupted / "jobs" / "layers-2" / "checkpoints" / "latest").is_file()
    assert not (interrupted / "metrics.json").exists()
    first_session = json.loads((interrupted / "jobs" / "layers-2" / "train_clock.json").read_text())[
        "seconds"
    ]
    assert first_session > 0
    resumed = run_encoder(cfg, runs_dir=runs, cache_root=tmp_path / "cache")
    assert resumed.resumed and resumed.run_dir == interrupted
    # the training time counts both sessions, and the report row shows it
    layers_row = next(m for m in resumed.metrics["models"] if m["name"] == "layers-2")
    assert (
        layers_row["train_seconds"]
        == resumed.metrics["students"]["layers-2"]["train_seconds"]
        > first_session
    )
    for name in ("layers-2", "static"):
        a = load_saved_encoder(reference.run_dir / "students" / name).state_dict()
        b = load_saved_encoder(resumed.run_dir / "students" / name).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    steps_logged = [h["step"] for h in resumed.metrics["history"] if h["model"] == "layers-2"]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == 6  # no entry lost or doubled


def test_encoder_config_errors_name_the_field(tmp_path, teacher_dir) -> None:
    with pytest.raises(
        ConfigError, match=r"students\.0: Value error|students\.0: kind layers needs keep_layers"
    ):
        parse_config({"task": "encoder", "students": [{"name": "a", "kind": "layers"}]})
    with pytest.raises(ConfigError, match="unknown embedding loss"):
        parse_config({"task": "encoder", "students": [{"name": "a", "kind": "static", "losses": {"cos": 1}}]})
    with pytest.raises(ConfigError, match="student names must be unique"):
        parse_config(
            {
                "task": "encoder",
                "students": [{"name": "a", "kind": "static"}, {"name": "a", "kind": "static"}],
            }
        )
    with pytest.raises(ConfigError, match="corpus: source files needs files"):
        parse_config({"task": "encoder", "corpus": {"source": "files"}})
    with pytest.raises(ConfigError, match="dims applies to static students only"):
        parse_config(
            {"task": "encoder", "students": [{"name": "a", "kind": "layers", "keep_layers": 1, "dims": 8}]}
        )
    with pytest.raises(ConfigError, match=r"<config>: threads: Input should be greater than or equal to 1"):
        parse_config({"task": "encoder", "threads": 0})
    with pytest.raises(ConfigError, match="report_to: unknown sink 'wandb'; known: tensorboard, mlflow"):
        parse_config({"task": "encoder", "report_to": ["wandb"]})
    with pytest.raises(ConfigError, match=r"students\.0\.train\.grad_clip: Input should be greater than 0"):
        parse_config(
            {"task": "encoder", "students": [{"name": "a", "kind": "static", "train": {"grad_clip": 0}}]}
        )
    cfg = _recipe(teacher_dir, "students.0.keep_layers=9")
    with pytest.raises(ValueError, match=r"students.layers-2.keep_layers: 9 is not in 1..4"):
        run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    cfg = _recipe(teacher_dir, "students.0.keep_layers=[0,7]")
    with pytest.raises(
        ValueError, match=r"students.layers-2.keep_layers: \[0, 7\] must be distinct layer indices in -4..3"
    ):
        run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    cfg = _recipe(teacher_dir, "students.1.dims=64")
    with pytest.raises(
        ValueError, match=r"students.static.dims: 64 is wider than the teacher's token vectors \(32\)"
    ):
        run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")


def test_encoder_run_reads_files_and_saved_datasets(tmp_path, teacher_dir, sentences) -> None:
    import datasets

    from kdistill.encoders.config import EncoderCorpusConfig
    from kdistill.encoders.recipe import build_encoder_data

    paragraphs = [
        f"{a} {b[0].upper()}{b[1:]}" for a, b in zip(sentences[0::2], sentences[1::2], strict=False)
    ]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"body": p}) + "\n" for p in paragraphs[:30]))
    saved = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": paragraphs[30:]}).save_to_disk(str(saved))
    data = build_encoder_data(
        EncoderCorpusConfig(source="files", files=[str(jsonl), str(saved)], field="body", held_out_pairs=5)
    )
    assert len(data.queries) == 5 and len(data.train) == len(set(paragraphs)) - 5
    assert not set(data.documents) & set(data.train.values())
    with pytest.raises(FileNotFoundError, match="corpus.files: .*missing.txt"):
        build_encoder_data(EncoderCorpusConfig(source="files", files=[str(tmp_path / "missing.txt")]))
    with pytest.raises(ValueError, match="corpus.held_out_pairs: only"):
        build_encoder_data(
            EncoderCorpusConfig(source="files", files=[str(jsonl)], field="body", held_out_pairs=99)
        )


def test_a_student_built_from_a_config_trains_with_a_projection(tmp_path, teacher_dir) -> None:
    from kdistill.encoders.models import TextEncoder

    config = {
        "model_type": "bert",
        "vocab_size": 600,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    cfg = parse_config(
        {
            "task": "encoder",
            "teacher": {"model": str(teacher_dir), "max_seq_length": 32},
            "corpus": {"limit": 150, "held_out_pairs": 20},
            "students": [
                {
                    "name": "small",
                    "kind": "config",
                    "config": config,
                    "losses": {"cosine": 1.0, "rkd_distance": 0.5},
                    "train": {"steps": 3, "batch_size": 8},
                }
            ],
            "evaluation": {"spearman_texts": 12, "throughput_texts": 16, "batch_size": 16},
            "threads": 1,
        }
    )
    torch.set_num_threads(2)  # the run sets its own count and restores this one
    try:
        result = run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert result.metrics["evaluation"]["threads"] == 1  # timed at the run's thread count
    row = result.metrics["models"][-1]
    assert row["name"] == "small" and row["embedding_dim"] == 16
    assert row["extra_params"] == 16 * 32  # the cosine term sees the student through a 16 -> 32 projection
    assert set(result.metrics["history"][-1]["terms"]) == {"emb/cosine", "emb/rkd_distance"}
    saved = load_saved_encoder(result.run_dir / "students" / "small")
    assert isinstance(saved, TextEncoder) and saved.model.config.num_hidden_layers == 1
