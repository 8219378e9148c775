"""The calibration's τ → bits table (``tau_table`` in an artifact's ``config.json`` and ``mbq_config.json``).

Torch-free: the artifact code, the evaluation and the runtime read rows through this module.

Each row holds a router threshold τ and the average bits per routed call that τ gave on the
calibration text (``avg_bits_per_call``; exports of older artifacts wrote ``avg_bits``). The bits fall
with τ, steeply in places (bracketed schedule: just above each uniform slice count), so a person who
wants a precision asks for bits and reads τ off this table rather than guessing τ.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: τ-table key of the average bits per routed call: every routed call (a linear with its router, or a block
#: router) counts once per token — unlike a report's ``avg_bits_per_weight``, which weights each call by the
#: weights it reads. Artifacts written before the rename used ``avg_bits``; both load.
TAU_TABLE_BITS = "avg_bits_per_call"
OLD_TAU_TABLE_BITS = "avg_bits"


def tau_table_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A τ-table row with the old ``avg_bits`` key renamed to ``avg_bits_per_call``."""
    out = dict(row)
    if OLD_TAU_TABLE_BITS in out:
        old = out.pop(OLD_TAU_TABLE_BITS)
        out.setdefault(TAU_TABLE_BITS, old)
    return out


def tau_table_bits(row: Mapping[str, Any]) -> float | None:
    """The average bits per routed call of a τ-table row (new or old key)."""
    v = row.get(TAU_TABLE_BITS, row.get(OLD_TAU_TABLE_BITS))
    return None if v is None else float(v)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def table_points(tau_table: Sequence[object]) -> list[tuple[float, float]]:
    """``(τ, bits per routed call)`` of every well-formed row, τ clipped to [0, 1], sorted and unique.
    Rows without a finite τ and finite bits are skipped."""
    points = set()
    for row in tau_table:
        if not isinstance(row, dict):
            continue
        tau, bits = row.get("tau"), row.get(TAU_TABLE_BITS, row.get(OLD_TAU_TABLE_BITS))
        if _finite(tau) and _finite(bits):
            points.add((min(max(float(tau), 0.0), 1.0), float(bits)))
    return sorted(points)


def tau_for_bits(tau_table: Sequence[object], bits: float) -> float:
    """The smallest τ at which the table's average bits per routed call fall to ``bits`` (piecewise linear
    between rows). :class:`ValueError` naming the table's range when ``bits`` lies outside it or the
    table has no usable row. The table is measured on calibration text: a prompt's bits differ."""
    points = table_points(tau_table)
    if not points:
        raise ValueError("the model has no τ → bits table (tau_table in mbq_config.json) to read τ from")
    lo, hi = min(b for _, b in points), max(b for _, b in points)
    if not (math.isfinite(bits) and lo <= bits <= hi):
        raise ValueError(
            f"{bits:g} bits is outside the model's τ table, {lo:.2f}..{hi:.2f} bits per routed call"
        )
    for (t0, b0), (t1, b1) in itertools.pairwise(points):
        if b0 == bits:
            return t0
        if b0 > bits >= b1:
            return t0 + (b0 - bits) / (b0 - b1) * (t1 - t0)
    if points[-1][1] == bits:  # a single-row table
        return points[-1][0]
    raise ValueError(f"the model's τ table does not fall through {bits:g} bits as τ grows (malformed)")
