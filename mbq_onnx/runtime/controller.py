"""Latency-budget controller: picks the router threshold τ for the next decode step.

The normative specification is ``docs/controller.md``; the Java port in ``android_demo`` follows the
same text and both check ``tests/golden/controller_vectors.json``. Arithmetic is float64 with only
``+ - * /``, ``min``/``max`` and comparisons, so the two implementations agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

TRACKING = "tracking"
MAX_PRECISION = "max_precision"
INFEASIBLE = "infeasible"
FIXED = "fixed"


@dataclass(frozen=True)
class MapPoint:
    """One probe point: router threshold τ, measured average bits and step latency (ms)."""

    tau: float
    avg_bits: float
    latency_ms: float


@dataclass(frozen=True)
class ControllerParams:
    """Tuning constants (defaults are the spec defaults; see docs/controller.md)."""

    headroom: float = 0.05  # setpoint = target * (1 - headroom)
    band: float = 0.03  # hysteresis: hold τ while |predicted - setpoint| <= band * setpoint
    gain: float = 0.3  # EMA gain of the slowdown ratio estimate
    window: int = 5  # median filter over the last `window` observed ratios (rejects isolated spikes)
    spike_factor: float = 2.0  # one update moves the ratio by at most this factor
    ratio_min: float = 0.2
    ratio_max: float = 5.0

    def __post_init__(self) -> None:
        checks = {
            "headroom": 0.0 <= self.headroom < 1.0,
            "band": 0.0 <= self.band < 1.0,
            "gain": 0.0 < self.gain <= 1.0,
            "window": isinstance(self.window, int) and self.window >= 1,
            "spike_factor": self.spike_factor >= 1.0,
            "ratio_min": 0.0 < self.ratio_min <= 1.0,
            "ratio_max": self.ratio_max >= 1.0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise ValueError(
                    f"controller parameter {name}={value!r} is out of range (docs/controller.md)"
                )


@dataclass(frozen=True)
class Decision:
    """The controller's output after construction or an update."""

    tau: float
    force_slices: int
    status: str
    ratio: float
    predicted_ms: float


class LatencyMap:
    """The τ → (average bits, latency) map, made monotone (latency non-increasing in τ)."""

    def __init__(self, points: Sequence[MapPoint]):
        if len(points) < 2:
            raise ValueError(f"latency map needs at least 2 points, got {len(points)}")
        prev_tau = -math.inf
        for p in points:
            if not (0.0 <= p.tau <= 1.0) or p.tau <= prev_tau:
                raise ValueError(
                    f"latency map τ values must be strictly increasing in [0, 1]; bad τ={p.tau!r}"
                )
            if not (math.isfinite(p.latency_ms) and p.latency_ms > 0.0):
                raise ValueError(
                    f"latency map latency must be finite and > 0; got {p.latency_ms!r} at τ={p.tau}"
                )
            if not math.isfinite(p.avg_bits):
                raise ValueError(f"latency map avg_bits must be finite; got {p.avg_bits!r} at τ={p.tau}")
            prev_tau = p.tau
        self.taus = [float(p.tau) for p in points]
        self.bits = [float(p.avg_bits) for p in points]
        lat: list[float] = []
        for p in points:  # running minimum: a slower point after a faster one is probe noise
            lat.append(float(p.latency_ms) if not lat else min(float(p.latency_ms), lat[-1]))
        self.latency = lat

    @property
    def tau_min(self) -> float:
        return self.taus[0]

    @property
    def tau_max(self) -> float:
        return self.taus[-1]

    def latency_at(self, tau: float) -> float:
        """Piecewise-linear latency at τ (clamped to the map's τ range)."""
        return _interp(self.taus, self.latency, tau)

    def bits_at(self, tau: float) -> float:
        """Piecewise-linear average bits at τ (clamped to the map's τ range)."""
        return _interp(self.taus, self.bits, tau)

    def tau_for_latency(self, lat: float) -> float:
        """Smallest τ (most precision) whose map latency is <= ``lat``; τ_max if none is."""
        t, ls = self.taus, self.latency
        if ls[0] <= lat:
            return t[0]
        for j in range(1, len(t)):
            if ls[j] <= lat:
                return t[j - 1] + (ls[j - 1] - lat) / (ls[j - 1] - ls[j]) * (t[j] - t[j - 1])
        return t[-1]

    def to_json(self) -> list[dict[str, float]]:
        return [
            {"tau": t, "avg_bits": b, "latency_ms": la}
            for t, b, la in zip(self.taus, self.bits, self.latency, strict=True)
        ]


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    for j in range(1, len(xs)):
        if x <= xs[j]:
            return ys[j - 1] + (x - xs[j - 1]) / (xs[j] - xs[j - 1]) * (ys[j] - ys[j - 1])
    return ys[-1]


