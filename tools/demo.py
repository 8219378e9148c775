"""The main job: calibrate the embedded model (fast preset), export it, run it under two latency budgets.

Writes ``reports/demo.json`` and ``reports/demo.png`` (latency, τ and average bits per decode step) and
prints a comparison table. Artifacts already in the cache dir are reused unless ``--fresh``.

Usage: python tools/demo.py [--fresh] [--threads N] [--max-new-tokens N] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mbq_onnx.assets import cache_dir
from mbq_onnx.atomic import replace_file, write_file
from mbq_onnx.runtime import (
    BudgetController,
    FixedController,
    GenerationResult,
    MbqSession,
    generate,
    load_or_probe,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_NAME = "smollm2-135m-mbq-fast"
MODEL_NAME = "smollm2-135m-mbq-fast-onnx"
DEFAULT_PROMPT = "The President told Congress that the most important task for the coming year is"
# Budgets as fractions of the way from base-only latency (0) to all-slices latency (1) in the probe map.
TIGHT, LOOSE = 0.25, 0.75


def _run(cmd: list[str], what: str) -> None:
    print(f"==> {what}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"demo: {what} failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    print(f"    {what} done in {time.perf_counter() - t0:.0f} s", flush=True)


def _export(artifact: Path, model_dir: Path) -> None:
    """Export the calibrated ``artifact`` to ``model_dir`` (replacing it) with the export CLI."""
    _run(
        [
            sys.executable,
            "-m",
            "mbq_onnx.export",
            "--artifact",
            str(artifact),
            "--output",
            str(model_dir),
            "--overwrite",
            # the fast deployment configuration, as GenAI and llama.cpp ship theirs: int8 activations and
            # an 8-bit LM head (+0.3 % perplexity for the head; README, end-to-end bench)
            "--accuracy-level",
            "4",
            "--lm-head",
            "8bit",
        ],
        "export",
    )


def prepare_model(fresh: bool, artifact: Path | None = None) -> Path:
    """Calibrate and export the embedded model unless both are already in the cache.

    With ``artifact`` (an existing calibrated artifact dir) calibration is skipped and it is exported.
    """
    models = cache_dir() / "models"
    model_dir = models / MODEL_NAME
    if artifact is not None:
        if not (artifact / "config.json").is_file():
            sys.exit(f"demo: --artifact {artifact} is not a calibrated artifact (no config.json)")
        model_dir = models / f"{artifact.name}-onnx"
        fresh = fresh or not (model_dir / "mbq_config.json").is_file()
        if fresh:
            _export(artifact, model_dir)
        return model_dir
    artifact = models / ARTIFACT_NAME
    have_artifact = (artifact / "config.json").is_file() and (artifact / "weights.safetensors").is_file()
    if fresh or not have_artifact:
        _run(
            [sys.executable, "-m", "mbq_onnx.calibrate", "--preset", "fast", "--output", str(artifact)],
            "calibrate (fast preset)",
        )
    else:
        print(f"==> reusing calibrated artifact {artifact}")
    exported = (model_dir / "mbq_config.json").is_file() and (model_dir / "model.onnx").is_file()
    if fresh or not have_artifact or not exported:
        _export(artifact, model_dir)
    else:
        print(f"==> reusing exported model {model_dir}")
    return model_dir


def _pct_over(result: GenerationResult, budget: float | None) -> float | None:
    if budget is None or not result.steps:
        return None
    return 100.0 * sum(s.latency_ms > budget for s in result.steps) / len(result.steps)


def plot(runs: list[dict], path: Path, title: str) -> None:
    """Latency, τ and average bits per decode step, one line per run, budgets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for i, run in enumerate(runs):
        color = f"C{i}"
        steps = run["trace"]
        x = [s["index"] for s in steps]
        axes[0].plot(x, [s["latency_ms"] for s in steps], color=color, lw=1, label=run["name"])
        if run["budget_ms"] is not None:
            axes[0].axhline(run["budget_ms"], color=color, ls="--", lw=1)
        axes[1].plot(x, [s["tau"] if s["force_slices"] == 0 else np.nan for s in steps], color=color, lw=1)
        axes[2].plot(x, [s["avg_bits"] for s in steps], color=color, lw=1)
    typical = max(float(np.median([s["latency_ms"] for s in r["trace"]])) for r in runs if r["trace"])
    axes[0].set_ylim(0, 3 * typical)  # scheduler spikes on a busy machine would flatten everything else
    axes[0].set_ylabel("step latency (ms, clipped at 3x median)")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("τ (router threshold)")
    axes[2].set_ylabel("average bits")
    axes[2].set_xlabel("decode step")
    fig.suptitle(title)
    fig.tight_layout()
    with replace_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fresh", action="store_true", help="recalibrate, re-export and re-probe")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--reports", type=Path, default=REPO / "reports")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--artifact", type=Path, help="use this calibrated artifact instead of calibrating")
    src.add_argument("--model", type=Path, help="use this exported model dir (skip calibration and export)")
    ap.add_argument(
        "--probe-cache", type=Path, default=None, help="probe cache dir (default: cache dir/probe)"
    )
    args = ap.parse_args()

    model_dir = args.model if args.model is not None else prepare_model(args.fresh, args.artifact)
    session = MbqSession(model_dir, threads=args.threads)
    print(f"==> latency probe ({args.threads} threads)", flush=True)
    lmap, cached = load_or_probe(session, args.probe_cache, refresh=args.fresh)
    print(
        f"    map ({'cached' if cached else 'measured'}): "
        + ", ".join(
            f"τ={t:.2f} {b:.2f} bits {la:.2f} ms"
            for t, b, la in zip(lmap.taus, lmap.bits, lmap.latency, strict=True)
        )
    )
    base_ms, full_ms = lmap.latency[-1], lmap.latency[0]
    tight = base_ms + TIGHT * (full_ms - base_ms)
    loose = base_ms + LOOSE * (full_ms - base_ms)
    s = session.config.num_slices
    plans = [
        (
            f"fixed base ({session.config.slice_bits[0]}-bit)",
            None,
            lambda: FixedController(slices=1, num_slices=s),
        ),
        (
            f"fixed all slices ({sum(session.config.slice_bits)}-bit)",
            None,
            lambda: FixedController(slices=s, num_slices=s),
        ),
        ("tight budget", tight, lambda: BudgetController(lmap, tight)),
        ("loose budget", loose, lambda: BudgetController(lmap, loose)),
    ]
    # One discarded generation first: ORT's arena grows with the KV cache during a process's first
    # generation, which would otherwise slow whichever run comes first.
    generate(
        session, args.prompt, FixedController(slices=s, num_slices=s), args.max_new_tokens, stop_token_ids=()
    )
    runs = []
    for name, budget, make in plans:
        print(f"==> generate: {name}" + (f" ({budget:.2f} ms/token)" if budget else ""), flush=True)
        result = generate(session, args.prompt, make(), args.max_new_tokens, stop_token_ids=())
        summary = result.summary()
        runs.append(
            {
                "name": name,
                "budget_ms": budget,
                "text": result.text,
                "summary": summary,
                "pct_steps_over_budget": _pct_over(result, budget),
                "trace": result.trace(),
            }
        )
        print(f"    {result.text!r}")
    _print_table(runs)
    report = {
        "model_dir": model_dir.name,
        "threads": args.threads,
        "prompt": args.prompt,
        "max_new_tokens": args.max_new_tokens,
        "latency_map": lmap.to_json(),
        "map_from_cache": cached,
        "budget_fractions": {"tight": TIGHT, "loose": LOOSE},
        "runs": runs,
    }
    out_json, out_png = args.reports / "demo.json", args.reports / "demo.png"
    write_file(out_json, json.dumps(report, indent=1, allow_nan=False, default=str) + "\n")
    plot(
        runs,
        out_png,
        f"mbq-onnx latency-budget controller: {model_dir.name}, {args.threads} threads (dashed: budgets)",
    )
    print(f"==> wrote {out_json} and {out_png}")


def _print_table(runs: list[dict]) -> None:
    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    cols = ("run", "budget ms", "tok/s", "p50 ms", "p95 ms", ">budget", "avg bits")
    widths = (28, 9, 7, 7, 7, 8, 8)
    head = " ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )
    print("\n" + head + "  status\n" + "-" * (len(head) + 8))
    for r in runs:
        s = r["summary"]
        over = r["pct_steps_over_budget"]
        cells = (
            r["name"],
            f(r["budget_ms"]),
            f(s["tokens_per_s"], ".1f"),
            f(s["p50_ms"]),
            f(s["p95_ms"]),
            "-" if over is None else f"{over:.0f}%",
            f(s["avg_bits"]),
        )
        status = ", ".join(f"{k} {v}" for k, v in s["status_counts"].items())
        row = " ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        print(f"{row}  {status}")


if __name__ == "__main__":
    main()
