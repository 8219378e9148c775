"""What quantizing the tied LM head costs: ORT perplexity of the lean export with each ``--lm-head`` choice.

    python tools/lm_head_quality.py --artifact .cache/artifacts/smollm2-135m-mbq-fast

Exports the artifact once per head choice (float, 8bit, mixed; cached under ``<cache>/exports``), scores
forced slice counts and τ points on the held-out texts (windows of 2,048 tokens, up to ``--windows`` per
text) through ONNX Runtime, and gives each quantized head's perplexity ratio to the float head on the same
windows with a paired bootstrap 95 % interval. Writes ``reports/lm_head.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbq_onnx.assets import cache_dir, heldout_ids  # noqa: E402
from mbq_onnx.atomic import write_file  # noqa: E402
from mbq_onnx.eval.perplexity import eval_windows, window_nll  # noqa: E402

HEADS = ("float", "8bit", "mixed")


def export(artifact: Path, head: str, accuracy_level: int) -> Path:
    from mbq_onnx.export import export_artifact

    out = cache_dir() / "exports" / artifact.name / f"lean-head-{head}-acc{accuracy_level}"
    if not (out / "mbq_config.json").is_file():
        export_artifact(artifact, out, lm_head=head, accuracy_level=accuracy_level, overwrite=True)
    return out


def window_scores(session, wins: list[np.ndarray], tau: float, force: int) -> list[float]:
    nll = []
    for w in wins:
        out = session.run(w[None, :], session.empty_cache(capacity=w.size), tau, force, all_positions=True)
        nll.append(window_nll(out.logits, w))
    return nll


def paired_ratio(a: np.ndarray, b: np.ndarray, tokens: int, rng: np.random.Generator, n: int = 1000):
    """exp(mean NLL) ratio b/a with a bootstrap over windows (same resample for both)."""
    idx = rng.integers(0, a.size, (n, a.size))
    ratios = np.exp((b[idx].sum(1) - a[idx].sum(1)) / (tokens * a.size))
    point = math.exp((b.sum() - a.sum()) / (tokens * a.size))
    return point, float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def _cell(row: dict, head: str) -> str:
    if f"ppl_{head}" not in row:
        return "–"
    ratio, lo, hi = row[f"ratio_{head}"]
    return f"{row[f'ppl_{head}']:.2f} ({ratio:.4f} [{lo:.4f}, {hi:.4f}])"


class _HFStyle:
    """A ``tokenizers.Tokenizer`` called the way :func:`mbq_onnx.assets.heldout_ids` calls HF tokenizers."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.tok.encode(text, add_special_tokens=add_special_tokens).ids}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--texts", default="sotu-2000+,moby-dick")
    p.add_argument("--windows", type=int, default=20, help="windows of 2,048 tokens per text (default 20)")
    p.add_argument("--heads", default=",".join(HEADS), help="head choices to export and score (float first)")
    p.add_argument("--slices", default="1,3", help="forced slice counts to score (default 1,3)")
    p.add_argument("--taus", default="0.05", help="τ points besides the forced counts")
    p.add_argument("--accuracy-level", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "lm_head")
    args = p.parse_args(argv)
    if not (args.artifact / "config.json").is_file():
        p.error(f"--artifact {args.artifact}: not a calibrated artifact (no config.json)")
    from tokenizers import Tokenizer

    from mbq_onnx.runtime import MbqSession

    tok = Tokenizer.from_file(str(args.artifact / "tokenizer.json"))
    heads = [h for h in args.heads.split(",") if h]
    if heads[:1] != ["float"] or any(h not in HEADS for h in heads):
        p.error(f"--heads {args.heads!r}: float first, then any of {', '.join(HEADS[1:])}")
    dirs = {h: export(args.artifact, h, args.accuracy_level) for h in heads}
    sessions = {h: MbqSession(d, threads=args.threads) for h, d in dirs.items()}
    points = [(0.0, int(k)) for k in args.slices.split(",") if k]
    points += [(float(t), 0) for t in args.taus.split(",") if t]
    rng = np.random.default_rng(0)
    rows = []
    encode = _HFStyle(tok)
    for text in args.texts.split(","):
        wins = eval_windows(heldout_ids(encode, text).numpy(), 2048, args.windows)
        tokens = wins[0].size - 1
        for tau, force in points:
            nll = {h: np.array(window_scores(s, wins, tau, force)) for h, s in sessions.items()}
            row = {"text": text, "windows": len(wins), "tau": tau, "force_slices": force}
            for h in heads:
                row[f"ppl_{h}"] = math.exp(nll[h].sum() / (tokens * len(wins)))
                if h != "float":
                    row[f"ratio_{h}"] = paired_ratio(nll["float"], nll[h], tokens, rng)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"artifact": args.artifact.name, "accuracy_level": args.accuracy_level, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_file(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    lines = [
        "| text | point | ppl float head | 8bit head (× float, 95 % CI) | mixed head (× float, 95 % CI) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        point = f"{r['force_slices']} slice(s)" if r["force_slices"] else f"τ = {r['tau']}"
        cells = [_cell(r, h) for h in ("8bit", "mixed")]
        lines.append(f"| {r['text']} | {point} | {r['ppl_float']:.2f} | {cells[0]} | {cells[1]} |")
    write_file(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
