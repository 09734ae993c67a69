"""What a record is: one sample of one prompt, named by a hash of everything that changes its answer.

A record id hashes the prompt id, the canonical prompt (JSON of the prompt text or messages), the teacher
identity (kind, base_url or model path, model, API style; never a key), the sampling parameters that
change an answer (`sampling_identity`) and the sample index. The number of samples is not part of it, so
asking for more samples later only adds the new indices; anything that would change an answer gives new
ids, so a rerun never mistakes an old answer for the one asked for. These ids are on disk in every
output directory: changing what goes into the hash orphans every existing row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kdistill.generate.config import SamplingConfig
from kdistill.generate.prompts import Prompt


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces: equal data always gives the same string (and hash)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sampling_identity(sampling: SamplingConfig) -> dict[str, Any]:
    """The sampling parameters that change an answer (the sample count does not)."""
    return {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "stop": sampling.stop,
        "top_logprobs": sampling.top_logprobs,
    }


def record_id(prompt: Prompt, teacher: dict[str, Any], sampling: dict[str, Any], sample_index: int) -> str:
    """The id of sample `sample_index` of `prompt` from `teacher` (its identity) with `sampling`."""
    blob = canonical_json(
        {
            "prompt_id": prompt.id,
            "prompt": prompt.canonical(),
            "teacher": teacher,
            "sampling": sampling,
            "sample_index": sample_index,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
