"""The plain-text recovery phase (student.recover): packing against the stream by hand, text sources and their
errors, config rules, and runs (the phase lowers the student's divergence from the teacher on the text, every
arm starts from the recovered student, an interrupted phase resumes to the same weights)."""

import json

import pytest
import torch
import torch.nn.functional as F
from tests.fixtures.tiny_lm import lm_run_config, tiny_llama, train_tokenizer, write_lm_task
from transformers import AutoModelForCausalLM

from kdistill.config import ConfigError, parse_config
from kdistill.lm.recover import BUILTIN_TEXT, pack_chunks, recovery_texts

TEXTS = [
    "The with statement wraps a block in the methods of a context manager.",
    "A for loop iterates over the items of any sequence, in the order that they appear.",
    "Exceptions are raised with the raise statement and handled by try.",
    "x",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(512)


def _stream(tokenizer, texts):
    out = []
    for text in texts:
        out += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return out


def test_chunks_cover_the_packed_stream_exactly_once(tokenizer):
    rows = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)]
    stream = _stream(tokenizer, TEXTS)
    chunks = pack_chunks(tokenizer, rows, chunk_length=7, max_tokens=10**6, seed=0)
    assert [
        tok for c in chunks for tok in c["input_ids"]
    ] == stream  # in stream order, nothing lost or doubled
    assert all(len(c["input_ids"]) == 7 for c in chunks[:-1]) and 2 <= len(chunks[-1]["input_ids"]) <= 7
    assert all(c["labels"] == c["input_ids"] for c in chunks)  # every position is a target
    assert [c["record_id"] for c in chunks] == [f"text-7-{i}" for i in range(len(chunks))]
    assert stream.count(tokenizer.eos_token_id) >= len(TEXTS)  # EOS after each text


def test_a_token_budget_keeps_a_seeded_sample_of_whole_chunks(tokenizer):
    rows = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS * 5)]
    every = {
        c["record_id"]: c for c in pack_chunks(tokenizer, rows, chunk_length=8, max_tokens=10**6, seed=0)
    }
    sample = pack_chunks(tokenizer, rows, chunk_length=8, max_tokens=40, seed=3)
    assert sum(len(c["input_ids"]) for c in sample) <= 40 and len(sample) == 5
    assert all(every[c["record_id"]] == c for c in sample)  # whole chunks of the same stream
    assert sample == pack_chunks(tokenizer, rows, chunk_length=8, max_tokens=40, seed=3)
    assert sample != pack_chunks(tokenizer, rows, chunk_length=8, max_tokens=40, seed=4)
    one = pack_chunks(tokenizer, rows, chunk_length=8, max_tokens=2, seed=0)
    assert len(one) == 1  # a budget below one chunk still keeps one


def test_text_sources_and_their_errors(tmp_path):
    docs = recovery_texts(BUILTIN_TEXT)
    assert len(docs) > 500 and all(len(r["text"]) >= 150 for r in docs)
    lines = tmp_path / "t.jsonl"
    lines.write_text('{"id": "a", "text": "one"}\n\n{"text": "two"}\n')
    assert recovery_texts(str(lines)) == [{"id": "a", "text": "one"}, {"id": "2", "text": "two"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "one"}\n{"id": "b", "body": "two"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2: expected a string 'text'"):
        recovery_texts(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a"\n')
    with pytest.raises(ValueError, match=r"broken.jsonl: line 1: not JSON"):
        recovery_texts(str(broken))
    plain = tmp_path / "t.txt"
    plain.write_text("Some text.\nMore.")
    assert recovery_texts(str(plain)) == [{"id": "t.txt", "text": "Some text.\nMore."}]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt: not UTF-8"):
        recovery_texts(str(latin))
    with pytest.raises(
        ValueError, match=r"student.recover.text: 'nowhere' is neither 'python_docs' nor a file"
    ):
        recovery_texts("nowhere")
    other = tmp_path / "t.csv"
    other.write_text("a,b")
    with pytest.raises(ValueError, match=r"expected a .jsonl or .txt file, got '.csv'"):
        recovery_texts(str(other))


def test_config_rules():
    def lm(**student):
        return parse_config({"task": "lm", "student": student})

    assert lm(recover={}).student.recover.text == BUILTIN_TEXT
    assert "recover" not in lm().student.model_dump()  # configs without it hash as before
    with pytest.raises(ConfigError, match=r"student.recover.divergence"):
        lm(recover={"divergence": "nope"})
    with pytest.raises(ConfigError, match=r"student.recover.max_tokens"):
        lm(recover={"max_tokens": 1})
    with pytest.raises(ConfigError, match=r"needs the teacher's tokenizer"):
        lm(recover={}, new_tokenizer={"vocab_size": 400})
    with pytest.raises(ConfigError, match=r"student.recover distils .* distill.cross_tokenizer says"):
        parse_config(
            {
                "task": "lm",
                "student": {"recover": {}},
                "distill": {"signal": "cached", "cross_tokenizer": {"loss": "uld"}},
            }
        )


# -- runs ----------------------------------------------------------------------------------------------------


def _setup(tmp_path, tokenizer):
    model = tiny_llama(len(tokenizer), hidden=32, layers=4)
    with torch.no_grad():  # peaked next-token distributions: a random head gives nearly uniform ones
        model.lm_head.weight.mul_(30.0)
    teacher, prompts = write_lm_task(tmp_path, prompts=8, tokenizer=tokenizer, model=model)
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS * 6)))
    return teacher, prompts, text


