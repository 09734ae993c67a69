"""Every loss against values recorded in tests/golden/losses.json (written only by tests/golden/record.py).

A change detector: the values were recorded from the code under test, so this catches a silent change of
a loss's value, not a loss that was wrong when recorded. tests/losses/test_ref_golden.py checks the
recorded values themselves against independent references."""

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
    """No loss changed its value since the golden file was recorded (a change detector, see above)."""
    golden = json.loads((GOLDEN_DIR / "losses.json").read_text())
    current = _recorder().compute()
    assert set(current) == set(golden)
    for name, value in golden.items():
        assert current[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name
