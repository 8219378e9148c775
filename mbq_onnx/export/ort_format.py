"""ONNX → ORT format (``.ort``, for ORT Mobile) with ONNX Runtime's own converter and the op library."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

ORT_OPTIMIZATION_LEVEL = "basic"


def convert_to_ort(model: Path, custom_op_library: Path | None = None) -> Path:
    """Convert ``model`` (``*.onnx``) to ``*.ort`` beside it with
    ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed optimizations, ARM target: no x86-only
    layout transforms; level ``basic``: only hardware-independent graph rewrites). Also writes
    ``*.required_operators.config`` (the operator list for a minimal ORT build)."""
    import os

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    model = Path(model)
    target = model.with_suffix(".ort")
    previous = os.environ.get("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL")
    os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = ORT_OPTIMIZATION_LEVEL
    try:
        with contextlib.redirect_stdout(io.StringIO()) as log:
            try:
                convert_onnx_models_to_ort(
                    model,
                    output_dir=model.parent,
                    optimization_styles=[OptimizationStyle.Fixed],
                    custom_op_library_path=custom_op_library,
                    target_platform="arm",
                )
            except Exception as e:
                raise RuntimeError(f"ORT format conversion of {model} failed: {e}\n{log.getvalue()}") from e
    finally:
        if previous is None:
            os.environ.pop("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", None)
        else:
            os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = previous
    written = sorted(model.parent.glob(f"{model.stem}.*ort"))
    if not written:
        raise RuntimeError(f"ORT format conversion of {model} wrote no .ort file\n{log.getvalue()}")
    written[0].replace(target)
    for cfg in model.parent.glob(f"{model.stem}.required_operators*.config"):
        # the converter writes the (temporary) absolute path of the .ort file in a comment: keep the name only
        lines = [
            f"# - {target.name}" if line.startswith("# - ") else line for line in cfg.read_text().splitlines()
        ]
        (model.parent / f"{model.stem}.required_operators.config").write_text("\n".join(lines) + "\n")
        if cfg.name != f"{model.stem}.required_operators.config":
            cfg.unlink()
    return target
