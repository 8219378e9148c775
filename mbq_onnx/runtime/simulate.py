"""A simulated decode-latency plant for exercising the budget controller without a model.

Used by the controller tests and ``tools/make_controller_vectors.py``: latency at τ is the map's
curve (optionally warped) times a load factor per step, times multiplicative noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .controller import BudgetController, Decision, LatencyMap, MapPoint


def example_map() -> LatencyMap:
    """A map shaped like a 3-slice model (8 bits at τ=0, 4 bits at τ=1), 20 ms → 10 ms."""
    taus = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
    bits = [8.0, 7.6, 6.8, 6.0, 5.2, 4.4, 4.0]
    return LatencyMap([MapPoint(t, b, 10.0 + 2.5 * (b - 4.0)) for t, b in zip(taus, bits, strict=True)])


@dataclass
class Plant:
    """True step latency = load(step) * warp(map latency at τ) * (1 + noise)."""

    latency_map: LatencyMap
    load: Callable[[int], float] = lambda step: 1.0
    warp: Callable[[float], float] = lambda ms: ms
    noise: float = 0.0  # half-width of uniform multiplicative noise
    seed: int = 0
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def step(self, step: int, tau: float) -> float:
        base = self.warp(self.latency_map.latency_at(tau)) * self.load(step)
        return float(base * (1.0 + self.noise * self._rng.uniform(-1.0, 1.0)))


def run_closed_loop(controller: BudgetController, plant: Plant, steps: int) -> list[tuple[float, Decision]]:
    """Run ``steps`` decode steps; returns (measured ms, decision after it) per step."""
    out: list[tuple[float, Decision]] = []
    for i in range(steps):
        measured = plant.step(i, controller.decision.tau)
        out.append((measured, controller.update(measured)))
    return out
