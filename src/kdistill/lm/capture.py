"""Capture a teacher's top-k log-probabilities once, into the teacher-signal store, for offline distillation.

Two sources, one store (`kdistill.lm.signal_store`):

- `capture_topk(model, examples, ...)`: run a Hugging Face causal LM over tokenized examples (batched,
  `no_grad`, eval mode), take `log_softmax` of its logits in float32 and keep the top k per position.
- `signal_from_generations(gen_dir, tokenizer, ...)`: convert the `logprobs` an OpenAI-compatible endpoint
  returned during `kdistill generate` (the chosen token and its `top_logprobs` alternatives per answer
  token) into the same rows, aligned with the SFT examples of those generations.

Both write examples under their id (a generation's record_id), so training joins signal to examples by
id, and both are resumable: a rerun after a kill keeps the committed shards and does only the rest.

**Determinism.** Examples are sorted by (length descending, id) and cut into batches over the *whole*
data set; a batch is skipped only when all its examples are stored, else it is recomputed whole. A
resumed capture therefore runs the very same batches (same shapes, same padding) as an uninterrupted
one and stores bit-identical tensors. Shards are committed between batches.

**Many machines** (`shard=Shard(i, N)`, `kdistill capture --shard i/N`). The unit of work is the fixed
batch: shard i runs the batches j of the whole data set with j mod N == i (`Shard.positions`; round robin
over length-sorted batches gives the shards about equal token counts). Sharding the batches, not the
examples by a hash of their id (as `kdistill generate` shards its records), keeps every batch whole, so
the shards' tensors are those of the unsharded capture bit for bit and no batch runs twice; the price is
that a shard's examples depend on the data set and `batch_size` (both recorded in the key input
`shard`: index, count, batch_size, the whole data's fingerprint). Each shard is a store of its own, keyed
by its examples (its default directory is therefore its own); read them together with
`TeacherSignal([dir, ...])`, which checks that they are parts of one capture and disjoint.

**Many processes** (torchrun). When a torch.distributed group is initialised, the ranks split the
(shard's) batches round robin and write one store: see `fill_store` (per-rank part stores under
`<store>/.parts/`, adopted by rank 0 with hard links and one manifest write; resumable and exactly once,
also after a kill, also with another number of processes).

**Endpoint token mapping.** An endpoint names tokens by their text. A text maps to our id by (1) a map
from the decoding of every single id to that id, where a text that several ids decode to (partial UTF-8
bytes: "\\ufffd") maps to nothing, else (2) an exact lookup in the tokenizer's vocabulary (`get_vocab()`,
i.e. `convert_tokens_to_ids` without the unk fallback), for servers that send raw token names such as
"Ġthe". Decoded text comes first because OpenAI-compatible servers send text, and in a byte-level BPE
the raw names of single bytes are real characters ("é" names byte 0xE9, while the text "é" is another
token): a lookup by raw name first would map such text to the wrong id. An answer token whose text maps
to nothing is still recognised when it decodes like our token at that position. Alternatives that do
not map are dropped: their probability mass falls into the tail (what no stored entry covers). The
chosen token counts as an entry too, alternatives naming the same id keep the first (highest)
log-probability, and the k highest entries are kept.

**Endpoint alignment.** The row's prompt and answer are tokenized exactly as `sft_data.tokenize_row` does
(the example ids and input_ids are those of the SFT examples). The endpoint's chosen tokens are aligned
with our tokens of the answer by longest matching runs (difflib); an endpoint token outside every run
does not agree with our tokenization: its position gets no signal (valid False) and is counted in
`mismatched_tokens`, which the command reports; above `max_mismatch` of the endpoint's tokens (the
`capture.max_token_mismatch` limit) the conversion is refused, since a signal on a few scattered tokens is
mostly a sign of the wrong tokenizer. Answer token j's entry fills row (prompt length + j - 1), the
position whose logits predict it; rows of the prompt, of the final eos and of cut-off tokens stay invalid.

**Width.** k defaults to the most entries any row uses (the chosen token and its alternatives that map to
distinct ids), not 1 + top_logprobs: a server's top alternatives usually include the chosen token itself,
and a column no row fills would only cost space.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from kdistill.lm.sft_data import IGNORE_INDEX, tokenize_row
from kdistill.lm.signal_store import (
    ABSENT_ID,
    FORMAT,
    SignalRows,
    TeacherSignalWriter,
    data_fingerprint,
    default_signal_dir,
    read_manifest,
    signal_key,
    store_size_bytes,
)
from kdistill.lm.tokenizers import tokenizer_fingerprint
from kdistill.runs.sharding import Shard

Progress = Callable[[int, int], None]  # (examples stored, examples in the data)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DEFAULT_K = 20


@dataclass
class EndpointStats:
    """What converting endpoint logprobs found (counts over every row of the generations directory)."""

    rows_without_logprobs: int = 0  # skipped: no `logprobs` in the row
    endpoint_tokens: int = 0  # answer tokens the endpoint scored
    mismatched_tokens: int = 0  # ... that do not agree with our tokenization (no signal there)
    cut_tokens: int = 0  # ... beyond max_length (no row for them)
    dropped_alternatives: int = 0  # alternatives whose text maps to no token id (mass -> tail)
    skipped_ids: list[str] = field(default_factory=list)  # first few rows without logprobs


@dataclass
class CaptureResult:
    store_dir: Path
    key: str
    k: int
    examples: int  # in the data (endpoint: rows with logprobs)
    computed: int  # stored by this run
    already: int  # stored before this run
    tokens: int  # rows stored over all the data's examples
    signal_rows: int  # ... of which valid (carry a signal)
    bytes: int  # shards on disk
    elapsed_s: float
    complete: bool
    computed_tokens: int = 0  # rows computed by this run
    teacher_s: float = 0.0  # of elapsed_s: teacher forward passes and top-k (load time excluded)
    endpoint: EndpointStats | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Teacher throughput of this run (None when it computed nothing)."""
        return self.computed_tokens / self.teacher_s if self.computed_tokens and self.teacher_s else None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "endpoint"}
        out["store_dir"] = str(self.store_dir)
        out["tokens_per_s"] = self.tokens_per_s
        if self.endpoint is not None:
            out["endpoint"] = dict(self.endpoint.__dict__)
        return out


