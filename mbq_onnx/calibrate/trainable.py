"""A linear under calibration: frozen float weight, learnable clipping (OmniQuant LWC), optional router.

:class:`CalibLinear` stands in for an ``nn.Linear`` of the block being calibrated. Its ``mode``
picks what it computes: ``None`` the float linear, an int ``k`` the weight fake-quantized to
its first ``k`` slices, ``"routed"`` a per-token mixture of slices (gates from its own router
or from the block router, straight-through hard gates).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..model.routing import SliceRouter, slice_gates
from ..quant import residual
from ..quant.spec import QuantSpec

#: Clipping factors start at 1 (exactly the RTN grid) and stay within [MIN_CLIP, 1].
MIN_CLIP = 0.2
ROUTED = "routed"


def clipped_minmax_params(w: Tensor, spec: QuantSpec, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Asymmetric ``(scale, zero)`` ``[N, G]`` of the group range ``[lo·min, hi·max]`` (LWC), the range
    containing 0 as in :func:`mbq_onnx.quant.residual.minmax_params` (identical at ``lo = hi = 1``).

    Like :func:`mbq_onnx.quant.residual.minmax_params` but with the clipping factors themselves as
    parameters (clamped to ``[MIN_CLIP, 1]``) instead of sigmoid logits: a factor of exactly 1 is
    reachable, so calibration starts from the RTN grid and gradients are not squashed near it.
    """
    k = w.shape[1]
    wg = residual.group_view(w, spec.group_size)
    valid = residual.group_view(torch.ones(1, k, dtype=torch.bool, device=w.device), spec.group_size)
    wmin = torch.where(valid, wg, torch.full_like(wg, float("inf"))).amin(-1).clamp(max=0)
    wmax = torch.where(valid, wg, torch.full_like(wg, float("-inf"))).amax(-1).clamp(min=0)
    wmin = lo.clamp(MIN_CLIP, 1.0) * wmin
    wmax = hi.clamp(MIN_CLIP, 1.0) * wmax
    qmax = (1 << spec.total_bits) - 1
    scale = ((wmax - wmin) / qmax).clamp(min=residual.MIN_SCALE)
    zero = residual.round_ste(-wmin / scale).clamp(0, qmax)
    return scale, zero


class CalibLinear(nn.Module):
    """Wraps ``linear`` (weight frozen) with LWC factors ``[N, G]`` and an optional per-linear router;
    ``train_tau``: the threshold of its router's hard gates in routed mode (``CalibConfig.train_tau``)."""

    def __init__(
        self,
        linear: nn.Linear,
        spec: QuantSpec,
        router: SliceRouter | None = None,
        train_tau: float = 0.5,
    ):
        super().__init__()
        self.spec = spec
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().float().clone(), persistent=False)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        groups = spec.num_groups(self.in_features)
        self.clip_lo = nn.Parameter(torch.full((self.out_features, groups), 1.0))
        self.clip_hi = nn.Parameter(torch.full((self.out_features, groups), 1.0))
        self.router = router
        self.mode: int | str | None = None
        self.use_lwc = True
        if not 0.0 < train_tau < 1.0:
            raise ValueError(f"train_tau {train_tau} must lie strictly between 0 and 1")
        self.train_tau = float(train_tau)
        self.block_gates: Tensor | None = None  # [..., S-1] gates set by a block router (routed mode)
        self.last_bits: Tensor | None = None  # soft expected bits per token, set in routed mode
        self.count_stats: Any = None  # when set, ``count_stats.add(router_logits)`` on fixed-mode forwards

    def quant_params(self) -> tuple[Tensor, Tensor]:
        """Current ``(scale, zero)``, differentiable in the clipping logits."""
        if not self.use_lwc:
            return residual.minmax_params(self.weight, self.spec)
        return clipped_minmax_params(self.weight, self.spec, self.clip_lo, self.clip_hi)

    def _record_counts(self, x: Tensor) -> None:
        if self.count_stats is not None and self.router is not None:
            with torch.no_grad():
                self.count_stats.add(self.router(x))

    def forward(self, x: Tensor) -> Tensor:
        mode = self.mode
        if mode is None:
            return F.linear(x, self.weight, self.bias)
        scale, zero = self.quant_params()
        if mode != ROUTED:
            self._record_counts(x)
            w = residual.fake_quant(self.weight, scale, zero, self.spec, int(mode))
            return F.linear(x, w, self.bias)
        ws = residual.fake_quant_all(self.weight, scale, zero, self.spec)
        if self.block_gates is not None:
            gates = self.block_gates
        elif self.router is not None:
            gates = slice_gates(self.router(x), self.train_tau, hard=True)
        else:
            raise RuntimeError("routed mode needs a router or block gates")
        y = F.linear(x, ws[0], self.bias)
        for j in range(1, len(ws)):
            y = y + gates[..., j - 1 : j].to(y.dtype) * F.linear(x, ws[j] - ws[j - 1])
        bits = torch.tensor(self.spec.slice_bits[1:], dtype=gates.dtype, device=gates.device)
        self.last_bits = self.spec.slice_bits[0] + (gates * bits).sum(-1)
        return y
