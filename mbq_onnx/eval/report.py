"""Quality report: ``quality.json`` + ``quality.md`` (table) + ``quality.png`` (perplexity vs average bits)
+ ``pareto.png`` (perplexity vs ORT decode tok/s, when speeds were measured).

A report is a dict ``{"format": "mbq-quality", "settings": {...}, "texts": [...], "rows": [row, ...]}``;
each row is one evaluated model (:class:`~mbq_onnx.eval.rows.ReportRow`, its ``to_dict``)::

    {"method": a key of mbq_onnx.eval.methods.METHODS ("float", "rtn", "gptq", "single", "mbq-uniform",
               "mbq-tau", "mbq-random", "mbq-oracle", "mbq-int8act", "matmul-nbits"),
     "label": str, "bits": nominal bits or None (τ and random-routing rows), "group_size": int|None,
     "slices": int|None, "tau": float|None, "model_bytes": int,
     "results": {text: {"ppl", "ci95": [lo, hi], "avg_bits_per_weight", "nll", "tokens", "windows",
                        "window", "window_nll": [...], "window_tokens": [...],
                        # filled by annotate_report (write_report):
                        "vs_float": {"ratio", "ci95"},            # paired, on the same windows
                        # int8-activation rows ("accuracy_level": 4, --int8-cost):
                        "vs_float_activations": {"ratio", "ci95"},
                        # MoBiQuant int8 rows: their int8 cost over MatMulNBits' at the same bits
                        "int8_cost_vs_matmul_nbits": {"ratio", "ci95"},
                        # τ rows only:
                        "interpolated_ppl", "interpolated_between": [bits_lo, bits_hi],
                        "random_ppl", "vs_random": {"ratio", "ci95"}, "below_both": bool,
                        "oracle_ppl", "vs_oracle": {"ratio", "ci95"}}},  # with mbq-oracle rows
     # rows that ran in ONNX Runtime (float32, MoBiQuant, MatMulNBits):
     "ort": {"model_dir": str, "file_bytes": int, "results": {...},
             "agreement": {text: |ppl_ort / ppl_torch - 1|}},
     "speed": {"<threads>": {"prefill_tok_s", "decode_tok_s", "decode_ms", "decode_avg_bits_per_weight",
                             ...}}}

``results`` come from PyTorch, except for ``matmul-nbits`` rows (ORT only, ``"backend": "ort"``).
Intervals: percentile bootstrap over windows (``settings.bootstrap``); a ratio's interval is paired (the
same resampled windows for both rows). Reports written before ``avg_bits_per_weight`` used ``avg_bits``
(same meaning); :func:`bits_of` reads either.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import replace_file, write_file
from .methods import METHOD_KEYS, REFERENCE, method, table_index
from .perplexity import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL, bootstrap_ratio
from .rows import BITS_KEY, OLD_BITS_KEY, ReportRow, TextResult

REPORT_FORMAT = "mbq-quality"
#: The known methods, in table order (:data:`mbq_onnx.eval.methods.METHODS`).
METHODS = METHOD_KEYS
FLOAT_BITS = 32.0
BOOTSTRAP = {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": CI_LEVEL, "over": "windows"}


def bits_of(res: dict[str, Any]) -> float | None:
    """A result's average bits per weight (new or old key)."""
    v = res.get(BITS_KEY, res.get(OLD_BITS_KEY))
    return None if v is None else float(v)


def upgrade_row(row: dict[str, Any]) -> dict[str, Any]:
    """An old report row with ``avg_bits`` results renamed to ``avg_bits_per_weight`` (in place)."""
    for results in (row.get("results") or {}, (row.get("ort") or {}).get("results") or {}):
        for res in results.values():
            if OLD_BITS_KEY in res:
                res.setdefault(BITS_KEY, res.pop(OLD_BITS_KEY))
    return row


def _paired(res: TextResult, ref: TextResult | None) -> dict[str, Any] | None:
    """``{"ratio", "ci95"}`` of ``res`` over ``ref`` when both kept the same windows, else None."""
    if ref is None or res is ref or not res.window_nll or not ref.window_nll:
        return None
    if res.window_tokens != ref.window_tokens:
        return None
    ratio, lo, hi = bootstrap_ratio(res.window_nll, res.window_tokens, ref.window_nll, ref.window_tokens)
    return {"ratio": ratio, "ci95": [lo, hi]}


