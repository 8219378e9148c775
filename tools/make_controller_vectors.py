"""Write tests/golden/controller_vectors.json from the Python budget controller.

The vectors pin docs/controller.md for the Java port: measured latencies in, decisions out.
Usage: python tools/make_controller_vectors.py [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from mbq_onnx.atomic import write_file
from mbq_onnx.runtime.controller import (
    BudgetController,
    ControllerParams,
    Decision,
    FixedController,
    LatencyMap,
    MapPoint,
)
from mbq_onnx.runtime.simulate import Plant, example_map, run_closed_loop

VERSION = 1
REPO = Path(__file__).resolve().parents[1]


def _decision(d: Decision) -> dict:
    return {
        "tau": d.tau,
        "force_slices": d.force_slices,
        "status": d.status,
        "ratio": d.ratio,
        "predicted_ms": None if math.isnan(d.predicted_ms) else d.predicted_ms,
    }


def _map_json(points: list[MapPoint]) -> list[dict]:
    return [dataclasses.asdict(p) for p in points]


def _budget_case(
    name: str,
    points: list[MapPoint],
    target: float,
    plant: Plant,
    steps: int,
    params: ControllerParams | None = None,
) -> dict:
    params = params or ControllerParams()
    ctl = BudgetController(LatencyMap(points), target, params)
    initial = _decision(ctl.decision)
    trace = run_closed_loop(ctl, plant, steps)
    return {
        "name": name,
        "mode": "budget",
        "map": _map_json(points),
        "params": dataclasses.asdict(params),
        "target_ms": target,
        "tau": None,
        "slices": None,
        "num_slices": 3,
        "initial": initial,
        "steps": [{"measured_ms": m, "expect": _decision(d)} for m, d in trace],
    }


def _fixed_case(name: str, tau: float | None, slices: int | None) -> dict:
    ctl = FixedController(tau=tau, slices=slices, num_slices=3)
    measured = [12.0, 30.0, 7.5]
    return {
        "name": name,
        "mode": "tau" if tau is not None else "slices",
        "map": [],
        "params": dataclasses.asdict(ControllerParams()),
        "target_ms": None,
        "tau": tau,
        "slices": slices,
        "num_slices": 3,
        "initial": _decision(ctl.decision),
        "steps": [{"measured_ms": m, "expect": _decision(ctl.update(m))} for m in measured],
    }


def build() -> dict:
    """All vector cases (deterministic: seeded noise, recorded measurements)."""
    m = example_map()
    pts = [MapPoint(t, b, la) for t, b, la in zip(m.taus, m.bits, m.latency, strict=True)]
    # a noisy, non-monotone probe (exercises the monotone repair) and a map that is not [0, 1]-wide
    noisy = [
        MapPoint(0.0, 8.0, 20.3),
        MapPoint(0.3, 7.1, 17.0),
        MapPoint(0.5, 6.0, 17.4),
        MapPoint(0.7, 4.9, 12.1),
        MapPoint(1.0, 4.0, 10.2),
    ]
    narrow = [MapPoint(0.1, 7.9, 19.0), MapPoint(0.55, 5.5, 14.0), MapPoint(0.9, 4.1, 10.5)]
    cases = [
        _budget_case("steady_state_no_noise", pts, 15.0, Plant(m), 10),
        _budget_case("step_load_up_1p4x", pts, 15.0, Plant(m, load=lambda s: 1.0 if s < 5 else 1.4), 30),
        _budget_case(
            "step_load_down_0p7x", pts, 15.0, Plant(m, load=lambda s: 1.3 if s < 5 else 0.7 * 1.3), 30
        ),
        _budget_case("noise_5pct", pts, 14.0, Plant(m, noise=0.05, seed=7), 60),
        _budget_case(
            "noise_15pct_with_spikes",
            pts,
            16.0,
            Plant(m, noise=0.15, seed=11, load=lambda s: 6.0 if s in (10, 11, 30) else 1.0),
            50,
        ),
        _budget_case(
            "infeasible_then_recovers", pts, 9.0, Plant(m, load=lambda s: 1.0 if s < 20 else 0.8), 40
        ),
        _budget_case("loose_budget_max_precision", pts, 30.0, Plant(m, noise=0.05, seed=3), 15),
        _budget_case(
            "windup_check_heavy_load_then_release",
            pts,
            15.0,
            Plant(m, load=lambda s: 4.0 if s < 15 else 1.0),
            40,
        ),
        _budget_case("ratio_bounds", pts, 15.0, Plant(m, load=lambda s: 20.0 if s < 25 else 0.05), 50),
        _budget_case("nonmonotone_probe_map", noisy, 15.0, Plant(m, noise=0.05, seed=5), 30),
        _budget_case(
            "narrow_tau_range_warped_plant",
            narrow,
            13.0,
            Plant(LatencyMap(narrow), warp=lambda ms: 1.2 * ms - 2.0, noise=0.02, seed=9),
            30,
        ),
        _budget_case(
            "custom_params_no_band",
            pts,
            15.0,
            Plant(m, noise=0.03, seed=2),
            30,
            ControllerParams(
                headroom=0.0, band=0.0, gain=0.5, window=2, spike_factor=1.5, ratio_min=0.5, ratio_max=2.0
            ),
        ),
        _fixed_case("fixed_tau", 0.42, None),
        _fixed_case("fixed_slices_base", None, 1),
        _fixed_case("fixed_slices_all", None, 3),
    ]
    default = dataclasses.asdict(ControllerParams())
    invalid = [
        {"name": "one_point_map", "map": _map_json(pts[:1]), "target_ms": 15.0, "params": default},
        {
            "name": "tau_not_increasing",
            "map": _map_json([pts[1], pts[0], pts[2]]),
            "target_ms": 15.0,
            "params": default,
        },
        {
            "name": "tau_above_one",
            "map": _map_json([pts[0], MapPoint(1.5, 4.0, 10.0)]),
            "target_ms": 15.0,
            "params": default,
        },
        {
            "name": "zero_latency",
            "map": _map_json([pts[0], MapPoint(1.0, 4.0, 0.0)]),
            "target_ms": 15.0,
            "params": default,
        },
        {"name": "negative_target", "map": _map_json(pts), "target_ms": -1.0, "params": default},
        {"name": "zero_target", "map": _map_json(pts), "target_ms": 0.0, "params": default},
        {"name": "zero_gain", "map": _map_json(pts), "target_ms": 15.0, "params": {**default, "gain": 0.0}},
        {"name": "zero_window", "map": _map_json(pts), "target_ms": 15.0, "params": {**default, "window": 0}},
        {
            "name": "headroom_one",
            "map": _map_json(pts),
            "target_ms": 15.0,
            "params": {**default, "headroom": 1.0},
        },
    ]
    return {
        "format": "mbq-controller-vectors",
        "version": VERSION,
        "tolerance": 1e-9,
        "spec": "docs/controller.md",
        "cases": cases,
        "invalid": invalid,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden" / "controller_vectors.json")
    args = ap.parse_args()
    text = json.dumps(build(), indent=1, allow_nan=False) + "\n"
    write_file(args.out, text)
    print(f"wrote {args.out} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
