"""Checks shared by the calibration tests."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from mbq_onnx.calibrate import fake_quantize_model
from mbq_onnx.model import build_model


def assert_artifact_runs_like_fake_quant(
    artifact: Path, model: nn.Module, result, ids: torch.Tensor, slices: Iterable[int]
) -> None:
    """The written artifact, forced to each slice count, gives the logits of the fake-quantized float model
    built from the same calibration result."""
    built, ctx = build_model(artifact)
    for k in slices:
        ctx.force_slices = k
        ref = fake_quantize_model(copy.deepcopy(model), result, k)
        with torch.no_grad():
            torch.testing.assert_close(
                built(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-4, atol=1e-4
            )
