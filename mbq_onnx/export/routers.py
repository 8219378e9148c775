"""Export-time router graph: every set of routers that reads the same tensor runs as one fused
``com.mbq::RouterCounts`` node (contract: ``custom_ops/README.md``, "RouterCounts").

Per-linear routers on one input (q/k/v of a LLaMA layer read the same normed hidden states, so do
gate/up) form a group; a per-block router is a group of one. :func:`grouped_routers` swaps the
model's routing for one :class:`GroupedRouter` per group while the exporter traces, and each
group becomes one ``mbq::router_counts`` call, translated to one ``RouterCounts`` node (then a
``Gather`` per member). Per row ``x [K]`` the op computes::

    xp = [x, pad];  xn = xp / ‖xp‖;  h = silu(xn @ W1 + B1);  logits = (h @ W2 + B2) as [members, S+1]
    count_m = first index j with not (logits[m, j] > thresholds[j])   (0 if there is none)

(``combine=1`` would return the max over members; the exporter uses ``combine=0``). This is the
model's maths (``SliceRouter`` + ``slice_counts`` + ``apply_force``), rearranged so that one small
node evaluates a whole group (ORT's per-node cost dominated the former ~12-op standard subgraph):

- RMS norm: ``x·rsqrt(mean(x²)+eps) = √K · [x, c] / ‖[x, c]‖`` with ``c = √(K·eps)`` appended
  (``pad``); ``√K`` is folded into fc1, whose extra input row is zero.
- fc1 of the members concatenated, fc2 block-diagonal: one product each for the group.
- Counting: per member the logits get a ``+inf`` column in front and a ``-inf`` column behind (fc2
  bias, zero weights); with the thresholds ``[0, t, …, t, 0]`` the comparison gives
  ``[1, on_1, …, on_{S-1}, 0]`` and its first zero (first minimal index, as ``ArgMin``) is the count.
- ``force_slices`` is folded into the thresholds, computed once per graph: ``-inf`` (on) for the
  first ``k-1`` residual slices and ``+inf`` (off) for the rest.

Decisions are those of the model up to float rounding (the same category as ORT's and torch's
float32 products summing in different orders); forced counts differ only for non-finite router logits.
The NumPy reference of the op is ``mbq_onnx.quant.reference.router_counts``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..model.linear import MixedBitLinear
from ..model.routing import (
    DEFAULT_TAU_SCHEDULE,
    RoutingContext,
    SliceRouter,
    attach_block_router,
    gate_taus,
)
from ..model.surgery import decoder_layers

OP_NAME = "mbq::router_counts"


@torch.library.custom_op(OP_NAME, mutates_args=())
def router_counts(
    x: Tensor,
    thresholds: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    pad: float,
    members: int,
    combine: int = 0,
) -> Tensor:
    """Slice counts of ``members`` routers on ``x [..., K]``: int64 ``[..., members]`` (``[...]`` for one), or
    with ``combine=1`` ``[...]``, the max over members (one decision for linears fused into one matmul).

    ``w1 [K+1, Σh]``, ``b1 [Σh]``, ``w2 [Σh, members·(S+1)]``, ``b2 [members·(S+1)]`` and ``pad`` as built by
    :class:`GroupedRouter`; ``thresholds [S+1]`` from :func:`routing_thresholds`. Same semantics as the ONNX
    op ``com.mbq::RouterCounts`` it is exported as.
    """
    if combine not in (0, 1):
        raise ValueError(f"router_counts: combine is {combine!r}, expected 0 or 1")
    xp = nn.functional.pad(x.float(), (0, 1), value=pad)
    xn = xp / torch.linalg.vector_norm(xp, dim=-1, keepdim=True)
    logits = nn.functional.silu(xn @ w1 + b1) @ w2 + b2
    counts = (logits.unflatten(-1, (members, -1)) > thresholds).to(torch.uint8).argmin(-1)
    if combine:
        return counts.amax(-1)
    return counts if members > 1 else counts.squeeze(-1)


@router_counts.register_fake
def _(x, thresholds, w1, b1, w2, b2, pad, members, combine=0):
    shape = (*x.shape[:-1], members) if members > 1 and not combine else x.shape[:-1]
    return x.new_empty(shape, dtype=torch.int64)


def routing_thresholds(
    tau: float | Tensor, force: int | Tensor | None, num_slices: int, schedule: str = DEFAULT_TAU_SCHEDULE
) -> Tensor:
    """``[0, t_1, …, t_{S-1}, 0]`` float32: ``t_j = logit(tau_j)`` with ``tau_j`` the gate thresholds of the
    τ schedule (:func:`~mbq_onnx.model.routing.gate_taus`), or with ``force = k > 0`` ``-inf`` for ``j < k``
    and ``+inf`` otherwise (``k`` slices, clamped to 1..S as in ``apply_force``)."""
    tau_j = gate_taus(tau, num_slices, schedule)
    thr = torch.log(tau_j) - torch.log(1 - tau_j)  # as in slice_counts
    if force is not None:
        force_t = torch.as_tensor(force, dtype=torch.int64)
        j = torch.arange(1, num_slices)
        inf = torch.full((num_slices - 1,), math.inf)
        thr = torch.where(force_t > 0, torch.where(j < force_t, -inf, inf), thr)
    zero = torch.zeros(1)
    return torch.cat([zero, thr, zero])


class GroupedRouter(nn.Module):
    """The routers of one group as one computation (see the module docstring): buffers ``w1``, ``b1``,
    ``w2``, ``b2``; ``forward(x, thresholds)`` → counts ``[..., R]`` (``[...]`` for one router)."""

    def __init__(self, routers: Sequence[SliceRouter]) -> None:
        super().__init__()
        first = routers[0]
        k, s, eps = first.in_features, first.num_slices, first.eps
        if any((r.in_features, r.num_slices, r.eps) != (k, s, eps) for r in routers):
            raise ValueError("grouped routers need the same in_features, num_slices and eps")
        self.members, self.num_slices = len(routers), s
        self.pad = math.sqrt(k * eps)
        hidden = [r.fc1.out_features for r in routers]
        w1 = torch.cat([r.fc1.weight.detach().double() for r in routers]).T * math.sqrt(k)
        w2 = torch.zeros(sum(hidden), self.members * (s + 1), dtype=torch.float64)
        b2 = torch.zeros(self.members, s + 1, dtype=torch.float64)
        row = 0
        for i, (r, h) in enumerate(zip(routers, hidden, strict=True)):
            w2[row : row + h, i * (s + 1) + 1 : i * (s + 1) + s] = r.fc2.weight.detach().double().T
            b2[i, 1:s] = r.fc2.bias.detach().double()
            row += h
        b2[:, 0], b2[:, s] = math.inf, -math.inf
        self.register_buffer("w1", nn.functional.pad(w1, (0, 0, 0, 1)).float())
        self.register_buffer("b1", torch.cat([r.fc1.bias.detach() for r in routers]).float())
        self.register_buffer("w2", w2.float())
        self.register_buffer("b2", b2.flatten().float())
        self.to(first.fc1.weight.device)

    def forward(self, x: Tensor, thresholds: Tensor) -> Tensor:
        return torch.ops.mbq.router_counts(
            x, thresholds, self.w1, self.b1, self.w2, self.b2, self.pad, self.members
        )


def router_groups(model: nn.Module, ctx: RoutingContext) -> list[list[str]]:
    """Names of the routed :class:`MixedBitLinear` layers, grouped by the tensor object they read, in call
    order (one eager forward of a two-token input with every slice count forced to 1)."""
    routed = {
        name: m for name, m in model.named_modules() if isinstance(m, MixedBitLinear) and m.router is not None
    }
    if not routed:
        return []
    seen: list[tuple[str, Tensor]] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, args[0])))
        for name, m in routed.items()
    ]
    saved = (ctx.force_slices, ctx.record)
    ctx.force_slices, ctx.record = 1, False
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 2, dtype=torch.int64, device=device), use_cache=False)
    finally:
        ctx.force_slices, ctx.record = saved
        for h in handles:
            h.remove()
    groups: list[tuple[Tensor, list[str]]] = []
    for name, x in seen:
        group = next((g for t, g in groups if t is x), None)
        if group is None:
            groups.append((x, [name]))
        elif name not in group:
            group.append(name)
    return [g for _, g in groups]


@dataclass
class _Group:
    """One group at trace time: its module and the last input it computed counts for."""

    module: GroupedRouter
    last: tuple[Any, ...] = ()
    counts: Tensor | None = None

    def counts_for(self, x: Tensor, state: _State) -> Tensor:
        thresholds = state.thresholds(self.module.num_slices)
        if not (self.last and self.last[0] is x and self.last[1] is thresholds):
            self.counts, self.last = self.module(x, thresholds), (x, thresholds)
            state.computed += 1
        return self.counts


@dataclass
class _State:
    ctx: RoutingContext
    combine_max: bool = False
    computed: int = 0
    cache: tuple[Any, ...] = ()
    undo: list[Any] = field(default_factory=list)

    def thresholds(self, num_slices: int) -> Tensor:
        """One threshold vector per (tau, force_slices) of the forward (one set of graph nodes)."""
        tau, force = self.ctx.tau, self.ctx.force_slices
        if not (self.cache and self.cache[0] is tau and self.cache[1] is force):
            self.cache = (tau, force, routing_thresholds(tau, force, num_slices, self.ctx.tau_schedule))
        return self.cache[2]

    def record(self, counts: Tensor) -> None:
        if self.ctx.record:
            self.ctx.records.append(counts.detach())


def _attach(parent: nn.Module, name: str, module: nn.Module, undo: list) -> None:
    if hasattr(parent, name):
        raise RuntimeError(f"{type(parent).__name__} already has an attribute {name!r}")
    parent.add_module(name, module)
    undo.append(lambda: delattr(parent, name))


def _group_linears(model: nn.Module, names: list[str], state: _State) -> None:
    linears = [model.get_submodule(n) for n in names]
    group = _Group(GroupedRouter([m.router for m in linears]))
    parent = ".".join(names[0].split(".")[:-1])
    if any(".".join(n.split(".")[:-1]) != parent for n in names):
        parent = ".".join(names[0].split(".")[:-2])  # e.g. the decoder layer
    leaves = [n[len(parent) + 1 :].replace(".", "_").removesuffix("_proj") for n in names]
    _attach(model.get_submodule(parent), "router_" + "_".join(leaves), group.module, state.undo)
    for index, (name, m) in enumerate(zip(names, linears, strict=True)):
        router, block_key = m.router, m.block_key

        def hook(mod: nn.Module, args: tuple, name: str = name, index: int = index) -> None:
            counts = group.counts_for(args[0], state)
            if group.module.members > 1:
                counts = counts.amax(-1) if state.combine_max else counts[..., index]
            state.ctx.block_counts[name] = counts  # MixedBitLinear reads its counts from here
            state.record(counts)

        m.router, m.block_key = None, name
        handle = m.register_forward_pre_hook(hook)
        state.undo.append(
            lambda m=m, router=router, block_key=block_key, handle=handle: (
                handle.remove(),
                setattr(m, "router", router),
                setattr(m, "block_key", block_key),
            )
        )


def _group_block(layer: nn.Module, state: _State) -> None:
    keys = {m.block_key for m in layer.modules() if isinstance(m, MixedBitLinear)}
    if len(keys) != 1 or None in keys:
        raise RuntimeError(f"a block router's layer needs one block key, found {sorted(map(str, keys))}")
    key, router = keys.pop(), layer.router
    group = _Group(GroupedRouter([router]))
    _attach(layer, "router_block", group.module, state.undo)

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        counts = group.counts_for(args[0] if args else kwargs["hidden_states"], state)
        state.ctx.block_counts[key] = counts
        state.record(counts)

    layer._mbq_router_hook.remove()
    layer.router = None
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    state.undo.append(lambda: (handle.remove(), attach_block_router(layer, key, router, state.ctx)))


@contextmanager
def grouped_routers(model: nn.Module, ctx: RoutingContext, combine_max: bool = False) -> Iterator[_State]:
    """Within the block, ``model`` routes through :class:`GroupedRouter` modules (attached beside the
    routed layers as ``router_<members>``, or ``router_block`` on a decoder layer); the original routers
    are detached and come back on exit. Yields the state; ``state.computed`` counts group evaluations.

    ``combine_max``: every member of a group uses the group's largest count — one decision per shared
    input, as the lean graph's fused q/k/v and gate/up MixedBitMatMuls need (:mod:`.lean`)."""
    state = _State(ctx, combine_max)
    try:
        if getattr(model, "mbq_granularity", "linear") == "block":
            for layer in decoder_layers(model):
                if isinstance(getattr(layer, "router", None), SliceRouter):
                    _group_block(layer, state)
        else:
            for names in router_groups(model, ctx):
                _group_linears(model, names, state)
        yield state
    finally:
        for undo in reversed(state.undo):
            undo()
        ctx.block_counts.clear()
