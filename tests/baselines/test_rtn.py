"""Bit-specific RTN: its own b-bit grid per (output channel, group), ragged last group included."""

from __future__ import annotations

import itertools

import pytest
import torch

from mbq_onnx.baselines import BaselineSpec, decoder_linears, rtn_quantize_model, rtn_quantize_weight


def _weight(n: int = 48, k: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * (1 + torch.rand(n, 1, generator=g))


def test_error_falls_with_every_bit():
    w = _weight()  # K=200: groups of 64 leave a ragged last group of 8
    errors = [float((rtn_quantize_weight(w, BaselineSpec(b, 64)) - w).norm() / w.norm()) for b in range(2, 9)]
    assert all(hi > lo for hi, lo in itertools.pairwise(errors)), errors
    # one more bit roughly halves the step: the error shrinks by well over 1.5x per bit
    assert all(hi / lo > 1.5 for hi, lo in itertools.pairwise(errors)), errors


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_each_group_uses_at_most_2_pow_b_levels_within_its_range(bits):
    w = _weight(16, 200)
    gs = 64
    q = rtn_quantize_weight(w, BaselineSpec(bits, gs))
    for g0 in range(0, w.shape[1], gs):  # includes the ragged group 192..199
        wq, wg = q[:, g0 : g0 + gs], w[:, g0 : g0 + gs]
        for row in range(w.shape[0]):
            levels = torch.unique(wq[row])
            assert len(levels) <= 2**bits
            step = (wg[row].max() - wg[row].min()) / (2**bits - 1)
            # round-to-nearest: every weight lands within half a step (+ the zero-point rounding) of itself
            assert float((wq[row] - wg[row]).abs().max()) <= float(step) * 1.0 + 1e-6


def test_8bit_is_nearly_lossless_and_2bit_is_not():
    w = _weight()
    e8 = float((rtn_quantize_weight(w, BaselineSpec(8, 128)) - w).norm() / w.norm())
    e2 = float((rtn_quantize_weight(w, BaselineSpec(2, 128)) - w).norm() / w.norm())
    assert e8 < 0.01 < 0.2 < e2


@pytest.mark.parametrize(
    ("bits", "group", "match"),
    [(1, 128, "bits 1"), (9, 128, "bits 9"), (4, 100, "power of two"), (4, 8, "power of two")],
)
def test_bad_settings_are_rejected(bits, group, match):
    with pytest.raises(ValueError, match=match):
        BaselineSpec(bits, group)


def test_model_quantizes_only_decoder_linears(tiny_llama):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = set(decoder_linears(model))
    assert len(names) == 2 * 7  # q k v o gate up down per layer
    rtn_quantize_model(model, BaselineSpec(4, 16))
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == (key.removesuffix(".weight") in names), key
