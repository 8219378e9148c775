"""The truncation-ready recursive residual quantizer (torch side).

One B-bit asymmetric code per weight, per (output channel, group) ``scale`` and integer
``zero``; the first k slices of a code are its top ``c_k`` bits, so dropping low slices gives a
valid lower-precision quantization (see ``custom_ops/README.md``, "Semantics"):

``q = clamp(round(w / scale) + zero, 0, 2^B - 1)``,
``w_k = scale * ((q >> (B-c)) << (B-c) + (2^(B-c) - 1)/2 - zero)`` with ``c = c_k``.

Groups run along K (in_features); a ragged last group is zero-padded. Everything here is plain
torch and differentiable where it matters (``lwc_params`` in the clipping factors,
``fake_quant`` in the weight, scale and zero), so calibration can train through it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .packing import pack
from .spec import QuantSpec

#: Smallest scale; keeps all-constant groups finite.
MIN_SCALE = 1e-8
#: Learnable clipping factors stay within [MIN_CLIP, 1] (1 = the RTN range).
MIN_CLIP = 0.2


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` in the forward pass, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def floor_ste(x: Tensor) -> Tensor:
    """``floor(x)`` in the forward pass, identity gradient."""
    return x + (torch.floor(x) - x).detach()


def _check_weight(w: Tensor) -> None:
    if w.ndim != 2:
        raise ValueError(f"weight must be [N, K] (out_features, in_features), got shape {tuple(w.shape)}")


def group_view(w: Tensor, group_size: int) -> Tensor:
    """``[N, K] -> [N, G, group_size]`` along K, zero-padding a ragged last group."""
    _check_weight(w)
    n, k = w.shape
    pad = -k % group_size
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(n, -1, group_size)


def _ungroup(wg: Tensor, k: int) -> Tensor:
    """Inverse of :func:`group_view`: ``[N, G, group_size] -> [N, K]``."""
    return wg.reshape(wg.shape[0], -1)[:, :k]


def _expand_groups(p: Tensor, k: int, group_size: int) -> Tensor:
    """Per-group parameters ``[N, G]`` -> per-column ``[N, K]``."""
    return p.repeat_interleave(group_size, dim=1)[:, :k]


def group_range(w: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Per-group ``(min, max)`` ``[N, G]`` of ``w [N, K]``, widened to contain 0 (as GPTQ / MatMulNBits
    do, so the integer zero never clips a one-signed group); padded columns of a ragged last group
    take no part."""
    k = w.shape[1]
    wg = group_view(w, group_size)
    valid = group_view(torch.ones(1, k, dtype=torch.bool, device=w.device), group_size)
    wmin = torch.where(valid, wg, torch.full_like(wg, float("inf"))).amin(-1).clamp(max=0)
    wmax = torch.where(valid, wg, torch.full_like(wg, float("-inf"))).amax(-1).clamp(min=0)
    return wmin, wmax


