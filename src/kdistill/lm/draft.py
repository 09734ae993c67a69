"""Draft models for speculative decoding: how often the teacher accepts a draft, distilling a draft
on-policy, and what the draft buys in `transformers` assisted generation.

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) lets a small draft propose gamma tokens that
the large model checks in one forward pass. Under greedy verification the teacher keeps the longest prefix
of the proposal that matches its own argmax tokens, then adds one token of its own (the correction where the
draft went wrong, a bonus token when every drafted token was right), so the text is exactly the teacher's
greedy output and only the speed depends on the draft. Its acceptance rate is the share of drafted tokens
kept; tokens per teacher forward is what that rate buys.

DistillSpec (Zhou et al., ICLR 2024, arXiv:2310.08461) raises the acceptance rate by distilling the draft on
its own samples: the draft answers training prompts, the teacher scores the same tokens in one forward,
and the loss is a token divergence between the two distributions on the draft's tokens. Total variation
(TVD) is the one its analysis ties to acceptance (the expected acceptance of one token is 1 - TVD under
sampling verification), so it is the default here. That loop is kdistill's own: `TokenDistillObjective`
with an online teacher and on-policy sampling, trained by `train_objective` (seeded, resumable).

    acceptance_rate(teacher, draft, prompts, gamma=4, max_new_tokens=64)   exact greedy speculation, counted
    distill_draft(draft, teacher, examples, steps=..., train=..., ...)    on-policy distillation of the draft
    assisted_speed(teacher, draft, prompts, gammas=(4,), ...)             tokens/s with and without the draft
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache, GenerationConfig

from kdistill.lm.config import LMDistillConfig, LMTrainConfig
from kdistill.lm.objectives import OnlineTeacher, TokenDistillObjective
from kdistill.lm.sft_data import IGNORE_INDEX, encode_prompt
from kdistill.lm.train import SFTResult, train_objective
from kdistill.runs.timing import time_models

__all__ = [
    "GAMMAS",
    "AcceptanceResult",
    "OutputMismatch",
    "PromptAcceptance",
    "acceptance_rate",
    "acceptance_table",
    "assisted_speed",
    "distill_draft",
    "draft_distill_config",
    "prompt_examples",
    "teacher_greedy",
]

GAMMAS = (2, 4, 8)
"""The lookaheads the issue asks about: tokens the draft proposes per teacher forward."""


class OutputMismatch(RuntimeError):
    """Speculative (or assisted) decoding produced text that is not the teacher's own greedy output."""


@dataclass(frozen=True)
class PromptAcceptance:
    """One prompt's speculative decoding: what the draft proposed, what the teacher kept."""

    drafted: int  # tokens the draft proposed
    accepted: int  # of those, tokens the teacher kept
    teacher_forwards: int  # verification passes (one per block)
    new_tokens: int  # tokens generated in all
    identical: bool  # the generated tokens equal the teacher's own greedy output


@dataclass(frozen=True)
class AcceptanceResult:
    """Greedy speculative decoding with lookahead `gamma` over a set of prompts."""

    gamma: int
    max_new_tokens: int
    prompts: list[PromptAcceptance] = field(default_factory=list)

    @property
    def drafted(self) -> int:
        return sum(p.drafted for p in self.prompts)

    @property
    def accepted(self) -> int:
        return sum(p.accepted for p in self.prompts)

    @property
    def rate(self) -> float:
        """Accepted / drafted over every prompt (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per teacher forward: the most a perfectly cheap draft could speed greedy decoding up."""
        forwards = sum(p.teacher_forwards for p in self.prompts)
        return sum(p.new_tokens for p in self.prompts) / forwards if forwards else 0.0

    @property
    def identical(self) -> bool:
        return all(p.identical for p in self.prompts)

    def record(self) -> dict[str, Any]:
        """Plain data for metrics.json and benchmark results."""
        return {
            "gamma": self.gamma,
            "max_new_tokens": self.max_new_tokens,
            "acceptance_rate": self.rate,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "tokens_per_teacher_forward": self.tokens_per_forward,
            "identical_to_teacher_greedy": self.identical,
            "mismatched_prompts": sum(not p.identical for p in self.prompts),
            "per_prompt": [asdict(p) for p in self.prompts],
        }


