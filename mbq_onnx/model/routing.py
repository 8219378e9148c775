"""Token routers: how many residual slices each token uses.

A :class:`SliceRouter` maps a token's input activation to one logit per residual slice (its *gate*);
slice j+1 is on when ``sigmoid(logit_j) > tau_j`` and all earlier residual slices are on (the base
slice is always on). The per-gate thresholds ``tau_j`` come from the one runtime knob ``tau`` by the
artifact's *τ schedule* (:func:`gate_taus`): ``"bracketed"`` routes between two neighbouring slice
counts at a time, ``"shared"`` (artifacts written before the schedule existed) gives every gate
``tau``. Higher ``tau`` means fewer slices. Granularity is per linear (each
:class:`~mbq_onnx.model.linear.MixedBitLinear` owns a router on its own input) or per block
(one router per decoder layer on the layer's input hidden states, shared by all linears of
that layer, installed by :func:`attach_block_router`).

Everything on the tensor path is branch-free so ``torch.export`` (non-strict) can trace it with
``tau`` and ``force_slices`` as graph inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

#: How the runtime threshold τ becomes one threshold per gate (:func:`gate_taus`).
TAU_SCHEDULES = ("bracketed", "shared")
#: The schedule of new calibrations; artifacts without one in their config use ``"shared"``.
DEFAULT_TAU_SCHEDULE = "bracketed"

#: Default router width. Cost per token: ``K·h + h·(S-1)`` MACs (plus an RMS normalisation of
#: the K inputs) against ``K·N`` for the linear it steers, i.e. about ``h/N`` of the linear:
#: 2.8 % for a 576x576 projection, 8 % for a 576->192 GQA key/value projection with h = 16.
DEFAULT_HIDDEN = 16


@dataclass
class RoutingContext:
    """Runtime routing state shared by all mixed-bit linears of one model.

    - ``tau``: threshold (float or 0-d tensor); higher → fewer slices.
    - ``tau_schedule``: how ``tau`` sets each gate's threshold (:data:`TAU_SCHEDULES`, :func:`gate_taus`).
    - ``force_slices``: ``None``/``0`` lets routers decide; ``k > 0`` forces ``k`` slices (clamped to
      ``1..S``); may be a 0-d int64 tensor (a graph input in export: ``0`` means routers decide).
    - ``record``: when on, each routed call appends its int64 slice counts to ``records``
      (per linear, or per block for block routers) — the statistics behind average bits.
    - ``block_counts``: slice counts the block routers computed for the current forward, by layer key.
    - ``random_counts``: a :class:`RandomCounts` policy replaces the routers (eager evaluation only: the
      random-routing baseline at a given average precision); a positive ``force_slices`` still wins.
    - ``oracle_counts``: an :class:`OracleCounts` policy replaces the routers of every mixed-bit linear
      (eager evaluation only: the oracle-routing reference at a given average precision).
    """

    tau: float | Tensor = 0.5
    tau_schedule: str = DEFAULT_TAU_SCHEDULE
    force_slices: int | Tensor | None = None
    record: bool = False
    records: list[Tensor] = field(default_factory=list)
    block_counts: dict[str, Tensor] = field(default_factory=dict)
    random_counts: RandomCounts | None = None
    oracle_counts: OracleCounts | None = None

    def __post_init__(self) -> None:
        check_tau_schedule(self.tau_schedule)

    def reset_records(self) -> None:
        self.records.clear()


class RandomCounts:
    """Random per-token slice counts: ``high`` with probability ``p_high``, else ``low`` — drawn independently
    for every token of every routed call from a seeded generator (:meth:`reseed` restarts the stream).

    :meth:`for_bits` picks the two counts bracketing a target average precision and the probability that
    makes the expected bits per token equal to it — the same for every routed call, so the average per
    weight read equals it too.
    """

    def __init__(self, low: int, high: int, p_high: float, seed: int = 0):
        if not 1 <= low <= high:
            raise ValueError(f"need 1 <= low <= high slice counts, got low={low} high={high}")
        if not 0.0 <= p_high <= 1.0:
            raise ValueError(f"p_high {p_high} must lie in [0, 1]")
        self.low, self.high, self.p_high, self.seed = int(low), int(high), float(p_high), int(seed)
        self.reseed()

    @classmethod
    def for_bits(cls, bits: float, cum_bits: tuple[int, ...] | list[int], seed: int = 0) -> RandomCounts:
        """The policy with expected bits per token ``bits``; ``cum_bits``: the bits at 1..S slices."""
        cum = [float(b) for b in cum_bits]
        if not cum[0] - 1e-9 <= bits <= cum[-1] + 1e-9:
            raise ValueError(f"average bits {bits} outside the slice range [{cum[0]}, {cum[-1]}]")
        bits = min(max(bits, cum[0]), cum[-1])
        for k in range(1, len(cum)):
            if bits <= cum[k]:
                p = (bits - cum[k - 1]) / (cum[k] - cum[k - 1])
                return cls(k, k + 1, p, seed)
        return cls(len(cum), len(cum), 0.0, seed)

    @property
    def expected_count(self) -> float:
        return self.low + self.p_high * (self.high - self.low)

    def reseed(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def sample(self, shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
        """int64 counts of ``shape``."""
        high = torch.rand(tuple(shape), generator=self.generator) < self.p_high
        return torch.where(high, self.high, self.low).to(device=device, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"RandomCounts(low={self.low}, high={self.high}, p_high={self.p_high:.4f}, seed={self.seed})"


class OracleCounts(RandomCounts):
    """Oracle per-token slice counts at the average precision of a :class:`RandomCounts` policy: in every
    routed call, the ``round(p_high · tokens)`` tokens whose output the extra slice changes most,
    ``‖(W_high − W_low)·x‖²``, get ``high``, the others ``low``.

    It reads the weights and ranks the tokens of the whole call (not causal): an upper reference for what a
    router choosing by a linear's own output error could reach at those bits, not a deployable policy.
    """

    def counts(self, x: Tensor, increment: Tensor) -> Tensor:
        """int64 counts ``x.shape[:-1]``; ``increment``: ``W_high − W_low`` ``[N, K]``."""
        shape = x.shape[:-1]
        n = shape.numel()
        n_high = round(self.p_high * n) if self.high > self.low else 0
        counts = torch.full((n,), self.low, dtype=torch.int64, device=x.device)
        if n_high:
            gain = (x.reshape(n, -1).float() @ increment.float().T).pow(2).sum(-1)
            counts[gain.topk(n_high).indices] = self.high
        return counts.reshape(shape)

    def __repr__(self) -> str:
        return f"OracleCounts(low={self.low}, high={self.high}, p_high={self.p_high:.4f})"


class SliceRouter(nn.Module):
    """Tiny MLP ``RMSNorm(x) → Linear(K, h) → SiLU → Linear(h, S-1)``: one logit per residual slice.

    The parameter-free RMS normalisation makes the router indifferent to the activation scale
    (residual-stream inputs of per-block routers are large).
    """

    def __init__(self, in_features: int, num_slices: int, hidden: int = DEFAULT_HIDDEN, eps: float = 1e-6):
        super().__init__()
        if num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        self.in_features, self.num_slices, self.hidden, self.eps = in_features, num_slices, hidden, eps
        self.fc1 = nn.Linear(in_features, hidden)
        with (
            warnings.catch_warnings()
        ):  # one slice: zero logits (nothing to route), torch warns on empty init
            warnings.simplefilter("ignore", UserWarning)
            self.fc2 = nn.Linear(hidden, num_slices - 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.fc2(nn.functional.silu(self.fc1(x)))

    def macs_per_token(self) -> int:
        return self.in_features * self.hidden + self.hidden * (self.num_slices - 1)


def slice_gates(logits: Tensor, tau: float | Tensor, hard: bool = True) -> Tensor:
    """Cumulative on-gates ``[..., S-1]`` of the residual slices, for training.

    ``hard``: forward ``Π_{i≤j} [sigmoid(logit_i) > tau]`` with the gradient of the soft
    ``Π_{i≤j} sigmoid(logit_i - logit(tau))`` (straight-through); otherwise the soft gates.
    """
    tau_t = torch.as_tensor(tau, dtype=logits.dtype, device=logits.device).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid(logits - torch.logit(tau_t))
    if hard:
        soft = soft + ((torch.sigmoid(logits) > tau_t).to(logits.dtype) - soft).detach()
    return torch.cumprod(soft, dim=-1)


def check_tau_schedule(schedule: str) -> str:
    if schedule not in TAU_SCHEDULES:
        raise ValueError(f"tau schedule {schedule!r}: expected one of {list(TAU_SCHEDULES)}")
    return schedule


def gate_taus(tau: float | Tensor, num_slices: int, schedule: str = DEFAULT_TAU_SCHEDULE) -> Tensor:
    """Each of the ``S-1`` gates' threshold (float32 ``[S-1]``, in ``[0, 1]``) at runtime threshold ``tau``.

    ``"bracketed"``: ``tau_j = clamp(j - (S-1)·(1 - tau), 0, 1)`` for gate j = 1..S-1 — τ in
    ``[1 - j/(S-1), 1 - (j-1)/(S-1)]`` routes only gate j (slice count j or j+1), the gates before it are
    on (``tau_j = 0``) and those after it off (``1``). Every token then reads one of the two slice counts
    bracketing the average, which the convex quality-vs-bits curve rewards (spreading tokens over
    three counts at the same average costs quality). Continuous and monotone in τ; ``tau = 1, 1 - 1/(S-1),
    …, 0`` are the uniform 1, 2, …, S slices. ``"shared"``: every gate at ``tau``. Equal for ``S = 2``.
    Traceable: ``tau`` may be a 0-d tensor (a graph input)."""
    tau_t = torch.as_tensor(tau, dtype=torch.float32)
    gates = num_slices - 1
    if check_tau_schedule(schedule) == "shared":
        return tau_t.expand(gates)
    j = torch.arange(1, num_slices, dtype=torch.float32)
    return torch.clamp(j - gates * (1 - tau_t), 0.0, 1.0)


def slice_counts(logits: Tensor, tau: float | Tensor) -> Tensor:
    """``1 + Σ_j Π_{i≤j} [sigmoid(logit_i) > tau_i]`` as int64 ``logits.shape[:-1]`` (higher τ → fewer);
    ``tau``: one threshold for every gate, or one per gate ``[S-1]`` (:func:`gate_taus`)."""
    # ``sigmoid(l) > tau`` as ``l > logit(tau)``: exact at tau = 0 (-inf: all slices) and tau = 1
    # (+inf: base only), where a float sigmoid that underflows to 0 would disagree between runtimes.
    tau_t = torch.as_tensor(tau, dtype=torch.float32, device=logits.device)
    on = (logits.float() > torch.log(tau_t) - torch.log(1 - tau_t)).to(torch.uint8)
    # 1 + the index of the first residual slice that is off (an off slice appended: all on → S). argmin
    # returns the first minimal index (torch and ONNX ArgMin alike): fewer ops than cumprod + sum.
    return 1 + nn.functional.pad(on, (0, 1)).argmin(-1)


def apply_force(counts: Tensor, force: int | Tensor | None, num_slices: int) -> Tensor:
    """Override ``counts`` by ``force`` where ``force > 0`` (clamped to 1..S); branch-free for tensors."""
    if force is None:
        return counts
    if isinstance(force, Tensor):
        forced = force.to(torch.int64).clamp(1, num_slices).expand_as(counts)
        return torch.where(force > 0, forced, counts)
    return torch.full_like(counts, min(max(int(force), 1), num_slices)) if force > 0 else counts


def full_counts(x: Tensor, num_slices: int) -> Tensor:
    """Counts ``x.shape[:-1]`` all equal to ``num_slices`` (traceable with symbolic shapes)."""
    return torch.ones_like(x[..., 0], dtype=torch.int64) * num_slices


def routed_counts(
    x: Tensor, router: SliceRouter | None, ctx: RoutingContext | None, num_slices: int
) -> Tensor:
    """Slice counts for input ``x [..., K]``: a positive Python ``force_slices`` wins without running the
    router; else ``ctx.random_counts`` when set, else the router at ``ctx.tau`` under ``ctx.tau_schedule``
    (all slices without a router), then a tensor ``force_slices``."""
    force = ctx.force_slices if ctx is not None else None
    if isinstance(force, int) and force > 0:
        return apply_force(full_counts(x, num_slices), force, num_slices)
    if ctx is not None and ctx.random_counts is not None:
        counts = ctx.random_counts.sample(x.shape[:-1], x.device).clamp(1, num_slices)
        return apply_force(counts, force, num_slices)
    if router is None or ctx is None:
        counts = full_counts(x, num_slices)
    else:
        counts = slice_counts(router(x), gate_taus(ctx.tau, num_slices, ctx.tau_schedule))
    return apply_force(counts, force, num_slices)


def attach_block_router(layer: nn.Module, key: str, router: SliceRouter, ctx: RoutingContext) -> None:
    """Install ``router`` as ``layer.router`` and a forward pre-hook that stores the counts of the layer's
    input hidden states in ``ctx.block_counts[key]`` (and in ``ctx.records`` when recording)."""
    layer.router = router

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        counts = routed_counts(hidden, module.router, ctx, router.num_slices)
        ctx.block_counts[key] = counts
        if ctx.record:
            ctx.records.append(counts.detach())

    layer._mbq_router_hook = layer.register_forward_pre_hook(hook, with_kwargs=True)
