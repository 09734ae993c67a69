"""Shortcuts kept for code written against earlier layouts: the generation store and prompt files now live in
`kdistill.generate` (`store.py`, `prompts.py`).

- `load_prompts(path)`: a prompt file (.jsonl, .csv, .parquet) or dataset directory -> `Prompt`s.
- `load_generations(dir)`: the rows a `kdistill generate` run committed, verified, as a `datasets.Dataset`
  (`streaming=True`: a `datasets.IterableDataset` read shard by shard).
- `export_generations(dir, path)`: those rows to .jsonl or .parquet.
"""

from kdistill.generate.prompts import load_prompts
from kdistill.generate.store import export_generations, load_generations

__all__ = ["export_generations", "load_generations", "load_prompts"]
