"""GPTQ (Frantar et al., 2022): second-order error-compensating b-bit quantization, block by block.

Each decoder block sees the calibration samples as produced by the already-quantized blocks before
it; the Hessian ``H = 2 XᵀX / n`` of every linear's input drives the column-by-column error
compensation. Only one block's inputs live in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from mbq_onnx.model.surgery import capture_layer_inputs, decoder_layers, layer_output
from mbq_onnx.quant import residual

from .common import BaselineSpec, decoder_linears


@torch.no_grad()
def gptq_quantize_weight(
    w: torch.Tensor,
    hessian: torch.Tensor,
    spec: BaselineSpec,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
) -> torch.Tensor:
    """Fake-quantized ``w [N, K]`` minimizing ``‖(W - Q) X‖²`` for inputs with Hessian ``hessian [K, K]``.

    Groups of ``spec.group_size`` run along K (ragged last group allowed). Without ``act_order`` each
    group's min/max grid is taken from the error-updated weights when GPTQ reaches the group (as in the
    reference implementation); with ``act_order`` columns go in order of decreasing Hessian diagonal and
    group grids are fixed up front from the original weights ("static groups"), so every column keeps
    its group. ``damp`` adds ``damp * mean(diag H)`` to the diagonal.
    """
    k = w.shape[1]
    if hessian.shape != (k, k):
        raise ValueError(
            f"hessian has shape {tuple(hessian.shape)}, expected ({k}, {k}) for weight {tuple(w.shape)}"
        )
    if damp <= 0:
        raise ValueError(f"damp {damp} must be > 0")
    qspec = spec.quant_spec()
    gs = qspec.group_size
    maxq = (1 << spec.bits) - 1
    W = w.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    static_scale = static_zero = None
    if act_order:
        static_scale, static_zero = residual.minmax_params(W, qspec)
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(k)

    H += damp * torch.mean(torch.diag(H)) * torch.eye(k)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    # Blocks are whole multiples of the group so a group never straddles two blocks.
    block = max(gs, block_size // gs * gs)
    Q = torch.zeros_like(W)
    scale = zero = None
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, hinv1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        Q1, err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if act_order:
                g = col // gs
                scale, zero = static_scale[:, g], static_zero[:, g]
            elif (i1 + i) % gs == 0:
                s, z = residual.minmax_params(W1[:, i : i + gs], qspec)
                scale, zero = s[:, 0], z[:, 0]
            x = W1[:, i]
            z_f = zero.float()
            q = scale * (torch.clamp(torch.round(x / scale) + z_f, 0, maxq) - z_f)
            Q1[:, i] = q
            e = (x - q) / hinv1[i, i]
            W1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        Q[:, i1:i2] = Q1
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(w.dtype)


class _HessianStats:
    """Accumulates ``Σ xxᵀ`` over a linear's input rows (float64) via a forward pre-hook."""

    def __init__(self, in_features: int):
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.rows = 0

    def hook(self, _module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.sum += (x.T @ x).double()  # float32 product per call, float64 running sum
        self.rows += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """``H = 2 XᵀX / n`` (float32)."""
        return (2.0 * self.sum / max(self.rows, 1)).float()


def _as_batches(samples: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(samples, torch.Tensor):
        samples = samples.reshape(-1, samples.shape[-1])
    batches = list(samples)
    if not batches:
        raise ValueError("GPTQ needs at least one calibration sample")
    return [torch.as_tensor(b, dtype=torch.long).reshape(1, -1) for b in batches]


@torch.no_grad()
def gptq_quantize_model(
    model: nn.Module,
    samples: torch.Tensor | Iterable[torch.Tensor],
    spec: BaselineSpec,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    progress: bool = True,
) -> nn.Module:
    """GPTQ every decoder linear of ``model`` in place on calibration token ids; returns ``model``.

    ``samples``: token ids ``[n, seqlen]`` (or an iterable of 1-D sequences). Block b is calibrated on
    the outputs of the already-quantized blocks ``< b``; afterwards its quantized outputs feed block b+1.
    """
    model.eval()
    batches = _as_batches(samples)
    hidden, kwargs = capture_layer_inputs(model, batches)
    all_linears = decoder_linears(model)
    layers = decoder_layers(model)
    for li, layer in enumerate(
        tqdm(layers, desc=f"GPTQ {spec.bits}-bit g{spec.group_size}", disable=not progress)
    ):
        linears = {name: m for name, m in all_linears.items() if any(m is x for x in layer.modules())}
        stats = {name: _HessianStats(m.in_features) for name, m in linears.items()}
        handles = [m.register_forward_pre_hook(stats[name].hook) for name, m in linears.items()]
        try:
            for h, kw in zip(hidden, kwargs, strict=True):
                layer_output(layer, h, kw[li])
        finally:
            for handle in handles:
                handle.remove()
        for name, m in linears.items():
            m.weight.copy_(
                gptq_quantize_weight(
                    m.weight, stats.pop(name).hessian(), spec, damp=damp, act_order=act_order
                )
            )
        hidden = [layer_output(layer, h, kw[li]) for h, kw in zip(hidden, kwargs, strict=True)]
    return model
