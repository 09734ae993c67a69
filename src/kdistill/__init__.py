"""kdistill: knowledge distillation from a large teacher into a small, fast student."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `kdistill.distill` without importing torch for `kdistill --help`
    if name == "distill":
        from kdistill.api import distill

        return distill
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
