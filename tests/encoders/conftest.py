"""Tiny sentence encoders for the encoder tests, built offline in about a second.

A WordPiece tokenizer (vocab 600, BERT normaliser and pre-tokenizer, [CLS] ... [SEP]) trained on Python's
own reference docs (`pydoc_data.topics`), and a 4-layer BertModel (hidden 32, seeded, no dropout) saved
as a sentence-transformers directory whose files are written here by hand (not by kdistill's own saver):
`modules.json` Transformer -> Pooling -> Normalize, legacy pooling keys, no `2_Normalize` folder (as
all-MiniLM-L6-v2 ships) and `sentence_bert_config.json` with max_seq_length 48.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    wp.train_from_iterator((topics[k] for k in sorted(topics)), trainer=trainer)
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=wp,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_bert_config(vocab_size: int, *, layers: int = 4, hidden: int = 32) -> dict:
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": hidden * 2,
        "max_position_embeddings": 64,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def write_st_files(path: Path, *, dim: int, pooling: str = "mean", normalize: bool = True) -> None:
    """The sentence-transformers files of a Transformer -> Pooling (-> Normalize) model, by hand."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    flags = {
        "cls": "pooling_mode_cls_token",
        "mean": "pooling_mode_mean_tokens",
        "max": "pooling_mode_max_tokens",
    }
    pool_cfg = {"word_embedding_dimension": dim} | {flag: mode == pooling for mode, flag in flags.items()}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 48, "do_lower_case": False})
    )


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    from transformers import AutoConfig, AutoModel

    tokenizer = train_wordpiece()
    fields = tiny_bert_config(len(tokenizer))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
    path = tmp_path_factory.mktemp("tiny-st-bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_st_files(path, dim=config.hidden_size)
    return path


@pytest.fixture(scope="session")
def _teacher(teacher_dir):
    from kdistill.encoders.models import load_encoder

    return load_encoder(teacher_dir)


@pytest.fixture
def teacher(_teacher):
    """The session's teacher; tests must not modify it (students are copies)."""
    return _teacher


def _sentences(text: str) -> list[str]:
    flat = re.sub(r"\s+", " ", text.replace("*", " ")).strip()
    return [s.strip() for s in re.split(r"(?<=[.!?]) ", flat) if 20 <= len(s.strip()) <= 160]


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """120 distinct sentences from the Python docs, 20-160 characters each."""
    out: list[str] = []
    for name in sorted(topics):
        for s in _sentences(topics[name]):
            if s not in out:
                out.append(s)
    return out[:120]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models gain nothing from more, and the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
