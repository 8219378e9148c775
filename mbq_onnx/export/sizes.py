"""Measure on-disk sizes of one LLM exported several ways: mixed-bit (this exporter) vs float32, float16 and
ORT MatMulNBits int4/int8 — the table in ``docs/export.md``.

``python -m mbq_onnx.export.sizes --work DIR [--model HF_DIR] [--artifact DIR] [--json OUT.json]``

Without ``--artifact`` an RTN artifact (min/max parameters, untrained routers) of the model is made
for the measurement: the file size does not depend on calibration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

from .exporter import MODEL_FILE, export_artifact, export_float_model
from .graph import save_graph
from .matmul_nbits import quantize_matmul_nbits


def rtn_artifact(model_dir: Path, out: Path, slices: tuple[int, ...] = (4, 2, 2), group: int = 64) -> Path:
    """A quick artifact of ``model_dir``: RTN min/max slices + freshly initialised per-linear routers."""
    from ..assets import load_model
    from ..model import quantize_model, save_artifact
    from ..quant.spec import QuantSpec

    model, _ = load_model(model_dir)
    spec = QuantSpec(slices, group)
    quantize_model(model, spec, granularity="linear", progress=True)
    return save_artifact(
        out,
        model,
        spec,
        source={"model": model_dir.name, "method": "rtn-minmax"},
        tokenizer=model_dir,
        overwrite=True,
    )


def float16_copy(src: Path, out: Path) -> Path:
    """``src/model.onnx`` with float16 weights and float32 I/O (ORT's float16 converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(src / MODEL_FILE)), keep_io_types=True)
    save_graph(model, out / MODEL_FILE)
    return out


def weight_file_bytes(model_dir: Path) -> int:
    return sum(
        p.stat().st_size
        for p in model_dir.iterdir()
        if p.name.startswith("model.") and p.suffix in (".onnx", ".data")
    )


def measure(work: Path, model_dir: Path, artifact: Path | None = None) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    art = artifact or rtn_artifact(model_dir, work / "artifact-rtn-422-g64")
    cfg = json.loads((art / "config.json").read_text())
    rows = []
    mixed = export_artifact(art, work / "mixed-bit", ort_format=True, overwrite=True)
    fp32 = export_float_model(model_dir, work / "float32", overwrite=True)
    fp16 = float16_copy(fp32, work / "float16")
    label = f"mixed-bit {'/'.join(map(str, cfg['slice_bits']))} g{cfg['group_size']} (MixedBitMatMul)"
    rows.append(
        {
            "variant": label,
            "dir": mixed.name,
            "onnx_bytes": weight_file_bytes(mixed),
            "ort_bytes": (mixed / "model.ort").stat().st_size,
        }
    )
    rows.append(
        {"variant": "float32 (standard ops)", "dir": fp32.name, "onnx_bytes": weight_file_bytes(fp32)}
    )
    rows.append(
        {"variant": "float16 weights (standard ops)", "dir": fp16.name, "onnx_bytes": weight_file_bytes(fp16)}
    )
    for bits, block in ((8, 64), (4, 64), (4, 32)):
        out = quantize_matmul_nbits(
            fp32, work / f"matmulnbits-int{bits}-b{block}", bits=bits, block_size=block, overwrite=True
        )
        rows.append(
            {
                "variant": f"MatMulNBits int{bits} block {block}",
                "dir": out.name,
                "onnx_bytes": weight_file_bytes(out),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    base = next(r["onnx_bytes"] for r in rows if r["variant"].startswith("float32"))
    lines = ["| export | model.onnx (MB) | vs float32 |", "|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['onnx_bytes'] / 1e6:.1f} | {r['onnx_bytes'] / base:.2f}× |")
        if "ort_bytes" in r:
            lines.append(
                f"| {r['variant']}, model.ort | {r['ort_bytes'] / 1e6:.1f} | {r['ort_bytes'] / base:.2f}× |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mbq_onnx.export.sizes", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, metavar="DIR", help="directory for all exported variants")
    p.add_argument("--model", metavar="DIR", help="transformers model folder (default: the embedded SmolLM2)")
    p.add_argument(
        "--artifact", metavar="DIR", help="mixed-bit artifact of that model (default: make an RTN one)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    from ..assets import resolve_model

    model_dir = resolve_model(args.model)
    rows = measure(Path(args.work), model_dir, Path(args.artifact) if args.artifact else None)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model_dir.name, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
