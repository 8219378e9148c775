"""Baseline: ORT ``com.microsoft::MatMulNBits`` int4/int8 models made with ORT's own ``MatMulNBitsQuantizer``.

Input: a standard-op float model directory (``python -m mbq_onnx.export --hf-model DIR`` for the
original float weights, or ``--artifact DIR --reference``). Every MatMul whose weight is a constant
initializer (the decoder linears; a tied ``lm_head`` is a transposed embedding and stays float)
becomes one MatMulNBits node. CLI::

    python -m mbq_onnx.export.matmul_nbits --input FLOAT_DIR --output INT4_DIR --bits 4 --block-size 32
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

from .exporter import CONFIG_FILE, MODEL_FILE, ExportError, atomic_directory
from .graph import save_graph

#: int8 activations: the only fast MatMulNBits setting on these CPUs (see docs/export.md).
DEFAULT_ACCURACY_LEVEL = 4


def quantize_matmul_nbits(
    src: str | Path,
    output: str | Path,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = False,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    overwrite: bool = False,
) -> Path:
    """Write ``output`` = ``src`` with its constant-weight MatMuls quantized to ``bits`` (2/4/8) in blocks of
    ``block_size`` along K (asymmetric unless ``symmetric``). Copies the tokenizer files and records the
    settings in ``mbq_config.json`` (``kind: "matmul_nbits"``)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:], root.level = handlers, level  # its import calls logging.basicConfig(level=INFO)

    src, output = Path(src), Path(output)
    if not (src / MODEL_FILE).is_file():
        raise ExportError(
            f"{src} has no {MODEL_FILE}; export a float model first (python -m mbq_onnx.export "
            f"--hf-model DIR --output {src})"
        )
    config = json.loads((src / CONFIG_FILE).read_text()) if (src / CONFIG_FILE).is_file() else {}
    if config.get("kind") == "mixed-bit":
        raise ExportError(
            f"{src} is a mixed-bit export; MatMulNBits needs a standard-op float model "
            f"(--hf-model or --reference)"
        )
    if bits not in (2, 4, 8):
        raise ExportError(f"bits {bits}: MatMulNBits supports 2, 4 or 8")
    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"block size {block_size} must be a power of two >= 16")
    model = onnx.load(str(src / MODEL_FILE))
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level
    )
    quantizer.process()
    quantized = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in quantized.graph.node):
        raise ExportError(f"{src / MODEL_FILE}: no MatMul with a constant weight was quantized")
    with atomic_directory(output, overwrite) as tmp:
        save_graph(quantized, tmp / MODEL_FILE)
        for p in sorted(src.iterdir()):
            if p.is_file() and p.name in config.get("tokenizer_files", []):
                shutil.copyfile(p, tmp / p.name)
        config.update(
            {
                "kind": "matmul_nbits",
                "ort_model_file": None,
                "custom_op_library": None,
                "matmul_nbits": {
                    "bits": bits,
                    "block_size": block_size,
                    "symmetric": symmetric,
                    "accuracy_level": accuracy_level,
                    "source": src.name,
                },
            }
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    return output


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mbq_onnx.export.matmul_nbits",
        description="Quantize a standard-op float export to ORT MatMulNBits (baseline).",
    )
    p.add_argument(
        "--input", required=True, metavar="DIR", help="float model directory (from --hf-model/--reference)"
    )
    p.add_argument(
        "--output", required=True, metavar="DIR", help="output model directory (written atomically)"
    )
    p.add_argument("--bits", type=int, default=4, choices=(2, 4, 8), help="weight bits (default 4)")
    p.add_argument(
        "--block-size",
        type=int,
        default=32,
        metavar="B",
        help="quantization block along K, power of two >= 16 (default 32)",
    )
    p.add_argument("--symmetric", action="store_true", help="symmetric quantization (default asymmetric)")
    p.add_argument(
        "--accuracy-level",
        type=int,
        default=DEFAULT_ACCURACY_LEVEL,
        choices=(0, 1, 2, 3, 4),
        help="MatMulNBits accuracy_level (4 = int8 activations, the fast path; default 4)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = p.parse_args(argv)
    try:
        out = quantize_matmul_nbits(
            args.input,
            args.output,
            bits=args.bits,
            block_size=args.block_size,
            symmetric=args.symmetric,
            accuracy_level=args.accuracy_level,
            overwrite=args.overwrite,
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