# -- acceptance ---------------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forward(model: nn.Module, ids: list[int], cache: DynamicCache) -> Tensor:
    """Logits (len(ids), V) of `ids` appended to what `cache` holds; the cache grows by len(ids)."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=_device(model))
    return model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits[0]


def _crop(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of `cache` (a negative crop: the form every version reads)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _eos_set(eos_token_id: int | Sequence[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    return frozenset([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)


def _default_eos(teacher: nn.Module) -> int | list[int] | None:
    config = getattr(teacher, "generation_config", None)
    return getattr(config, "eos_token_id", None) if config is not None else None


@torch.inference_mode()
def teacher_greedy(
    teacher: nn.Module,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> list[int]:
    """The teacher's own greedy answer by `generate` (no processors besides the stop on eos), with eos."""
    eos = list(_eos_set(eos_token_id))
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos or None,
        pad_token_id=pad_token_id if pad_token_id is not None else (eos[0] if eos else 0),
    )
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=_device(teacher))
    out = teacher.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
    )
    return _cut_at_eos(out[0, input_ids.shape[1] :].tolist(), _eos_set(eos_token_id))


def _cut_at_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def _speculate(
    teacher: nn.Module,
    draft: nn.Module,
    prompt: list[int],
    *,
    gamma: int,
    max_new_tokens: int,
    eos: frozenset[int],
) -> tuple[list[int], int, int, int]:
    """One prompt decoded by greedy speculation: (new tokens, drafted, accepted, teacher forwards).

    Invariant at the top of each block: `seq` is prompt + tokens so far; the teacher's cache holds seq[:-1]
    and the draft's cache a prefix of seq. The draft proposes k = min(gamma, tokens left - 1) tokens greedily
    (stopping at eos), as transformers does, so the teacher's own token always fits the budget; with
    k = 0 the block is one plain teacher step.
    """
    seq = list(prompt)
    t_cache, d_cache = DynamicCache(), DynamicCache()
    # the teacher's cache starts holding seq[:-1]; its first verification feeds the prompt's last token
    if len(prompt) > 1:
        _forward(teacher, prompt[:-1], t_cache)
    new = drafted = accepted = forwards = 0
    while new < max_new_tokens:
        k = min(gamma, max_new_tokens - new - 1)
        proposal: list[int] = []
        if k > 0:
            logits = _forward(draft, seq[d_cache.get_seq_length() :], d_cache)[-1]
            while True:
                token = int(logits.argmax())
                proposal.append(token)
                if len(proposal) == k or token in eos:
                    break
                logits = _forward(draft, [token], d_cache)[-1]
        # verification: one teacher forward over seq's last token and the proposal
        verify = _forward(teacher, seq[t_cache.get_seq_length() :] + proposal, t_cache)
        forwards += 1
        teacher_tokens = verify[-(len(proposal) + 1) :].argmax(dim=-1).tolist()  # its choice at each slot
        n = 0
        while n < len(proposal) and proposal[n] == teacher_tokens[n]:
            n += 1
        drafted += len(proposal)
        accepted += n
        kept = proposal[:n]
        if not (kept and kept[-1] in eos):  # an accepted eos ends the answer: no token after it
            kept.append(teacher_tokens[n])
        length_before = len(seq)
        seq.extend(kept)
        new += len(kept)
        # the teacher's cache holds seq[:-1] again; the draft's at most what it saw of the new seq
        _crop(t_cache, len(seq) - 1)
        _crop(d_cache, min(d_cache.get_seq_length(), length_before + n))
        if seq[-1] in eos:
            break
    return seq[len(prompt) :], drafted, accepted, forwards


