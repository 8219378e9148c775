"""Calibration hyper-parameters and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..model.routing import DEFAULT_TAU_SCHEDULE, check_tau_schedule
from .matmul import GRAD_DTYPES

ROUTER_GRANULARITIES = ("linear", "block")
LOSS_WEIGHTINGS = ("relative", "mean")


#: Low τ values in front of the even grid: routers trained on more data are stingy and spend their bits
#: below τ = 0.05 (the `medium` preset: τ = 0.05 → 4.42 bits of 4…8).
LOW_TAUS = (0.001, 0.002, 0.005, 0.01, 0.02)


def default_tau_grid(num_slices: int = 3, schedule: str = DEFAULT_TAU_SCHEDULE) -> tuple[float, ...]:
    """The τ values of the τ → bits table: a gate threshold grid (0.001, 0.002, 0.005, 0.01, 0.02, then
    0.05, 0.10, …, 0.95) at which each gate is routed — ``"shared"``: those τ; ``"bracketed"``: mapped
    into each gate's τ range (:func:`~mbq_onnx.model.routing.gate_taus`), plus the range ends."""
    gate_grid = LOW_TAUS + tuple(round(0.05 * i, 2) for i in range(1, 20))
    gates = num_slices - 1
    if check_tau_schedule(schedule) == "shared" or gates <= 1:
        return gate_grid
    # gate j routes at tau_j = j - G(1 - τ), i.e. τ = 1 - (j - tau_j) / G
    grid = {round(1 - (j - t) / gates, 6) for j in range(1, gates + 1) for t in gate_grid}
    grid |= {round(1 - j / gates, 6) for j in range(1, gates)}
    return tuple(sorted(grid))


