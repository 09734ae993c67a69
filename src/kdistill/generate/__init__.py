"""Teacher answers: a teacher answers a prompt file; the answers become a verified, resumable dataset.

- `config.py`   the `generation:` models (`GenerationConfig`, teacher, sampling, retry) and
                `load_generation_config` (YAML + command-line overrides).
- `records.py`  record identity: a record is one sample of one prompt, its id a hash of everything that
                changes the answer.
- `run.py`      `generate` / `agenerate`: plan, workers, rate limits, retries, judging, group commit.
- `prompts.py`  prompt files (.jsonl, .csv, .parquet, dataset directories); `builtin_prompts.py`;
                `problems.py` (seeded families of problems with checkable answers, for reasoning runs).
- `store.py`    the output directory: journal -> immutable Parquet shards + sha256 manifest;
                `load_generations` (eager or streaming), `export_generations`.
- `teachers/`   the backends: any OpenAI-compatible endpoint (or a pool of them), a local Hugging Face
                model; retry policy and client-side rate limits.

Details: docs/generate.md.
"""