def acceptance_rate(
    teacher: nn.Module,
    draft: nn.Module,
    prompts_ids: Sequence[Sequence[int]],
    *,
    gamma: int,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = -1,
    references: Sequence[Sequence[int]] | None = None,
) -> AcceptanceResult:
    """Greedy speculative decoding of every prompt, simulated exactly (batch 1, KV caches): the draft proposes
    up to `gamma` tokens, the teacher verifies them in one forward, the longest prefix matching the teacher's
    greedy tokens is accepted and the teacher adds its own next token. Returns accepted / drafted overall and
    per prompt, with whether each answer equals the teacher's own greedy output (`teacher_greedy`, or the
    given `references`), which exact arithmetic guarantees and floating point may break on a near-tie.

    eos_token_id: -1 (default) = the teacher's generation config's; None = never stop before max_new_tokens.
    Both models must share the tokenizer and be in eval mode.
    """
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if references is not None and len(references) != len(prompts_ids):
        raise ValueError(f"{len(references)} references for {len(prompts_ids)} prompts")
    eos_ids = _default_eos(teacher) if eos_token_id == -1 else eos_token_id
    eos = _eos_set(eos_ids)
    result = AcceptanceResult(gamma=gamma, max_new_tokens=max_new_tokens)
    for i, prompt in enumerate(prompts_ids):
        prompt = list(prompt)
        if not prompt:
            raise ValueError(f"prompt {i} is empty")
        tokens, drafted, accepted, forwards = _speculate(
            teacher, draft, prompt, gamma=gamma, max_new_tokens=max_new_tokens, eos=eos
        )
        reference = (
            list(references[i])
            if references is not None
            else teacher_greedy(teacher, prompt, max_new_tokens=max_new_tokens, eos_token_id=eos_ids)
        )
        result.prompts.append(PromptAcceptance(drafted, accepted, forwards, len(tokens), tokens == reference))
    return result


def acceptance_table(
    teacher: nn.Module,
    draft: nn.Module,
    prompts_ids: Sequence[Sequence[int]],
    *,
    gammas: Sequence[int] = GAMMAS,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = -1,
    references: Sequence[Sequence[int]] | None = None,
) -> dict[int, AcceptanceResult]:
    """`acceptance_rate` for each gamma; the teacher's greedy answers are computed once and shared."""
    eos_ids = _default_eos(teacher) if eos_token_id == -1 else eos_token_id
    if references is None:
        references = [
            teacher_greedy(teacher, list(p), max_new_tokens=max_new_tokens, eos_token_id=eos_ids)
            for p in prompts_ids
        ]
    return {
        g: acceptance_rate(
            teacher,
            draft,
            prompts_ids,
            gamma=g,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids,
            references=references,
        )
        for g in gammas
    }


# -- on-policy distillation ---------------------------------------------------------------------------------


def draft_distill_config(
    *,
    divergence: str = "tvd",
    divergence_kwargs: Mapping[str, float] | None = None,
    on_policy_fraction: float = 1.0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
) -> LMDistillConfig:
    """The `distill` section DistillSpec's recipe amounts to: an online teacher, on-policy draft samples at
    `temperature` (with probability `on_policy_fraction`, its lambda; the other steps train on the examples'
    own labels, e.g. teacher answers), `divergence` between the two distributions on every sampled token."""
    return LMDistillConfig(
        signal="online",
        divergence=divergence,
        divergence_kwargs=dict(divergence_kwargs or {}),
        on_policy_fraction=on_policy_fraction,
        on_policy_max_new_tokens=max_new_tokens,
        on_policy_temperature=temperature,
    )


