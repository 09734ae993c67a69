"""Tiny causal LMs for the lm tests: a byte-level BPE tokenizer trained on Python's own docs, a 4-layer Llama.

Everything is built locally, saved to a temporary directory and loaded back with `from_pretrained`, the
way a real model is; nothing is downloaded.
"""

from __future__ import annotations

import re
from pydoc_data.topics import topics

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kdistill.lm.config import LMTrainConfig
from kdistill.lm.models import load_causal_lm, load_tokenizer, model_from_config

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _words(text: str) -> list[str]:
    """The words of a pydoc topic, without its reST underlines (runs of '*')."""
    return [w for w in re.sub(r"\s+", " ", text).strip().split(" ") if w.strip("*")]


def tiny_llama_config(vocab_size: int, *, layers: int = 4, dropout: float = 0.0) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,  # as SmolLM2
        "attention_dropout": dropout,
        "pad_token_id": 0,
        "eos_token_id": 2,
    }


def loop_config(**fields) -> LMTrainConfig:
    """A `train` section with the loop settings these tests were written for (no accumulation, no warmup,
    a history entry every 10 steps), and `fields` on top."""
    return LMTrainConfig(**({"grad_accum": 1, "warmup_steps": 0, "log_every": 10} | fields))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A 512-token byte-level BPE with a ChatML-like template; eos (<|im_end|>) differs from pad."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator((topics[k] for k in sorted(topics)), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=4096
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def plain_tokenizer(tokenizer_dir):
    """The same tokenizer without a chat template: prompts are raw text."""
    tok = load_tokenizer(tokenizer_dir)
    tok.chat_template = None
    return tok


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 2
    model = model_from_config(tiny_llama_config(len(tokenizer)), seed=0)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(model_dir):
    """A fresh float32 copy for each test (tests train it in place)."""
    return load_causal_lm(model_dir)


@pytest.fixture(scope="session")
def rows():
    """16 teacher rows: prompts and chat messages on Python topics, answers of 4 to 19 words."""
    names = sorted(topics)[:16]
    out = []
    for i, name in enumerate(names):
        answer = " ".join(_words(topics[name])[: 4 + i])
        row = {"prompt": None, "messages": None, "completion": answer, "record_id": f"r{i}"}
        if i % 2:
            row["messages"] = [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"What is {name}?"},
            ]
        else:
            row["prompt"] = f"Explain {name}."
        out.append(row)
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are too small to gain from more, and when another process holds
    a core, 2 OpenMP threads wait on each other (a 32x64 linear took 16 ms instead of 0.014 ms)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
