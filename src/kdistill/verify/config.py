"""The `verify:` section: which verifiers decide, what is kept, how it is cleaned, and what the student
learns from it. The same section drives `kdistill verify` and the verified data of a `task: lm` run.

    verify:
      prompts: problems.jsonl            # the prompt file with the references (joined on prompt id)
      verifiers:
        - {name: answer_match, mode: numeric}
      require: all                        # every verifier must accept (any: one is enough)
      select: {keep: all_correct, max_per_prompt: 4}
      dedup: {enabled: true, threshold: 0.85}
      decontaminate: {enabled: true, n: 13}
      train_on: rationale                 # rationale | answer | multitask
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kdistill.schema import ConfigError, Strict


class SelectConfig(Strict):
    keep: Literal["all_correct", "best_of_n", "all"] = Field(
        "all_correct",
        description="all_correct: every verified answer; best_of_n: one per prompt; all: no filter (baseline)",
    )
    max_per_prompt: int | None = Field(None, ge=1, description="most answers kept per prompt (null: no cap)")
    seed: int = Field(0, description="which answers a cap keeps (a seeded choice per prompt)")


class DedupConfig(Strict):
    enabled: bool = Field(True, description="drop exact and near-duplicate answers")
    near: bool = Field(True, description="also near duplicates (MinHash + LSH), not only exact ones")
    threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity of character 5-grams")
    within_prompt: bool = Field(
        True, description="compare answers of the same prompt only (false: across prompts too)"
    )


class DecontaminateConfig(Strict):
    enabled: bool = Field(
        True, description="drop training answers that share an n-gram with evaluation prompts"
    )
    n: int = Field(13, ge=1, description="word n-gram length (13, as in the GPT-3 and Llama reports)")
    fields: list[Literal["question", "completion"]] = Field(
        default_factory=lambda: ["question", "completion"],
        min_length=1,
        description="what of a training answer is compared (drop question when every prompt shares a long "
        "instruction: its n-grams would match every evaluation prompt)",
    )
    against: Path | None = Field(
        None,
        description="prompt file of the evaluation problems (null: a run's held-out prompts; none for "
        "`kdistill verify` without it)",
    )


class VerifyConfig(Strict):
    prompts: Path | None = Field(
        None, description="prompt file holding the references (a run's prompts.file when null)"
    )
    verifiers: list[dict[str, Any]] = Field(
        min_length=1, description="each {name: <verifier>, ...its options}; `kdistill methods` lists them"
    )
    require: Literal["all", "any"] = Field("all", description="all verifiers must accept, or any one")
    out: Path | None = Field(
        None, description="verdicts directory (kdistill verify: <generations>/verdicts when null)"
    )
    concurrency: int = Field(
        4, ge=1, description="verifications at once (threads; code runs in subprocesses)"
    )
    select: SelectConfig = Field(default_factory=SelectConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    train_on: Literal["rationale", "answer", "multitask"] = Field(
        "rationale",
        description="rationale: the whole answer; answer: the final answer only; multitask: both, as two "
        "tasks with prefixes (distilling step-by-step)",
    )

    compare_with: list[Literal["unfiltered", "rationale", "answer", "multitask"]] = Field(
        default_factory=list,
        description="(task lm) more students from the same start for the same steps: unfiltered (every answer, "
        "right or wrong) or the verified answers in another train_on form",
    )

    @model_validator(mode="after")
    def _answers_to_train_on(self) -> VerifyConfig:
        forms = {self.train_on, *self.compare_with}
        if forms & {"answer", "multitask"} and not any(
            v.get("name") == "answer_match" for v in self.verifiers
        ):
            raise ValueError(
                "train_on answer or multitask needs an answer_match verifier (the final answer it extracts)"
            )
        if len(set(self.compare_with)) != len(self.compare_with) or self.train_on in self.compare_with:
            raise ValueError("compare_with: each form once, and not the run's own train_on")
        return self

    @field_validator("verifiers")
    @classmethod
    def _known_verifiers(cls, verifiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from kdistill.verify.registry import verifier_from_config

        for i, data in enumerate(verifiers):
            verifier_from_config(data, source=f"verifiers[{i}]")
        return verifiers

    def checks(self) -> list[tuple[Any, Any]]:
        """(spec, validated options) of each verifier, in order."""
        from kdistill.verify.registry import verifier_from_config

        return [verifier_from_config(d, source=f"verifiers[{i}]") for i, d in enumerate(self.verifiers)]

    def columns(self) -> tuple[str, ...]:
        """The prompt-file columns the verifiers read."""
        seen: dict[str, None] = {}
        for spec, options in self.checks():
            seen.update(dict.fromkeys(spec.columns(options)))
        return tuple(seen)


def load_verify_config(path: str | Path, overrides: list[str] | None = None) -> VerifyConfig:
    """The `verify:` section of a YAML file, dotted overrides applied, validated (ConfigError naming the
    file and field path)."""
    from kdistill.schema import apply_overrides, format_validation_errors, parse_yaml, read_config_text

    text = read_config_text(Path(path))  # UTF-8, at most 1 MiB: else one ConfigError line
    loaded = parse_yaml(text, str(path))
    if not isinstance(loaded, dict) or not isinstance(loaded.get("verify"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'verify:' section of settings")
    data = loaded["verify"]
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return VerifyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, str(path), prefix=("verify",))) from None