def _cost_ratio(
    a: TextResult, a_ref: TextResult | None, b: TextResult | None, b_ref: TextResult | None
) -> dict[str, Any] | None:
    """``{"ratio", "ci95"}`` of ``(ppl_a / ppl_a_ref) / (ppl_b / ppl_b_ref)`` — what a change costs one model
    over what it costs another — paired over the windows all four were scored on, else None."""
    four = (a, a_ref, b, b_ref)
    if any(r is None or not r.window_nll or r.window_tokens != a.window_tokens for r in four):
        return None
    cost = [x - y + z for x, y, z in zip(a.window_nll, a_ref.window_nll, b_ref.window_nll, strict=True)]
    ratio, lo, hi = bootstrap_ratio(cost, a.window_tokens, b.window_nll, b.window_tokens)
    return {"ratio": ratio, "ci95": [lo, hi]}


def _interpolate(bits: float, uniform: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Straight line between the uniform points ``(bits, ppl)`` bracketing ``bits``: ``(ppl, lo, hi)``."""
    pts = sorted(uniform)
    for (b0, p0), (b1, p1) in itertools.pairwise(pts):
        if b0 - 1e-9 <= bits <= b1 + 1e-9 and b1 > b0:
            return p0 + (bits - b0) / (b1 - b0) * (p1 - p0), b0, b1
    return None


def report_rows(report: dict[str, Any]) -> list[ReportRow]:
    """The report's rows as :class:`ReportRow` (dict rows are read, typed ones taken as they are)."""
    return [ReportRow.coerce(r) for r in report.get("rows") or []]


def annotate_report(report: dict[str, Any]) -> dict[str, Any]:
    """Fill the derived comparisons of every row (in place; idempotent): paired ratios vs float32 on the
    same windows (PyTorch results vs the float row's, ORT results vs its ORT results), and for τ rows the
    alternating-precision interpolation between the bracketing uniform slice counts of the same artifact,
    the random-routing row at the same bits, and whether the τ point is below both. The rows are stored
    back as JSON dicts (old ``avg_bits`` results renamed), so the report is plain JSON data afterwards."""
    report.setdefault("settings", {})["bootstrap"] = dict(BOOTSTRAP)
    rows = [r.upgrade() for r in report_rows(report)]
    annotate_rows(rows)
    if isinstance(report.get("rows"), list):
        report["rows"][:] = [r.to_dict() for r in rows]
    return report


def annotate_rows(rows: list[ReportRow]) -> list[ReportRow]:
    """:func:`annotate_report` on typed rows (in place)."""
    float_row = next((r for r in rows if r.method == REFERENCE), None)
    float_torch = (float_row.results if float_row else None) or {}
    float_ort = (float_row.ort.results if float_row and float_row.ort else None) or {}
    for row in rows:
        if row is float_row:
            continue
        # ORT-only rows compare with the float row's ORT scores when there are any
        refs = {**float_torch, **float_ort} if row.backend == "ort" else float_torch
        for results, ref in (
            (row.results or {}, refs),
            ((row.ort.results if row.ort else None) or {}, float_ort),
        ):
            for text, res in results.items():
                res.vs_float = _paired(res, ref.get(text))
    for row in rows:
        if row.accuracy_level == 4:
            twin = _float_activation_results(rows, row)
            for text, res in (row.results or {}).items():
                res.vs_float_activations = _paired(res, twin.get(text))
                res.int8_cost_vs_matmul_nbits = None
    for row in rows:  # MoBiQuant's int8 cost over MatMulNBits' at the same bits
        if row.method != "mbq-int8act":
            continue
        nbits = next(
            (r for r in rows if r.method == "matmul-nbits" and r.accuracy_level == 4 and r.bits == row.bits),
            None,
        )
        if nbits is None:
            continue
        ours0, theirs0 = _float_activation_results(rows, row), _float_activation_results(rows, nbits)
        for text, res in (row.results or {}).items():
            parts = (res, ours0.get(text), nbits.results.get(text), theirs0.get(text))
            res.int8_cost_vs_matmul_nbits = _cost_ratio(*parts)
    for row in rows:
        if row.method != "mbq-tau":
            continue
        uniform = [r for r in rows if r.method == "mbq-uniform" and r.artifact == row.artifact]
        random_row = _random_row(rows, row)
        oracle_row = _random_row(rows, row, "mbq-oracle")
        for text, res in (row.results or {}).items():
            for key in TextResult.ANNOTATIONS:
                setattr(res, key, None)
            pts = [(r.results[text].bits, r.results[text].ppl) for r in uniform if text in r.results]
            interp = _interpolate(res.bits, pts) if res.bits is not None else None
            if interp is not None:
                res.interpolated_ppl, res.interpolated_between = interp[0], [interp[1], interp[2]]
            rnd = (random_row.results or {}).get(text) if random_row is not None else None
            if rnd is not None:
                res.random_ppl = rnd.ppl
                res.vs_random = _paired(res, rnd)
            oracle = (oracle_row.results or {}).get(text) if oracle_row is not None else None
            if oracle is not None:
                res.oracle_ppl = oracle.ppl
                res.vs_oracle = _paired(res, oracle)
            if interp is not None and rnd is not None:
                res.below_both = bool(res.ppl < interp[0] and res.ppl < rnd.ppl)
    return rows


def _float_activation_results(rows: list[ReportRow], row: ReportRow) -> dict[str, TextResult]:
    """The ORT results of an int8-activation row's float-activation twin: MatMulNBits at accuracy_level 0
    (same bits and block), or the MoBiQuant uniform row's ORT run (same artifact and slice count)."""
    for r in rows:
        nbits = row.method == r.method == "matmul-nbits" and r.accuracy_level == 0
        if nbits and (r.bits, r.group_size) == (row.bits, row.group_size):
            return r.results or {}
        mbq = row.method == "mbq-int8act" and r.method == "mbq-uniform" and r.ort is not None
        if mbq and (r.artifact, r.slices) == (row.artifact, row.slices):
            return r.ort.results or {}
    return {}


def _random_row(rows: list[ReportRow], tau_row: ReportRow, method: str = "mbq-random") -> ReportRow | None:
    """The random-routing row (or another ``method`` at the τ bits) of a τ row (same artifact, same τ)."""
    return next(
        (r for r in rows if r.method == method and r.artifact == tau_row.artifact and r.tau == tau_row.tau),
        None,
    )


def new_report(settings: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "format_version": 1,
        "settings": settings,
        "texts": list(texts),
        "rows": [],
    }


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
            ppl, bits = res.get("ppl"), bits_of(res)
            if not (isinstance(ppl, (int, float)) and math.isfinite(ppl) and ppl >= 1.0):
                problems.append(f"{label} / {text}: perplexity {ppl!r} is not a finite number >= 1")
            ci = res.get("ci95")
            if ci is not None and not (len(ci) == 2 and 0 < ci[0] <= ci[1]):
                problems.append(f"{label} / {text}: interval {ci!r} is not [lo, hi] with 0 < lo <= hi")
            if not (isinstance(bits, (int, float)) and 0 < bits <= FLOAT_BITS):
                problems.append(f"{label} / {text}: {BITS_KEY} {bits!r} out of (0, 32]")
            elif row.get("bits") is not None and abs(bits - row["bits"]) > 1e-9:
                problems.append(f"{label} / {text}: avg_bits {bits} differs from fixed bits {row['bits']}")
        problems += _check_ort(row, texts, report.get("settings", {}).get("ort", {}))
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


def _check_ort(row: dict[str, Any], texts: list[str], ort_settings: dict[str, Any]) -> list[str]:
    """ORT perplexities finite and within the stated tolerance of PyTorch; speeds finite and positive."""
    problems, label = [], row.get("label", "?")
    ort = row.get("ort") or {}
    tolerance = ort_settings.get("tolerance")
    for text, gap in (ort.get("agreement") or {}).items():
        if not (isinstance(gap, (int, float)) and math.isfinite(gap)):
            problems.append(f"{label} / {text}: ORT vs PyTorch gap {gap!r} is not finite")
        elif tolerance is not None and gap > tolerance:
            problems.append(
                f"{label} / {text}: ORT perplexity differs from PyTorch by {100 * gap:.3f} % "
                f"(tolerance {100 * tolerance:.3f} %)"
            )
    if ort.get("results") is not None and set(ort["results"]) != set(texts):
        problems.append(f"{label}: ORT results for {sorted(ort['results'])}, texts are {texts}")
    for threads, sp in (row.get("speed") or {}).items():
        for key in ("prefill_tok_s", "decode_tok_s"):
            v = sp.get(key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                problems.append(f"{label} @ {threads} threads: {key} {v!r} is not a positive number")
    return problems


def _speed_cell(row: ReportRow, threads: list[str], key: str) -> str:
    sp = row.speed or {}
    vals = [sp[t][key] for t in threads if t in sp]
    return " / ".join(f"{v:.1f}" if v < 100 else f"{v:.0f}" for v in vals) if vals else "–"


def speed_threads(report: dict[str, Any]) -> list[str]:
    """Thread counts (as strings, ascending) that any row measured speed at."""
    return sorted({t for r in report["rows"] for t in (r.get("speed") or {})}, key=int)


def _table_order(row: ReportRow) -> tuple:
    """Table order: by method (the order of :data:`~mbq_onnx.eval.methods.METHODS`), then group, bits, τ."""
    return (table_index(row.method), row.group_size or 0, row.bits or 0, row.tau or 0)


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: one line per row, perplexity and average bits per text."""
    texts = report["texts"]
    rows = report_rows(report)
    threads = speed_threads(report)
    t_head = " / ".join(f"{t}T" for t in threads)
    speed_head = [f"decode tok/s ({t_head})", f"prefill tok/s ({t_head})"] if threads else []
    head = ["model", "avg bits", "model MB", *[f"ppl {t}" for t in texts], *speed_head]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    float_rows = [r for r in rows if r.method == REFERENCE]
    float_ppl = {t: r.ppl for t, r in (float_rows[0].results if float_rows else {}).items()}
    for row in sorted(rows, key=_table_order):
        bits = [row.results[t].bits for t in texts if t in row.results]
        bits_s = (
            " / ".join(f"{b:.2f}" for b in bits) if len({round(b, 2) for b in bits}) > 1 else f"{bits[0]:.2f}"
        )
        ppls = []
        for t in texts:
            res = row.results.get(t)
            if res is None or res.ppl is None:
                ppls.append("–")
                continue
            cell = ppl_cell(res)
            if row.method != REFERENCE and res.vs_float is not None:
                cell += f" ({relative_cell(res.vs_float)})"
            elif row.method != REFERENCE and t in float_ppl:
                cell += f" ({100 * (res.ppl / float_ppl[t] - 1):+.1f} %)"
            ppls.append(cell)
        speed = [_speed_cell(row, threads, k) for k in ("decode_tok_s", "prefill_tok_s")] if threads else []
        lines.append(
            "| " + " | ".join([row.label, bits_s, f"{row.model_bytes / 1e6:.1f}", *ppls, *speed]) + " |"
        )
    first = rows[0].results if rows else {}
    sizes = ", ".join(f"{t}: {r.windows} × {r.window} tokens" for t, r in first.items())
    note = (
        f"\nHeld-out perplexity on the first non-overlapping windows of each text ({sizes}), no BOS, with "
        f"its {_ci_words(report)}; relative change vs float32 in parentheses, with its paired interval (the "
        "same resampled windows for both rows: a difference is real when its interval excludes 0). Average "
        "bits: per weight of the decoder linears (τ rows: weighted by the weights each token reads). "
        "Model MB: decoder linears at their precision (codes + float32 scale + uint8 zero per group), "
        "everything else float32; MatMulNBits rows: the "
        "ONNX file. Perplexity is PyTorch's except for ORT MatMulNBits rows.\n"
    )
    if threads:
        ort = report["settings"].get("ort", {})
        note += (
            f"\nSpeed: ONNX Runtime CPU, {ort.get('prompt_tokens')}-token prefill and "
            f"{ort.get('decode_tokens')} decode steps (teacher-forced held-out text), median of "
            f"{ort.get('repeats')} runs, at {t_head.replace('T', ' thread(s)')}.\n"
        )
    tables = routing_table(report) + int8_table(report) + agreement_table(report)
    return "\n".join(lines) + "\n" + note + tables


def _ci_words(report: dict[str, Any]) -> str:
    b = report.get("settings", {}).get("bootstrap") or BOOTSTRAP
    level, n, seed = 100 * b["level"], b["resamples"], b["seed"]
    return f"{level:.0f} % bootstrap interval over windows ({n} resamples, seed {seed})"


def ppl_cell(res: TextResult | dict[str, Any]) -> str:
    """``"23.60 [23.41, 23.80]"`` (just the perplexity when the result has no interval)."""
    ci = res.get("ci95")
    return f"{res['ppl']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{res['ppl']:.2f}"


def relative_cell(paired: dict[str, Any]) -> str:
    """``"+1.2 % [+0.8, +1.6]"`` from a ``{"ratio", "ci95"}`` pair."""
    lo, hi = paired["ci95"]
    return f"{100 * (paired['ratio'] - 1):+.1f} % [{100 * (lo - 1):+.1f}, {100 * (hi - 1):+.1f}]"


def routing_table(report: dict[str, Any]) -> str:
    """Markdown: each τ row against the two references at the same average bits — the alternating-precision
    line between the bracketing uniform slice counts and random per-token routing — and, with ``mbq-oracle``
    rows, the oracle-routing reference (empty without τ rows)."""
    texts = report["texts"]
    all_rows = report_rows(report)
    rows = sorted((r for r in all_rows if r.method == "mbq-tau"), key=lambda r: r.tau or 0)
    if not rows:
        return ""
    oracle = any(_random_row(all_rows, r, "mbq-oracle") is not None for r in rows)
    head = [
        "τ row",
        "text",
        "avg bits",
        "ppl τ",
        "alternating (interpolated)",
        "random routing",
        "τ vs random (paired)",
        *(["oracle routing", "τ vs oracle (paired)"] if oracle else []),
        "below both",
    ]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        refs = [_random_row(all_rows, row, m) for m in ("mbq-random", *(["mbq-oracle"] if oracle else []))]
        for t in texts:
            res = row.results.get(t)
            if res is None:
                continue
            interp = f"{res.interpolated_ppl:.2f}" if res.interpolated_ppl is not None else "–"
            cells = [row.label, t, f"{res.bits:.2f}", ppl_cell(res), interp]
            for ref, paired in zip(refs, (res.vs_random, res.vs_oracle), strict=False):
                cells.append(ppl_cell(ref.results[t]) if ref is not None and t in ref.results else "–")
                cells.append(relative_cell(paired) if paired is not None else "–")
            cells.append({True: "yes", False: "no"}.get(res.below_both, "–"))
            lines.append("| " + " | ".join(cells) + " |")
    return (
        "\n".join(lines)
        + "\n\nτ rows at their measured average bits: *alternating* is the straight line between the uniform "
        "slice counts bracketing those bits (alternating the two precisions); *random routing* gives every "
        "token of every routed call one of the two bracketing counts at random with the probability that "
        "matches the bits. *Below both*: the routers beat both."
        + (
            " *Oracle routing* gives the same share of tokens the extra slice, in each routed call to the "
            "tokens whose linear output it changes most (it reads the weights and the whole window: a "
            "reference, not a router)."
            if oracle
            else ""
        )
        + "\n"
    )


def int8_table(report: dict[str, Any]) -> str:
    """What int8 activations (``accuracy_level=4``) cost each ORT model, paired against the same model with
    float activations on the same windows (``--int8-cost``); empty when no row has the comparison."""
    texts = report["texts"]
    rows = [
        r for r in sorted(report_rows(report), key=_table_order)
        if any(res.vs_float_activations for res in (r.results or {}).values())
    ]  # fmt: skip
    if not rows:
        return ""
    head = [
        "ORT model, int8 activations",
        *[f"ppl {t} (vs float activations)" for t in texts],
        *[f"{t}: cost vs MatMulNBits' at its bits" for t in texts],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells, versus = [], []
        for t in texts:
            res = row.results.get(t)
            vs = res.vs_float_activations if res is not None else None
            cells.append("–" if vs is None else f"{res.ppl:.2f} ({relative_cell(vs)})")
            cost = res.int8_cost_vs_matmul_nbits if res is not None else None
            versus.append("–" if cost is None else relative_cell(cost))
        lines.append("| " + " | ".join([row.label, *cells, *versus]) + " |")
    return (
        "\n### What int8 activations cost (ONNX Runtime, `accuracy_level` 4 vs 0)\n\n"
        + "\n".join(lines)
        + "\n\nEach row against the same model run with float activations (MoBiQuant: its uniform row's ORT "
        'run; MatMulNBits: its `float activations` row), paired over the same windows. "cost vs '
        "MatMulNBits'\": (ppl int8 / ppl float) of the MoBiQuant row over the same ratio of the MatMulNBits "
        "row with its bits, paired over the windows all four were scored on (> 0: ours costs more).\n"
    )


def agreement_table(report: dict[str, Any]) -> str:
    """Markdown: ORT perplexity next to PyTorch's for every row that ran in both (empty if none)."""
    texts = report["texts"]
    rows = [r for r in report_rows(report) if r.ort is not None and r.ort.agreement]
    if not rows:
        return ""
    tol = report["settings"].get("ort", {}).get("tolerance")
    head = ["model", *[f"{t}: PyTorch / ORT" for t in texts], "max relative gap"]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ort = r.ort.results or {}
        cells = [f"{r.results[t].ppl:.4f} / {ort[t].ppl:.4f}" if t in ort else "–" for t in texts]
        gap = max(r.ort.agreement.values())
        lines.append("| " + " | ".join([r.label, *cells, f"{gap:.1e}"]) + " |")
    tol_s = f" (tolerance {100 * tol:.2f} %)" if tol is not None else ""
    return "\n".join(lines) + f"\n\nORT vs PyTorch perplexity on the same windows{tol_s}.\n"


def _plot_panels(
    report: dict[str, Any],
    path: Path,
    x_of: Callable[[ReportRow, str], float | None],
    xlabel: str,
    float_as_line: bool,
) -> None:
    """Perplexity (log) against ``x_of(row, text)``, a panel per text; rows with no x are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    texts = report["texts"]
    fig, axes = plt.subplots(1, len(texts), figsize=(6.5 * len(texts), 4.8), squeeze=False)
    for ax, text in zip(axes[0], texts, strict=True):
        groups: dict[tuple, list[tuple[float, float, float, float]]] = defaultdict(list)
        for row in report_rows(report):
            res, x = row.results.get(text), x_of(row, text)
            if res is None or x is None:
                continue
            lo, hi = res.ci95 or (res.ppl, res.ppl)
            m = method(row.method)
            if m.reference:
                if float_as_line:
                    ax.axhline(res.ppl, color=m.style.color, ls="--", lw=1, label=f"{m.name} ({res.ppl:.2f})")
                    if hi > lo:
                        ax.axhspan(lo, hi, color=m.style.color, alpha=0.08, lw=0)
                else:
                    ax.errorbar(
                        [x],
                        [res.ppl],
                        yerr=_yerr([res.ppl], [lo], [hi]),
                        marker=m.style.marker,
                        color=m.style.color,
                        ls="none",
                        ms=10,
                        label=m.name,
                    )
                continue
            groups[(row.method, row.group_size)].append((x, res.ppl, lo, hi))
        for (key, gs), pts in sorted(groups.items(), key=lambda kv: (table_index(kv[0][0]), kv[0][1] or 0)):
            pts.sort()
            m = method(key)
            label = m.name + (f" g{gs}" if gs and m.legend_group_size else "")
            alpha = 0.55 if gs and gs != report["settings"].get("group_size") else 1.0
            xs, ys, los, his = (list(v) for v in zip(*pts, strict=True))
            ax.errorbar(
                xs,
                ys,
                yerr=_yerr(ys, los, his),
                marker=m.style.marker,
                color=m.style.color,
                ls="-" if m.connect else ":",
                alpha=alpha,
                capsize=2,
                label=label,
            )
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.0f"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("perplexity")
        ax.set_title(f"{report['settings'].get('model_name', 'model')} — {text}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with replace_file(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _yerr(ys: list[float], los: list[float], his: list[float]) -> list[list[float]]:
    """Error-bar lengths below/above each point (never negative)."""
    return [
        [max(y - lo, 0.0) for y, lo in zip(ys, los, strict=True)],
        [max(hi - y, 0.0) for y, hi in zip(ys, his, strict=True)],
    ]


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Perplexity vs average bits, a panel per text: float line, baseline points, uniform counts, τ curve."""
    _plot_panels(
        report,
        path,
        lambda row, text: row.results[text].bits if text in row.results else None,
        "average bits per weight (decoder linears)",
        float_as_line=True,
    )


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Perplexity vs ORT decode tok/s at the largest measured thread count (the speed/quality Pareto plot)."""
    threads = speed_threads(report)[-1]

    def x(row: ReportRow, _text: str) -> float | None:
        sp = (row.speed or {}).get(threads)
        return sp["decode_tok_s"] if sp else None

    _plot_panels(report, path, x, f"decode tokens/s (ONNX Runtime, {threads} threads)", float_as_line=False)


def write_report(report: dict[str, Any], output: Path, plot: bool = True) -> dict[str, Path]:
    """Write ``quality.json`` and ``quality.md`` (and, with ``plot``, ``quality.png`` and — when speeds were
    measured — ``pareto.png``) into ``output``, each atomically; :func:`annotate_report` first."""
    annotate_report(report)
    output = Path(output)
    paths = {"json": output / "quality.json", "md": output / "quality.md"}
    write_file(paths["json"], json.dumps(report, indent=2) + "\n")
    write_file(paths["md"], markdown_table(report))
    if plot:
        paths["png"] = output / "quality.png"
        plot_report(report, paths["png"])
        if speed_threads(report):
            paths["pareto"] = output / "pareto.png"
            plot_pareto(report, paths["pareto"])
    return paths
