"""``python -m mbq_onnx.eval.compare NEW.json BASE.json``: two quality reports, row by row, paired.

Rows are matched by label (e.g. "MoBiQuant 1 slice (4-bit)" of two calibrations) and texts by name; each
pair gets ``ppl(new) / ppl(base)`` with its paired bootstrap interval, which needs both scored on the same
windows (the same texts, ``--window`` and ``--max-windows``). Prints a markdown table; ``--output`` also
writes it (atomically).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_file
from .perplexity import bootstrap_ratio
from .report import check_report, relative_cell


class CompareError(ValueError):
    """The two reports cannot be paired (not reports, nothing in common, different windows)."""


def load_report(path: Path) -> dict[str, Any]:
    """A quality report (``quality.json``), checked; :class:`CompareError` naming the file otherwise."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompareError(f"{path}: cannot read a quality report ({e})") from None
    problems = check_report(report) if isinstance(report, dict) else ["not a JSON object"]
    if problems:
        raise CompareError(f"{path}: not a well-formed quality report ({problems[0]})")
    return report


def compare_reports(new: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per row label and text the two reports share: both perplexities and the paired ratio
    ``{"ratio", "ci95"}`` of new over base."""
    base_rows = {row["label"]: row for row in base["rows"]}
    texts = [t for t in new["texts"] if t in base["texts"]]
    pairs = [(row, base_rows[row["label"]]) for row in new["rows"] if row["label"] in base_rows]
    if not texts or not pairs:
        raise CompareError("the reports share no row label and text to compare")
    out = []
    for row, ref in pairs:
        for text in texts:
            a, b = row["results"][text], ref["results"][text]
            try:
                ratio, lo, hi = bootstrap_ratio(
                    a["window_nll"], a["window_tokens"], b["window_nll"], b["window_tokens"]
                )
            except ValueError as e:
                raise CompareError(f"{row['label']} / {text}: {e}") from None
            entry = {"label": row["label"], "text": text, "new_ppl": a["ppl"], "base_ppl": b["ppl"]}
            out.append(entry | {"paired": {"ratio": ratio, "ci95": [lo, hi]}})
    return out


def comparison_table(entries: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`compare_reports`' entries."""
    lines = ["| row | text | new | base | new vs base (paired) |", "|---|---|---|---|---|"]
    for e in entries:
        ppls = f"{e['new_ppl']:.2f}", f"{e['base_ppl']:.2f}"
        cells = [e["label"], e["text"], *ppls, relative_cell(e["paired"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mbq_onnx.eval.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("new", type=Path, help="quality.json of the rows to judge")
    p.add_argument("base", type=Path, help="quality.json of the reference rows (same windows)")
    p.add_argument("--output", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    try:
        table = comparison_table(compare_reports(load_report(args.new), load_report(args.base)))
    except CompareError as e:
        p.error(str(e))
    print(table, end="")
    if args.output is not None:
        write_file(args.output, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
