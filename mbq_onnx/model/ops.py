"""The ``mbq::mixed_bit_matmul`` torch operator: MixedBitMatMul (``custom_ops/README.md``) in PyTorch.

The op is opaque to ``torch.export`` (a ``torch.library.custom_op`` with a fake kernel), so the
exporter can map each call to one ``com.mbq::MixedBitMatMul`` node; argument order and types
mirror the ONNX op's inputs and attributes. The eager kernel is pure: it unpacks and
dequantizes from ``packed`` on every call (callers that want speed cache dense weights and use
:func:`dense_mixed_matmul`, as :class:`~mbq_onnx.model.linear.MixedBitLinear` can).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant.residual import dequantize_codes
from ..quant.spec import QuantSpec


def _unpack_plane(plane: Tensor, bits: int) -> Tensor:
    """Values of one plane ``[N, bytes]`` (little-endian bit stream of ``bits``-wide values) as uint8."""
    device = plane.device
    if 8 % bits == 0:  # whole values per byte: shift and mask
        shifts = torch.arange(0, 8, bits, device=device, dtype=torch.uint8)
        return ((plane.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(plane.shape[0], -1)
    # widths 3, 5, 6, 7 cross byte boundaries: go through single bits
    one_bits = (plane.unsqueeze(-1) >> torch.arange(8, device=device, dtype=torch.uint8)) & 1
    one_bits = one_bits.reshape(plane.shape[0], -1, bits)
    weights = 1 << torch.arange(bits, device=device, dtype=torch.uint8)
    return (one_bits * weights).sum(-1, dtype=torch.uint8)


def unpack_codes(packed: Tensor, spec: QuantSpec, n: int, k: int) -> Tensor:
    """Torch twin of :func:`mbq_onnx.quant.packing.unpack`: uint8 codes ``[N, K]`` from the slice planes."""
    packed = packed.reshape(-1)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    expected = spec.packed_nbytes(n, k)
    if packed.numel() != expected:
        raise ValueError(
            f"packed has {packed.numel()} bytes, expected {expected} for N={n} K={k} "
            f"group_size={spec.group_size} slice_bits={list(spec.slice_bits)}"
        )
    n_groups = spec.num_groups(k)
    codes = torch.zeros(n, n_groups * spec.group_size, dtype=torch.uint8, device=packed.device)
    offset = 0
    for j, (b, c) in enumerate(zip(spec.slice_bits, spec.cum_bits, strict=True)):
        nbytes = spec.plane_nbytes(j, n, k)
        plane = packed[offset : offset + nbytes].reshape(n, -1)
        codes |= _unpack_plane(plane, b) << (spec.total_bits - c)
        offset += nbytes
    return codes[:, :k].to(torch.uint8)


def dense_mixed_matmul(x: Tensor, slice_count: Tensor, weights: list[Tensor] | Tensor) -> Tensor:
    """``Y[r] = x[r] @ weights[count[r] - 1].T`` for dense per-count weights ``[S][N, K]`` (eager only)."""
    k = x.shape[-1]
    rows = x.reshape(-1, k)
    counts = slice_count.reshape(-1)
    present = torch.unique(counts).tolist()
    if len(present) == 1:
        w = weights[int(present[0]) - 1]
        return (rows @ w.to(x.dtype).T).reshape(*x.shape[:-1], -1)
    n = weights[int(present[0]) - 1].shape[0] if present else weights[-1].shape[0]
    out = rows.new_empty(rows.shape[0], n)
    for count in present:
        sel = counts == count
        out[sel] = rows[sel] @ weights[int(count) - 1].to(x.dtype).T
    return out.reshape(*x.shape[:-1], n)


def check_slice_count(x: Tensor, slice_count: Tensor, num_slices: int) -> None:
    """Shape/range checks of the op contract, with messages naming the op."""
    if tuple(slice_count.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"mixed_bit_matmul: slice_count shape {tuple(slice_count.shape)} must equal "
            f"x.shape[:-1] = {tuple(x.shape[:-1])}"
        )
    if slice_count.numel():
        lo, hi = int(slice_count.min()), int(slice_count.max())
        if lo < 1 or hi > num_slices:
            raise ValueError(f"mixed_bit_matmul: slice_count values {lo}..{hi} outside 1..{num_slices}")


@torch.library.custom_op("mbq::mixed_bit_matmul", mutates_args=())
def mixed_bit_matmul(
    x: Tensor,
    slice_count: Tensor,
    packed: Tensor,
    scales: Tensor,
    zeros: Tensor,
    K: int,
    N: int,
    group_size: int,
    slice_bits: list[int],
) -> Tensor:
    """MixedBitMatMul: row r of ``x [..., K]`` uses first ``slice_count[r]`` slices; gives ``[..., N]``."""
    spec = QuantSpec(tuple(slice_bits), group_size)
    if x.shape[-1] != K:
        raise ValueError(f"mixed_bit_matmul: x has last dim {x.shape[-1]} but K is {K}")
    n_groups = spec.num_groups(K)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != (N, n_groups):
            raise ValueError(f"mixed_bit_matmul: {name} has shape {tuple(t.shape)}, expected {[N, n_groups]}")
    check_slice_count(x, slice_count, spec.num_slices)
    codes = unpack_codes(packed, spec, N, K)
    scales32 = scales.to(torch.float32)
    present = torch.unique(slice_count).tolist() or [spec.num_slices]
    weights: list[Tensor] = [scales32.new_empty(0)] * spec.num_slices
    for count in present:
        weights[int(count) - 1] = dequantize_codes(codes, scales32, zeros, spec, int(count))
    return dense_mixed_matmul(x, slice_count, weights)


@mixed_bit_matmul.register_fake
def _(
    x: Tensor,
    slice_count: Tensor,
    packed: Tensor,
    scales: Tensor,
    zeros: Tensor,
    K: int,
    N: int,
    group_size: int,
    slice_bits: list[int],
) -> Tensor:
    return x.new_empty((*x.shape[:-1], N))
