"""End-to-end ORT speed of an exported model: prefill and decode tokens per second at a thread count.

One :class:`~mbq_onnx.runtime.MbqSession` per (model, thread count); each setting (a forced slice count, a
τ, or nothing for a float/MatMulNBits graph) runs ``repeats`` times: a prefill of ``prompt_tokens`` tokens
from an empty cache, then ``decode_tokens`` single-token steps teacher-forced with the following tokens of
the same text (so routing sees real text and the KV length grows as in generation). Rates come from the
median over repeats of the prefill time and of the per-step decode time.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_PROMPT_TOKENS = 128
DEFAULT_DECODE_TOKENS = 64
DEFAULT_REPEATS = 3
WARMUP_STEPS = 4


@dataclass(frozen=True)
class Speed:
    """Median rates of one setting; ``decode_avg_bits_per_weight`` is the weight-weighted mean over decode
    steps (None for graphs without routing)."""

    threads: int
    prefill_tok_s: float
    decode_tok_s: float
    decode_ms: float
    prompt_tokens: int
    decode_tokens: int
    repeats: int
    decode_avg_bits_per_weight: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class BitsMeter:
    """Average bits per weight over the ``slice_counts`` outputs of ORT calls: each routed entry ``i`` is
    weighted by ``weights[i]`` (the weights its call reads; ``None``: each entry counts once)."""

    def __init__(self, session, weights: np.ndarray | None = None):
        self.session = session
        groups = session.config.raw.get("router_groups")
        if groups:  # a lean graph reports one row per router group: it reads all its members' weights
            weights = [sum(g["weights"]) for g in groups]
        self.weights = None if weights is None else np.asarray(weights, np.float64)
        self.reset()

    def reset(self) -> None:
        self.bit_sum = self.weight_sum = 0.0

    def add(self, slice_counts: np.ndarray) -> None:
        if not slice_counts.size:
            return
        counts = np.clip(slice_counts.reshape(slice_counts.shape[0], -1), 1, self.session.config.num_slices)
        w = np.ones(counts.shape[0]) if self.weights is None else self.weights
        if w.shape[0] != counts.shape[0]:
            raise ValueError(f"{w.shape[0]} routed weights for {counts.shape[0]} slice-count rows")
        self.bit_sum += float((self.session.config.bits_per_count[counts] * w[:, None]).sum())
        self.weight_sum += float(w.sum() * counts.shape[1])

    def average(self) -> float | None:
        """The mean so far (``None`` before any routed entry)."""
        return self.bit_sum / self.weight_sum if self.weight_sum else None


def tokens_needed(prompt_tokens: int, decode_tokens: int) -> int:
    """Token ids one :func:`measure_speed` run consumes."""
    return prompt_tokens + WARMUP_STEPS + decode_tokens


def measure_speed(
    session,
    token_ids: np.ndarray,
    *,
    tau: float = 0.0,
    force_slices: int = 0,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    decode_tokens: int = DEFAULT_DECODE_TOKENS,
    repeats: int = DEFAULT_REPEATS,
    routed_weights: np.ndarray | None = None,
) -> Speed:
    """Prefill and decode rates of ``session`` (an :class:`~mbq_onnx.runtime.MbqSession`) on ``token_ids``
    (at least ``prompt_tokens + WARMUP_STEPS + decode_tokens`` of them)."""
    if prompt_tokens < 1 or decode_tokens < 1 or repeats < 1:
        raise ValueError(
            f"prompt_tokens ({prompt_tokens}), decode_tokens ({decode_tokens}) and repeats ({repeats}) "
            "must be >= 1"
        )
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    need = tokens_needed(prompt_tokens, decode_tokens)
    if ids.size < need:
        raise ValueError(f"speed measurement needs {need} tokens, got {ids.size}")
    prefill_s, step_s = [], []
    meter = BitsMeter(session, routed_weights)
    for _ in range(repeats):
        out = session.run(
            ids[None, :prompt_tokens], session.empty_cache(), tau=tau, force_slices=force_slices
        )
        prefill_s.append(out.latency_ms / 1e3)
        past = out.present
        steps = []
        for i in range(prompt_tokens, need):
            out = session.run(ids[None, i : i + 1], past, tau=tau, force_slices=force_slices)
            past = out.present
            if i >= prompt_tokens + WARMUP_STEPS:
                steps.append(out.latency_ms / 1e3)
                if session.mixed_bit:
                    meter.add(out.slice_counts)
        step_s.append(statistics.median(steps))
    prefill, step = statistics.median(prefill_s), statistics.median(step_s)
    return Speed(
        threads=int(session.threads or 0),
        prefill_tok_s=prompt_tokens / prefill,
        decode_tok_s=1.0 / step,
        decode_ms=step * 1e3,
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        repeats=repeats,
        decode_avg_bits_per_weight=meter.average(),
    )
