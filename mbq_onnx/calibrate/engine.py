"""One calibration for all precisions, block by block (OmniQuant-style), with router training.

For each decoder block in turn: the float block's output on the float input stream is the
target; each precision k keeps its own input stream (the outputs of the already-calibrated
blocks at k slices), so errors accumulate as they will at inference. Stage 1 trains the
clipping for the base slice alone; stage 2 trains it for all precisions jointly (loss averaged
over precisions) together with the routers (straight-through hard gates at ``train_tau`` and a
bit-budget penalty). Only one block's activations and parameters are trained at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..model.routing import DEFAULT_TAU_SCHEDULE, SliceRouter, gate_taus, slice_counts, slice_gates
from ..model.surgery import (
    capture_layer_inputs,
    decoder_layers,
    decoder_layers_name,
    layer_output,
    set_submodule,
)
from ..quant import residual
from ..quant.spec import QuantSpec
from ..tau_table import TAU_TABLE_BITS
from .config import CalibConfig
from .error_feedback import error_feedback_weight
from .let import ALPHA_GRID, EquivalentScale, LinearLet, block_scales, fold_into_norm
from .matmul import resolve_grad_dtype
from .trainable import ROUTED, CalibLinear, Mode


@dataclass
class CalibrationResult:
    """Everything a calibration produces; :func:`~mbq_onnx.calibrate.write_artifact` stores it.

    ``params[name] = (scale, zero)`` (each ``[N, G]``) per decoder linear; ``routers`` by linear name
    (granularity ``"linear"``) or block name such as ``model.layers.0`` (``"block"``); empty for ``"none"``.
    ``weights[name]``: the weight a linear's codes are taken from where it is not the model's own (error
    feedback, :mod:`.error_feedback`; LET, :mod:`.let`); see :meth:`weight_of`. ``float_params``: other
    float tensors by state-dict name that replace the model's (norm weights a LET scale was folded into).
    """

    spec: QuantSpec
    params: dict[str, tuple[Tensor, Tensor]]
    routers: dict[str, SliceRouter]
    granularity: str
    router_hidden: int
    tau_table: list[dict[str, float]]
    report: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Tensor] = field(default_factory=dict)
    tau_schedule: str = DEFAULT_TAU_SCHEDULE
    float_params: dict[str, Tensor] = field(default_factory=dict)

    def weight_of(self, name: str, model: nn.Module) -> Tensor:
        """The float weight ``[N, K]`` whose codes (on ``params[name]``'s grid) linear ``name`` stores."""
        if name in self.weights:
            return self.weights[name]
        return model.get_submodule(name).weight.detach().float()


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, blocks)`` of a transformers causal LM's decoder layers."""
    return decoder_layers_name(model), decoder_layers(model)


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of one block, by name relative to the block."""
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def capture_block_inputs(model: nn.Module, input_ids: Tensor) -> tuple[Tensor, list[dict[str, Any]]]:
    """Hidden states entering the first block ``[n, L, H]`` and each block's keyword arguments (captured at
    batch size 1, they broadcast over a batch; :func:`mbq_onnx.model.surgery.capture_layer_inputs`)."""
    hidden, kwargs = capture_layer_inputs(model, [row[None] for row in input_ids])
    return torch.cat(hidden), kwargs[0]


@torch.no_grad()
def _map_batches(block: nn.Module, x: Tensor, kw: dict[str, Any], batch: int) -> Tensor:
    return torch.cat([layer_output(block, x[i : i + batch], kw) for i in range(0, x.shape[0], batch)])


class _CountStats:
    """Slice counts and bits summed per τ of a grid over routed calls (the τ → average-bits table).

    Every routed call (a linear with its router, or a block router) counts once per token, as in
    the :class:`~mbq_onnx.model.routing.RoutingContext` records.
    """

    def __init__(self, tau_grid: Sequence[float], spec: QuantSpec, schedule: str):
        self.tau = torch.tensor(list(tau_grid), dtype=torch.float32)
        self.gate_taus = [gate_taus(t, spec.num_slices, schedule) for t in self.tau]
        self.bits_of = torch.tensor((0, *spec.cum_bits), dtype=torch.float64)
        self.slices = torch.zeros(len(tau_grid), dtype=torch.float64)
        self.bits = torch.zeros(len(tau_grid), dtype=torch.float64)
        self.tokens = 0

    @torch.no_grad()
    def add(self, logits: Tensor) -> None:
        flat = logits.reshape(-1, logits.shape[-1])
        for i, t in enumerate(self.gate_taus):
            counts = slice_counts(flat, t)
            self.slices[i] += counts.double().sum()
            self.bits[i] += self.bits_of[counts].sum()
        self.tokens += flat.shape[0]

    def table(self) -> list[dict[str, float]]:
        if not self.tokens:
            return []
        return [
            {"tau": round(t, 4), "avg_slices": s / self.tokens, TAU_TABLE_BITS: b / self.tokens}
            for t, s, b in zip(self.tau.tolist(), self.slices.tolist(), self.bits.tolist(), strict=True)
        ]


class _BlockCalibrator:
    """Trains one block's clipping logits and routers, then packs it."""

    def __init__(
        self,
        block: nn.Module,
        block_name: str,
        spec: QuantSpec,
        cfg: CalibConfig,
        precisions: list[int],
        train_routers: bool,
        kw: dict[str, Any],
    ):
        self.block, self.block_name, self.spec, self.cfg = block, block_name, spec, cfg
        self.precisions, self.kw = precisions, kw
        self.train_routers = train_routers
        self.originals = block_linears(block)
        self.wrapped: dict[str, CalibLinear] = {}
        per_linear = train_routers and cfg.router == "linear"
        grad_dtype = resolve_grad_dtype(cfg.grad_dtype)
        for name, linear in self.originals.items():
            router = None
            if per_linear:
                router = SliceRouter(linear.in_features, spec.num_slices, cfg.router_hidden)
            wrapped = CalibLinear(linear, spec, router, train_tau=cfg.train_tau, grad_dtype=grad_dtype)
            self.wrapped[name] = wrapped
            set_submodule(block, name, wrapped)
        self.block_router: SliceRouter | None = None
        self._hook = None
        if train_routers and cfg.router == "block":
            hidden = next(iter(self.originals.values())).in_features
            self.block_router = SliceRouter(hidden, spec.num_slices, cfg.router_hidden)
            self._hook = block.register_forward_pre_hook(self._block_gates, with_kwargs=True)
        self.stats: list[_CountStats] = []
        self.scales: list[EquivalentScale] = block_scales(block, self.originals) if cfg.let else []
        for scale in self.scales:
            for name in scale.consumers:
                self.wrapped[name].let = LinearLet(consumer=scale)
            if not scale.from_norm:
                own = self.wrapped[scale.producer].let
                self.wrapped[scale.producer].let = LinearLet(own.consumer if own else None, scale)
        self.float_weights = {n: lin.weight.detach().float() for n, lin in self.originals.items()}
        self.norm_originals: dict[str, dict[str, Tensor]] = {}

    # -- modes
    def _block_gates(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        mode = next(iter(self.wrapped.values())).mode
        chunks = mode if isinstance(mode, tuple) else (mode,)
        gates = None
        if chunks[-1] == ROUTED:  # the routed chunk is last (the whole batch in plain routed mode)
            routed_in = hidden[-(hidden.shape[0] // len(chunks)) :]
            gates = slice_gates(self.block_router(routed_in), self.cfg.train_tau, hard=True)
        elif self.stats and self.block_router is not None:
            top = max(range(len(chunks)), key=lambda i: int(chunks[i]))
            self.stats[0].add(self.block_router(hidden.chunk(len(chunks))[top]))
        for w in self.wrapped.values():
            w.block_gates = gates

    def set_mode(self, mode: Mode, use_lwc: bool = True) -> None:
        for w in self.wrapped.values():
            w.mode, w.use_lwc = mode, use_lwc

    def parameters(self, which: str) -> list[nn.Parameter]:
        if which == "lwc":
            return [p for w in self.wrapped.values() for p in (w.clip_lo, w.clip_hi)]
        if which == "let":
            return [s.log_s for s in self.scales]
        params = [p for w in self.wrapped.values() if w.router is not None for p in w.router.parameters()]
        if self.block_router is not None:
            params += list(self.block_router.parameters())
        return params

    def _forward_all(
        self, inputs: dict[int, Tensor], idx: Tensor, precs: Sequence[int], routed: bool, use_lwc: bool = True
    ) -> list[Tensor]:
        """Block outputs of windows ``idx`` at each slice count of ``precs`` (each on its own stream) and,
        with ``routed``, under the routers on the top stream: one stacked forward (:class:`CalibLinear`)."""
        chunks: tuple[int | str, ...] = (*precs, ROUTED) if routed else tuple(precs)
        xs = [inputs[k][idx] for k in precs]
        if routed:
            xs.append(inputs[max(self.precisions)][idx])
        self.set_mode(chunks, use_lwc)
        return list(layer_output(self.block, torch.cat(xs), self.kw).chunk(len(chunks)))

    # -- training
    def _objective(
        self, outs: list[Tensor], tgt: Tensor, precs: Sequence[int], routed: bool, stage2: bool
    ) -> Tensor:
        """The training loss of one batch from :meth:`_forward_all`'s outputs."""
        cfg, spec, rtn = self.cfg, self.spec, self.rtn
        loss = torch.zeros(())
        for k, out in zip(precs, outs, strict=False):
            mse = F.mse_loss(out, tgt)
            loss = loss + (self.weights[k] / self.norm if stage2 else self.weights[k]) * mse
            if cfg.hinge_weight and stage2:  # no precision worse than its RTN start
                loss = loss + cfg.hinge_weight * F.relu(mse / max(rtn[k], 1e-30) - 1.0)
        if routed:
            loss = loss + F.mse_loss(outs[-1], tgt) * self.base_ref
            bits = torch.stack([w.last_bits.mean() for w in self.wrapped.values()]).mean()
            frac = (bits - spec.slice_bits[0]) / (spec.total_bits - spec.slice_bits[0])
            loss = loss + cfg.budget_weight * frac
        return loss

    @torch.no_grad()
    def losses(
        self, inputs: dict[int, Tensor], target: Tensor, idx: Tensor, use_lwc: bool
    ) -> dict[int, float]:
        """Each precision's block-output MSE over windows ``idx``."""
        total = dict.fromkeys(self.precisions, 0.0)
        for i in range(0, len(idx), self.cfg.batch_size):
            part = idx[i : i + self.cfg.batch_size]
            outs = self._forward_all(inputs, part, self.precisions, routed=False, use_lwc=use_lwc)
            for k, out in zip(self.precisions, outs, strict=True):
                total[k] += F.mse_loss(out, target[part], reduction="sum").item()
        self.set_mode(None)
        n = len(idx) * target[0].numel()
        return {k: v / n for k, v in total.items()}

    @torch.no_grad()
    def _heldout_objective(
        self, inputs: dict[int, Tensor], target: Tensor, idx: Tensor, stage: tuple
    ) -> float:
        _, _, precs, routed = stage
        total = 0.0
        for i in range(0, len(idx), self.cfg.batch_size):
            part = idx[i : i + self.cfg.batch_size]
            outs = self._forward_all(inputs, part, precs, routed)
            total += self._objective(outs, target[part], precs, routed, stage[0] == "stage2").item() * len(
                part
            )
        self.set_mode(None)
        return total / len(idx)

    def _trained(self) -> list[nn.Parameter]:
        return self.parameters("lwc") + self.parameters("let") + self.parameters("routers")

    def _snapshot(self) -> list[Tensor]:
        return [p.detach().clone() for p in self._trained()]

    @torch.no_grad()
    def _restore(self, state: list[Tensor]) -> None:
        for p, v in zip(self._trained(), state, strict=True):
            p.copy_(v)

    def train(
        self,
        inputs: dict[int, Tensor],
        target: Tensor,
        rtn: dict[int, float],
        generator: torch.Generator,
        train_idx: Tensor,
        held_idx: Tensor | None = None,
    ) -> dict[str, list[float]]:
        """Train on windows ``train_idx``; with ``held_idx``, keep each stage's parameters from the epoch
        (or its start) with the lowest objective on those held-out windows (early stopping)."""
        cfg = self.cfg
        self.rtn = rtn
        self.weights = {
            k: (1.0 / max(rtn[k], 1e-30) if cfg.loss_weighting == "relative" else 1.0)
            for k in self.precisions
        }
        self.norm = sum(self.weights.values())
        self.base_ref = 1.0 / max(rtn[min(self.precisions)], 1e-30)
        n = len(train_idx)
        history: dict[str, list[float]] = {"stage1": [], "stage2": []}
        stages = []
        if cfg.base_epochs and len(self.precisions) > 1 and 1 in self.precisions:
            stages.append(("stage1", cfg.base_epochs, [1], False))
        stages.append(("stage2", cfg.epochs, self.precisions, self.train_routers))
        for stage in stages:
            name, epochs, precs, routers = stage
            groups = [{"params": self.parameters("lwc"), "lr": cfg.lr_lwc}]
            if self.scales and cfg.lr_let:
                groups.append({"params": self.parameters("let"), "lr": cfg.lr_let})
            if routers:
                groups.append({"params": self.parameters("routers"), "lr": cfg.lr_router})
            opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
            steps_per_epoch = math.ceil(n / cfg.batch_size)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps_per_epoch))
            best = None
            if held_idx is not None and epochs:
                best = (self._heldout_objective(inputs, target, held_idx, stage), self._snapshot())
                history[f"{name}_heldout"] = [best[0]]
            for _ in range(epochs):
                order = train_idx[torch.randperm(n, generator=generator)]
                epoch_loss = 0.0
                for s in range(steps_per_epoch):
                    idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                    outs = self._forward_all(inputs, idx, precs, routers)
                    loss = self._objective(outs, target[idx], precs, routers, name == "stage2")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    epoch_loss += loss.item()
                history[name].append(epoch_loss / steps_per_epoch)
                if best is not None:
                    held = self._heldout_objective(inputs, target, held_idx, stage)
                    history[f"{name}_heldout"].append(held)
                    if held < best[0]:
                        best = (held, self._snapshot())
            if best is not None:
                self._restore(best[1])
        self.set_mode(None)
        return history

    @torch.no_grad()
    def guard(
        self,
        inputs: dict[int, Tensor],
        target: Tensor,
        idx: Tensor,
        rtn: dict[int, float],
        final: dict[int, float],
    ) -> tuple[dict[int, float], float]:
        """Pull the clipping back toward RTN (factor 1) until no precision's MSE on windows ``idx`` exceeds
        its RTN MSE there.

        Returns the losses and the kept fraction α of the learned clipping (1 = as trained, 0 = RTN). With
        LET, α = 0 still keeps the learned scales; if that fails too, the scales go back to 1 (plain RTN).
        """
        if all(final[k] <= rtn[k] for k in self.precisions):
            return final, 1.0
        learned = {
            n: (w.clip_lo.detach().clone(), w.clip_hi.detach().clone()) for n, w in self.wrapped.items()
        }
        for alpha in (0.75, 0.5, 0.25, 0.0):
            for n, w in self.wrapped.items():
                lo, hi = learned[n]
                w.clip_lo.copy_(1 - alpha * (1 - lo.clamp(max=1)))
                w.clip_hi.copy_(1 - alpha * (1 - hi.clamp(max=1)))
            final = self.losses(inputs, target, idx, use_lwc=True)
            if all(final[k] <= rtn[k] for k in self.precisions):
                return final, alpha
        if self.scales:
            self.unfold_let()
            final = self.losses(inputs, target, idx, use_lwc=True)
        return final, 0.0

    @torch.no_grad()
    def input_magnitudes(self, inputs: dict[int, Tensor], idx: Tensor) -> dict[str, Tensor]:
        """``Σ|x|`` per input channel of each LET scale's consumers (float weights, windows ``idx`` of the
        top precision's stream), by producer."""
        magnitude: dict[str, Tensor] = {}

        def hook(producer: str):
            def add(_module: nn.Module, args: tuple) -> None:
                x = args[0].abs().reshape(-1, args[0].shape[-1]).double().sum(0)
                magnitude[producer] = magnitude.get(producer, 0) + x

            return add

        first = {s.producer: self.wrapped[s.consumers[0]] for s in self.scales}
        handles = [w.register_forward_pre_hook(hook(p)) for p, w in first.items()]
        top = max(self.precisions)
        try:
            for i in range(0, len(idx), self.cfg.batch_size):
                part = idx[i : i + self.cfg.batch_size]
                self.set_mode(None)
                layer_output(self.block, inputs[top][part], self.kw)
        finally:
            for h in handles:
                h.remove()
        return magnitude

    @torch.no_grad()
    def init_let(self, inputs: dict[int, Tensor], target: Tensor, idx: Tensor) -> dict[str, float]:
        """Start each LET scale activation-aware: pair by pair, the α of :data:`~.let.ALPHA_GRID` with the
        lowest ``Σ_k MSE_k / MSE_k(no LET)`` over windows ``idx`` at the RTN grid among those that make no
        precision worse (as the guard will demand). Returns α by producer."""
        if not self.scales:
            return {}
        magnitude = self.input_magnitudes(inputs, idx)
        start = current = self.losses(inputs, target, idx, use_lwc=False)
        chosen = {}
        for scale in self.scales:
            best: tuple[float, float, dict[int, float]] = (math.inf, 0.0, current)
            for alpha in ALPHA_GRID:
                scale.set_activation_aware(magnitude[scale.producer], alpha)
                # α = 0 leaves this pair at s = 1: the losses of the pairs chosen so far, already measured
                got = current if alpha == 0.0 else self.losses(inputs, target, idx, use_lwc=False)
                if alpha == 0.0 or all(got[k] <= start[k] for k in got):
                    best = min(best, (_relative(got, start), alpha, got), key=lambda b: b[:2])
            scale.set_activation_aware(magnitude[scale.producer], best[1])
            chosen[scale.producer] = best[1]
            current = best[2]
        return chosen

    @torch.no_grad()
    def fold_let(self) -> dict[str, list[float]]:
        """Fold the LET scales into the block (once; a second call changes nothing): norm weights (kept
        until :meth:`restore`) and every linear's float weight. Returns each producer's ``[min, max]`` scale
        for the block report."""
        summary = {s.producer: [s.scale().min().item(), s.scale().max().item()] for s in self.scales}
        for scale in self.scales:
            if scale.from_norm and scale.producer not in self.norm_originals:
                norm = self.block.get_submodule(scale.producer)
                self.norm_originals[scale.producer] = fold_into_norm(norm, scale.scale())
        transformed = {n: w.transformed() for n, w in self.wrapped.items() if w.let is not None}
        for name, (weight, bias) in transformed.items():
            w = self.wrapped[name]
            w.let = None
            w.set_weight(weight, bias)
            self.float_weights[name] = w.weight.detach().clone()
        return summary

    @torch.no_grad()
    def unfold_let(self) -> None:
        """No transformation: the block's own norms and weights, every scale back to 1."""
        self._restore_norms()
        self.norm_originals.clear()
        for name, w in self.wrapped.items():
            own = self.originals[name]
            w.let = None
            w.set_weight(own.weight.detach().float(), None if own.bias is None else own.bias.detach().float())
            self.float_weights[name] = own.weight.detach().float()
        for scale in self.scales:
            scale.reset()

    # -- error feedback
    @torch.no_grad()
    def input_hessians(self, inputs: dict[int, Tensor], idx: Tensor) -> dict[str, list[Tensor]]:
        """``XᵀX`` of every linear's inputs, per precision (each on its own stream, at its slice count)."""
        k_in = {n: w.in_features for n, w in self.wrapped.items()}
        sums = {n: [torch.zeros(k, k, dtype=torch.float64) for _ in self.precisions] for n, k in k_in.items()}

        def hook(name: str):
            def add(_module: nn.Module, args: tuple) -> None:
                for p, x in enumerate(args[0].chunk(len(self.precisions))):
                    x = x.reshape(-1, x.shape[-1])
                    sums[name][p] += (x.T @ x).double()

            return add

        handles = [w.register_forward_pre_hook(hook(n)) for n, w in self.wrapped.items()]
        try:
            for i in range(0, len(idx), self.cfg.batch_size):
                self._forward_all(inputs, idx[i : i + self.cfg.batch_size], self.precisions, routed=False)
        finally:
            for h in handles:
                h.remove()
            self.set_mode(None)
        return {n: [h.float() for h in hs] for n, hs in sums.items()}

    @torch.no_grad()
    def error_feedback(self, hessians: dict[str, list[Tensor]], exponent: float) -> None:
        """Replace every linear's weight by its error-feedback weight on the current (learned) grid, with
        precision weights ``λ_k = 4^(exponent·(c_k - c_1))`` over the calibrated precisions."""
        spec = self.spec
        c1 = spec.bits_at(min(self.precisions))
        lam = [
            4.0 ** (exponent * (spec.bits_at(k) - c1)) if k in self.precisions else 0.0
            for k in range(1, spec.num_slices + 1)
        ]
        for name, w in self.wrapped.items():
            hs = hessians[name]  # per calibrated precision; an uncalibrated one (λ = 0) borrows the first
            per_k = [
                hs[self.precisions.index(k)] if k in self.precisions else hs[0]
                for k in range(1, len(lam) + 1)
            ]
            scale, zero = w.quant_params()
            w.weight.copy_(error_feedback_weight(self.float_weights[name], per_k, scale, zero, spec, lam))

    @torch.no_grad()
    def reset_weights(self) -> None:
        """Back to each linear's float weight (no error feedback; LET folded in where it was)."""
        for name, w in self.wrapped.items():
            w.weight.copy_(self.float_weights[name])

    # -- results
    @torch.no_grad()
    def propagate(self, inputs: dict[int, Tensor], stats: _CountStats | None) -> dict[int, Tensor]:
        """Each precision's stream through this (quantized) block; τ statistics on the top stream."""
        for w in self.wrapped.values():
            w.count_stats = stats if w.router is not None else None
        self.stats = [stats] if stats is not None and self.block_router is not None else []
        n = next(iter(inputs.values())).shape[0]
        outs: dict[int, list[Tensor]] = {k: [] for k in self.precisions}
        for i in range(0, n, self.cfg.batch_size):
            idx = torch.arange(i, min(i + self.cfg.batch_size, n))
            for k, out in zip(
                self.precisions, self._forward_all(inputs, idx, self.precisions, False), strict=True
            ):
                outs[k].append(out)
        self.stats = []
        for w in self.wrapped.values():
            w.count_stats = None
        self.set_mode(None)
        return {k: torch.cat(v) for k, v in outs.items()}

    @torch.no_grad()
    def export(
        self,
    ) -> tuple[
        dict[str, tuple[Tensor, Tensor]], dict[str, SliceRouter], dict[str, Tensor], dict[str, Tensor]
    ]:
        """``(params, routers, weights, float_params)`` by full name; ``weights`` only where error feedback
        or LET changed a weight, ``float_params`` the norm tensors LET changed."""
        params: dict[str, tuple[Tensor, Tensor]] = {}
        routers: dict[str, SliceRouter] = {}
        weights: dict[str, Tensor] = {}
        float_params: dict[str, Tensor] = {}
        for producer, original in self.norm_originals.items():
            norm = self.block.get_submodule(producer)
            for attr, before in original.items():
                now = getattr(norm, attr).detach()
                if not torch.equal(now, before):
                    float_params[f"{self.block_name}.{producer}.{attr}"] = now.clone()
        for name, w in self.wrapped.items():
            scale, zero = w.quant_params()
            full = f"{self.block_name}.{name}"
            params[full] = (scale.detach().clone(), torch.round(zero.detach()).clone())
            if not torch.equal(w.weight, self.originals[name].weight.detach().float()):
                weights[full] = w.weight.detach().clone()
            if w.router is not None:
                routers[full] = w.router.requires_grad_(False).eval()
        if self.block_router is not None:
            routers[self.block_name] = self.block_router.requires_grad_(False).eval()
        return params, routers, weights, float_params

    @torch.no_grad()
    def _restore_norms(self) -> None:
        for producer, original in self.norm_originals.items():
            norm = self.block.get_submodule(producer)
            for attr, before in original.items():
                getattr(norm, attr).copy_(before)

    @torch.no_grad()
    def restore(self) -> None:
        """The block as it was: its own linears, norms and hooks."""
        if self._hook is not None:
            self._hook.remove()
        self._restore_norms()
        for name, linear in self.originals.items():
            set_submodule(self.block, name, linear)


#: Training windows the activation-aware LET start is searched on (the first ones; bounds its cost).
LET_SEARCH_WINDOWS = 32


class _PhaseClock:
    """Seconds per named phase of one block, for the block report's ``seconds_by_phase``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap (or the start) to ``phase``."""
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 3)
        self._last = now


