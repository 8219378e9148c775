"""Reading τ off the calibration's τ → bits table (``mbq_onnx.tau_table``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mbq_onnx.runtime import tau_for_bits

FIXTURE = Path(__file__).parents[1] / "android" / "fixtures" / "probe_grid.json"
TABLE = [{"tau": 0.0, "avg_bits_per_call": 8.0}, {"tau": 0.5, "avg_bits_per_call": 6.0}]
TABLE += [{"tau": 0.6, "avg_bits_per_call": 6.0}, {"tau": 1.0, "avg_bits_per_call": 4.0}]


def test_interpolates_between_rows_and_takes_the_smallest_tau_of_a_plateau():
    assert tau_for_bits(TABLE, 8.0) == 0.0
    assert tau_for_bits(TABLE, 7.0) == pytest.approx(0.25)
    assert tau_for_bits(TABLE, 6.0) == 0.5  # 0.5..0.6 all give 6 bits: the most precise τ
    assert tau_for_bits(TABLE, 5.0) == pytest.approx(0.8)
    assert tau_for_bits(TABLE, 4.0) == 1.0


def test_older_tables_and_odd_rows():
    legacy = [{"tau": r["tau"], "avg_bits": r["avg_bits_per_call"]} for r in TABLE]
    assert tau_for_bits(legacy, 5.0) == pytest.approx(0.8)
    noisy = [*TABLE, {"tau": float("nan"), "avg_bits_per_call": 5.0}, "not a row", {"tau": 0.7}]
    assert tau_for_bits(noisy, 5.0) == pytest.approx(0.8)
    assert tau_for_bits([{"tau": 0.5, "avg_bits": 6.0}], 6.0) == 0.5


@pytest.mark.parametrize(
    ("table", "bits", "message"),
    [
        (TABLE, 8.5, r"8.5 bits is outside the model's τ table, 4.00..8.00"),
        (TABLE, 3.0, "outside the model's τ table"),
        (TABLE, float("nan"), "outside the model's τ table"),
        ([], 6.0, "no τ → bits table"),
        ([{"tau": 0.0, "avg_bits": 4.0}, {"tau": 1.0, "avg_bits": 8.0}], 6.0, "does not fall"),
    ],
)
def test_bad_requests_name_the_problem(table, bits, message):
    with pytest.raises(ValueError, match=message):
        tau_for_bits(table, bits)


def test_the_bracketed_table_of_a_real_calibration_is_read_back_exactly():
    """The 49-row table of the `fast` calibration (bits fall steeply just above 4 and 6): the τ found for
    a bit target gives that target again by linear interpolation in the table."""
    table = max((c["tau_table"] for c in json.loads(FIXTURE.read_text())["cases"]), key=len)
    taus = np.array([r["tau"] for r in table])
    bits = np.array([r.get("avg_bits_per_call", r.get("avg_bits")) for r in table])
    for target in np.linspace(bits.min(), bits.max(), 17):
        tau = tau_for_bits(table, float(target))
        assert np.interp(tau, taus, bits) == pytest.approx(target, abs=1e-9)