@dataclass(frozen=True)
class CalibConfig:
    """How one calibration runs (data size, epochs, optimiser, routers, loss).

    - ``base_epochs``: stage 1, the base slice alone; ``epochs``: stage 2, all slices jointly + routers.
    - ``loss_weighting``: ``"relative"`` divides each precision's block-output MSE by its RTN starting
      MSE (every precision counts equally, the 8-bit error is not drowned by the 4-bit one);
      ``"mean"`` averages the raw MSEs.
    - ``hinge_weight``: stage-2 penalty ``Σ_k relu(MSE_k / RTN_k - 1)`` — no precision should end worse
      than its RTN start (the shared clipping favours low precisions otherwise).
    - ``guard``: after training a block, shrink the learned clipping toward 1 (RTN) in steps until
      every precision's block MSE is at most its RTN MSE.
    - ``holdout``: extra calibration windows (taken from the end of the calibration text, disjoint from
      the training windows) that are never trained on: each stage keeps the epoch with the lowest
      held-out objective, and the guard compares held-out MSEs. 0 trusts the training windows.
    - ``grad_dtype``: operand dtype of the backward matmuls (``"auto"``: bfloat16 where the CPU has native
      bfloat16, else float32; the forward and every reported loss stay float32).
    - ``error_feedback``: after the clipping is learned, GPTQ-style error feedback picks each weight's code
      on that grid (:mod:`.error_feedback`), with precision weights ``λ_k = 4^(p·(c_k - c_1))`` for each
      exponent p listed (1: every precision relative to its RTN error; smaller p favours the base slice);
      per block the guard windows keep the best of them, or none. Empty (the dataclass and ``fast``
      default): codes by rounding (LWC alone). ``medium`` and ``paper`` try (0.75, 1): on ``medium`` it
      cut 4-bit perplexity 2.3 % / 4.3 % (in / out of domain) for ≈ 85 s per block instead of 53
      (docs/calibration.md).
    - ``let``: an equivalent transformation (OmniQuant's LET: per-channel scales between each norm or
      producer linear and its consumer linears, :mod:`.let`), started activation-aware (AWQ's
      ``s ∝ mean|x|^α``, α searched per pair on the block loss), trained with the clipping at learning rate
      ``lr_let`` (default 0: kept at that start — learning them measured worse on the ``fast`` preset) and
      folded into the norms and producer rows after each block. On in ``medium`` and ``paper``: on
      ``medium`` it cut 4-bit perplexity 5.1 % / 7.9 % (in / out of domain), 6-bit 0.3 % / 1.2 %.
    - ``budget_weight``: λ of the router's bit-budget penalty ``λ·(bits - b_1)/(B - b_1)``, against the
      routed output MSE relative to the base slice's RTN MSE.
    - ``tau_schedule``: how the runtime τ sets each gate's threshold in the artifact
      (:func:`~mbq_onnx.model.routing.gate_taus`); ``tau_grid``: the τ values of its τ → bits table (empty:
      :func:`default_tau_grid` for the slice count and schedule).
    """

    samples: int = 128
    seqlen: int = 2048
    holdout: int = 0
    grad_dtype: str = "auto"
    base_epochs: int = 1
    epochs: int = 4
    batch_size: int = 1
    lr_lwc: float = 5e-3
    lr_router: float = 5e-3
    weight_decay: float = 0.0
    router: str = "linear"
    router_hidden: int = 16
    train_tau: float = 0.5
    budget_weight: float = 0.5
    loss_weighting: str = "relative"
    hinge_weight: float = 1.0
    guard: bool = True
    tau_schedule: str = DEFAULT_TAU_SCHEDULE
    tau_grid: tuple[float, ...] = ()
    error_feedback: tuple[float, ...] = ()
    let: bool = False
    lr_let: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "seqlen", "batch_size", "router_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seqlen < 2:
            raise ValueError(f"seqlen must be >= 2, got {self.seqlen}")
        if self.grad_dtype not in GRAD_DTYPES:
            raise ValueError(f"grad_dtype {self.grad_dtype!r}: choose one of {list(GRAD_DTYPES)}")
        if self.lr_let < 0:
            raise ValueError(f"lr_let must be >= 0, got {self.lr_let}")
        if self.holdout < 0:
            raise ValueError(f"holdout must be >= 0, got {self.holdout}")
        if self.base_epochs < 0 or self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got base_epochs={self.base_epochs} epochs={self.epochs}")
        if self.router not in ROUTER_GRANULARITIES:
            raise ValueError(f"router {self.router!r}: choose one of {list(ROUTER_GRANULARITIES)}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting {self.loss_weighting!r}: choose one of {list(LOSS_WEIGHTINGS)}")
        object.__setattr__(self, "error_feedback", tuple(float(p) for p in self.error_feedback))
        if any(not 0 <= p <= 2 for p in self.error_feedback):
            raise ValueError(
                f"error_feedback exponents must lie within [0, 2], got {list(self.error_feedback)}"
            )
        object.__setattr__(self, "tau_grid", tuple(float(t) for t in self.tau_grid))
        if not 0 < self.train_tau < 1 or any(not 0 < t < 1 for t in self.tau_grid):
            raise ValueError("train_tau and every tau_grid value must lie strictly between 0 and 1")
        check_tau_schedule(self.tau_schedule)

    def taus_for(self, num_slices: int) -> tuple[float, ...]:
        """The τ values of the τ → bits table for ``num_slices`` slices."""
        return self.tau_grid or default_tau_grid(num_slices, self.tau_schedule)

    def with_overrides(self, **kwargs: Any) -> CalibConfig:
        """A copy with the given non-``None`` fields replaced."""
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tau_grid"] = list(self.tau_grid)
        d["error_feedback"] = list(self.error_feedback)
        return d


PRESETS: dict[str, CalibConfig] = {
    # a small smoke-level calibration: minutes on 2 idle CPU cores for the embedded 135M model
    "fast": CalibConfig(
        samples=16, seqlen=256, base_epochs=1, epochs=2, batch_size=2, lr_lwc=1e-2, holdout=4
    ),
    # 8x the fast preset's training tokens in one joint epoch, the equivalent transformation, error feedback
    # on the learned grid: 62 min on 2 cores for the embedded model (43 without LET, 36 without either)
    "medium": CalibConfig(
        samples=128,
        seqlen=256,
        base_epochs=1,
        epochs=1,
        batch_size=4,
        lr_lwc=1e-2,
        holdout=8,
        error_feedback=(0.75, 1.0),
        let=True,
    ),
    # the paper's setting: 128 samples x 2048 tokens (hours on a CPU)
    "paper": CalibConfig(
        samples=128,
        seqlen=2048,
        base_epochs=2,
        epochs=10,
        batch_size=1,
        holdout=8,
        error_feedback=(0.75, 1.0),
        let=True,
    ),
}
