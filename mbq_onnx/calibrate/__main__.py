"""``python -m mbq_onnx.calibrate``: calibrate a causal LM once for all precisions and write an artifact."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..quant.spec import QuantSpec
from ..tau_table import TAU_TABLE_BITS
from .config import PRESETS, ROUTER_GRANULARITIES
from .matmul import GRAD_DTYPES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mbq_onnx.calibrate",
        description="Single calibration for all precisions (LWC + token routers) → artifact directory.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="local Hugging Face causal-LM folder (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--output", required=True, help="artifact directory (an existing artifact is replaced)")
    p.add_argument("--slices", default="4,2,2", help="slice bit widths, base first (default 4,2,2)")
    p.add_argument("--group", type=int, default=128, help="group size along K, a power of two >= 16")
    p.add_argument("--preset", choices=sorted(PRESETS), default="fast", help="hyper-parameter preset")
    p.add_argument("--samples", type=int, help="calibration windows (preset default)")
    p.add_argument("--seqlen", type=int, help="tokens per window (preset default)")
    p.add_argument("--epochs", type=int, help="stage-2 epochs (all slices + routers)")
    p.add_argument("--base-epochs", type=int, help="stage-1 epochs (base slice only)")
    p.add_argument("--batch-size", type=int, help="windows per optimiser step")
    p.add_argument("--router", choices=ROUTER_GRANULARITIES, help="router granularity (default linear)")
    p.add_argument("--precisions", help="calibrate only these slice counts, e.g. 1 (bit-specific baseline)")
    p.add_argument("--holdout", type=int, help="held-out windows for early stopping and the guard")
    p.add_argument("--grad-dtype", choices=GRAD_DTYPES, help="backward matmuls (auto: bf16 if native)")
    p.add_argument(
        "--error-feedback",
        help="GPTQ-style error-feedback exponents tried per block, e.g. 0.75,1; the held-out windows keep "
        "the best or none; 'none' turns it off (default: the preset's — fast: none, medium/paper: 0.75,1)",
    )
    p.add_argument(
        "--let",
        action=argparse.BooleanOptionalAction,
        help="equivalent transformation (OmniQuant LET, AWQ-style activation-aware start): per-channel "
        "scales folded into the norms and producer linears (default: the preset's)",
    )
    p.add_argument("--lr-let", type=float, help="learning rate of the LET scales (0: kept at their start)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _check_output(out: Path) -> str | None:
    """Why ``out`` must not be written, or ``None``: it may be new, an empty directory or an artifact."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"--output {out} exists and is not a directory"
    if not any(out.iterdir()):
        return None
    try:
        cfg = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        cfg = None
    if not isinstance(cfg, dict) or cfg.get("format") != "mbq-artifact":
        return f"--output {out} exists and is not an mbq artifact; refusing to replace it"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = QuantSpec.parse(args.slices, args.group)
    except ValueError as e:
        return _fail(str(e))
    precisions = None
    if args.precisions:
        try:
            precisions = [int(x) for x in args.precisions.split(",")]
        except ValueError:
            return _fail(f"--precisions {args.precisions!r}: expected slice counts such as 1 or 1,3")
        if any(not 1 <= k <= spec.num_slices for k in precisions):
            return _fail(f"--precisions {args.precisions}: slice counts must lie within 1..{spec.num_slices}")
    error_feedback = None
    if args.error_feedback is not None:
        if args.error_feedback.strip().lower() == "none":
            error_feedback = ()
        else:
            try:
                error_feedback = tuple(float(x) for x in args.error_feedback.split(","))
            except ValueError:
                return _fail(
                    f"--error-feedback {args.error_feedback!r}: expected exponents such as 0.5,1 or none"
                )
    try:
        cfg = PRESETS[args.preset].with_overrides(
            samples=args.samples,
            seqlen=args.seqlen,
            epochs=args.epochs,
            base_epochs=args.base_epochs,
            batch_size=args.batch_size,
            router=args.router,
            holdout=args.holdout,
            grad_dtype=args.grad_dtype,
            error_feedback=error_feedback,
            let=args.let,
            lr_let=args.lr_let,
            seed=args.seed,
        )
    except ValueError as e:
        return _fail(str(e))
    out = Path(args.output)
    if (why := _check_output(out)) is not None:
        return _fail(why)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..assets import AssetError, load_model, resolve_model
    from . import calibrate, decoder_blocks, write_artifact

    t0 = time.perf_counter()
    try:
        model_dir = resolve_model(args.model)
        model, tokenizer = load_model(model_dir)
        decoder_blocks(model)
    except (AssetError, ValueError) as e:
        return _fail(f"unsupported model: {e}" if isinstance(e, ValueError) else str(e))
    try:
        result = calibrate(model, tokenizer, spec, cfg, precisions=precisions, progress=not args.no_progress)
    except (AssetError, ValueError) as e:
        return _fail(str(e), 1)
    result.report["seconds_wall"] = round(time.perf_counter() - t0, 3)
    source = {
        "model": str(model_dir) if args.model else "embedded:SmolLM2-135M-Instruct",
        "preset": args.preset,
        "seed": cfg.seed,
        "precisions": precisions,
    }
    path = write_artifact(out, model, result, tokenizer=tokenizer, source=source, overwrite=True)
    table = ", ".join(f"τ={r['tau']:.2f}→{r[TAU_TABLE_BITS]:.2f}b" for r in result.tau_table[::6])
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s" + (f" ({table})" if table else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
