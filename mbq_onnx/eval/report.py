"""Quality report: ``quality.json`` + ``quality.md`` (table) + ``quality.png`` (perplexity vs average bits).

A report is a dict ``{"format": "mbq-quality", "settings": {...}, "texts": [...], "rows": [row, ...]}``;
each row is one evaluated model::

    {"method": "float"|"rtn"|"gptq"|"single"|"mbq-uniform"|"mbq-tau", "label": str,
     "bits": nominal bits or None (τ rows), "group_size": int|None, "slices": int|None, "tau": float|None,
     "model_bytes": int, "results": {text: {"ppl", "avg_bits", "nll", "tokens", "windows", "window"}}}
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

REPORT_FORMAT = "mbq-quality"
METHODS = ("float", "rtn", "gptq", "single", "mbq-uniform", "mbq-tau")
FLOAT_BITS = 32.0


def new_report(settings: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "format_version": 1,
        "settings": settings,
        "texts": list(texts),
        "rows": [],
    }


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_report(report: dict[str, Any]) -> list[str]:
    """Problems with a report (empty list: well-formed). Checks structure, finite positive perplexities,
    average bits inside the method's range, and that more bits never cost fewer bytes within a family."""
    problems: list[str] = []
    if report.get("format") != REPORT_FORMAT:
        problems.append(f"format is {report.get('format')!r}, expected {REPORT_FORMAT!r}")
    texts = report.get("texts") or []
    rows = report.get("rows") or []
    if not texts:
        problems.append("no texts")
    if not rows:
        problems.append("no rows")
    for row in rows:
        label = row.get("label", "?")
        if row.get("method") not in METHODS:
            problems.append(f"{label}: unknown method {row.get('method')!r}")
        if not isinstance(row.get("model_bytes"), int) or row["model_bytes"] <= 0:
            problems.append(f"{label}: model_bytes {row.get('model_bytes')!r} is not a positive int")
        for text in texts:
            res = row.get("results", {}).get(text)
            if res is None:
                problems.append(f"{label}: no result for {text}")
                continue
            ppl, bits = res.get("ppl"), res.get("avg_bits")
            if not (isinstance(ppl, (int, float)) and math.isfinite(ppl) and ppl >= 1.0):
                problems.append(f"{label} / {text}: perplexity {ppl!r} is not a finite number >= 1")
            if not (isinstance(bits, (int, float)) and 0 < bits <= FLOAT_BITS):
                problems.append(f"{label} / {text}: avg_bits {bits!r} out of (0, 32]")
            elif row.get("bits") is not None and abs(bits - row["bits"]) > 1e-9:
                problems.append(f"{label} / {text}: avg_bits {bits} differs from fixed bits {row['bits']}")
    # Bytes grow with bits within one family (same method, group size and artifact); float is the largest.
    families: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("bits") is not None:
            families[(row.get("method"), row.get("group_size"), row.get("artifact"))].append(row)
    for fam, members in families.items():
        members = sorted(members, key=lambda r: r["bits"])
        for lo, hi in itertools.pairwise(members):
            if hi["bits"] > lo["bits"] and hi["model_bytes"] < lo["model_bytes"]:
                problems.append(
                    f"{fam}: {hi['label']} ({hi['bits']} bits) has fewer bytes than {lo['label']}"
                )
    float_bytes = [r["model_bytes"] for r in rows if r.get("method") == "float"]
    if float_bytes:
        for row in rows:
            if row.get("method") != "float" and row.get("model_bytes", 0) > max(float_bytes):
                problems.append(f"{row.get('label')}: more bytes than the float model")
    return problems


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: one line per row, perplexity and average bits per text."""
    texts = report["texts"]
    head = ["model", "avg bits", "model MB", *[f"ppl {t}" for t in texts]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    float_rows = [r for r in report["rows"] if r["method"] == "float"]
    float_ppl = {t: r["ppl"] for t, r in (float_rows[0]["results"] if float_rows else {}).items()}
    for row in report["rows"]:
        bits = [row["results"][t]["avg_bits"] for t in texts if t in row["results"]]
        bits_s = (
            " / ".join(f"{b:.2f}" for b in bits) if len({round(b, 2) for b in bits}) > 1 else f"{bits[0]:.2f}"
        )
        ppls = []
        for t in texts:
            p = row["results"].get(t, {}).get("ppl")
            if p is None:
                ppls.append("–")
            elif row["method"] != "float" and t in float_ppl:
                ppls.append(f"{p:.2f} ({100 * (p / float_ppl[t] - 1):+.1f} %)")
            else:
                ppls.append(f"{p:.2f}")
        lines.append(
            "| " + " | ".join([row["label"], bits_s, f"{row['model_bytes'] / 1e6:.1f}", *ppls]) + " |"
        )
    first = report["rows"][0]["results"] if report["rows"] else {}
    sizes = ", ".join(f"{t}: {r['windows']} × {r['window']} tokens" for t, r in first.items())
    note = (
        f"\nHeld-out perplexity on the first non-overlapping windows of each text ({sizes}), no BOS; "
        "relative change vs float32 in parentheses. Average bits: per weight of the decoder linears "
        "(τ rows: weighted by the weights each token reads). Model MB: decoder linears at their precision "
        "(codes + float32 scale + uint8 zero per group), everything else float32.\n"
    )
    return "\n".join(lines) + "\n" + note


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Perplexity vs average bits, a panel per text: float line, baseline points, uniform counts, τ curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    texts = report["texts"]
    fig, axes = plt.subplots(1, len(texts), figsize=(6.5 * len(texts), 4.8), squeeze=False)
    styles = {
        "rtn": ("o", "tab:gray"),
        "gptq": ("s", "tab:orange"),
        "single": ("^", "tab:green"),
        "mbq-uniform": ("D", "tab:blue"),
        "mbq-tau": (".", "tab:red"),
    }
    names = {
        "rtn": "RTN",
        "gptq": "GPTQ",
        "single": "same-method single precision",
        "mbq-uniform": "MoBiQuant, uniform slices",
        "mbq-tau": "MoBiQuant, τ sweep",
    }
    for ax, text in zip(axes[0], texts, strict=True):
        groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        for row in report["rows"]:
            res = row["results"].get(text)
            if res is None:
                continue
            if row["method"] == "float":
                ax.axhline(res["ppl"], color="black", ls="--", lw=1, label=f"float32 ({res['ppl']:.2f})")
                continue
            groups[(row["method"], row.get("group_size"))].append((res["avg_bits"], res["ppl"]))
        for (method, gs), pts in sorted(
            groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1] or 0)
        ):
            pts.sort()
            marker, color = styles[method]
            label = names[method] + (f" g{gs}" if gs and method in ("rtn", "gptq") else "")
            connect = method in ("mbq-uniform", "mbq-tau")
            alpha = 0.55 if gs and gs != report["settings"].get("group_size") else 1.0
            ax.plot(
                *zip(*pts, strict=True),
                marker=marker,
                color=color,
                ls="-" if connect else ":",
                alpha=alpha,
                label=label,
            )
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.0f"))
        ax.set_xlabel("average bits per weight (decoder linears)")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{report['settings'].get('model_name', 'model')} — {text}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(report: dict[str, Any], output: Path, plot: bool = True) -> dict[str, Path]:
    """Write ``quality.json`` and ``quality.md`` (and ``quality.png``) into ``output``, each atomically."""
    output = Path(output)
    paths = {"json": output / "quality.json", "md": output / "quality.md", "png": output / "quality.png"}
    _atomic_write(paths["json"], (json.dumps(report, indent=2) + "\n").encode())
    _atomic_write(paths["md"], markdown_table(report).encode())
    if plot:
        plot_report(report, paths["png"])
    else:
        paths.pop("png")
    return paths