# ---------------------------------------------------------------- identities (what the content key hashes)


def local_model_dir(model: str | Path) -> Path:
    """A local directory for `model`: the directory itself, or its snapshot in the Hugging Face cache."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception as err:  # any failure means the same: no local copy to hash
        raise FileNotFoundError(
            f"teacher.model {str(model)!r}: not a directory and not in the Hugging Face cache ({err})"
        ) from None


def weights_fingerprint(model: str | Path, *, gguf_file: str | None = None) -> str:
    """16 hex of sha256 over the teacher's weight files (and config.json): what the logits depend on.

    Every byte is hashed (0.16 s for SmolLM2's 98 MB GGUF on a 2-core CPU): a fingerprint of parts of the files (size, first/last MB)
    could miss a fine-tuned copy that differs only in the middle. With `gguf_file` only that file counts
    (it holds the config); else every *.safetensors / *.bin / *.pt / *.pth at the top of the directory.
    """
    root = local_model_dir(model)
    if gguf_file is not None:
        files = [root / gguf_file]
    else:
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"teacher.model {str(model)!r}: no weight files in {root}")
        if (root / "config.json").is_file():
            files.append(root / "config.json")
    h = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"teacher: no file {path}")
        file_hash = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                file_hash.update(chunk)
        h.update(f"{path.name}\0{file_hash.hexdigest()}\n".encode())
    return h.hexdigest()[:16]


def teacher_identity(
    model: str, *, gguf_file: str | None = None, dtype: str = "float32", model_dir: str | Path | None = None
) -> dict[str, Any]:
    """The teacher part of a content key: its reference as configured, weights fingerprint and dtype.

    `model_dir` is where the weights are when `model` is a reference such as `pkg:<name>`.
    """
    return {
        "model": str(model),
        "gguf_file": gguf_file,
        "weights": weights_fingerprint(model_dir or model, gguf_file=gguf_file),
        "dtype": dtype,
    }


# ---------------------------------------------------------------- plain texts -> examples


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, rows: Iterable[Mapping[str, Any]], *, max_length: int
) -> list[dict[str, Any]]:
    """Rows {"id", "text"} -> examples {"input_ids", "labels", "record_id"}, cut into max_length chunks.

    The text is tokenized whole (with the tokenizer's own special tokens, e.g. bos) and cut into
    consecutive chunks of max_length tokens with ids "<id>#0", "<id>#1", ...; labels are the input_ids
    (every token is a target). A chunk of one token has nothing to predict and is dropped.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    examples = []
    for n, row in enumerate(rows):
        if "id" not in row or not isinstance(row.get("text"), str):
            raise ValueError(f"text row {n + 1}: expected {{'id': ..., 'text': str}}, got keys {sorted(row)}")
        ids = list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
        for c, start in enumerate(range(0, len(ids), max_length)):
            chunk = ids[start : start + max_length]
            if len(chunk) >= 2:
                examples.append({"input_ids": chunk, "labels": list(chunk), "record_id": f"{row['id']}#{c}"})
    return examples


def read_text_rows(path: str | Path) -> list[dict[str, Any]]:
    """A .jsonl file of {"id", "text"} objects (blank lines skipped); errors name the line."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}: line {n}: not JSON ({err})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {n}: expected an object {{'id', 'text'}}")
            rows.append(row)
    return rows


# ---------------------------------------------------------------- running the teacher


def _check_examples(examples: Sequence[Mapping[str, Any]]) -> None:
    for e in examples:
        if not str(e.get("record_id", "")):
            raise ValueError("every example needs a non-empty 'record_id' (the signal is stored under it)")
        if not e["input_ids"]:
            raise ValueError(f"example {e['record_id']!r} has no tokens")


def _fixed_batches(examples: Sequence[Mapping[str, Any]], batch_size: int) -> list[list[int]]:
    """Batches over the whole data set, longest first: the same batches however much is already stored."""
    order = sorted(
        range(len(examples)), key=lambda i: (-len(examples[i]["input_ids"]), examples[i]["record_id"])
    )
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def topk_logprobs(
    model: nn.Module, batch: Sequence[Sequence[int]], *, k: int, pad_token_id: int = 0
) -> list[SignalRows]:
    """One forward pass over right-padded sequences -> per sequence its (L, k) top-k rows, all valid.

    Row t holds the k largest entries of log_softmax(logits[t]) in float32 (sorted, highest first),
    i.e. the teacher's distribution over the token at position t + 1. Right padding keeps every real
    token's logits those of the unpadded sequence (a causal model never looks right).
    """
    device = next(model.parameters()).device
    width = max(len(s) for s in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        input_ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
    ).logits  # (B, T, V)
    if k > logits.shape[-1]:
        raise ValueError(f"top_k={k} is larger than the teacher's vocabulary ({logits.shape[-1]})")
    out = []
    for i, seq in enumerate(batch):
        # One sequence at a time: a (L, V) float32 copy instead of (B, T, V).
        logprobs = torch.log_softmax(logits[i, : len(seq)].float(), dim=-1)  # (L, V)
        values, ids = logprobs.topk(k, dim=-1)  # (L, k) each, sorted
        valid = torch.ones(len(seq), dtype=torch.bool)
        out.append(SignalRows(ids.to("cpu", torch.int32), values.cpu(), valid))
    return out


def capture_topk(
    model: nn.Module | Callable[[], nn.Module],
    examples: Sequence[Mapping[str, Any]],
    store_dir: str | Path | None = None,
    *,
    k: int = DEFAULT_K,
    key_inputs: Mapping[str, Any],
    batch_size: int = 8,
    shard_examples: int = 256,
    pad_token_id: int = 0,
    info: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_root: Path | None = None,
    shard: Shard | None = None,
) -> CaptureResult:
    """Run the teacher over `examples` ({"input_ids", "record_id"}) and store its top-k rows per example.

    `key_inputs` identify the teacher and tokenizer (`{"teacher": teacher_identity(...), "tokenizer":
    tokenizer_fingerprint(tok)}`); the data fingerprint, k and the source are added here, and their hash
    is the content key (`store_dir` defaults to `<cache_root or the default cache>/teacher_signal/<key>/`). `model` may be a
    callable that loads it: it is called only when some example is still missing, so rerunning a
    finished capture does not load the teacher. A shard is committed every ~`shard_examples` examples
    (at a batch boundary); a kill loses at most that much work. `progress(stored, total)` is called
    after each batch. `shard`: only that part of the data's batches (module docstring, Many machines);
    under torchrun every rank runs its share of them into the one store.
    """
    start = time.perf_counter()
    _check_examples(examples)
    batches, mine, shard_input = _shard_plan(examples, batch_size, shard)
    inputs = {
        **key_inputs,
        "format": FORMAT,
        "source": "model",
        "data": data_fingerprint(mine),
        "k": k,
        "logprobs": "log_softmax(logits.float()) top-k",
        **shard_input,
    }
    key = signal_key(inputs)
    store_dir = Path(store_dir) if store_dir is not None else default_signal_dir(key, cache_root)
    teacher = _LazyTeacher(model)

    def compute(batch: list[int]) -> list[SignalRows]:
        return topk_logprobs(
            teacher.get(), [examples[i]["input_ids"] for i in batch], k=k, pad_token_id=pad_token_id
        )

    filled = fill_store(
        store_dir,
        {"key": key, "key_inputs": inputs, "k": k, "info": info},
        [str(e["record_id"]) for e in examples],
        [len(e["input_ids"]) for e in examples],
        batches,
        compute,
        shard_examples=shard_examples,
        progress=progress,
    )
    tokens = sum(len(e["input_ids"]) for e in mine)
    return filled_result(store_dir, key, k, examples=len(mine), tokens=tokens, filled=filled, start=start)


# ---------------------------------------------------------------- many machines, many processes


class _LazyTeacher:
    """The teacher, loaded (and put in eval mode) the first time a batch needs it."""

    def __init__(self, model: nn.Module | Callable[[], nn.Module]) -> None:
        self.model = model
        self.loaded: nn.Module | None = None

    def get(self) -> nn.Module:
        if self.loaded is None:
            self.loaded = self.model if isinstance(self.model, nn.Module) else self.model()
            self.loaded.eval()
        return self.loaded


def _shard_plan(
    examples: Sequence[Mapping[str, Any]], batch_size: int, shard: Shard | None
) -> tuple[list[list[int]], list[Mapping[str, Any]], dict[str, Any]]:
    """This shard's fixed batches, its examples, and its `shard` key input ({} unsharded: old keys hold)."""
    batches = _fixed_batches(examples, batch_size)
    if shard is None or shard.count == 1:
        return batches, list(examples), {}
    batches = [batches[j] for j in shard.positions(len(batches))]
    mine = [examples[i] for batch in batches for i in batch]
    part = {
        "index": shard.index,
        "count": shard.count,
        "batch_size": batch_size,
        "of_data": data_fingerprint(examples),
    }
    return batches, mine, {"shard": part}


def process_group() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process is in; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


@dataclass
class FillResult:
    already: int  # examples of the batches stored before this run
    teacher_s: float  # this process's teacher time
    computed_tokens: int  # ... and tokens


def fill_store(
    store_dir: Path,
    writer_args: Mapping[str, Any],
    ids: Sequence[str],
    lengths: Sequence[int],
    batches: Sequence[Sequence[int]],
    compute: Callable[[list[int]], Sequence[Any]],
    *,
    shard_examples: int,
    progress: Progress | None = None,
) -> FillResult:
    """Store `compute(batch)` (rows per example of the batch) for every batch with an example not stored.

    One process: straight into the store. Under torchrun (a process group of W > 1): rank r runs the
    batches j with j mod W == r into its own store `<store>/.parts/rank-r-of-W/` (same key, resumable
    alone), then rank 0 adopts every part into the store (`TeacherSignalWriter.adopt`: hard links, one
    manifest write) and deletes the parts. Before any rank starts, rank 0 adopts the parts a killed run
    left (of any W), so no example is computed twice and a rerun with another W resumes as well.
    """
    from kdistill.lm.signal_store import PARTS

    rank, world = process_group()
    wanted = {ids[i] for batch in batches for i in batch}
    if world == 1:
        if (store_dir / PARTS).is_dir():
            _adopt_parts(store_dir, writer_args, wanted)  # a killed torchrun capture's parts
        writer = TeacherSignalWriter(store_dir, **writer_args)
        writer.open()
        try:
            already = len(wanted & writer.done_ids)
            result = _run_batches(
                writer, batches, ids, lengths, compute, set(), shard_examples, progress, already
            )
            writer.close(complete=True)
        finally:
            writer.close(complete=None)  # after an error: commit what is done, release the lock
        return result

    parts = store_dir / PARTS
    if rank == 0:
        _adopt_parts(store_dir, writer_args, wanted)  # what a killed run left; creates the store
    _barrier()
    stored = set().union(*(entry["ids"] for entry in (read_manifest(store_dir) or {"shards": []})["shards"]))
    already = len(wanted & stored)
    share = [batches[j] for j in range(rank, len(batches), world)]
    part = TeacherSignalWriter(parts / f"rank-{rank}-of-{world}", **writer_args)
    part.open()
    try:
        # progress counts this rank's share only
        mine = {ids[i] for batch in share for i in batch}
        result = _run_batches(
            part, share, ids, lengths, compute, stored, shard_examples, progress, len(mine & stored)
        )
        part.close(complete=True)
    finally:
        part.close(complete=None)
    _barrier()
    if rank == 0:
        _adopt_parts(store_dir, writer_args, wanted)
    _barrier()
    return FillResult(already, result.teacher_s, result.computed_tokens)


def _adopt_parts(store_dir: Path, writer_args: Mapping[str, Any], wanted: set[str]) -> None:
    """Rank 0: list the shards of every part under `<store>/.parts/` in the store, then delete the parts."""
    import shutil

    from kdistill.lm.signal_store import PARTS

    writer = TeacherSignalWriter(store_dir, **writer_args)
    writer.open()
    try:
        parts = store_dir / PARTS
        for part in sorted(parts.iterdir()) if parts.is_dir() else []:
            writer.adopt(part)
        writer.close(complete=wanted <= writer.done_ids)
    finally:
        writer.close(complete=None)
    shutil.rmtree(store_dir / PARTS, ignore_errors=True)  # every part's shards are listed in the store now


def _run_batches(
    writer: TeacherSignalWriter,
    batches: Sequence[Sequence[int]],
    ids: Sequence[str],
    lengths: Sequence[int],
    compute: Callable[[list[int]], Sequence[Any]],
    skip: set[str],
    shard_examples: int,
    progress: Progress | None,
    already: int,
) -> FillResult:
    """The resumable batch loop: a batch runs whole when any of its examples is missing (module docstring)."""
    total = sum(len(batch) for batch in batches)
    done = already
    if progress is not None:
        progress(done, total)
    teacher_s, computed_tokens = 0.0, 0
    for batch in batches:
        todo = [i for i in batch if ids[i] not in writer.done_ids and ids[i] not in skip]
        if not todo:
            continue
        tick = time.perf_counter()
        rows = compute(list(batch))
        teacher_s += time.perf_counter() - tick
        computed_tokens += sum(lengths[i] for i in todo)
        for i, r in zip(batch, rows, strict=True):
            if i in todo:
                writer.add(ids[i], r)
        done += len(todo)
        if writer.buffered >= shard_examples:
            writer.commit()
        if progress is not None:
            progress(done, total)
    return FillResult(already, teacher_s, computed_tokens)


# ---------------------------------------------------------------- the agnostic (bytes) layout


def answer_examples(
    tokenizer: PreTrainedTokenizerBase, rows: Iterable[Mapping[str, Any]], *, max_length: int
) -> list[dict[str, Any]]:
    """Generation rows -> what a cross-tokenizer capture runs: the SFT example (`tokenize_row`: the prompt
    rendered by this tokenizer's chat template, the answer after it) plus `answer_start` (the answer's
    first input position) and `spans`, the byte spans of the answer tokens that fit (eos has no bytes and
    is left out)."""
    from kdistill.lm.alignment import token_byte_spans

    examples = []
    for row in rows:
        example, _, _ = tokenize_row(tokenizer, row, max_length=max_length)
        answer_start = sum(1 for label in example["labels"] if label == IGNORE_INDEX)
        ids, spans = token_byte_spans(tokenizer, row["completion"])
        kept = min(len(ids), len(example["input_ids"]) - answer_start)
        if example["input_ids"][answer_start : answer_start + kept] != ids[:kept]:
            raise ValueError(
                f"row {example['record_id']!r}: the answer's tokens with offsets differ from its tokens in the "
                "example (a tokenizer whose offsets tokenization differs from its plain one)"
            )
        example["answer_start"] = answer_start
        example["spans"] = spans[:kept]
        examples.append(example)
    return examples


@torch.no_grad()
def answer_rows(
    model: nn.Module, examples: Sequence[Mapping[str, Any]], *, k: int, pad_token_id: int = 0
) -> list[dict[str, Tensor]]:
    """One forward pass -> per example its "bytes"-layout rows in teacher token ids: for answer token n
    (input position answer_start + n), the k largest log-probabilities of the row that predicts it and
    the log-probability of the token itself."""
    device = next(model.parameters()).device
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e["input_ids"])] = torch.tensor(list(e["input_ids"]), dtype=torch.long)
        attention_mask[i, : len(e["input_ids"])] = 1
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
    ).logits
    if k > logits.shape[-1]:
        raise ValueError(f"top_k={k} is larger than the teacher's vocabulary ({logits.shape[-1]})")
    out = []
    for i, e in enumerate(examples):
        n = len(e["spans"])
        first = e["answer_start"] - 1  # the row predicting answer token 0
        if first < 0:
            raise ValueError(
                f"example {e['record_id']!r}: the answer starts the input (no prompt token before it)"
            )
        logprobs = torch.log_softmax(logits[i, first : first + n].float(), dim=-1)  # (n, V)
        tokens = input_ids[i, first + 1 : first + 1 + n].to(logprobs.device)
        values, ids = logprobs.topk(k, dim=-1)
        out.append(
            {
                "spans": torch.tensor(e["spans"], dtype=torch.int32).reshape(n, 2),
                "token_ids": tokens.to("cpu", torch.int32),
                "token_logprobs": logprobs.gather(-1, tokens[:, None])[:, 0].cpu(),
                "topk_ids": ids.to("cpu", torch.int32),
                "topk_logprobs": values.cpu(),
            }
        )
    return out


