"""End-to-end ORT benchmark: prefill and decode tokens/s of one LLM exported several ways, in one process.

Models: float32, ORT MatMulNBits int4/int8 (ORT's own quantizer, int8 activations) and the MoBiQuant export
at every uniform slice count and at a few τ, plus its ``--accuracy-level 4`` export (int8 activations, as
MatMulNBits) at the base and full slice counts. Each is run at 1 and 2 intra-op threads; speeds are also given
as ratios to MatMulNBits int4 at the same thread count. Exports are made (or reused) under the cache dir.

    python tools/bench_e2e.py [--artifact DIR] [--model DIR] [--threads 1,2] [--taus 0.05,0.2] [--quick]

Writes ``reports/e2e_bench.json`` and ``reports/e2e_bench.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from mbq_onnx.atomic import replace_file, write_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARTIFACT = "artifacts/smollm2-135m-mbq-fast"
BASELINE = "ORT MatMulNBits int4"


def _taus(text: str) -> list[float]:
    try:
        taus = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"bench_e2e: --taus {text!r}: expected comma-separated numbers") from None
    if any(not 0.0 < t < 1.0 for t in taus):
        raise SystemExit(f"bench_e2e: --taus {text!r}: every τ must lie strictly between 0 and 1")
    return taus


def _rows(args: argparse.Namespace) -> tuple[list[dict], dict]:
    from mbq_onnx import assets
    from mbq_onnx.eval.ort_rows import OrtModel, OrtSettings, prepare_exports, speeds
    from mbq_onnx.model.artifact import load_artifact

    artifact_dir = args.artifact or assets.cache_dir() / DEFAULT_ARTIFACT
    artifact = load_artifact(artifact_dir)
    model_dir = assets.resolve_model(args.model)
    settings = OrtSettings(
        exports=args.exports or assets.cache_dir() / "exports",
        threads=tuple(int(t) for t in args.threads.split(",")),
        nbits=(4, 8),
        nbits_block=artifact.spec.group_size,  # as python -m mbq_onnx.eval: the exports are shared
        prompt_tokens=32 if args.quick else args.prompt_tokens,
        decode_tokens=8 if args.quick else args.decode_tokens,
        repeats=1 if args.quick else args.repeats,
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    settings.speed_ids = assets.heldout_ids(tokenizer, "sotu-2000+").numpy()
    dirs = prepare_exports(model_dir, artifact.path, settings, int8_activations=True)

    from mbq_onnx.eval.variants import load_mobiquant, routed_weights

    model, ctx = load_mobiquant(artifact)
    weights = routed_weights(model, ctx, artifact.spec)
    mixed = OrtModel(dirs["mixed-bit"], weights)
    mixed_int8 = OrtModel(dirs["mixed-bit-int8act"], weights)
    runs = [
        ("float32", OrtModel(dirs["float32"]), {}),
        (BASELINE, OrtModel(dirs["int4"]), {}),
        ("ORT MatMulNBits int8", OrtModel(dirs["int8"]), {}),
        *[
            (f"MoBiQuant {k} slice(s) ({artifact.spec.bits_at(k)}-bit)", mixed, {"force": k})
            for k in range(1, artifact.spec.num_slices + 1)
        ],
        *[(f"MoBiQuant τ={t:g}", mixed, {"tau": t}) for t in args.tau_values],
        *[
            (f"MoBiQuant {k} slice(s), int8 activations", mixed_int8, {"force": k})
            for k in (1, artifact.spec.num_slices)
        ],
    ]
    rows = []
    for name, model_, kw in runs:
        sp = speeds(model_, settings, **kw)
        row = {"model": name, "dir": model_.model_dir.name, "file_bytes": model_.file_bytes(), **kw}
        rows.append({**row, "speed": sp})
        summary = ", ".join(f"{t}T {s['decode_tok_s']:.1f}/{s['prefill_tok_s']:.0f}" for t, s in sp.items())
        print(f"{name}: decode/prefill tok/s {summary}", file=sys.stderr)
    base = next(r for r in rows if r["model"] == BASELINE)["speed"]
    for r in rows:
        for t, s in r["speed"].items():
            s["decode_vs_int4"] = s["decode_tok_s"] / base[t]["decode_tok_s"]
            s["prefill_vs_int4"] = s["prefill_tok_s"] / base[t]["prefill_tok_s"]
    meta = {
        "model": model_dir.name,
        "artifact": artifact.path.name,
        "settings": settings.as_dict(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "command": "python tools/bench_e2e.py " + " ".join(args.argv),
    }
    return rows, meta


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    threads = sorted({t for r in rows for t in r["speed"]}, key=int)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 1.8))
    y = np.arange(len(rows))
    h = 0.8 / len(threads)
    for ax, key, title in zip(axes, ("decode_tok_s", "prefill_tok_s"), ("decode", "prefill"), strict=True):
        for i, t in enumerate(threads):
            vals = [r["speed"][t][key] for r in rows]
            ax.barh(y + i * h, vals, height=h, label=f"{t} thread(s)")
        ax.set_yticks(y + h * (len(threads) - 1) / 2, [r["model"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{title} tokens/s (ONNX Runtime CPU)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with replace_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--artifact", type=Path, help=f"MoBiQuant artifact (default: <cache dir>/{DEFAULT_ARTIFACT})"
    )
    p.add_argument("--model", type=Path, help="float HF model folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--threads", default="1,2", help="intra-op thread counts (default %(default)s)")
    p.add_argument("--taus", default="0.05,0.2", help="τ values to run (default %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default %(default)s)")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting, median (default %(default)s)")
    p.add_argument("--exports", type=Path, help="directory for the exports (default: <cache dir>/exports)")
    p.add_argument("--quick", action="store_true", help="32-token prefill, 8 decode steps, 1 run")
    p.add_argument("--output", type=Path, default=REPO / "reports", help="report dir (default reports/)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.tau_values = _taus(args.taus)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    rows, meta = _rows(args)
    args.output.mkdir(parents=True, exist_ok=True)
    data = json.dumps({**meta, "rows": rows}, indent=1) + "\n"
    write_file(args.output / "e2e_bench.json", data)
    plot(rows, args.output / "e2e_bench.png")
    print(f"wrote {args.output / 'e2e_bench.json'} and e2e_bench.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
