"""The calibration step's matmuls: an exact float32 forward, gradients in bfloat16 where the CPU has it.

Calibration compares block outputs whose 8-bit error is of the order of bfloat16's own rounding, so
the forward (the losses, the guard, the τ statistics) stays float32. The backward only steers the
optimiser, and two thirds of a step's multiply-adds are there: its two matmuls take bfloat16
operands with float32 accumulation, which is several times faster on CPUs with native bfloat16
dot products (AVX512_BF16, ARM BF16) and a relative error of ~2^-9 per gradient element.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch
from torch import Tensor

GRAD_DTYPES = ("auto", "float32", "bfloat16")
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 cpuinfo flags; arm64 "Features: ... bf16"


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (read from ``/proc/cpuinfo``; False if unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return platform.machine() == "arm64" and platform.system() == "Darwin"  # Apple M2+ reports no cpuinfo


def resolve_grad_dtype(name: str) -> torch.dtype:
    """``"auto"`` → bfloat16 where :func:`native_bf16`, else float32; or the named dtype."""
    if name not in GRAD_DTYPES:
        raise ValueError(f"grad_dtype {name!r}: choose one of {list(GRAD_DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    return getattr(torch, name)


class _LowPrecisionGrad(torch.autograd.Function):
    """``x @ wᵀ`` (``x [..., T, K]``, ``w [..., N, K]``, same leading dims), float32 out; both gradients
    computed from ``grad_dtype`` operands, the forward too with ``low_forward``."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, grad_dtype: torch.dtype, low_forward: bool) -> Tensor:
        ctx.grad_dtype = grad_dtype
        x_low, w_low = x.to(grad_dtype), w.to(grad_dtype)
        ctx.save_for_backward(
            x_low if ctx.needs_input_grad[1] else None, w_low if ctx.needs_input_grad[0] else None
        )
        if low_forward:
            return torch.matmul(x_low, w_low.transpose(-1, -2)).float()
        return torch.matmul(x, w.transpose(-1, -2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x_low, w_low = ctx.saved_tensors
        g = grad.to(ctx.grad_dtype)
        grad_x = torch.matmul(g, w_low).float() if ctx.needs_input_grad[0] else None
        grad_w = torch.matmul(g.transpose(-1, -2), x_low).float() if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None


def matmul_t(
    x: Tensor, w: Tensor, grad_dtype: torch.dtype = torch.float32, *, low_forward: bool = False
) -> Tensor:
    """``x @ w.transpose(-1, -2)`` (``x [..., T, K]``, ``w [N, K]`` or ``[..., N, K]``), gradients in
    ``grad_dtype`` (float32: plain autograd). ``low_forward``: the forward in ``grad_dtype`` as well,
    when gradients are on — for terms small enough that its rounding is far below the quantization
    error (the residual slices' increments); without gradients the forward is always float32."""
    if grad_dtype == torch.float32 or not torch.is_grad_enabled():
        return torch.matmul(x, w.transpose(-1, -2))
    if w.ndim == 2:  # one weight for every row: fold the leading dims into T
        y = _LowPrecisionGrad.apply(x.reshape(-1, x.shape[-1]), w, grad_dtype, low_forward)
        return y.reshape(*x.shape[:-1], -1)
    return _LowPrecisionGrad.apply(x, w, grad_dtype, low_forward)
