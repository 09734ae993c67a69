"""Where training data comes from: vision datasets, prompt files, and teacher generations.

- `load_prompts(path)`: a prompt file (.jsonl, .csv, .parquet) or dataset directory -> `Prompt`s.
- `load_generations(dir)`: the rows a `kdistill generate` run committed, verified, as a `datasets.Dataset`.
- `export_generations(dir, path)`: those rows to .jsonl or .parquet.
"""

from kdistill.data.generation_store import export_generations, load_generations
from kdistill.data.prompts import load_prompts

__all__ = ["export_generations", "load_generations", "load_prompts"]