def capture_bytes(
    model: nn.Module | Callable[[], nn.Module],
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[Mapping[str, Any]],
    store_dir: str | Path | None = None,
    *,
    k: int = DEFAULT_K,
    key_inputs: Mapping[str, Any],
    max_length: int,
    batch_size: int = 8,
    shard_examples: int = 256,
    info: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_root: Path | None = None,
    shard: Shard | None = None,
) -> CaptureResult:
    """Capture a local teacher's signal in the tokenizer-agnostic layout (`kdistill.lm.byte_signal`):
    one row per teacher token of each answer, candidates named by bytes through the candidate table (the
    teacher's vocabulary, id for id). Resumable, deterministic, sharded like `capture_topk` (same batching)."""
    from kdistill.lm.byte_signal import CANDIDATES, CandidateTable
    from kdistill.lm.signal_store import BYTES
    from kdistill.lm.vocab_map import token_bytes

    start = time.perf_counter()
    examples = answer_examples(tokenizer, rows, max_length=max_length)
    _check_examples(examples)
    batches, mine, shard_input = _shard_plan(examples, batch_size, shard)
    table = CandidateTable(token_bytes(tokenizer))
    inputs = {
        **key_inputs,
        "format": FORMAT,
        "layout": BYTES.name,
        "source": "model",
        "data": data_fingerprint(mine),
        "k": k,
        "candidates": table.fingerprint(),
        "rendering": prompt_rendering(tokenizer),
        "logprobs": "log_softmax(logits.float()) top-k, answer tokens",
        **shard_input,
    }
    key = signal_key(inputs)
    store_dir = Path(store_dir) if store_dir is not None else default_signal_dir(key, cache_root)
    teacher = _LazyTeacher(model)

    def compute(batch: list[int]) -> list[dict[str, Tensor]]:
        return answer_rows(
            teacher.get(), [examples[i] for i in batch], k=k, pad_token_id=tokenizer.pad_token_id or 0
        )

    writer_args = {
        "key": key,
        "key_inputs": inputs,
        "k": k,
        "info": info,
        "layout": BYTES,
        "attachments": {CANDIDATES: table.to_bytes()},
    }
    filled = fill_store(
        store_dir,
        writer_args,
        [str(e["record_id"]) for e in examples],
        [len(e["input_ids"]) for e in examples],
        batches,
        compute,
        shard_examples=shard_examples,
        progress=progress,
    )
    answer_tokens = sum(len(e["spans"]) for e in mine)
    return filled_result(
        store_dir, key, k, examples=len(mine), tokens=answer_tokens, filled=filled, start=start
    )