def prompt_examples(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, max_prompt_length: int | None = None
) -> list[dict[str, Any]]:
    """Training examples of prompts alone (no answer, nothing labelled): enough when every step is
    on-policy, since the draft writes the answers. Prompts are rendered as `encode_prompt` does (chat
    template) and cut to their last `max_prompt_length` tokens."""
    examples = []
    for i, row in enumerate(rows):
        ids = encode_prompt(tokenizer, row)
        if max_prompt_length is not None:
            ids = ids[-max_prompt_length:]
        record_id = str(row.get("record_id") or row.get("id") or i)
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids), "record_id": record_id})
    return examples


def distill_draft(
    draft: nn.Module,
    teacher: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    *,
    steps: int,
    train: LMTrainConfig,
    distill: LMDistillConfig | None = None,
    pad_token_id: int,
    eos_token_id: int | None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    tokenizer: Any = None,
    on_log: Any = None,
    stop_after: int | None = None,
) -> SFTResult:
    """Distil `draft` (in place) towards `teacher` on its own samples for `steps` optimizer steps.

    Each step the draft answers the step's prompts (sampled; `distill.on_policy_*`), the teacher scores the
    answers in one forward, and the loss is `distill.divergence` between their next-token distributions on
    the draft's tokens (`draft_distill_config()` by default: TVD, every step on-policy). This is kdistill's
    white-box loop itself (`TokenDistillObjective`, `train_objective`): the data order and the sampling are
    seeded by `seed` (on a forked RNG), and with `checkpoint_dir` a rerun resumes where it stopped and ends with the same weights.
    """
    distill = distill if distill is not None else draft_distill_config()
    if distill.signal != "online":
        raise ValueError("draft distillation scores the draft's own samples: distill.signal must be online")
    if distill.on_policy_fraction < 1 and not any(
        any(label != IGNORE_INDEX for label in e["labels"]) for e in examples
    ):
        raise ValueError(
            f"on_policy_fraction {distill.on_policy_fraction} < 1 trains some steps on the examples' labels, "
            "but the examples are prompts only: give prompts with teacher answers, or set it to 1"
        )
    objective = TokenDistillObjective(
        draft,
        distill,
        teacher=OnlineTeacher(teacher),
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        seed=seed,
    )
    # the samples come from torch's global RNG: seeded here (a resumed run restores the checkpoint's state),
    # on a forked RNG so the caller's random state is left as it was
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return train_objective(
            objective,
            list(examples),
            train,
            steps=steps,
            seed=seed,
            pad_token_id=pad_token_id,
            tokenizer=tokenizer,
            output_dir=output_dir,
            checkpoint_dir=checkpoint_dir,
            on_log=on_log,
            stop_after=stop_after,
        )


# -- assisted generation ------------------------------------------------------------------------------------


@contextmanager
def _assistant_settings(draft: nn.Module, gamma: int) -> Iterator[None]:
    """The draft proposes exactly `gamma` tokens per round: a constant schedule and no confidence stop
    (transformers' default stops drafting early below 0.4 confidence), restored afterwards."""
    saved = copy.deepcopy(draft.generation_config)
    config = draft.generation_config
    config.num_assistant_tokens = gamma
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0
    try:
        yield
    finally:
        draft.generation_config = saved


