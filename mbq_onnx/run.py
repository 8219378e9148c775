"""``python -m mbq_onnx.run``: generate text with an exported model under a latency budget or fixed precision.

Examples::

    python -m mbq_onnx.run --model DIR --prompt "The capital of France is" --budget-ms 25
    python -m mbq_onnx.run --model DIR --prompt "..." --tau 0.5 --threads 2 --json
    python -m mbq_onnx.run --model DIR --prompt "..." --bits 5.5        # τ read off the model's τ table
    python -m mbq_onnx.run --model DIR --prompt "..." --slices 1        # pure base precision
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_TAU = 0.5


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _tau(text: str) -> float:
    value = _finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"τ must be in [0, 1], got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mbq_onnx.run",
        description="Generate with an exported mixed-bit model; τ is set per step by a latency-budget "
        f"controller (--budget-ms) or fixed (--tau / --slices). Default: --tau {DEFAULT_TAU:g}.",
    )
    p.add_argument("--model", required=True, type=Path, help="exported model dir (python -m mbq_onnx.export)")
    p.add_argument("--prompt", required=True, help="prompt text (used as is, no chat template)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--budget-ms", type=_positive_float, help="target latency per decode step (ms)")
    mode.add_argument("--tokens-per-s", type=_positive_float, help="target decode speed (= 1000/budget-ms)")
    mode.add_argument("--tau", type=_tau, help="fixed router threshold in [0, 1] (higher = fewer bits)")
    mode.add_argument(
        "--bits",
        type=_positive_float,
        help="fixed average bits per routed call: τ read off the model's τ table (calibration text)",
    )
    mode.add_argument("--slices", type=_positive_int, help="fixed slice count for every token (1 = base)")
    p.add_argument("--threads", type=_positive_int, help="ORT intra-op threads (default: ORT's choice)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--temperature", type=_finite_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=_nonneg_int, default=0)
    p.add_argument("--top-p", type=_positive_float, default=1.0)
    p.add_argument("--seed", type=_nonneg_int, default=None)
    p.add_argument("--reprobe", action="store_true", help="re-measure the τ→latency map (budget mode)")
    p.add_argument(
        "--probe-cache", type=Path, default=None, help="probe cache dir (default: cache dir/probe)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (text, summary, trace)")
    return p


def _print_summary(summary: dict, mode: str, out) -> None:
    def fmt(v, spec=".2f"):
        return "n/a" if v is None else format(v, spec)

    taus = summary["tau_trace"]
    shown = " ".join(f"{t:.2f}" for t in taus[:24]) + (" …" if len(taus) > 24 else "")
    print(
        f"\n--- {mode}: {summary['new_tokens']} tokens, {fmt(summary['tokens_per_s'], '.1f')} tok/s, "
        f"step p50 {fmt(summary['p50_ms'])} ms, p95 {fmt(summary['p95_ms'])} ms, "
        f"avg bits {fmt(summary['avg_bits'])}, prefill {summary['prefill_ms']:.1f} ms",
        file=out,
    )
    print(f"status: {summary['status_counts']}  τ trace: {shown}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.prompt.strip():
        parser.error("--prompt must not be empty")
    if not args.model.is_dir():
        parser.error(f"--model: {args.model} is not a directory")
    if not (args.model / "mbq_config.json").is_file():
        parser.error(f"--model: {args.model} is not an exported model dir (no mbq_config.json)")
    if not 0.0 < args.top_p <= 1.0:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.probe_cache is not None and args.probe_cache.exists() and not args.probe_cache.is_dir():
        parser.error(f"--probe-cache: {args.probe_cache} is not a directory")
    try:
        return _run(parser, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:  # ORT load/run failures are RuntimeError subclasses
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"python -m mbq_onnx.run: error: {msg}", file=sys.stderr)
        return 1


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:

    from mbq_onnx.runtime import (  # imported late: argument errors stay instant
        BudgetController,
        FixedController,
        MbqSession,
        ModelDirError,
        Sampling,
        generate,
        load_or_probe,
        tau_for_bits,
    )

    try:
        session = MbqSession(args.model, threads=args.threads)
    except (ModelDirError, ValueError, OSError, RuntimeError) as e:
        parser.error(" ".join(str(e).split()))
    except (AttributeError, KeyError, TypeError) as e:  # a malformed mbq_config.json (wrong JSON shape)
        parser.error(f"--model: {args.model}/mbq_config.json is malformed ({type(e).__name__}: {e})")
    if args.slices is not None and args.slices > session.config.num_slices:
        parser.error(f"--slices must be in 1..{session.config.num_slices} for this model, got {args.slices}")

    log = sys.stderr
    latency_map, from_cache = None, None
    if args.budget_ms is not None or args.tokens_per_s is not None:
        target = args.budget_ms if args.budget_ms is not None else 1000.0 / args.tokens_per_s
        latency_map, from_cache = load_or_probe(
            session, args.probe_cache, refresh=args.reprobe, progress=not args.json
        )
        controller = BudgetController(latency_map, target)
        mode = f"budget {target:.2f} ms"
    elif args.slices is not None:
        controller = FixedController(slices=args.slices, num_slices=session.config.num_slices)
        mode = f"slices {args.slices}"
    elif args.bits is not None:
        try:
            tau = tau_for_bits(session.config.tau_table, args.bits)
        except ValueError as e:
            parser.error(f"--bits: {e}")
        controller = FixedController(tau=tau)
        mode = f"bits {args.bits:g} (tau {tau:.6g})"
    else:
        tau = args.tau if args.tau is not None else DEFAULT_TAU
        controller = FixedController(tau=tau)
        mode = f"tau {tau:g}"

    def stream(_tid: int, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if not args.json:
        if latency_map is not None:
            src = "cached" if from_cache else "measured"
            pts = ", ".join(
                f"τ={t:.2f}: {b:.2f} b {la:.1f} ms"
                for t, b, la in zip(latency_map.taus, latency_map.bits, latency_map.latency, strict=True)
            )
            print(f"latency map ({src}): {pts}", file=log)
        sys.stdout.write(args.prompt)
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    result = generate(
        session,
        args.prompt,
        controller,
        args.max_new_tokens,
        sampling,
        on_token=None if args.json else stream,
    )
    summary = result.summary()
    if args.json:
        record = {
            "model": str(args.model),
            "mode": mode,
            "threads": args.threads,
            "prompt": args.prompt,
            "text": result.text,
            "summary": summary,
            "latency_map": latency_map.to_json() if latency_map is not None else None,
            "trace": result.trace(),
        }
        print(json.dumps(record, allow_nan=False, default=lambda o: None))
    else:
        _print_summary(summary, mode, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
