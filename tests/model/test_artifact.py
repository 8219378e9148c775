"""Artifact round trip and the clear errors of load_artifact / save_artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mbq_onnx.model import (
    ArtifactError,
    SliceRouter,
    build_model,
    load_artifact,
    quantize_model,
    save_artifact,
)
from mbq_onnx.quant.spec import QuantSpec


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.no_grad():
        yield


IDS = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("granularity", "tied", "slices"),
    [("linear", True, (4, 2, 2)), ("block", False, (4, 2, 2)), ("none", True, (2, 2, 2, 2))],
)
def test_round_trip_gives_identical_logits(tiny_llama, tmp_path: Path, granularity, tied, slices) -> None:
    from tiny_models import make_router_spread

    spec = QuantSpec(slices, 16)
    model = tiny_llama(tie_word_embeddings=tied)
    ctx = quantize_model(model, spec, granularity=granularity, router_hidden=8)
    make_router_spread(model)
    path = save_artifact(
        tmp_path / "art",
        model,
        spec,
        tau_table=[{"tau": 0.5, "avg_slices": 2, "avg_bits": 6}],
        source={"seed": 0},
        report={"losses": []},
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "calibration_report.json",
        "config.json",
        "weights.safetensors",
    ]
    art = load_artifact(path, expected_spec=spec)
    assert art.granularity == granularity and art.spec == spec and art.tau_table[0]["tau"] == 0.5
    assert ("lm_head.weight" in art.tensors) == (not tied)
    built, ctx2 = build_model(art)
    assert built.config.tie_word_embeddings == tied
    shared = built.lm_head.weight.data_ptr() == built.model.embed_tokens.weight.data_ptr()
    assert shared == tied
    for tau in (0.2, 0.5, 0.8):
        ctx.tau = ctx2.tau = tau
        torch.testing.assert_close(built(IDS).logits, model(IDS).logits, rtol=0, atol=0)
    for k in range(1, spec.num_slices + 1):
        ctx.force_slices = ctx2.force_slices = k
        torch.testing.assert_close(built(IDS).logits, model(IDS).logits, rtol=0, atol=0)
    cached, ctx3 = build_model(path, cache_weights=True)
    ctx3.force_slices = spec.num_slices
    torch.testing.assert_close(cached(IDS).logits, model(IDS).logits, rtol=1e-5, atol=1e-5)


def test_fixture_artifact_routes_tokens_differently(tiny_artifact) -> None:
    model, ctx = build_model(tiny_artifact(granularity="linear"))
    ctx.record = True
    means = []
    for tau in (0.1, 0.9):
        ctx.tau, ctx.records = tau, []
        model(IDS)
        counts = torch.cat([r.reshape(-1) for r in ctx.records])
        means.append(counts.float().mean().item())
        assert counts.min() >= 1 and counts.max() <= 3
    assert means[0] > means[1]


def test_save_is_atomic_and_refuses_to_overwrite(tiny_llama, tmp_path: Path) -> None:
    spec = QuantSpec((4, 2, 2), 16)
    with pytest.raises(ArtifactError, match="no MixedBitLinear"):
        save_artifact(tmp_path / "a", tiny_llama(), spec)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    model = tiny_llama()
    quantize_model(model, spec, granularity="none")
    save_artifact(tmp_path / "a", model, spec)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_artifact(tmp_path / "a", model, spec)
    save_artifact(tmp_path / "a", model, spec, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    with pytest.raises(ArtifactError, match="slice_bits=\\[4, 2, 2\\]"):
        save_artifact(tmp_path / "b", model, QuantSpec((2, 2, 2, 2), 16))


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_load_errors_name_the_problem(tiny_artifact, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope")
    path = tiny_artifact(granularity="none")
    with pytest.raises(
        ArtifactError,
        match=r"calibrated with slice_bits=\[4, 2, 2\].*slice_bits=\[2, 2, 2, 2\] group_size=16 was req",
    ):
        load_artifact(path, expected_spec=QuantSpec((2, 2, 2, 2), 16))
    with pytest.raises(ArtifactError, match="group_size=32 was requested"):
        load_artifact(path, expected_spec=QuantSpec((4, 2, 2), 32))

    _edit_config(path, slice_bits=[2, 2, 2, 2])  # config says another layout than the weights hold
    with pytest.raises(ArtifactError, match="do not match the config's slice layout"):
        load_artifact(path)
    _edit_config(path, slice_bits=[4, 2, 2], group_size=32)
    with pytest.raises(ArtifactError, match="do not match"):
        load_artifact(path)
    _edit_config(path, slice_bits=[4, 4, 2], group_size=16)
    with pytest.raises(ArtifactError, match="sum to 10 bits"):
        load_artifact(path)
    _edit_config(path, slice_bits=[4, 2, 2], format_version=2)
    with pytest.raises(ArtifactError, match="format_version 2 is not supported"):
        load_artifact(path)
    _edit_config(path, format_version=1, format="something-else")
    with pytest.raises(ArtifactError, match="format is 'something-else'"):
        load_artifact(path)
    _edit_config(path, format="mbq-artifact")
    load_artifact(path)  # repaired

    weights = path / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_artifact(path)
    weights.unlink()
    with pytest.raises(ArtifactError, match=r"missing weights\.safetensors"):
        load_artifact(path)


def test_build_rejects_weights_for_another_model(tiny_artifact) -> None:
    path = tiny_artifact(granularity="none")
    cfg = json.loads((path / "config.json").read_text())
    cfg["hf_config"]["num_hidden_layers"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="weights do not match the model: missing"):
        build_model(path)


def test_tau_table_bits_key_old_and_new(tmp_path):
    """The τ table's bits are per routed call (``avg_bits_per_call``); artifacts with the old ``avg_bits``
    key still load, renamed."""
    from tiny_models import make_tiny_artifact

    from mbq_onnx.tau_table import tau_table_bits

    path = make_tiny_artifact(tmp_path / "a")  # written with the old key: saved with the new one
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["tau_table"] == [{"tau": 0.5, "avg_slices": 2.0, "avg_bits_per_call": 6.0}]
    cfg["tau_table"] = [{"tau": 0.5, "avg_slices": 2.0, "avg_bits": 6.0}]  # as an old artifact has it
    (path / "config.json").write_text(json.dumps(cfg))
    art = load_artifact(path)
    assert art.tau_table == [{"tau": 0.5, "avg_slices": 2.0, "avg_bits_per_call": 6.0}]
    assert tau_table_bits({"tau": 0.1, "avg_bits": 7.0}) == tau_table_bits({"avg_bits_per_call": 7.0}) == 7.0


def test_tau_schedule_is_stored_and_old_artifacts_route_every_gate_at_tau(tmp_path):
    """New artifacts store their τ schedule (bracketed by default) and build a context with it; an artifact
    without one (written before schedules existed) reads as ``"shared"``, so its τ table stays true; an
    unknown schedule is an error naming it."""
    from tiny_models import make_tiny_artifact

    from mbq_onnx.model.routing import gate_taus, slice_counts

    path = make_tiny_artifact(tmp_path / "a")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["router"]["tau_schedule"] == "bracketed" and load_artifact(path).tau_schedule == "bracketed"
    model, ctx = build_model(path)
    assert ctx.tau_schedule == "bracketed"
    router = next(m for m in model.modules() if isinstance(m, SliceRouter))
    x = torch.randn(200, router.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert slice_counts(router(x), gate_taus(0.5, 3, ctx.tau_schedule)).eq(2).all()  # bracketed: 6 bits
    del cfg["router"]["tau_schedule"]
    (path / "config.json").write_text(json.dumps(cfg))
    assert load_artifact(path).tau_schedule == "shared"
    assert build_model(path)[1].tau_schedule == "shared"
    cfg["router"]["tau_schedule"] = "nested"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="router tau_schedule 'nested', expected one of"):
        load_artifact(path)