def assisted_speed(
    teacher: nn.Module,
    draft: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    gammas: Sequence[int] = (4,),
    rounds: int = 3,
    warmup_rounds: int = 1,
    threads: int | None = None,
    eos_token_id: int | Sequence[int] | None = -1,
    pad_token_id: int | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """The teacher's greedy tokens/s on `prompts` (batch 1 each, as assisted generation requires) with
    and without `assistant_model=draft` in `generate`, one gamma at a time, timed in turns by
    `kdistill.runs.timing.time_models`. Every assisted output is checked against the plain greedy one
    before timing: `strict` raises OutputMismatch on a difference, otherwise it is recorded.

    Returns {"plain": {...}, "assisted": {gamma: {...}}, "timing": the phase's record}; each entry has
    tokens_per_s (median round), its min and max, and the speed-up over plain for the assisted ones.
    """
    eos_ids = _default_eos(teacher) if eos_token_id == -1 else eos_token_id
    eos = list(_eos_set(eos_ids))
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    device = _device(teacher)
    inputs = [torch.tensor([list(p)], dtype=torch.long, device=device) for p in prompts]
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos or None, pad_token_id=pad
    )

    def generate(gamma: int | None) -> list[list[int]]:
        outputs = []
        with torch.inference_mode():
            for ids in inputs:
                kwargs: dict[str, Any] = {}
                if gamma is not None:
                    kwargs["assistant_model"] = draft
                out = teacher.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, **kwargs
                )
                outputs.append(out[0, ids.shape[1] :].tolist())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return outputs

    def timed(gamma: int | None):
        def call() -> None:
            if gamma is None:
                generate(None)
                return
            with _assistant_settings(draft, gamma):
                generate(gamma)

        return call

    plain = generate(None)
    tokens = sum(len(_cut_at_eos(o, frozenset(eos))) for o in plain)
    mismatches: dict[int, int] = {}
    for gamma in gammas:
        with _assistant_settings(draft, gamma):
            assisted = generate(gamma)
        mismatches[gamma] = sum(
            _cut_at_eos(a, frozenset(eos)) != _cut_at_eos(p, frozenset(eos))
            for a, p in zip(assisted, plain, strict=True)
        )
        if strict and mismatches[gamma]:
            raise OutputMismatch(
                f"assisted generation with gamma {gamma} differs from the teacher's greedy output on "
                f"{mismatches[gamma]} of {len(plain)} prompts"
            )
    calls = {"plain": timed(None)} | {f"assisted_gamma_{g}": timed(g) for g in gammas}
    phase = time_models(calls, rounds=rounds, warmup_rounds=warmup_rounds, threads=threads)

    def speed(name: str) -> dict[str, float]:
        t = phase.models[name]
        return {
            "tokens_per_s": tokens / t.median_s,
            "tokens_per_s_min": tokens / t.max_s,
            "tokens_per_s_max": tokens / t.min_s,
            "seconds_median": t.median_s,
        }

    plain_speed = speed("plain")
    assisted_speeds = {}
    for gamma in gammas:
        entry = speed(f"assisted_gamma_{gamma}")
        entry["speedup"] = entry["tokens_per_s"] / plain_speed["tokens_per_s"]
        entry["identical_to_plain"] = mismatches[gamma] == 0
        entry["mismatched_prompts"] = mismatches[gamma]
        assisted_speeds[gamma] = entry
    return {
        "prompts": len(inputs),
        "new_tokens": tokens,
        "max_new_tokens": max_new_tokens,
        "plain": plain_speed,
        "assisted": assisted_speeds,
        "timing": phase.record(batch_size=1, max_new_tokens=max_new_tokens, device=str(device)),
    }


# -- `distill.draft: true` in a `task: lm` run ----------------------------------------------------------------