def _relative(losses: dict[int, float], rtn: dict[int, float]) -> float:
    return sum(v / max(rtn[k], 1e-30) for k, v in losses.items())


def _choose_error_feedback(
    cal: _BlockCalibrator,
    streams: dict[int, Tensor],
    target: Tensor,
    train_idx: Tensor,
    guard_idx: Tensor,
    rtn: dict[int, float],
    losses: dict[int, float],
) -> dict[str, Any]:
    """Try error feedback at each of ``cfg.error_feedback``'s exponents on the learned grid and keep the
    weights (or none) with the lowest ``Σ_k MSE_k / RTN_k`` on the guard windows among those that keep every
    precision at most at its RTN MSE there. Returns the block report entry (with the kept ``losses``)."""
    exponents = cal.cfg.error_feedback
    entry: dict[str, Any] = {"exponent": None, "objective": {"none": _relative(losses, rtn)}}
    if not exponents:
        return {**entry, "losses": losses}
    hessians = cal.input_hessians(streams, train_idx)
    best = (entry["objective"]["none"], None, losses)
    for p in exponents:
        cal.error_feedback(hessians, p)
        got = cal.losses(streams, target, guard_idx, use_lwc=True)
        entry["objective"][str(p)] = obj = _relative(got, rtn)
        if obj < best[0] and all(got[k] <= rtn[k] for k in got):
            best = (obj, p, got)
    if best[1] is None:
        cal.reset_weights()
    elif best[1] != exponents[-1]:
        cal.error_feedback(hessians, best[1])
    entry["exponent"] = best[1]
    return {**entry, "losses": best[2]}


