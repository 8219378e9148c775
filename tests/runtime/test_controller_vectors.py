"""The shared golden vectors (tests/golden/controller_vectors.json) replayed on the Python controller."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mbq_onnx.runtime.controller import (
    BudgetController,
    ControllerParams,
    FixedController,
    LatencyMap,
    MapPoint,
)

VECTORS = json.loads((Path(__file__).parents[1] / "golden" / "controller_vectors.json").read_text())
TOL = VECTORS["tolerance"]


def _check(got, want: dict, where: str) -> None:
    assert got.status == want["status"], where
    assert got.force_slices == want["force_slices"], where
    for key in ("tau", "ratio"):
        assert abs(getattr(got, key) - want[key]) <= TOL, f"{where}: {key}"
    if want["predicted_ms"] is None:
        assert math.isnan(got.predicted_ms), where
    else:
        assert abs(got.predicted_ms - want["predicted_ms"]) <= TOL, f"{where}: predicted_ms"


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vector_case(case: dict) -> None:
    if case["mode"] == "budget":
        lm = LatencyMap([MapPoint(**p) for p in case["map"]])
        ctl = BudgetController(lm, case["target_ms"], ControllerParams(**case["params"]))
    else:
        ctl = FixedController(tau=case["tau"], slices=case["slices"], num_slices=case["num_slices"])
    _check(ctl.decision, case["initial"], "initial")
    for i, step in enumerate(case["steps"]):
        _check(ctl.update(step["measured_ms"]), step["expect"], f"step {i}")


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_vector_invalid(case: dict) -> None:
    with pytest.raises(ValueError):
        BudgetController(
            LatencyMap([MapPoint(**p) for p in case["map"]]),
            case["target_ms"],
            ControllerParams(**case["params"]),
        )


def test_vectors_cover_every_status() -> None:
    statuses = {s["expect"]["status"] for c in VECTORS["cases"] for s in c["steps"]}
    assert statuses == {"tracking", "max_precision", "infeasible", "fixed"}