def _config(teacher, prompts, text, **distill):
    return parse_config(
        lm_run_config(
            teacher,
            prompts,
            "tiny-recover",
            held_out=2,
            generation={"max_new_tokens": 6, "batch_size": 8},
            student={
                "keep_layers": 2,
                "calibration_texts": 4,
                "recover": {"text": str(text), "chunk_length": 24, "top_k": 8, "epochs": 3, "lr": 0.003},
            },
            train={
                "epochs": 1,
                "micro_batch_size": 2,
                "grad_accum": 1,
                "max_length": 32,
                "warmup_steps": 0,
                "checkpoint_every": 1,
            },
            distill=distill,
            evaluation={"batch_size": 2, "timing_prompts": 1, "timing_new_tokens": 2, "timing_rounds": 1},
        )
    )


@torch.no_grad()
def _text_kl(student, teacher, chunks) -> float:
    """Mean forward KL(teacher || student) over every position of the chunks, from the full distributions."""
    total, count = 0.0, 0
    for c in chunks:
        ids = torch.tensor([c["input_ids"]])
        t = F.log_softmax(teacher(input_ids=ids).logits[0].float(), -1)
        s = F.log_softmax(student(input_ids=ids).logits[0].float(), -1)
        total += float((t.exp() * (t - s)).sum())
        count += ids.shape[1]
    return total / count


def test_recovery_brings_the_student_closer_to_the_teacher_and_every_arm_starts_there(
    tmp_path, tokenizer, monkeypatch
):
    from kdistill.lm import recipe
    from kdistill.lm.prune import prune_layers
    from kdistill.lm.recipe import run_lm

    teacher_dir, prompts, text = _setup(tmp_path, tokenizer)
    cfg = _config(teacher_dir, prompts, text, signal="cached", compare_with_sft=True)
    starts = []
    real_train_arms = recipe.train_arms

    def spy(run, student, *args, **kwargs):
        starts.append({k: v.clone() for k, v in student.state_dict().items()})
        return real_train_arms(run, student, *args, **kwargs)

    monkeypatch.setattr(recipe, "train_arms", spy)
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    run_dir = result.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    recovered = AutoModelForCausalLM.from_pretrained(run_dir / "student_recovered").eval()
    assert all(torch.equal(v, recovered.state_dict()[k]) for k, v in starts[0].items())  # the arms' start

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    pruned = prune_layers(teacher, manifest["pruning"]["kept"]).eval()
    chunks = pack_chunks(
        tokenizer,
        recovery_texts(str(text)),
        chunk_length=24,
        max_tokens=cfg.student.recover.max_tokens,
        seed=0,
    )
    assert manifest["recovery"]["chunks"] == len(chunks)
    assert manifest["recovery"]["tokens"] == sum(len(c["input_ids"]) for c in chunks)
    assert manifest["recovery"]["steps"] == -(-3 * len(chunks) // 2)
    assert _text_kl(recovered, teacher, chunks) < 0.8 * _text_kl(pruned, teacher, chunks)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    roles = [m["role"] for m in metrics["models"]]
    assert roles == ["teacher", "before", "recovered", "sft", "distilled"]
    row = metrics["models"][2]
    recovered_eval = json.loads((run_dir / "eval_student_recovered.json").read_text())
    assert row["perplexity_on_teacher_answers"] == recovered_eval["perplexity"]
    assert row["train_seconds"] == metrics["recovery"]["train_seconds"] > 0
    assert "recovered on text" in metrics["summary"]["headline"]
    assert (
        json.loads((run_dir / "jobs" / "recover" / "done.json").read_text())["steps"]
        == manifest["recovery"]["steps"]
    )
    assert "recovered on text" in (run_dir / "report.html").read_text()


def test_an_interrupted_recovery_resumes_to_the_same_weights(tmp_path, tokenizer):
    from kdistill.lm.recipe import run_lm

    teacher_dir, prompts, text = _setup(tmp_path, tokenizer)
    cfg = _config(teacher_dir, prompts, text)
    whole = run_lm(cfg, runs_dir=tmp_path / "whole", cache_root=tmp_path / "cache").run_dir
    with pytest.raises(RuntimeError, match="stopped early"):
        run_lm(cfg, runs_dir=tmp_path / "cut", cache_root=tmp_path / "cache", stop_after=2)
    cut_dirs = list((tmp_path / "cut").glob("tiny-recover-*"))
    assert len(cut_dirs) == 1 and not (cut_dirs[0] / "jobs" / "recover" / "done.json").exists()
    resumed = run_lm(cfg, runs_dir=tmp_path / "cut", cache_root=tmp_path / "cache").run_dir
    assert resumed == cut_dirs[0]
    a = AutoModelForCausalLM.from_pretrained(whole / "student_recovered").state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed / "student_recovered").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
