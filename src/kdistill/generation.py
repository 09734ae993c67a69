"""Kept for code written against the earlier layout: teacher generation is `kdistill.generate`
(`run.py`: generate, agenerate; `config.py`: GenerationConfig)."""

from kdistill.generate.run import (
    GenerationConfig,
    GenerationError,
    agenerate,
    build_teacher,
    generate,
    load_generation_config,
)

__all__ = [
    "GenerationConfig",
    "GenerationError",
    "agenerate",
    "build_teacher",
    "generate",
    "load_generation_config",
]