def filled_result(
    store_dir: Path, key: str, k: int, *, examples: int, tokens: int, filled: Any, start: float
) -> CaptureResult:
    """The result of a capture through `fill_store` (every stored row carries a signal)."""
    return CaptureResult(
        store_dir=store_dir,
        key=key,
        k=k,
        examples=examples,
        computed=examples - filled.already,
        already=filled.already,
        tokens=tokens,
        signal_rows=tokens,
        bytes=store_size_bytes(store_dir),
        elapsed_s=time.perf_counter() - start,
        complete=True,
        computed_tokens=filled.computed_tokens,
        teacher_s=filled.teacher_s,
    )


def prompt_rendering(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """How `sft_data.encode_prompt` renders a prompt with this tokenizer: its chat template (by hash) or
    the plain text; recorded with a signal so that training can check it renders the prompt the same way."""
    template = tokenizer.chat_template
    if template is None:
        return {"kind": "plain"}
    return {
        "kind": "chat_template",
        "template_sha256": hashlib.sha256(str(template).encode()).hexdigest()[:16],
    }


# ---------------------------------------------------------------- endpoint logprobs -> the store


class TokenMap:
    """Endpoint token text -> our token id (see the module docstring for the two steps)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(self.vocab.values()) + 1)
        decoded: dict[str, int | None] = {}
        for i, text in enumerate(tokenizer.batch_decode([[i] for i in range(size)])):
            if text:
                decoded[text] = None if text in decoded else i  # several ids decode alike: ambiguous
        self.decoded = decoded

    def id_of(self, text: str) -> int | None:
        found = self.decoded.get(text)
        return found if found is not None else self.vocab.get(text)


def _parse_logprobs(raw: Any, record_id: str) -> list[dict[str, Any]] | None:
    """A row's `logprobs` column -> its entries (None when it has none); a malformed one raises."""
    if raw is None:
        return None
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
        for e in entries or []:
            if not isinstance(e["token"], str) or not isinstance(e["logprob"], int | float):
                raise TypeError
            for alt in e.get("top") or []:
                if not isinstance(alt["token"], str) or not isinstance(alt["logprob"], int | float):
                    raise TypeError
    except (ValueError, TypeError, KeyError):
        raise ValueError(
            f"row {record_id!r}: logprobs are not in the row format "
            '[{"token": str, "logprob": float, "top": [{"token": str, "logprob": float}, ...]}, ...]'
        ) from None
    return entries or None


def endpoint_rows(
    entries: Sequence[Mapping[str, Any]],
    example: Mapping[str, Any],
    completion_ids: Sequence[int],
    token_map: TokenMap,
    *,
    k: int,
    stats: EndpointStats,
) -> SignalRows:
    """One generation row's endpoint logprobs -> rows aligned with its example's input_ids."""
    input_ids = example["input_ids"]
    prompt_len = sum(1 for label in example["labels"] if label == IGNORE_INDEX)
    kept = len(input_ids) - prompt_len  # answer tokens that fit in max_length
    length = len(input_ids)
    ids = torch.full((length, k), ABSENT_ID, dtype=torch.int32)
    logprobs = torch.full((length, k), -math.inf, dtype=torch.float32)
    valid = torch.zeros(length, dtype=torch.bool)

    ours = list(completion_ids)
    pieces = token_map.tokenizer.batch_decode([[t] for t in ours])
    theirs: list[int | None] = []
    for j, entry in enumerate(entries):
        text = str(entry["token"])
        mapped = token_map.id_of(text)
        if mapped is None and j < len(ours) and pieces[j] == text:
            mapped = ours[j]  # e.g. a partial UTF-8 byte: ambiguous alone, but it is our token here
        theirs.append(mapped)
    # -1 never equals a token id, so unmapped endpoint tokens are never aligned
    matcher = difflib.SequenceMatcher(None, [-1 if t is None else t for t in theirs], ours, autojunk=False)
    aligned: dict[int, int] = {}  # endpoint entry -> our answer token index
    for block in matcher.get_matching_blocks():
        for d in range(block.size):
            aligned[block.a + d] = block.b + d
    stats.endpoint_tokens += len(entries)
    stats.mismatched_tokens += len(entries) - len(aligned)
    for j, i in aligned.items():
        if i >= kept:
            stats.cut_tokens += 1
            continue
        row = prompt_len + i - 1  # the position whose logits predict answer token i
        chosen = float(entries[j]["logprob"])
        if row < 0 or not math.isfinite(chosen):
            continue
        best: dict[int, float] = {ours[i]: chosen}
        for alt in entries[j].get("top") or []:
            alt_id = token_map.id_of(str(alt["token"]))
            if alt_id is None:
                stats.dropped_alternatives += 1
                continue
            value = float(alt["logprob"])
            if alt_id not in best and math.isfinite(value):
                best[alt_id] = value
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]
        ids[row, : len(ranked)] = torch.tensor([t for t, _ in ranked], dtype=torch.int32)
        logprobs[row, : len(ranked)] = torch.tensor([v for _, v in ranked], dtype=torch.float32)
        valid[row] = True
    return SignalRows(ids, logprobs, valid)


