"""Same-method single-precision baseline: our calibration run with the loss on one precision only.

This is the paper's "bit-specific" comparison: identical method, data and hyper-parameters as the
one-for-all calibration, but optimised for a single slice count ``k`` (no routers). The result is a
fake-quantized float model at ``spec.bits_at(k)`` bits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mbq_onnx.calibrate.config import CalibConfig
from mbq_onnx.quant.spec import QuantSpec

if TYPE_CHECKING:
    from mbq_onnx.calibrate import CalibrationResult

REPORT_FILE = "calibration_report.json"


def single_precision_calibration(
    model: nn.Module,
    spec: QuantSpec,
    input_ids: torch.Tensor,
    n_slices: int,
    config: CalibConfig | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """:func:`mbq_onnx.calibrate.calibrate` with ``precisions=[n_slices]`` on ``input_ids [n, L]``
    (model left unchanged)."""
    if not 1 <= n_slices <= spec.num_slices:
        raise ValueError(
            f"slice count {n_slices} out of range 1..{spec.num_slices} for {list(spec.slice_bits)}"
        )
    from mbq_onnx.calibrate import calibrate

    return calibrate(model, None, spec, config, precisions=[n_slices], input_ids=input_ids, progress=progress)


def single_precision_model(
    model: nn.Module,
    spec: QuantSpec,
    input_ids: torch.Tensor,
    n_slices: int,
    config: CalibConfig | None = None,
    progress: bool = True,
) -> nn.Module:
    """Calibrate for ``n_slices`` only and fake-quantize ``model`` in place at that precision; returns it."""
    from mbq_onnx.calibrate import fake_quantize_model

    result = single_precision_calibration(model, spec, input_ids, n_slices, config, progress)
    return fake_quantize_model(model, result, n_slices)


def artifact_calib_settings(artifact_path: str | Path) -> tuple[CalibConfig | None, tuple[int, int] | None]:
    """The calibration config and ``(samples, seqlen)`` an artifact was made with, from its
    ``calibration_report.json`` (``(None, None)`` when it has none)."""
    path = Path(artifact_path) / REPORT_FILE
    if not path.is_file():
        return None, None
    report: dict[str, Any] = json.loads(path.read_text())
    cfg_dict = report.get("config")
    cfg = None
    if isinstance(cfg_dict, dict):
        known = set(CalibConfig.__dataclass_fields__)
        kwargs = {k: v for k, v in cfg_dict.items() if k in known}
        if "tau_grid" in kwargs:
            kwargs["tau_grid"] = tuple(kwargs["tau_grid"])
        cfg = CalibConfig(**kwargs)
    shape = report.get("samples")
    sizes = (int(shape[0]), int(shape[1])) if isinstance(shape, list) and len(shape) == 2 else None
    if sizes is None and cfg is not None:
        sizes = (cfg.samples, cfg.seqlen)
    return cfg, sizes