def _run_prompts(run: Any, tokenizer: Any, eval_rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """The held-out prompts as the timing phase cuts them (`evaluation.timing_max_prompt_length`)."""
    cut = run.cfg.evaluation.timing_max_prompt_length
    return [encode_prompt(tokenizer, row)[-cut:] for row in eval_rows]


def _check_draft_run(run: Any) -> None:
    if run.cross:
        raise ValueError(
            "distill.draft measures speculative decoding, where the draft proposes the teacher's own tokens: "
            "the student must keep the teacher's tokenizer (no student.tokenizer / new_tokenizer)"
        )


def run_acceptance(
    run: Any, name: str, model: nn.Module, teacher: Any, eval_rows: Sequence[Mapping[str, Any]]
):
    """Acceptance of `model` as a draft of `teacher.model` on the held-out prompts, gamma in GAMMAS, each
    answer `evaluation.timing_new_tokens` long at most; computed once per run into `draft_<name>.json`."""
    from kdistill.runs.markers import cached_json

    _check_draft_run(run)

    def compute() -> dict[str, Any]:
        spin = run.logger.job(f"draft-{name}", f"draft acceptance ({name})")
        was_training = model.training
        model.eval()
        try:
            table = acceptance_table(
                teacher.model,
                model,
                _run_prompts(run, teacher.tokenizer, eval_rows),
                max_new_tokens=run.cfg.evaluation.timing_new_tokens,
            )
        finally:
            model.train(was_training)
        spin.done()
        return {str(g): r.record() for g, r in table.items()}

    return cached_json(run.run_dir / f"draft_{name}.json", compute)


def run_draft_metrics(
    run: Any,
    teacher: Any,
    draft: nn.Module,
    eval_rows: Sequence[Mapping[str, Any]],
    before: Mapping[str, Any],
    recovered: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics["draft"] of a run: acceptance before and after training for each gamma (and `recovered`, after
    the plain-text phase when the run has one), and the teacher's
    greedy tokens/s alone and with the trained student as assistant_model on the first
    `evaluation.timing_prompts` held-out prompts (batch 1, `timing_rounds` rounds), outputs checked."""
    from kdistill.runs.markers import cached_json

    after = run_acceptance(run, "after", draft, teacher, eval_rows)
    e = run.cfg.evaluation

    def speed() -> dict[str, Any]:
        spin = run.logger.job(
            "draft-speed", "assisted generation: teacher alone and with the draft, in turns"
        )
        prompts = _run_prompts(run, teacher.tokenizer, eval_rows[: e.timing_prompts])
        result = assisted_speed(
            teacher.model,
            draft.eval(),
            prompts,
            max_new_tokens=e.timing_new_tokens,
            gammas=GAMMAS,
            rounds=e.timing_rounds,
            threads=run.cfg.torch_threads(),
            strict=False,
        )
        spin.done()
        result["assisted"] = {str(g): v for g, v in result["assisted"].items()}
        return result

    assisted = cached_json(run.run_dir / "draft_speed.json", speed)
    for key, entry in assisted["assisted"].items():
        if not entry["identical_to_plain"]:
            run.warn(
                f"assisted generation with gamma {key} changed the teacher's greedy output on "
                f"{entry['mismatched_prompts']} prompts (a floating-point near-tie; the speed is still shown)"
            )
    stages = {"before": before, **({"recovered": recovered} if recovered is not None else {}), "after": after}
    return {
        "gammas": list(GAMMAS),
        **{f"acceptance_{stage}": dict(table) for stage, table in stages.items()},
        "assisted": assisted,
        "summary": {
            str(g): {
                **{
                    f"acceptance_{stage}": table[str(g)]["acceptance_rate"] for stage, table in stages.items()
                },
                "assisted_tokens_per_s": assisted["assisted"][str(g)]["tokens_per_s"],
                "speedup": assisted["assisted"][str(g)]["speedup"],
            }
            for g in GAMMAS
        },
        "teacher_tokens_per_s": assisted["plain"]["tokens_per_s"],
        "busy": assisted["timing"]["busy"],
    }


def draft_summary_lines(draft: Mapping[str, Any]) -> dict[str, str]:
    """Report lines (metrics["summary"] entries) for a draft run: acceptance before -> (after the text phase
    ->) after, speed-up."""
    star = " *" if draft["busy"] else ""  # timed on a busy machine
    lines = {}
    for g, s in draft["summary"].items():
        stages = [s["acceptance_before"], s.get("acceptance_recovered"), s["acceptance_after"]]
        lines[f"draft acceptance, gamma {g}"] = " -> ".join(f"{r:.1%}" for r in stages if r is not None)
        lines[f"assisted speed-up, gamma {g}"] = f"{s['speedup']:.2f}x{star}"
    return lines
