"""The probe's τ grid against the golden cases the Android probe is also tested on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbq_onnx.runtime.probe import probe_grid

GOLDEN = Path(__file__).resolve().parents[1] / "android" / "fixtures" / "probe_grid.json"
CASES = json.loads(GOLDEN.read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_probe_grid_matches_the_golden_case(case: dict) -> None:
    assert probe_grid(case["tau_table"]) == case["grid"]


def test_probe_grid_samples_every_bracket_of_a_bracketed_table() -> None:
    """The 49-row bracketed table moves its bits fast just above each uniform point: the grid keeps at
    most 9 table rows yet has a point in both the 4–6 and the 6–8 bit brackets."""
    table = next(c["tau_table"] for c in CASES if len(c["tau_table"]) > 20)
    bits = {r["tau"]: r["avg_bits_per_call"] for r in table}
    inner = [bits[t] for t in probe_grid(table) if t in bits]
    assert len(inner) <= 9
    assert any(4.2 < b < 5.8 for b in inner) and any(6.2 < b < 7.8 for b in inner)
