"""``python -m mbq_onnx.export``: calibrated artifact → ONNX model directory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .graph import DEFAULT_OPSET, MIN_OPSET


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mbq_onnx.export",
        description="Export a calibrated mbq artifact to an ONNX Runtime model directory: model.onnx with "
        "one "
        "com.mbq::MixedBitMatMul node per quantized linear, one com.mbq::RouterCounts node per router "
        "group, a runtime "
        "threshold input `tau` and a `force_slices` input, optimum-style KV-cache I/O, plus "
        "mbq_config.json, the tokenizer files and the op library.",
        epilog="Example: python -m mbq_onnx.export --artifact ARTIFACT_DIR --output MODEL_DIR --ort",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--artifact",
        metavar="DIR",
        help="calibrated artifact directory (config.json + weights.safetensors, from mbq_onnx.calibrate)",
    )
    src.add_argument(
        "--hf-model",
        metavar="DIR",
        help="instead of an artifact: a transformers model folder, exported unquantized as a "
        "standard-op float32 baseline (input for MatMulNBits quantization)",
    )
    p.add_argument(
        "--output",
        metavar="DIR",
        required=True,
        help="output model directory (written atomically: a temporary directory renamed into place)",
    )
    past = p.add_mutually_exclusive_group()
    past.add_argument(
        "--with-past",
        dest="with_past",
        action="store_true",
        default=True,
        help="(default) KV-cache generation graph: past_key_values.{i}.key/value inputs and "
        "present.{i}.key/value outputs, as optimum's text-generation-with-past",
    )
    past.add_argument(
        "--no-past",
        dest="with_past",
        action="store_false",
        help="a graph without KV cache (whole sequences, e.g. perplexity), as optimum's text-generation",
    )
    p.add_argument(
        "--ort",
        action="store_true",
        help="also write model.ort (ORT format, for ORT Mobile) with onnxruntime's own converter and "
        "the op library",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        metavar="N",
        help=f"ONNX opset of the default domain (>= {MIN_OPSET}; default {DEFAULT_OPSET}); the custom "
        f"domain com.mbq is always version 1",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="export a standard-op float model instead: the artifact's weights dequantized at a fixed "
        "slice count, no routers, no tau/force_slices (parity checks, baseline; no op library needed)",
    )
    p.add_argument(
        "--reference-slices",
        type=int,
        metavar="K",
        help="with --reference: slices to dequantize (1 = base precision; default: all slices)",
    )
    p.add_argument(
        "--accuracy-level",
        type=int,
        default=0,
        metavar="{0,4}",
        help="accuracy_level of every MixedBitMatMul node: 0 (default) float activations, 4 int8 "
        "activations (faster, ~1e-2 relative error per linear; see custom_ops/README.md)",
    )
    p.add_argument(
        "--external-data",
        action="store_true",
        help="write the weights to model.onnx.data beside the graph (automatic above 1.8 GB of weights, "
        "protobuf's 2 GB limit)",
    )
    p.add_argument(
        "--graph",
        choices=("lean", "dynamo"),
        default=None,
        help="lean (default for KV-cache exports): ONNX Runtime GenAI's builder layout (GroupQueryAttention "
        "with one past/present buffer, fused norms, fused q/k/v and gate/up MixedBitMatMul, one fused "
        "router op per group); dynamo: the traced graph (always used for --no-past and --reference)",
    )
    p.add_argument(
        "--lm-head",
        choices=("float", "8bit", "mixed"),
        default="float",
        help="the tied LM head (lean graph only; GenAI and llama.cpp quantize it too): float32 (default), "
        "8bit (RTN, one slice), or mixed (RTN in the artifact's slices; each token's head runs at the "
        "rounded mean of that token's routing decisions, so a 4-bit token reads a 4-bit head)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..model.artifact import ArtifactError
    from .exporter import ExportError, export_artifact, export_float_model

    common = {
        "with_past": args.with_past,
        "ort_format": args.ort,
        "opset": args.opset,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
        "external_data": True if args.external_data else None,
    }
    try:
        if args.hf_model:
            if args.reference or args.reference_slices is not None or args.accuracy_level:
                raise ExportError(
                    "--reference/--reference-slices/--accuracy-level apply to --artifact exports only"
                )
            out = export_float_model(args.hf_model, args.output, **common)
        else:
            out = export_artifact(
                args.artifact,
                args.output,
                reference=args.reference,
                reference_slices=args.reference_slices,
                accuracy_level=args.accuracy_level,
                graph=args.graph,
                lm_head=args.lm_head,
                **common,
            )
    except (ArtifactError, ExportError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {out}")
    return 0
