"""End-to-end CPU benchmark: our exports against the users' real alternatives, in one process, same prompt.

Rows: float32 and ORT MatMulNBits int4/int8 (ORT's own quantizer), the MoBiQuant export at every uniform
slice count and a τ sweep (each τ row carries its measured average bits), its ``--accuracy-level 4``
export at base/full slices, and the peers "GenAI int4" / "GenAI int8" (onnxruntime-genai builder output
run through GenAI's own generator) and "llama.cpp Q4_0" / "llama.cpp Q8_0" (llama-bench; skipped with the
reason when no llama.cpp build is given). Every row runs once per round, round-robin over all rows and
thread counts, ``--rounds`` times; the medians are reported with ratios to "GenAI int4" at each thread
count. Perplexity (for the Pareto plot) comes from ``--quality FILE`` or ``--ppl-tokens N`` held-out
SOTU tokens.

    python tools/bench_e2e.py [--threads 1,2] [--taus ...] [--llama-cpp DIR] [--ppl-tokens 1024] [--quick]

Writes ``reports/e2e_bench.json`` and ``reports/e2e_bench.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's mbq_onnx, not another installed one

from mbq_onnx.atomic import replace_file, write_file  # noqa: E402

DEFAULT_ARTIFACT = "artifacts/smollm2-135m-mbq-fast"
BASELINE = "ORT MatMulNBits int4"
BASELINE_PEER = "GenAI int4"
PEER_KINDS = ("genai", "llama.cpp")
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
         "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp")  # fmt: skip


def _taus(text: str) -> list[float]:
    try:
        taus = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"bench_e2e: --taus {text!r}: expected comma-separated numbers") from None
    if any(not 0.0 < t < 1.0 for t in taus):
        raise SystemExit(f"bench_e2e: --taus {text!r}: every τ must lie strictly between 0 and 1")
    return taus


def _machine() -> dict:
    import onnxruntime

    from mbq_onnx.eval.peers import genai_version

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
        info["cpu"] = model.group(1) if model else info["cpu"]
        info["flags"] = sorted(flags & {*FLAGS})
    except (OSError, AttributeError):
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg"] = list(os.getloadavg())
    info["onnxruntime"] = onnxruntime.__version__
    info["onnxruntime_genai"] = genai_version()
    return info


class Row:
    """One benchmarked model: ``measure(threads)`` does one run; ``ppl()`` its perplexity (or None)."""

    def __init__(self, name, kind, measure, ppl=None, **meta):
        self.name, self.kind, self.measure_fn, self.ppl_fn, self.meta = name, kind, measure, ppl, meta
        self.runs: dict[int, list[dict]] = {}
        self.error: str | None = None


def _ours(args, settings, ids) -> tuple[list[Row], dict]:
    from mbq_onnx import assets
    from mbq_onnx.eval.ort_rows import INT8_EXPORT, OrtModel, prepare_exports
    from mbq_onnx.eval.peers import ort_perplexity
    from mbq_onnx.eval.speed import measure_speed
    from mbq_onnx.eval.variants import load_mobiquant, routed_weights
    from mbq_onnx.model.artifact import load_artifact

    artifact = load_artifact(args.artifact or assets.cache_dir() / DEFAULT_ARTIFACT)
    settings.nbits_block = artifact.spec.group_size  # as python -m mbq_onnx.eval: the exports are shared
    dirs = prepare_exports(
        args.model_dir, artifact.path, settings, int8_activations=True, lm_head=args.lm_head
    )
    model, ctx = load_mobiquant(artifact)
    weights = routed_weights(model, ctx, artifact.spec)
    mixed = OrtModel(dirs["mixed-bit"], weights)
    mixed_int8 = OrtModel(dirs[INT8_EXPORT], weights)
    head = "" if args.lm_head == "float" else f", {args.lm_head} LM head"
    runs = [
        ("float32", "ort", OrtModel(dirs["float32"]), {}),
        (BASELINE, "ort", OrtModel(dirs["int4"]), {}),
        ("ORT MatMulNBits int8", "ort", OrtModel(dirs["int8"]), {}),
        *[
            (f"MoBiQuant {k} slice(s) ({artifact.spec.bits_at(k)}-bit)", "mbq-slices", mixed, {"force": k})
            for k in range(1, artifact.spec.num_slices + 1)
        ],
        *[(f"MoBiQuant τ={t:g}", "mbq-tau", mixed, {"tau": t}) for t in args.tau_values],
        *[
            (
                f"MoBiQuant {k} slice(s), int8 activations{head}",
                "mbq-slices-int8act",
                mixed_int8,
                {"force": k},
            )
            for k in range(1, artifact.spec.num_slices + 1)
        ],
        *[
            (f"MoBiQuant τ={t:g}, int8 activations{head}", "mbq-tau-int8act", mixed_int8, {"tau": t})
            for t in args.tau_values
        ],
    ]
    rows = []
    for name, kind, m, kw in runs:

        def measure(t, m=m, kw=kw):
            sp = measure_speed(
                m.session(t), ids, tau=kw.get("tau", 0.0), force_slices=kw.get("force", 0),
                prompt_tokens=settings.prompt_tokens, decode_tokens=settings.decode_tokens, repeats=1,
                routed_weights=m.routed_weights,
            )  # fmt: skip
            return {
                "prefill_tok_s": sp.prefill_tok_s,
                "decode_tok_s": sp.decode_tok_s,
                "avg_bits": sp.decode_avg_bits_per_weight,
            }

        def ppl(m=m, kw=kw):
            return ort_perplexity(
                m.session(max(settings.threads)),
                args.ppl_ids,
                args.ppl_window,
                kw.get("tau", 0.0),
                kw.get("force", 0),
            )

        rows.append(Row(name, kind, measure, ppl, dir=m.model_dir.name, file_bytes=m.file_bytes(), **kw))
    return rows, {"artifact": artifact.path.name, "group_size": artifact.spec.group_size}


def _genai_rows(args, settings, ids) -> list[Row | dict]:
    from mbq_onnx import assets
    from mbq_onnx.eval.peers import GenaiModel, build_genai, genai_version

    if genai_version() is None:
        return [
            {"model": f"GenAI {p}", "kind": "genai", "skipped": "onnxruntime-genai is not installed"}
            for p in ("int4", "int8")
        ]
    out = []
    for prec in ("int4", "int8"):
        name = f"GenAI {prec}"
        try:
            gm = GenaiModel(build_genai(args.model_dir, prec, args.genai_block_size, args.peers))
        except RuntimeError as e:
            out.append({"model": name, "kind": "genai", "skipped": str(e)[-500:]})
            continue

        def measure(t, gm=gm):
            return gm.measure(t, ids, settings.prompt_tokens, settings.decode_tokens)

        def ppl(gm=gm):
            return gm.perplexity(args.ppl_ids, args.ppl_window, max(settings.threads))

        out.append(
            Row(name, "genai", measure, ppl, dir=gm.model_dir.name, file_bytes=gm.file_bytes(),
                block_size=args.genai_block_size, precision=prec)
        )  # fmt: skip
    del assets
    return out


def _llama_rows(args, settings) -> tuple[list[Row | dict], str | None]:
    from mbq_onnx.eval.peers import LlamaCpp, find_llama_cpp

    names = ("Q4_0", "Q8_0")
    root, why = find_llama_cpp(args.llama_cpp)
    lc = LlamaCpp(root) if root else None
    why = why or lc.missing()
    if why:
        print(f"llama.cpp rows skipped: {why}", file=sys.stderr)
        return [{"model": f"llama.cpp {q}", "kind": "llama.cpp", "skipped": why} for q in names], None
    out = []
    for q in names:
        name = f"llama.cpp {q}"
        try:
            gguf = lc.gguf(args.model_dir, q, args.peers)
        except RuntimeError as e:
            out.append({"model": name, "kind": "llama.cpp", "skipped": str(e)[-500:]})
            continue

        def measure(t, gguf=gguf):
            return lc.measure(gguf, t, settings.prompt_tokens, settings.decode_tokens)

        def ppl(gguf=gguf):
            return lc.perplexity(gguf, args.ppl_text, args.ppl_tokens, args.ppl_window, max(settings.threads))

        out.append(
            Row(name, "llama.cpp", measure, ppl, dir=gguf.name, file_bytes=gguf.stat().st_size, quant=q)
        )
    return out, lc.version()


def _rows(args: argparse.Namespace) -> tuple[list[dict], dict]:
    import statistics

    from transformers import AutoTokenizer

    from mbq_onnx import assets
    from mbq_onnx.eval.ort_rows import OrtSettings

    args.model_dir = assets.resolve_model(args.model)
    args.peers = args.peers or assets.cache_dir() / "peers"
    settings = OrtSettings(
        exports=args.exports or assets.cache_dir() / "exports",
        threads=args.thread_counts,
        nbits=(4, 8),
        prompt_tokens=32 if args.quick else args.prompt_tokens,
        decode_tokens=8 if args.quick else args.decode_tokens,
        repeats=args.rounds,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    ids = assets.heldout_ids(tokenizer, "sotu-2000+").numpy()
    args.ppl_ids = ids[: args.ppl_tokens] if args.ppl_tokens else None
    args.ppl_text = tokenizer.decode(args.ppl_ids) if args.ppl_tokens else ""
    rows, meta = _ours(args, settings, ids)
    rows += _genai_rows(args, settings, ids)
    llama, llama_version = _llama_rows(args, settings)
    rows += llama
    live = [r for r in rows if isinstance(r, Row)]
    for rnd in range(args.rounds):  # interleaved: every row once per round, per thread count
        for t in settings.threads:
            for r in live:
                if r.error is None and r.kind in PEER_KINDS:
                    try:  # a peer that fails to run is reported as skipped, not a crash
                        r.runs.setdefault(t, []).append(r.measure_fn(t))
                    except RuntimeError as e:
                        r.error = " ".join(str(e).split())[-500:]
                        print(f"{r.name} skipped: {r.error}", file=sys.stderr)
                elif r.error is None:
                    r.runs.setdefault(t, []).append(r.measure_fn(t))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    quality = _load_quality(args.quality)
    out = []
    for r in rows:
        if not isinstance(r, Row):
            out.append(r)
            continue
        if r.error is not None:
            out.append({"model": r.name, "kind": r.kind, **r.meta, "skipped": r.error})
            continue
        speed = {}
        for t, runs in r.runs.items():
            sp = {k: statistics.median(x[k] for x in runs) for k in ("prefill_tok_s", "decode_tok_s")}
            bits = [x["avg_bits"] for x in runs if x.get("avg_bits") is not None]
            sp["avg_bits"] = statistics.median(bits) if bits else None
            sp["rounds"] = len(runs)
            speed[str(t)] = sp
        row = {"model": r.name, "kind": r.kind, **r.meta, "speed": speed}
        bits = [s["avg_bits"] for s in speed.values() if s["avg_bits"] is not None]
        row["avg_bits"] = statistics.median(bits) if bits else None
        if r.name in quality:
            row["perplexity"] = quality[r.name]
        elif args.ppl_tokens and r.ppl_fn is not None:
            row["perplexity"] = r.ppl_fn()
        summary = ", ".join(
            f"{t}T {s['decode_tok_s']:.1f}/{s['prefill_tok_s']:.0f}" for t, s in speed.items()
        )
        print(f"{r.name}: decode/prefill tok/s {summary}", file=sys.stderr)
        out.append(row)
    base = next((r for r in out if r["model"] == BASELINE_PEER and "speed" in r), None)
    for r in out:
        for t, s in r.get("speed", {}).items():
            ref = base["speed"][t] if base else None
            s["decode_vs_genai_int4"] = s["decode_tok_s"] / ref["decode_tok_s"] if ref else None
            s["prefill_vs_genai_int4"] = s["prefill_tok_s"] / ref["prefill_tok_s"] if ref else None
    machine = _machine()
    machine["llama_cpp"] = llama_version
    meta.update(
        {
            "model": args.model_dir.name,
            "settings": {
                **settings.as_dict(),
                "rounds": args.rounds,
                "interleaved": True,
                "genai_block_size": args.genai_block_size,
                "ppl_tokens": args.ppl_tokens,
                "ppl_window": args.ppl_window,
                "ppl_text": "sotu-2000+ (first tokens, no BOS)",
                "notes": {
                    "genai": "builder output run with og.Generator; threads via og.Config.overlay of "
                    "model.decoder.session_options.intra_op_num_threads (genai_config.json untouched); same "
                    "prompt ids as our rows; 4 untimed warm-up steps",
                    "llama.cpp": "llama-bench -p P -n D -t T -r 1 per round (its own synthetic tokens, not "
                    "our prompt); perplexity by llama-perplexity (2nd half of windows, own tokenizer, BOS)",
                    "missing": "llama.cpp perplexity needs llama-perplexity; no GenAI/llama.cpp per-token "
                    "precision control (fixed-precision peers)",
                },
            },
            "machine": machine,
            "command": "python tools/bench_e2e.py " + " ".join(args.argv),
        }
    )
    return out, meta


def _load_quality(path: Path | None) -> dict[str, dict]:
    """``{row name: {"ppl", "tokens", ...}}`` from a JSON file: either this tool's own ``e2e_bench.json``
    (rows with ``perplexity``) or ``{"rows": [{"model": NAME, "ppl": X, "tokens": N}]}``."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"bench_e2e: --quality {path}: {e}") from None
    out = {}
    for r in data.get("rows", []):
        name = r.get("model") or r.get("label")
        if r.get("perplexity"):
            out[name] = {**r["perplexity"], "source": str(path)}
        elif "ppl" in r:
            out[name] = {"ppl": r["ppl"], "tokens": r.get("tokens"), "source": str(path)}
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Left: Pareto decode tok/s (most threads) vs perplexity — every peer point and our τ curve.
    Right: decode tok/s of every row at each thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if "speed" in r]
    threads = sorted({t for r in rows for t in r["speed"]}, key=int)
    top = threads[-1]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, max(5.0, 0.4 * len(rows) + 1.8)))
    styles = {"genai": ("s", "tab:red"), "llama.cpp": ("^", "tab:green"), "ort": ("D", "tab:gray"),
              "mbq-slices": ("o", "tab:blue"), "mbq-slices-int8act": ("o", "tab:cyan")}  # fmt: skip
    with_ppl = [r for r in rows if (r.get("perplexity") or {}).get("ppl")]
    curves = {"mbq-tau": ("tab:purple", "MoBiQuant τ sweep (float path, float head)"),
              "mbq-tau-int8act": ("tab:blue", "MoBiQuant τ sweep (int8 activations)")}  # fmt: skip
    for r in with_ppl:
        if r["kind"] in curves:
            continue
        m, c = styles.get(r["kind"], ("x", "k"))
        ax.scatter(r["speed"][top]["decode_tok_s"], r["perplexity"]["ppl"], marker=m, color=c, s=50)
        ax.annotate(r["model"], (r["speed"][top]["decode_tok_s"], r["perplexity"]["ppl"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    for kind, (color, label) in curves.items():
        tau = sorted((r for r in with_ppl if r["kind"] == kind), key=lambda r: r["tau"])
        if not tau:
            continue
        xs = [r["speed"][top]["decode_tok_s"] for r in tau]
        ax.plot(xs, [r["perplexity"]["ppl"] for r in tau], "o-", color=color, label=label)
        for r, x in zip(tau, xs, strict=True):
            text = f"τ={r['tau']:g}" + (f" ({r['avg_bits']:.2f} b)" if r.get("avg_bits") else "")
            ax.annotate(
                text, (x, r["perplexity"]["ppl"]), fontsize=7, xytext=(4, -9), textcoords="offset points"
            )
        ax.legend(fontsize=8)
    if not with_ppl:
        ax.text(0.5, 0.5, "no perplexity (use --ppl-tokens N or --quality FILE)", ha="center",
                transform=ax.transAxes)  # fmt: skip
    ax.set_xlabel(f"decode tokens/s ({top} thread(s), CPU)")
    ax.set_ylabel("perplexity (SOTU 2000+, lower is better)")
    ax.set_title("speed vs quality")
    ax.grid(True, alpha=0.3)
    y = np.arange(len(rows))
    h = 0.8 / len(threads)
    for i, t in enumerate(threads):
        bx.barh(y + i * h, [r["speed"][t]["decode_tok_s"] for r in rows], height=h, label=f"{t} thread(s)")
    bx.set_yticks(y + h * (len(threads) - 1) / 2, [r["model"] for r in rows], fontsize=8)
    bx.invert_yaxis()
    bx.set_xlabel("decode tokens/s (median of interleaved rounds)")
    bx.grid(True, axis="x", alpha=0.3)
    bx.legend(fontsize=8)
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
    p.add_argument("--taus", default="0.05,0.2,0.35,0.5,0.7", help="τ sweep (default %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default %(default)s)")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median (default %(default)s)")
    p.add_argument("--genai-block-size", type=int, default=32,
                   help="GenAI builder block size (default 32 = GenAI's; 128 = our group size)")  # fmt: skip
    p.add_argument(
        "--llama-cpp", help="llama.cpp dir (tools/build_llama_cpp.sh output; or env MBQ_LLAMA_CPP)"
    )
    p.add_argument("--peers", type=Path, help="cache for peer models (default: <cache dir>/peers)")
    p.add_argument("--ppl-tokens", type=int, default=0, help="held-out tokens for perplexity (0: none)")
    p.add_argument("--ppl-window", type=int, default=512, help="perplexity window (default %(default)s)")
    p.add_argument("--quality", type=Path, help="JSON with perplexity per row name (e.g. an earlier run)")
    p.add_argument("--exports", type=Path, help="directory for the exports (default: <cache dir>/exports)")
    p.add_argument(
        "--lm-head",
        choices=("float", "8bit", "mixed"),
        default="8bit",
        help="LM head of the int8-activation export, our fast configuration (default %(default)s: +0.3 %% "
        "perplexity, tools/lm_head_quality.py; GenAI and llama.cpp quantize theirs too; the float-activation "
        "rows keep a float head)",
    )
    p.add_argument("--quick", action="store_true", help="32-token prefill, 8 decode steps, 1 round")
    p.add_argument("--output", type=Path, default=REPO / "reports", help="report dir (default reports/)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.tau_values = _taus(args.taus)
    try:
        args.thread_counts = tuple(int(t) for t in args.threads.split(","))
    except ValueError:
        p.error(f"--threads {args.threads!r}: expected comma-separated integers")
    if any(t < 1 for t in args.thread_counts):
        p.error("--threads: thread counts must be >= 1")
    if args.quick:
        args.rounds = 1
    for opt in ("rounds", "ppl_window", "genai_block_size"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be >= 1")
    if args.ppl_tokens < 0:
        p.error("--ppl-tokens must be >= 0")
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