def calibrate_blocks(
    model: nn.Module,
    spec: QuantSpec,
    input_ids: Tensor,
    config: CalibConfig | None = None,
    *,
    precisions: Sequence[int] | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """Calibrate every decoder linear of ``model`` for all slice counts of ``spec`` at once.

    ``input_ids``: calibration token windows ``[n, L]`` (see :func:`mbq_onnx.assets.calibration_samples`);
    the last ``config.holdout`` of them are not trained on: they pick each stage's best epoch and judge
    the guard (``rtn_mse``/``calibrated_mse`` in the block reports are on them then).
    ``precisions``: slice counts the loss covers (default all ``1..S``); ``[k]`` alone is the
    bit-specific same-method baseline (no routers are trained then). The model is left unchanged.
    """
    cfg = config or CalibConfig()
    all_precisions = list(range(1, spec.num_slices + 1))
    precs = sorted(set(precisions)) if precisions is not None else all_precisions
    if not precs or any(k not in all_precisions for k in precs):
        raise ValueError(f"precisions {list(precisions or [])}: slice counts lie within 1..{spec.num_slices}")
    if input_ids.ndim != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [n, L] with L >= 2, got {tuple(input_ids.shape)}")
    train_routers = spec.num_slices > 1 and precs == all_precisions
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    n_held = cfg.holdout
    if n_held and input_ids.shape[0] <= n_held:
        raise ValueError(
            f"holdout={n_held} needs more than {n_held} calibration windows, got {input_ids.shape[0]}"
        )
    n_train = input_ids.shape[0] - n_held
    train_idx = torch.arange(n_train)
    held_idx = torch.arange(n_train, input_ids.shape[0]) if n_held else None
    guard_idx = held_idx if held_idx is not None else train_idx

    blocks_name, blocks = decoder_blocks(model)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    fp_in, block_kwargs = capture_block_inputs(model, input_ids)
    streams = {k: fp_in for k in precs}
    stats = _CountStats(cfg.taus_for(spec.num_slices), spec, cfg.tau_schedule) if train_routers else None
    params: dict[str, tuple[Tensor, Tensor]] = {}
    routers: dict[str, SliceRouter] = {}
    weights: dict[str, Tensor] = {}
    float_params: dict[str, Tensor] = {}
    block_reports = []
    bar = tqdm(range(len(blocks)), desc="calibrating blocks", unit="block", disable=not progress)
    for i in bar:
        tb = time.perf_counter()
        block = blocks[i]
        block_name = f"{blocks_name}.{i}"
        kw = block_kwargs[i]
        requires = [p.requires_grad for p in block.parameters()]
        for p in block.parameters():
            p.requires_grad_(False)
        fp_out = _map_batches(block, fp_in, kw, cfg.batch_size)
        cal = _BlockCalibrator(block, block_name, spec, cfg, precs, train_routers, kw)
        try:
            clock = _PhaseClock()
            rtn = cal.losses(streams, fp_out, train_idx, use_lwc=False)
            guard_rtn = rtn if held_idx is None else cal.losses(streams, fp_out, guard_idx, use_lwc=False)
            clock.lap("rtn")
            let_alpha = cal.init_let(streams, fp_out, train_idx[:LET_SEARCH_WINDOWS])
            if not cfg.lr_let:  # fixed scales: fold them now, so training steps carry no transformation
                cal.fold_let()
            clock.lap("let")
            history = cal.train(streams, fp_out, rtn, generator, train_idx, held_idx)
            clock.lap("train")
            train_final = cal.losses(streams, fp_out, train_idx, use_lwc=True)
            final = train_final if held_idx is None else cal.losses(streams, fp_out, guard_idx, use_lwc=True)
            alpha = 1.0
            if cfg.guard:
                final, alpha = cal.guard(streams, fp_out, guard_idx, guard_rtn, final)
            let_scales = cal.fold_let()
            clock.lap("guard")
            feedback = _choose_error_feedback(cal, streams, fp_out, train_idx, guard_idx, guard_rtn, final)
            final = feedback.pop("losses")
            clock.lap("error_feedback")
            streams = cal.propagate(streams, stats)
            got_params, got_routers, got_weights, got_float = cal.export()
            clock.lap("propagate")
        finally:
            cal.restore()
            for p, r in zip(block.parameters(), requires, strict=True):
                p.requires_grad_(r)
        params.update(got_params)
        routers.update(got_routers)
        weights.update(got_weights)
        float_params.update(got_float)
        fp_in = fp_out
        block_reports.append(
            {
                "block": block_name,
                "mse_windows": "heldout" if held_idx is not None else "train",
                "rtn_mse": {str(k): v for k, v in guard_rtn.items()},
                "calibrated_mse": {str(k): v for k, v in final.items()},
                "train_rtn_mse": {str(k): v for k, v in rtn.items()},
                "train_calibrated_mse": {str(k): v for k, v in train_final.items()},
                "train_loss": history,
                "guard_alpha": alpha,
                **({"let_alpha": let_alpha, "let_scale_range": let_scales} if cfg.let else {}),
                "error_feedback": feedback,
                "seconds": round(time.perf_counter() - tb, 3),
                "seconds_by_phase": clock.seconds,
            }
        )
        bar.set_postfix({f"{spec.bits_at(k)}b": f"{final[k] / max(guard_rtn[k], 1e-30):.2f}" for k in precs})
    model.train(was_training)

    tau_table = stats.table() if stats is not None else []
    report = {
        "spec": {"slice_bits": list(spec.slice_bits), "group_size": spec.group_size},
        "precisions": precs,
        "config": cfg.to_dict(),
        "samples": [n_train, input_ids.shape[1]],
        "holdout_windows": n_held,
        "grad_dtype": str(resolve_grad_dtype(cfg.grad_dtype)).removeprefix("torch."),
        "blocks": block_reports,
        "tau_table": tau_table,
        "seconds_total": round(time.perf_counter() - t0, 3),
    }
    return CalibrationResult(
        spec,
        params,
        routers,
        cfg.router if train_routers else "none",
        cfg.router_hidden,
        tau_table,
        report,
        weights,
        cfg.tau_schedule,
        float_params,
    )


@torch.no_grad()
def fake_quantize_model(model: nn.Module, result: CalibrationResult, n_slices: int) -> nn.Module:
    """Set each calibrated linear's (float) weight to its ``n_slices``-slice dequantized value, in place."""
    spec = result.spec
    for name, value in result.float_params.items():  # norms with a LET scale folded in
        model.get_parameter(name).data.copy_(value.to(model.get_parameter(name).dtype))
    for name, (scale, zero) in result.params.items():
        linear = model.get_submodule(name)
        w = result.weight_of(name, model)
        codes = residual.quantize_codes(w, scale, zero, spec)
        w_k = residual.dequantize_codes(codes, scale, zero, spec, n_slices)
        linear.weight.copy_(w_k.to(linear.weight.dtype))
    return model
