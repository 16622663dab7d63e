"""Parity with the official TotalSegmentator 2.18 CLI, ``--task total_mr``, offline, on the same weights.

Runs ``bench/parity_totalsegmentator.py`` (random-weight stand-ins for datasets 850/851 with the official
folder names, trainer and class names; usage statistics off; sockets blocked in the CLI process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.parity_totalsegmentator import DICE_BAR, run_parity  # noqa: E402


@pytest.mark.slow
def test_engine_matches_the_totalsegmentator_cli(tmp_path):
    result = run_parity(tmp_path, shape=(48, 44, 18), seed=1)
    assert result["classes_compared"] >= 10, result
    assert result["min_dice"] >= DICE_BAR, result["dice"]
    assert result["passed"]
    assert json.loads((tmp_path / "home" / "config.json").read_text())["send_usage_stats"] is False
