"""GPTQ-style error feedback for the truncation-ready code: one code per weight, good at every slice count.

GPTQ (Frantar et al., 2022) quantizes a weight column by column and pushes each column's error onto the
columns not yet quantized, through the inverse Hessian of the linear's inputs. A truncation-ready code
serves S precisions at once, and each precision wants its own compensation, so here every precision k
keeps its own error-updated copy ``W_k`` of the weight (its own "stream"). Column i then takes the one
B-bit code that minimizes ``Σ_k λ_k (W_k[:, i] - deq_k(code))²`` over a few candidates — for every
precision a, its nearest ``c_a``-bit level and the two next to it, with the lower bits filled greedily
(nearest level of each finer precision inside the coarser level's bucket) — and each stream takes its
own error back. With λ_k = 1 for one k alone this is GPTQ at that precision on a fixed (static) grid.

The grid (``scale``, ``zero``) is given: it is the learned clipping of the calibration, which this pass
does not change. The result is a weight whose codes (:func:`mbq_onnx.quant.residual.quantize_codes`
with the same grid) are the chosen codes, so everything downstream (fake quantization, packing) runs on it
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..quant import residual
from ..quant.spec import QuantSpec

#: GPTQ's dampening: ``damp · mean(diag H)`` is added to the Hessian's diagonal.
DEFAULT_DAMP = 0.01


def _candidates(u: Tensor, spec: QuantSpec) -> Tensor:
    """Candidate codes ``[C, N]`` for code positions ``u [S, N]`` (precision k's target ``w_k / s + z``)."""
    steps = [1 << residual.truncation_shift(spec, k) for k in range(1, spec.num_slices + 1)]
    out = []
    for a, step_a in enumerate(steps):
        nearest = torch.floor(u[a] / step_a)
        for delta in (-1.0, 0.0, 1.0):
            level = (nearest + delta).clamp(0, (1 << spec.bits_at(a + 1)) - 1)
            lo = level * step_a
            hi = lo + (step_a - 1)
            for j in range(a + 1, len(steps)):
                step_j = steps[j]
                sub = (torch.floor(u[j] / step_j) * step_j).clamp(lo, hi - (step_j - 1))
                lo, hi = sub, sub + (step_j - 1)
            out.append(lo)
    return torch.stack(out)


def _levels(codes: Tensor, spec: QuantSpec) -> Tensor:
    """``deq_k(code)`` in code units ``[S, ...]``: the code's k-slice bucket centre."""
    out = []
    for k in range(1, spec.num_slices + 1):
        step = float(1 << residual.truncation_shift(spec, k))
        out.append(torch.floor(codes / step) * step + (step - 1) / 2.0)
    return torch.stack(out)


def _inverse_hessian_factor(hessian: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    """GPTQ's upper Cholesky factor of ``H⁻¹`` (dampened) and the mask of dead input columns."""
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float(), dead


@torch.no_grad()
def error_feedback_weight(
    w: Tensor,
    hessian: Tensor | Sequence[Tensor],
    scale: Tensor,
    zero: Tensor,
    spec: QuantSpec,
    precision_weights: Sequence[float],
    *,
    damp: float = DEFAULT_DAMP,
    block_size: int = 128,
) -> Tensor:
    """The weight ``[N, K]`` whose codes on grid ``(scale, zero)`` minimize, approximately,
    ``Σ_k λ_k ‖(W - Q_k) X_k‖²`` (``Q_k``: the codes truncated to k slices), column by column with
    GPTQ error feedback per precision (module docstring).

    ``hessian``: ``XᵀX`` of the linear's inputs ``[K, K]``, one for all precisions or one per precision
    (each precision's inputs differ after quantized blocks); ``precision_weights``: λ_k for k = 1..S.
    Returns the all-slices dequantized weight (float32), from which :func:`~mbq_onnx.quant.residual.
    quantize_codes` recovers the chosen codes exactly.
    """
    residual._check_weight(w)
    residual._check_params(w, scale, zero, spec)
    n, k = w.shape
    s_count = spec.num_slices
    lam = torch.tensor([float(x) for x in precision_weights], dtype=torch.float32)
    if lam.shape != (s_count,) or bool((lam < 0).any()) or float(lam.sum()) <= 0:
        raise ValueError(
            f"precision_weights {list(precision_weights)}: give {s_count} non-negative weights, not all zero"
        )
    hessians = [hessian] if isinstance(hessian, Tensor) else list(hessian)
    if len(hessians) not in (1, s_count) or any(tuple(h.shape) != (k, k) for h in hessians):
        raise ValueError(
            f"hessian: expected one [{k}, {k}] matrix or {s_count} of them for a {list(w.shape)} weight"
        )
    if damp <= 0:
        raise ValueError(f"damp {damp} must be > 0")
    factors = [_inverse_hessian_factor(h, damp) for h in hessians]
    hinv = torch.stack([f[0] for f in factors]).expand(s_count, k, k)  # [S, K, K]
    dead = torch.stack([f[1] for f in factors]).any(0)

    gs = spec.group_size
    s_col = residual._expand_groups(scale.detach().float(), k, gs)  # [N, K]
    z_col = residual._expand_groups(torch.round(zero.detach()).float(), k, gs)
    qmax = float((1 << spec.total_bits) - 1)
    streams = w.detach().float().clone().unsqueeze(0).repeat(s_count, 1, 1)  # [S, N, K]
    streams[:, :, dead] = 0.0
    codes = torch.zeros(n, k)
    rows = torch.arange(n)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        blk = streams[:, :, i1:i2].clone()
        hinv_blk = hinv[:, i1:i2, i1:i2]
        errs = torch.zeros_like(blk)
        for i in range(i2 - i1):
            s, z = s_col[:, i1 + i], z_col[:, i1 + i]
            u = (blk[:, :, i] / s + z).clamp(-0.5, qmax + 0.5)  # [S, N] code positions
            cand = _candidates(u, spec)  # [C, N]
            lev = _levels(cand, spec)  # [S, C, N]
            cost = (lam[:, None, None] * (u[:, None, :] - lev) ** 2).sum(0)  # [C, N]
            best = cand[cost.argmin(0), rows]  # [N]
            codes[:, i1 + i] = best
            deq = s * (_levels(best, spec) - z)  # [S, N] each precision's value of the chosen code
            d = hinv_blk[:, i, i]  # [S]
            e = (blk[:, :, i] - deq) / d[:, None]
            blk[:, :, i:] -= e[:, :, None] * hinv_blk[:, i, i:][:, None, :]
            errs[:, :, i] = e
        streams[:, :, i2:] -= errs @ hinv[:, i1:i2, i2:]
    return s_col * (codes - z_col)
