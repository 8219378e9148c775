"""A linear under calibration: frozen float weight, learnable clipping (OmniQuant LWC), optional router.

:class:`CalibLinear` stands in for an ``nn.Linear`` of the block being calibrated. Its ``mode``
picks what it computes: ``None`` the float linear, an int ``k`` the weight fake-quantized to
its first ``k`` slices, ``"routed"`` a per-token mixture of slices (gates from its own router
or from the block router, straight-through hard gates), and a tuple of those — e.g.
``(1, 2, 3, "routed")`` — one forward for all of them at once: the batch holds one equal chunk
per entry, in that order (``"routed"`` last), and the weight is fake-quantized once for all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..model.routing import SliceRouter, slice_gates
from ..quant import residual
from ..quant.spec import QuantSpec
from .let import LinearLet
from .matmul import matmul_t

ROUTED = "routed"
#: What a :class:`CalibLinear` computes (see the module docstring).
Mode = int | str | tuple[int | str, ...] | None


class CalibLinear(nn.Module):
    """Wraps ``linear`` (weight frozen) with LWC factors ``[N, G]`` and an optional per-linear router;
    ``train_tau``: the threshold of its router's hard gates in routed mode (``CalibConfig.train_tau``);
    ``grad_dtype``: the operand dtype of the backward matmuls in the routed and stacked modes
    (:func:`mbq_onnx.calibrate.matmul.matmul_t`)."""

    def __init__(
        self,
        linear: nn.Linear,
        spec: QuantSpec,
        router: SliceRouter | None = None,
        train_tau: float = 0.5,
        grad_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.grad_dtype = grad_dtype
        self.spec = spec
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().float().clone(), persistent=False)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        groups = spec.num_groups(self.in_features)
        group_min, group_max = residual.group_range(
            self.weight, spec.group_size
        )  # fixed: the weight is frozen
        self.register_buffer("group_min", group_min, persistent=False)
        self.register_buffer("group_max", group_max, persistent=False)
        self.clip_lo = nn.Parameter(torch.full((self.out_features, groups), 1.0))
        self.clip_hi = nn.Parameter(torch.full((self.out_features, groups), 1.0))
        self.router = router
        self.mode: Mode = None
        self.use_lwc = True
        if not 0.0 < train_tau < 1.0:
            raise ValueError(f"train_tau {train_tau} must lie strictly between 0 and 1")
        self.train_tau = float(train_tau)
        self.block_gates: Tensor | None = None  # [..., S-1] gates set by a block router (routed mode)
        self.last_bits: Tensor | None = None  # soft expected bits per token, set in routed mode
        self.count_stats: Any = None  # when set, ``count_stats.add(router_logits)`` on fixed-mode forwards
        self.let: LinearLet | None = None  # equivalent-transformation scales while they train (:mod:`.let`)

    @torch.no_grad()
    def set_weight(self, w: Tensor, bias: Tensor | None = None) -> None:
        """A new float weight (and bias) with its own group range: an equivalent transformation folded in."""
        self.weight.copy_(w)
        if bias is not None:
            self.bias.copy_(bias)
        self.group_min, self.group_max = residual.group_range(self.weight, self.spec.group_size)

    def transformed(self) -> tuple[Tensor, Tensor | None]:
        """The float ``(weight, bias)`` it computes with: its own, or under its LET scales."""
        if self.let is None:
            return self.weight, self.bias
        return self.let.weight(self.weight), self.let.bias(self.bias)

    def quant_params(self, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Current ``(scale, zero)``, differentiable in the clipping logits (and the LET scales);
        ``weight``: the transformed weight where it is already at hand."""
        lo, hi = self.group_min, self.group_max
        if self.let is not None:
            weight = self.transformed()[0] if weight is None else weight
            lo, hi = residual.group_range(weight, self.spec.group_size)
        if not self.use_lwc:
            return residual.lwc_params(lo, hi, self.spec)
        return residual.lwc_params(lo, hi, self.spec, self.clip_lo, self.clip_hi)

    def _record_counts(self, x: Tensor) -> None:
        if self.count_stats is not None and self.router is not None:
            with torch.no_grad():
                self.count_stats.add(self.router(x))

    def _gates(self, x: Tensor) -> Tensor:
        if self.block_gates is not None:
            return self.block_gates
        if self.router is not None:
            return slice_gates(self.router(x), self.train_tau, hard=True)
        raise RuntimeError("routed mode needs a router or block gates")

    def _routed(self, x: Tensor, ws: list[Tensor], bias: Tensor | None) -> Tensor:
        """Per-token mixture: base output plus each residual slice's increment times its gate."""
        gates = self._gates(x)
        increments = torch.cat([ws[j] - ws[j - 1] for j in range(1, len(ws))])  # small: bf16-safe forward
        inc = matmul_t(x, increments, self.grad_dtype, low_forward=True)
        inc = inc.unflatten(-1, (len(ws) - 1, self.out_features))
        y = matmul_t(x, ws[0], self.grad_dtype) + (gates.unsqueeze(-1).to(inc.dtype) * inc).sum(-2)
        if bias is not None:
            y = y + bias
        bits = torch.tensor(self.spec.slice_bits[1:], dtype=gates.dtype, device=gates.device)
        self.last_bits = self.spec.slice_bits[0] + (gates * bits).sum(-1)
        return y

    def _stacked(
        self, x: Tensor, chunks: tuple[int | str, ...], ws: list[Tensor], bias: Tensor | None
    ) -> Tensor:
        """One forward for every entry of ``chunks`` (fixed slice counts first, ``"routed"`` last)."""
        routed = chunks[-1] == ROUTED
        fixed = chunks[:-1] if routed else chunks
        if ROUTED in fixed:
            raise ValueError(f"mode {chunks}: 'routed' may only be the last chunk")
        if x.shape[0] % len(chunks):
            raise ValueError(f"batch {x.shape[0]} does not split into {len(chunks)} equal chunks")
        b = x.shape[0] // len(chunks)
        out = []
        if fixed:
            xs = x[: b * len(fixed)].reshape(len(fixed), -1, self.in_features)
            if self.count_stats is not None and self.router is not None:
                top = max(range(len(fixed)), key=lambda i: int(fixed[i]))
                self._record_counts(xs[top])
            w = torch.stack([ws[int(k) - 1] for k in fixed])  # [P, N, K]
            y = matmul_t(xs, w, self.grad_dtype)
            if bias is not None:
                y = y + bias
            out.append(y.reshape(b * len(fixed), *x.shape[1:-1], self.out_features))
        if routed:
            out.append(self._routed(x[b * len(fixed) :], ws, bias))
        return out[0] if len(out) == 1 else torch.cat(out)

    def forward(self, x: Tensor) -> Tensor:
        mode = self.mode
        weight, bias = self.transformed()
        if self.let is not None:
            x = self.let.inputs(x)
        if mode is None:
            return F.linear(x, weight, bias)
        scale, zero = self.quant_params(weight)
        if isinstance(mode, tuple):
            return self._stacked(x, mode, residual.fake_quant_all(weight, scale, zero, self.spec), bias)
        if mode != ROUTED:
            self._record_counts(x)
            w = residual.fake_quant(weight, scale, zero, self.spec, int(mode))
            return F.linear(x, w, bias)
        return self._routed(x, residual.fake_quant_all(weight, scale, zero, self.spec), bias)
