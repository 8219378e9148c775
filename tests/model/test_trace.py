"""Both router granularities trace with torch.export (non-strict), τ and force_slices as graph inputs."""

from __future__ import annotations

import pytest
import torch

from mbq_onnx.model import quantize_model
from mbq_onnx.quant.spec import QuantSpec


class _Routed(torch.nn.Module):
    """ids, tau, force → (logits, stacked slice counts): the shape of the exported graph's routing I/O."""

    def __init__(self, model, ctx):
        super().__init__()
        self.model, self.ctx = model, ctx

    def forward(self, ids, tau, force):
        self.ctx.tau, self.ctx.force_slices, self.ctx.record, self.ctx.records = tau, force, True, []
        logits = self.model(ids, use_cache=False).logits
        counts = torch.stack(self.ctx.records)
        self.ctx.record = False
        return logits, counts


@pytest.mark.parametrize("granularity", ["linear", "block"])
def test_torch_export_keeps_routing_dynamic(tiny_llama, granularity: str) -> None:
    from tiny_models import make_router_spread

    model = tiny_llama()
    ctx = quantize_model(model, QuantSpec((4, 2, 2), 16), granularity=granularity, router_hidden=8)
    make_router_spread(model)
    wrapper = _Routed(model, ctx)
    example = (torch.randint(0, 256, (2, 7)), torch.tensor(0.5), torch.tensor(0))
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}, None, None)
    with torch.no_grad():
        exported = torch.export.export(wrapper, example, dynamic_shapes=dims, strict=False)
    ops = [n for n in exported.graph.nodes if n.target is torch.ops.mbq.mixed_bit_matmul.default]
    assert len(ops) == 14
    traced = exported.module()
    seen = set()
    with torch.no_grad():
        for tau, force in ((0.2, 0), (0.8, 0), (0.5, 1), (0.5, 3)):
            args = (torch.randint(0, 256, (1, 5)), torch.tensor(tau), torch.tensor(force))
            (y1, c1), (y2, c2) = traced(*args), wrapper(*args)
            torch.testing.assert_close(y1, y2, rtol=0, atol=0)
            assert torch.equal(c1, c2)
            if force:
                assert torch.all(c1 == force)
            seen.add(round(c1.float().mean().item(), 4))
    assert len(seen) >= 3  # τ and force change the routing without re-tracing