def _median(values: list[float]) -> float:
    s = sorted(values)
    k = len(s)
    return s[k // 2] if k % 2 == 1 else (s[k // 2 - 1] + s[k // 2]) / 2.0


class BudgetController:
    """Feed-forward over the latency map plus a feedback slowdown ratio (spec: docs/controller.md).

    ``decision`` holds the τ to use for the next step; call :meth:`update` with each measured
    decode-step latency (ms) to get the next decision.
    """

    def __init__(self, latency_map: LatencyMap, target_ms: float, params: ControllerParams | None = None):
        if not (math.isfinite(target_ms) and target_ms > 0.0):
            raise ValueError(f"latency budget must be a finite number of ms > 0, got {target_ms!r}")
        self.map = latency_map
        self.params = params or ControllerParams()
        self.target_ms = float(target_ms)
        self.setpoint_ms = self.target_ms * (1.0 - self.params.headroom)
        self.ratio = 1.0
        self.scale = 1.0  # batch scale (docs/controller.md, "Batch scale"); 1 outside the server
        self._recent: list[float] = []  # the last `window` observed ratios, oldest first
        self.tau = self.map.tau_for_latency(self.setpoint_ms / self.ratio)
        self.decision = self._decide()

    def _decide(self) -> Decision:
        m, r = self.map, self.ratio * self.scale
        predicted = r * m.latency_at(self.tau)
        if self.tau == m.tau_max and r * m.latency[-1] > self.target_ms:
            status = INFEASIBLE
        elif self.tau == m.tau_min and r * m.latency[0] <= self.setpoint_ms:
            status = MAX_PRECISION
        else:
            status = TRACKING
        return Decision(self.tau, 0, status, self.ratio, predicted)

    def predict_ms(self, tau: float, scale: float | None = None) -> float:
        """Predicted step latency at ``tau`` and batch ``scale`` (default: the current one)."""
        return self.ratio * (self.scale if scale is None else scale) * self.map.latency_at(tau)

    def set_scale(self, scale: float) -> Decision:
        """Set the batch scale s (step latency at this batch size over batch 1's) and re-decide τ
        through the hysteresis rule of :meth:`update`, without a measurement."""
        if not (math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"batch scale must be finite and > 0, got {scale!r}")
        self.scale = float(scale)
        self._retarget()
        self.decision = self._decide()
        return self.decision

    def _retarget(self) -> None:
        rs = self.ratio * self.scale
        if abs(rs * self.map.latency_at(self.tau) - self.setpoint_ms) > self.params.band * self.setpoint_ms:
            self.tau = self.map.tau_for_latency(self.setpoint_ms / rs)

    def update(self, measured_ms: float) -> Decision:
        """Account for one measured decode-step latency (ms) and return the next decision."""
        if not (math.isfinite(measured_ms) and measured_ms > 0.0):
            raise ValueError(f"measured latency must be finite and > 0 ms, got {measured_ms!r}")
        p, m = self.params, self.map
        self._recent.append(measured_ms / (self.scale * m.latency_at(self.tau)))
        if len(self._recent) > p.window:
            self._recent.pop(0)
        observed = _median(self._recent)
        observed = min(max(observed, self.ratio / p.spike_factor), self.ratio * p.spike_factor)
        r = self.ratio + p.gain * (observed - self.ratio)
        self.ratio = min(max(r, p.ratio_min), p.ratio_max)
        self._retarget()
        self.decision = self._decide()
        return self.decision


class FixedController:
    """Fixed modes: a constant τ (router decides) or a forced slice count (router bypassed)."""

    def __init__(self, tau: float | None = None, slices: int | None = None, num_slices: int | None = None):
        if (tau is None) == (slices is None):
            raise ValueError("give exactly one of tau or slices")
        if tau is not None and not (math.isfinite(tau) and 0.0 <= tau <= 1.0):
            raise ValueError(f"τ must be a number in [0, 1], got {tau!r}")
        if slices is not None:
            upper = num_slices if num_slices is not None else slices
            if not (1 <= slices <= upper):
                raise ValueError(f"slice count must be in 1..{upper}, got {slices!r}")
        self.decision = Decision(
            float(tau) if tau is not None else 0.0, int(slices or 0), FIXED, 1.0, math.nan
        )

    def update(self, measured_ms: float) -> Decision:
        """Fixed modes ignore measurements."""
        return self.decision