def lwc_params(
    wmin: Tensor, wmax: Tensor, spec: QuantSpec, clip_lo: Tensor | None = None, clip_hi: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Asymmetric ``(scale, zero)`` ``[N, G]`` of the clipped group range ``[clip_lo·min, clip_hi·max]``
    (OmniQuant's learnable weight clipping, LWC) for the full B-bit code.

    The clipping factors are the parameters themselves, clamped to ``[MIN_CLIP, 1]`` (not sigmoid
    logits): a factor of exactly 1 — the RTN grid, where calibration starts — is reachable and its
    gradient is not squashed. ``None`` means no clipping. ``zero`` uses straight-through rounding, so
    both outputs are differentiable in the range and the factors.
    """
    if clip_lo is not None:
        wmin = clip_lo.clamp(MIN_CLIP, 1.0) * wmin
    if clip_hi is not None:
        wmax = clip_hi.clamp(MIN_CLIP, 1.0) * wmax
    qmax = (1 << spec.total_bits) - 1
    scale = ((wmax - wmin) / qmax).clamp(min=MIN_SCALE)
    zero = round_ste(-wmin / scale).clamp(0, qmax)
    return scale, zero


def minmax_params(w: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Asymmetric min/max ``(scale, zero)``, each ``[N, G]``, for the full B-bit code (RTN):
    :func:`lwc_params` of :func:`group_range` without clipping."""
    _check_weight(w)
    return lwc_params(*group_range(w, spec.group_size), spec)


def _check_params(w: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> None:
    expected = (w.shape[0], spec.num_groups(w.shape[1]))
    for name, p in (("scale", scale), ("zero", zero)):
        if tuple(p.shape) != expected:
            raise ValueError(
                f"{name} has shape {tuple(p.shape)}, expected [N, G] = {list(expected)} "
                f"for a {list(w.shape)} weight with group_size {spec.group_size}"
            )


def quantize_codes(w: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """B-bit codes ``clamp(round(w / scale) + zero, 0, 2^B - 1)`` as uint8 ``[N, K]``."""
    _check_weight(w)
    _check_params(w, scale, zero, spec)
    k = w.shape[1]
    s = _expand_groups(scale.detach().to(torch.float32), k, spec.group_size)
    z = _expand_groups(torch.round(zero.detach()).to(torch.float32), k, spec.group_size)
    q = torch.round(w.detach().to(torch.float32) / s) + z
    return q.clamp(0, (1 << spec.total_bits) - 1).to(torch.uint8)


def truncation_shift(spec: QuantSpec, n_slices: int) -> int:
    """Dropped low bits ``B - c`` when the first ``n_slices`` slices are used."""
    return spec.total_bits - spec.bits_at(n_slices)


def dequantize_codes(codes: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec, n_slices: int) -> Tensor:
    """Weights ``[N, K]`` (dtype of ``scale``) from the first ``n_slices`` slices of ``codes``.

    Identical to :func:`mbq_onnx.quant.reference.dequantize` (up to float rounding): the dropped
    low bits are replaced by their midpoint ``(2^(B-c) - 1) / 2``.
    """
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, K], got shape {tuple(codes.shape)}")
    _check_params(codes, scale, zero, spec)
    shift = truncation_shift(spec, n_slices)
    k = codes.shape[1]
    mask = (0xFF << shift) & 0xFF
    q = group_view(codes & mask, spec.group_size).to(scale.dtype)  # [N, G, group_size]
    level = q - (zero.to(scale.dtype) - ((1 << shift) - 1) / 2.0).unsqueeze(-1)
    return _ungroup(level * scale.unsqueeze(-1), k)


def fake_quant(
    w: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec, n_slices: int | None = None
) -> Tensor:
    """Quantize-dequantize ``w [N, K]`` at ``n_slices`` slices (default: all), differentiably.

    Forward value equals ``dequantize_codes(quantize_codes(w, ...), ..., n_slices)`` for integer
    ``zero``; rounding and truncation use straight-through gradients, so the result is
    differentiable w.r.t. ``w``, ``scale`` and ``zero`` (hence the LWC logits behind them).
    """
    _check_weight(w)
    _check_params(w, scale, zero, spec)
    n_slices = spec.num_slices if n_slices is None else n_slices
    shift = truncation_shift(spec, n_slices)
    k = w.shape[1]
    s = _expand_groups(scale, k, spec.group_size)
    z = _expand_groups(zero, k, spec.group_size)
    q = (round_ste(w / s) + z).clamp(0, (1 << spec.total_bits) - 1)
    if shift:
        step = float(1 << shift)
        q = floor_ste(q / step) * step + (step - 1) / 2.0
    return s * (q - z)


def fake_quant_all(w: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> list[Tensor]:
    """:func:`fake_quant` for every slice count 1..S (shares the rounding), index i = i+1 slices."""
    _check_weight(w)
    _check_params(w, scale, zero, spec)
    k = w.shape[1]
    s = _expand_groups(scale, k, spec.group_size)
    z = _expand_groups(zero, k, spec.group_size)
    q = (round_ste(w / s) + z).clamp(0, (1 << spec.total_bits) - 1)
    out = []
    for n_slices in range(1, spec.num_slices + 1):
        step = float(1 << truncation_shift(spec, n_slices))
        qk = floor_ste(q / step) * step + (step - 1) / 2.0 if step > 1 else q
        out.append(s * (qk - z))
    return out


def quantize_linear(
    w: Tensor, spec: QuantSpec, scale: Tensor, zero: Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize and pack a weight for storage.

    Returns ``(packed uint8 [bytes], scales float32 [N, G], zeros uint8 [N, G])``.
    """
    codes = quantize_codes(w, scale, zero, spec)
    scales = scale.detach().to(torch.float32).cpu().numpy()
    zeros = torch.round(zero.detach()).clamp(0, (1 << spec.total_bits) - 1).to(torch.uint8).cpu().numpy()
    return pack(codes.cpu().numpy(), spec), np.ascontiguousarray(scales), np.ascontiguousarray(zeros)
