"""Single calibration for all precisions (block by block, LWC + routers) and the artifact it writes.

```python
from mbq_onnx.calibrate import PRESETS, calibrate, write_artifact
result = calibrate(model, tokenizer, QuantSpec((4, 2, 2), 128), PRESETS["fast"])
write_artifact("out/artifact", model, result, tokenizer=tokenizer)
```
``precisions=[k]`` calibrates for slice count k alone (the bit-specific same-method baseline);
:func:`fake_quantize_model` turns a float model into the dequantized model at a slice count.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..quant.spec import QuantSpec
from .config import PRESETS, CalibConfig
from .engine import CalibrationResult, calibrate_blocks, decoder_blocks, fake_quantize_model

__all__ = [
    "PRESETS",
    "CalibConfig",
    "CalibrationResult",
    "calibrate",
    "calibrate_blocks",
    "decoder_blocks",
    "fake_quantize_model",
    "write_artifact",
]


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    spec: QuantSpec,
    config: CalibConfig | None = None,
    *,
    precisions: Sequence[int] | None = None,
    input_ids: Tensor | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """Calibrate ``model`` for every slice count of ``spec`` (or only ``precisions``) at once.

    Calibration windows: ``input_ids [n, L]`` if given (the last ``config.holdout`` are held out), else
    ``config.samples`` random ``config.seqlen``-token windows of the pre-2000 SOTU text plus
    ``config.holdout`` held-out ones after them (:func:`mbq_onnx.assets.calibration_samples`).
    The model itself is left unchanged.
    """
    cfg = config or PRESETS["fast"]
    if input_ids is None:
        from ..assets import calibration_samples

        if tokenizer is None:
            raise ValueError("calibrate: give a tokenizer (to sample the calibration text) or input_ids")

        input_ids = calibration_samples(tokenizer, cfg.samples, cfg.seqlen, cfg.seed, cfg.holdout)
    return calibrate_blocks(model, spec, input_ids, cfg, precisions=precisions, progress=progress)


def write_artifact(
    path: str | os.PathLike[str],
    model: nn.Module,
    result: CalibrationResult,
    *,
    tokenizer: Any = None,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Store ``result`` (with ``model``'s float embeddings/norms and config) as an artifact, atomically.

    ``model`` (the float model that was calibrated) is copied, not modified.
    """
    from ..model import RoutingContext, quantize_model, save_artifact

    quantized = copy.deepcopy(model)
    for name, w in result.weights.items():  # error-feedback / LET weights: their codes are the chosen ones
        weight = quantized.get_submodule(name).weight
        weight.data.copy_(w.to(weight.dtype))
    for name, value in result.float_params.items():  # norms a LET scale was folded into
        param = quantized.get_parameter(name)
        param.data.copy_(value.to(param.dtype))
    routers = {name: copy.deepcopy(r) for name, r in result.routers.items()}
    quantize_model(
        quantized,
        result.spec,
        granularity=result.granularity,
        params=result.params,
        routers=routers,
        router_hidden=result.router_hidden,
        ctx=RoutingContext(tau_schedule=result.tau_schedule),
    )
    return save_artifact(
        path,
        quantized,
        result.spec,
        granularity=result.granularity,
        tau_table=result.tau_table,
        source=dict(source or {}),
        tokenizer=tokenizer,
        report=result.report,
        overwrite=overwrite,
    )
