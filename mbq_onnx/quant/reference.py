"""NumPy reference semantics of truncated dequantization and of the MixedBitMatMul op.

This is the correctness oracle for the C++ kernels and the ONNX export: float64,
dequantize-then-matmul, no cleverness.
"""

from __future__ import annotations

import numpy as np

from .packing import unpack
from .spec import QuantSpec


def truncation_offset(spec: QuantSpec, n_slices: int) -> float:
    """Midpoint of the dropped low bits, ``(2^(B-c) - 1) / 2`` for precision c of ``n_slices`` slices."""
    return ((1 << (spec.total_bits - spec.bits_at(n_slices))) - 1) / 2.0


def dequantize(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, spec: QuantSpec, n_slices: int
) -> np.ndarray:
    """Weights ``[N, K]`` (float64) reconstructed from the first ``n_slices`` slices.

    ``w = scale * ((code >> (B-c)) * 2^(B-c) + (2^(B-c) - 1)/2 - zero)`` with c the precision in bits;
    scales/zeros are per (output channel, group) ``[N, n_groups]``.
    """
    codes = np.asarray(codes)
    _n, k = codes.shape
    shift = spec.total_bits - spec.bits_at(n_slices)
    q = ((codes.astype(np.int64) >> shift) << shift).astype(np.float64) + truncation_offset(spec, n_slices)
    group_of_col = np.arange(k) // spec.group_size
    s = np.asarray(scales, dtype=np.float64)[:, group_of_col]
    z = np.asarray(zeros, dtype=np.float64)[:, group_of_col]
    return s * (q - z)


def mixed_bit_matmul(
    a: np.ndarray,
    slice_count: np.ndarray,
    packed: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    spec: QuantSpec,
    n: int,
) -> np.ndarray:
    """MixedBitMatMul reference: row r of ``a [..., K]`` uses ``slice_count[r]`` slices."""
    a = np.asarray(a, dtype=np.float64)
    k = a.shape[-1]
    counts = np.asarray(slice_count).reshape(-1)
    rows = a.reshape(-1, k)
    codes = unpack(packed, spec, n, k)
    out = np.zeros((rows.shape[0], n))
    for count in np.unique(counts):
        sel = counts == count
        out[sel] = rows[sel] @ dequantize(codes, scales, zeros, spec, int(count)).T
    return out.reshape(*a.shape[:-1], n)


def router_logits(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, pad: float, members: int
) -> np.ndarray:
    """Router logits ``[..., members, S+1]`` (float64) of the ``com.mbq::RouterCounts`` op
    (custom_ops/README.md): ``silu(([x, pad] / ‖[x, pad]‖) @ W1 + B1) @ W2 + B2``; a zero norm
    gives ``xn = 0``."""
    x = np.asarray(x, dtype=np.float64)
    xp = np.concatenate([x, np.full((*x.shape[:-1], 1), float(pad))], axis=-1)
    norm = np.linalg.norm(xp, axis=-1, keepdims=True)
    xn = np.divide(xp, norm, out=np.zeros_like(xp), where=norm > 0)
    pre = xn @ np.asarray(w1, np.float64) + np.asarray(b1, np.float64)
    h = pre / (1.0 + np.exp(-pre))
    with np.errstate(invalid="ignore"):  # the ±inf bias columns
        logits = h @ np.asarray(w2, np.float64) + np.asarray(b2, np.float64)
    return logits.reshape(*x.shape[:-1], members, logits.shape[-1] // members)


def threshold_count(thr: np.ndarray, w2: np.ndarray, b2: np.ndarray, members: int) -> int | None:
    """The count every row gets when ``thr`` decides it without the MLP, else None (custom_ops/README.md,
    "Decided by the thresholds"): every member framed (column 0: zero W2 column, B2 +inf; column S: zero
    W2 column, B2 -inf; finite columns between), ``thr[0] < +inf``, then ``-inf`` thresholds up to the
    first ``+inf`` one."""
    s1 = thr.shape[-1]
    w2, b2 = w2.reshape(w2.shape[0], members, s1), b2.reshape(members, s1)
    framed = (
        np.all(w2[:, :, [0, -1]] == 0)
        and np.all(b2[:, 0] == np.inf)
        and np.all(b2[:, -1] == -np.inf)
        and np.all(np.isfinite(w2[:, :, 1:-1]))
        and np.all(np.isfinite(b2[:, 1:-1]))
    )
    if not framed or not thr[0] < np.inf:
        return None
    j = 1
    while j < s1 - 1 and thr[j] == -np.inf:
        j += 1
    return j if j == s1 - 1 or thr[j] == np.inf else None


def router_counts(
    x: np.ndarray,
    thresholds: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    pad: float,
    members: int,
    combine: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, margin)``: the int64 output of ``com.mbq::RouterCounts`` and, per output element, the
    smallest ``|logit - threshold|`` among the comparisons that decided it (float32 kernels may differ from
    this float64 reference only where that margin is within float rounding).

    Per member the count is the first index whose ``logit > threshold`` is false (0 when none is);
    ``combine=1`` takes the max over members, else the shape is ``[..., members]`` (``[...]`` for one member).
    """
    thr = np.asarray(thresholds, np.float64)
    decided = threshold_count(thr, np.asarray(w2), np.asarray(b2), members)
    if decided is not None:  # the MLP is not evaluated (NaN in x cannot lower the count)
        shape = np.shape(x)[:-1] + ((members,) if members > 1 and not combine else ())
        return np.full(shape, decided, np.int64), np.full(shape, np.inf)
    logits = router_logits(x, w1, b1, w2, b2, pad, members)
    on = logits > thr
    counts = np.argmin(on, axis=-1).astype(np.int64)
    with np.errstate(invalid="ignore"):
        gap = np.abs(logits - thr)
    gap = np.where(np.isnan(gap), np.inf, gap)
    # Comparisons up to (and including) the first off one decide the count.
    idx = np.arange(thr.shape[-1])
    decided = idx <= np.where(on.all(-1), thr.shape[-1] - 1, counts)[..., None]
    margin = np.where(decided, gap, np.inf).min(-1)
    if combine:
        return counts.max(-1), margin.min(-1)
    if members == 1:
        return counts[..., 0], margin[..., 0]
    return counts, margin
