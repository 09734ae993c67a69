"""Every loss against values recorded in tests/golden/losses.json (written only by tests/golden/record.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent.parent / "golden"


def _recorder():
    spec = importlib.util.spec_from_file_location("golden_record", GOLDEN_DIR / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_losses_match_their_golden_values():
    golden = json.loads((GOLDEN_DIR / "losses.json").read_text())
    current = _recorder().compute()
    assert set(current) == set(golden)
    for name, value in golden.items():
        assert current[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name
