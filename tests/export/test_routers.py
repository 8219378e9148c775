"""Export-time grouped routers (``mbq_onnx/export/routers.py``): same decisions as the model's own
routers (eager, per-linear and per-block), the model restored afterwards, and the exported router graph
(one ``com.mbq::RouterCounts`` node per group of routers reading the same tensor)."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch
from export_testlib import make_artifact

from mbq_onnx.export.routers import grouped_routers, router_groups
from mbq_onnx.model import build_model
from mbq_onnx.model.routing import SliceRouter

CASES = [
    (0.7, None),
    (0.3, None),
    (0.0, None),
    (1.0, None),
    (torch.tensor(0.6), torch.tensor(0)),
    (0.5, torch.tensor(2)),
    (0.5, torch.tensor(9)),  # clamped to S
    (0.8, torch.tensor(-1)),  # <= 0: routers decide
    (0.5, 1),  # a Python int
]


@pytest.fixture(scope="module")
def tiny_block(export_workdir):
    return build_model(make_artifact(export_workdir / "artifact-block-routers", granularity="block", seed=2))


def _forward(model, ctx, ids, tau, force):
    ctx.tau, ctx.force_slices, ctx.record = tau, force, True
    ctx.records.clear()
    try:
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
        return logits, torch.stack(ctx.records)
    finally:
        ctx.record, ctx.force_slices = False, None
        ctx.records.clear()


@pytest.mark.parametrize("granularity", ["linear", "block"])
def test_grouped_routers_decide_like_the_model(granularity, tiny_torch, tiny_block):
    model, ctx = tiny_torch if granularity == "linear" else tiny_block
    ids = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(0))
    seen = set()
    for tau, force in CASES:
        ref_logits, ref_counts = _forward(model, ctx, ids, tau, force)
        with grouped_routers(model, ctx) as state:
            logits, counts = _forward(model, ctx, ids, tau, force)
        assert torch.equal(counts, ref_counts), (tau, force)
        torch.testing.assert_close(logits, ref_logits)
        assert state.computed == (len(router_groups(model, ctx)) if granularity == "linear" else 2)
        seen |= set(counts.unique().tolist())
    assert seen == {1, 2, 3}


def test_grouped_routers_restore_the_model(tiny_torch, tiny_block):
    for model, ctx in (tiny_torch, tiny_block):
        before = dict(model.state_dict())
        routers = {n: type(getattr(m, "router", None)) for n, m in model.named_modules()}
        with grouped_routers(model, ctx):
            assert set(model.state_dict()) != set(before)
        assert set(model.state_dict()) == set(before)
        assert {n: type(getattr(m, "router", None)) for n, m in model.named_modules()} == routers
        routed = sum(isinstance(getattr(m, "router", None), SliceRouter) for m in model.modules())
        ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(1))
        assert _forward(model, ctx, ids, 0.5, None)[1].shape[0] == routed  # the original hooks record again


def test_groups_follow_the_shared_inputs(tiny_torch):
    model, ctx = tiny_torch
    groups = router_groups(model, ctx)
    names = [n for g in groups for n in g]
    linears = [n for n, m in model.named_modules() if getattr(m, "router", None) is not None]
    assert sorted(names) == sorted(linears)
    leaves = [[n.rsplit(".", 1)[1] for n in g] for g in groups]
    assert leaves[:4] == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]


def test_exported_router_graph(tiny_export, tiny_torch):
    """One RouterCounts node per group (combine=0, members = the group's size), none of the former
    standard-op chain; no cumprod (ReduceProd) and no per-router force Where."""
    model, ctx = tiny_torch
    groups = router_groups(model, ctx)
    proto = onnx.load(str(tiny_export / "model.onnx"))
    ops = Counter(n.op_type for n in proto.graph.node)
    routers = [n for n in proto.graph.node if n.op_type == "RouterCounts"]
    assert len(routers) == len(groups) and all(n.domain == "com.mbq" for n in routers)
    members = sorted(onnx.helper.get_node_attr_value(n, "members") for n in routers)
    assert members == sorted(len(g) for g in groups)
    assert all(a.name != "combine" for n in routers for a in n.attribute)
    assert ops["ArgMin"] == ops["LpNormalization"] == ops["Pad"] == 0
    assert ops["ReduceProd"] == 0 and ops["Where"] < len(groups)
    router_inits = {i.name.rsplit(".", 1)[0] for i in proto.graph.initializer if ".router_" in i.name}
    assert "model.layers.0.self_attn.router_q_k_v" in router_inits
    assert len(router_inits) == len(groups)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    counts_from = Counter(producers[n.input[1]] for n in proto.graph.node if n.op_type == "MixedBitMatMul")
    assert set(counts_from) == {"RouterCounts", "Gather"}
    assert counts_from["RouterCounts"] == sum(len(g) == 1 for g in groups)
