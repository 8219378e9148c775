#!/usr/bin/env python3
"""Perplexity of the two routing rules on one artifact: one router decision per linear (as calibrated) vs one
per shared input at the members' largest count (the lean graph's fused q/k/v and gate/up,
``grouped_routers(combine_max=True)``), at the same τ values, with paired bootstrap intervals.

    python tools/routing_rule_quality.py [--artifact DIR] [--taus 0.3,0.5] [--max-windows 20]

Writes ``reports/routing_rules.json`` (per τ and text: perplexity and average bits of both
rules (bits per decoder-linear weight read), and ppl(max) / ppl(per linear) with its 95 % interval).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = ("sotu-2000+", "moby-dick")


def main(argv: list[str] | None = None) -> int:
    from mbq_onnx import assets

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--artifact", type=Path, default=assets.cache_dir() / "artifacts" / "smollm2-135m-mbq-fast"
    )
    p.add_argument("--taus", default="0.3,0.5", help="comma-separated τ values in (0, 1)")
    p.add_argument(
        "--max-windows", type=int, default=20, help="windows of 2,048 tokens per text (default 20)"
    )
    p.add_argument("--out", type=Path, default=REPO / "reports" / "routing_rules.json")
    args = p.parse_args(argv)
    taus = [float(t) for t in args.taus.split(",")]
    if not all(0.0 < t < 1.0 for t in taus):
        p.error(f"--taus must lie strictly between 0 and 1, got {args.taus}")

    from transformers import AutoTokenizer

    from mbq_onnx.atomic import write_file
    from mbq_onnx.eval import variants as V
    from mbq_onnx.eval.perplexity import bootstrap_ratio
    from mbq_onnx.eval.report import BITS_KEY
    from mbq_onnx.model.artifact import load_artifact

    artifact = load_artifact(args.artifact)
    tokenizer = AutoTokenizer.from_pretrained(assets.embedded_model_dir())
    setup = V.EvalSetup(
        texts={name: assets.heldout_ids(tokenizer, name).numpy() for name in TEXTS},
        max_windows=args.max_windows,
    )
    model = V.load_mobiquant(artifact)
    records = []
    for tau in taus:
        rows = {rule: V.eval_mbq_tau(setup, artifact, tau, model=model, combine_max=rule == "max")
                for rule in ("per_linear", "max")}  # fmt: skip
        for text in TEXTS:
            a, b = rows["max"]["results"][text], rows["per_linear"]["results"][text]
            ratio = bootstrap_ratio(a["window_nll"], a["window_tokens"], b["window_nll"], b["window_tokens"])
            rec = {"tau": tau, "text": text, "windows": len(a["window_nll"])}
            for rule, r in (("max", a), ("per_linear", b)):
                rec[f"ppl_{rule}"] = r["ppl"]
                rec[f"avg_bits_per_weight_{rule}"] = r[BITS_KEY]
            rec["ppl_ratio_max_over_per_linear"] = list(ratio)
            print(json.dumps(rec), flush=True)
            records.append(rec)
    command = " ".join(
        ["python tools/routing_rule_quality.py", *(argv if argv is not None else sys.argv[1:])]
    )
    report = {"artifact": artifact.path.name, "command": command, "records": records}
    write_file(args.out, json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
