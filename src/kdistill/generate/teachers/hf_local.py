"""A local Hugging Face causal LM as the teacher: batched, left-padded `generate`.

The model is a local directory or a hub id (`HF_HUB_OFFLINE=1` keeps it offline), or a GGUF file inside
one (`gguf_file`, dequantised by transformers). `trust_remote_code` stays off unless asked for.

**Prompt formatting.** `api="chat"` renders every prompt with the tokenizer's chat template
(`add_generation_prompt=True`; a plain prompt becomes one user message, like the OpenAI chat endpoint);
`api="completions"` feeds plain prompt text as is (with the tokenizer's own special tokens) and refuses
chats. `api="auto"` (the default) picks chat when the tokenizer has a chat template, else completions.

**Batching.** `complete()` is called concurrently by the pipeline; requests are queued and a single
worker runs them `batch_size` sequences at a time (a request with n samples takes n sequences) in a
thread, so the event loop keeps committing results while the model runs. Padding is on the left so
every sequence's new tokens start at the same position.

**Answers.** The completion is the decoded new tokens, cut at the first EOS token or stop string (both
excluded); finish_reason is "stop" then, "length" when `max_tokens` ran out first. With `top_logprobs`,
logprobs are the log-softmax of the model's *raw* logits (`output_logits`, float32), i.e. the teacher's
own distribution, not the one reshaped by temperature/top_p; one entry per generated token up to the
EOS (excluded) or the token that completed a stop string. Sampling (`temperature > 0`) seeds torch with
the first request's seed before each batch: reproducible for the same batches, but a sample depends on
which requests shared its batch. Greedy decoding (`temperature = 0`) does not.

**Watermark.** With `watermark` (a `GreenListWatermark`), a green-list logits processor biases every
sampled token (kdistill.provenance.watermark); the identity then holds the watermark's parameters and key
fingerprint (never the key), so record ids differ from unwatermarked ones. Logprobs stay those of the raw
logits: they do not carry the watermark, only the sampled tokens do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kdistill.generate.teachers import (
    Choice,
    CompletionRequest,
    SamplingParams,
    TeacherError,
    TeacherResponse,
)

if TYPE_CHECKING:
    from kdistill.provenance.watermark import GreenListWatermark


@dataclass
class _Pending:
    request: CompletionRequest
    future: asyncio.Future = field(repr=False)


class HFLocalTeacher:
    def __init__(
        self,
        *,
        model: str,
        sampling: SamplingParams,
        api: Literal["auto", "chat", "completions"] = "auto",
        gguf_file: str | None = None,
        revision: str | None = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        device: str = "auto",
        batch_size: int = 8,
        trust_remote_code: bool = False,
        watermark: GreenListWatermark | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.sampling = sampling
        self.batch_size = batch_size
        self.max_in_flight = batch_size * 2  # one batch running, the next one queued
        common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
        if gguf_file:
            common["gguf_file"] = gguf_file
        self.tokenizer = AutoTokenizer.from_pretrained(model, **common)
        self.tokenizer.padding_side = "left"
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **common)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(device).eval()
        self.device = torch.device(device)

        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if api == "auto":
            api = "chat" if has_template else "completions"
        if api == "chat" and not has_template:
            raise TeacherError(f"{model}: api 'chat' needs a tokenizer with a chat template; it has none")
        self.api: Literal["chat", "completions"] = api

        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._pad_id = self.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = next(iter(self._eos_ids), 0)
            self.tokenizer.pad_token_id = self._pad_id
        self.identity: dict[str, Any] = {
            "kind": "hf_local",
            "model": model,
            "gguf_file": gguf_file,
            "revision": revision,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "api": self.api,
        }
        self.watermark = watermark
        if watermark is not None:  # only then: unwatermarked record ids stay what they were
            self.identity["watermark"] = watermark.identity()
        self._queue: list[_Pending] = []
        self._worker: asyncio.Task | None = None

    async def complete(self, request: CompletionRequest) -> TeacherResponse:
        if self.api == "completions" and request.prompt is None:
            raise TeacherError("api 'completions' needs plain prompts; this one has messages")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # let requests issued in the same tick join the batch
            batch, rows = [], 0
            while self._queue and (not batch or rows + self._queue[0].request.n <= self.batch_size):
                item = self._queue.pop(0)
                if item.future.cancelled():
                    continue
                batch.append(item)
                rows += item.request.n
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._generate, [p.request for p in batch])
            except Exception as err:  # every request of the batch fails alike
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    def _render(self, request: CompletionRequest) -> str:
        if self.api == "chat":
            messages = request.messages or [{"role": "user", "content": request.prompt or ""}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return request.prompt or ""

    def _generate(self, requests: list[CompletionRequest]) -> list[TeacherResponse]:
        import torch

        s = self.sampling
        texts = [self._render(r) for r in requests for _ in range(r.n)]
        # a chat template writes its own special tokens (BOS); plain text gets the tokenizer's
        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=self.api != "chat"
        ).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "pad_token_id": self._pad_id,
            "eos_token_id": sorted(self._eos_ids) or None,
            "return_dict_in_generate": True,
            "output_logits": s.top_logprobs is not None,
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
            if requests[0].seed is not None:
                torch.manual_seed(requests[0].seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        if self.watermark is not None:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([self.watermark.logits_processor()])
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        new_tokens = out.sequences[:, prompt_len:].tolist()  # (B, T_new)
        logprobs = None
        if s.top_logprobs is not None:
            # tuple of T_new x (B, V) raw logits -> (B, T_new, V) log-probabilities in float32
            logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()

        choices = [self._choice(row, new_tokens[row], logprobs) for row in range(len(texts))]
        responses, start = [], 0
        for r in requests:
            mine = choices[start : start + r.n]
            responses.append(
                TeacherResponse(
                    choices=[c for c, _ in mine],
                    prompt_tokens=int(prompt_tokens[start]),
                    completion_tokens=sum(n for _, n in mine),
                )
            )
            start += r.n
        return responses

    def _choice(self, row: int, tokens: list[int], logprobs: Any) -> tuple[Choice, int]:
        ended_by_eos = False
        kept = tokens
        for i, token in enumerate(tokens):
            if token in self._eos_ids:
                kept, ended_by_eos = tokens[:i], True
                break
        else:  # a sequence stopped early by a stop string is padded to the batch's length
            while kept and kept[-1] == self._pad_id:
                kept = kept[:-1]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        finish = "stop" if ended_by_eos else "length"
        if self.sampling.stop:
            cut = min((i for i in (text.find(x) for x in self.sampling.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                kept = self._tokens_up_to_stop(kept, text)
        if finish == "length" and len(kept) < self.sampling.max_tokens:
            finish = "stop"  # stopped early by a criterion other than EOS (and padded)
        entries = None
        if logprobs is not None:
            entries = self._logprob_entries(logprobs[row, : len(kept)], kept)
        return Choice(text=text, finish_reason=finish, logprobs=entries, completion_tokens=len(kept)), len(
            kept
        )

    def _tokens_up_to_stop(self, tokens: list[int], cut_text: str) -> list[int]:
        """The shortest prefix of `tokens` whose text goes past `cut_text` (it holds the stop string)."""
        for m in range(1, len(tokens) + 1):
            if len(self.tokenizer.decode(tokens[:m], skip_special_tokens=True)) > len(cut_text):
                return tokens[:m]
        return tokens

    def _logprob_entries(self, logprobs: Any, tokens: list[int]) -> list[dict[str, Any]]:
        import torch

        k = self.sampling.top_logprobs or 0
        chosen = logprobs.gather(1, torch.tensor(tokens, dtype=torch.long).unsqueeze(1)).squeeze(1).tolist()
        top_vals, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
        names = self.tokenizer.batch_decode([[t] for t in tokens])
        entries = []
        for i, (name, lp) in enumerate(zip(names, chosen, strict=True)):
            top = []
            if k:
                ids = top_ids[i].tolist()
                top = [
                    {"token": t, "logprob": v}
                    for t, v in zip(
                        self.tokenizer.batch_decode([[j] for j in ids]), top_vals[i].tolist(), strict=True
                    )
                ]
            entries.append({"token": name, "logprob": lp, "top": top})
        return entries

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