def signal_from_generations(
    gen_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    store_dir: str | Path | None = None,
    *,
    max_length: int,
    k: int | None = None,
    shard_examples: int = 256,
    info: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_root: Path | None = None,
    max_mismatch: float | None = None,
) -> CaptureResult:
    """Store the endpoint logprobs of a `kdistill generate` directory as teacher signal, keyed by record_id.

    Each row is tokenized like the SFT examples (`sft_data.tokenize_row`, same `max_length`), so
    `signal[record_id]` has exactly that example's length. `k` defaults to the most entries a row uses
    (module docstring, Width). Rows without logprobs are skipped and counted (`result.endpoint`). More
    than `max_mismatch` (a share, 0.05 = 5%; None: no limit) of the endpoint's tokens disagreeing with
    our tokenization is a ValueError, as is all of them. The content key hashes the rows' teacher
    identities, the tokenizer fingerprint, every example's ids and logprobs, and k.
    """
    from kdistill.generate.store import load_generations
    from kdistill.lm.sft_data import answer_ended, encode_completion

    start = time.perf_counter()
    stats = EndpointStats()
    examples: list[dict[str, Any]] = []
    teachers: set[str] = set()
    widest = 1
    for row in load_generations(gen_dir):
        entries = _parse_logprobs(row.get("logprobs"), row["record_id"])
        if entries is None:
            stats.rows_without_logprobs += 1
            if len(stats.skipped_ids) < 5:
                stats.skipped_ids.append(row["record_id"])
            continue
        example, _, _ = tokenize_row(tokenizer, row, max_length=max_length)
        example["entries"] = entries
        example["logprobs"] = row["logprobs"] if isinstance(row["logprobs"], str) else json.dumps(entries)
        example["completion_ids"] = encode_completion(tokenizer, row["completion"], ended=answer_ended(row))
        examples.append(example)
        teachers.add(str(row.get("teacher")))
        widest = max(widest, max(1 + len(e.get("top") or []) for e in entries))
    if not examples:
        raise ValueError(
            f"{gen_dir}: no row has logprobs ({stats.rows_without_logprobs} rows without); "
            "generate with top_logprobs (kdistill generate --top-logprobs K) to capture from an endpoint"
        )
    token_map = TokenMap(tokenizer)
    # A first pass aligns every row (cheap: no model) so that a tokenizer that matches too little is an
    # error before anything is written, the counts cover the whole data, not only this run's part, and
    # k is the width the rows use (an upper bound here: the chosen token + every alternative).
    signal_rows, used = 0, 1
    for e in examples:
        first = endpoint_rows(e["entries"], e, e["completion_ids"], token_map, k=k or widest, stats=stats)
        signal_rows += int(first.valid.sum())
        if len(first.topk_ids):
            used = max(used, int((first.topk_ids != ABSENT_ID).sum(dim=1).max()))
    if signal_rows == 0:
        raise ValueError(
            f"{gen_dir}: none of the endpoint's {stats.endpoint_tokens} answer tokens matches this tokenizer's "
            "tokenization of the answers: the endpoint's model uses another tokenizer; convert with "
            "`kdistill capture --cross-tokenizer` (a signal named by bytes) for a student with another tokenizer"
        )
    share = stats.mismatched_tokens / max(stats.endpoint_tokens, 1)
    if max_mismatch is not None and share > max_mismatch:
        raise ValueError(
            f"{gen_dir}: {stats.mismatched_tokens} of {stats.endpoint_tokens} endpoint tokens ({share:.1%}) do "
            f"not match tokenizer {tokenizer.name_or_path or type(tokenizer).__name__}; above the "
            f"{max_mismatch * 100:g}% limit (max_token_mismatch, kdistill capture --max-token-mismatch); is it "
            "the endpoint model's tokenizer? (another tokenizer: --cross-tokenizer)"
        )
    k = k or used
    inputs = {
        "format": FORMAT,
        "source": "endpoint",
        "teacher": sorted(teachers),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": data_fingerprint(examples, extra_field="logprobs"),
        "k": k,
        "mapping": "unambiguous single-id decoding, then vocab; difflib alignment",
    }
    key = signal_key(inputs)
    store_dir = Path(store_dir) if store_dir is not None else default_signal_dir(key, cache_root)
    writer = TeacherSignalWriter(store_dir, key=key, key_inputs=inputs, k=k, info=info)
    writer.open()
    try:
        todo = [e for e in examples if e["record_id"] not in writer.done_ids]
        already = len(examples) - len(todo)
        for n, e in enumerate(todo, 1):
            writer.add(
                e["record_id"],
                endpoint_rows(e["entries"], e, e["completion_ids"], token_map, k=k, stats=EndpointStats()),
            )
            if writer.buffered >= shard_examples:
                writer.commit()
                if progress is not None:
                    progress(already + n, len(examples))
        writer.close(complete=True)
    finally:
        writer.close(complete=None)
    if progress is not None:
        progress(len(examples), len(examples))
    return CaptureResult(
        store_dir=store_dir,
        key=key,
        k=k,
        examples=len(examples),
        computed=len(examples) - already,
        already=already,
        tokens=sum(len(e["input_ids"]) for e in examples),
        signal_rows=signal_rows,
        bytes=store_size_bytes(store_dir),
        elapsed_s=time.perf_counter() - start,
        complete=True,
        endpoint=stats,
    )


__all__ = [
    "DEFAULT_K",
    "CaptureResult",
    "EndpointStats",
    "FillResult",
    "TokenMap",
    "answer_examples",
    "answer_rows",
    "capture_bytes",
    "capture_topk",
    "endpoint_rows",
    "fill_store",
    "local_model_dir",
    "process_group",
    "prompt_rendering",
    "read_text_rows",
    "signal_from_generations",
    "teacher_identity",
    "tokenize_texts",
    "topk_logprobs",
    "weights_fingerprint",
]
