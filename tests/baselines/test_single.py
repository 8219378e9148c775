"""Same-method single-precision baseline: our calibration with the loss on one precision only."""

from __future__ import annotations

import pytest
import torch

from mbq_onnx.baselines import BaselineSpec, decoder_linears, rtn_quantize_model
from mbq_onnx.baselines.single import single_precision_model
from mbq_onnx.calibrate.config import CalibConfig
from mbq_onnx.quant.spec import QuantSpec

TINY = CalibConfig(samples=4, seqlen=32, base_epochs=0, epochs=2, batch_size=4, lr_lwc=2e-2)


@pytest.mark.parametrize("n_slices", [1, 3])
def test_single_precision_model_sits_on_its_grid_and_beats_rtn_in_sample(tiny_llama, n_slices):
    spec = QuantSpec((4, 2, 2), 16)
    bits = spec.bits_at(n_slices)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    ref = tiny_llama()
    model = single_precision_model(tiny_llama(), spec, ids, n_slices, TINY, progress=False)
    for name, linear in decoder_linears(model).items():
        w = linear.weight.detach()
        for g0 in range(0, w.shape[1], 16):
            assert max(len(torch.unique(r)) for r in w[:, g0 : g0 + 16]) <= 2**bits, name
    with torch.no_grad():
        target = ref(input_ids=ids).logits
        ours = model(input_ids=ids).logits
        rtn = rtn_quantize_model(tiny_llama(), BaselineSpec(bits, 16))(input_ids=ids).logits
    assert torch.isfinite(ours).all()
    assert float((ours - target).pow(2).mean()) <= float((rtn - target).pow(2).mean()) * 1.001


def test_slice_count_out_of_range_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        single_precision_model(tiny_llama(), QuantSpec((4, 2, 2), 16), torch.zeros(1, 8, dtype=torch.long), 4)
