"""Token generation with the KV cache, steered per step by a controller (budget or fixed mode).

onnxruntime-genai is not used: it can load the custom-op library, but it offers no documented way
to change a graph input such as ``tau`` between steps (see the project design notes), and per-step τ
is the point of this runtime. The loop below is small: prefill, then one decode call per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .controller import BudgetController, Decision, FixedController
from .session import MbqSession

Controller = BudgetController | FixedController
TokenCallback = Callable[[int, str], None]  # (token id, new text)


@dataclass(frozen=True)
class Sampling:
    """Greedy when ``temperature == 0``; else temperature / top-k / top-p sampling with ``seed``."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class TokenSampler:
    """Picks the next token from last-position logits (float32 [vocab])."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits: np.ndarray) -> int:
        s = self.sampling
        if s.temperature == 0.0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / s.temperature
        k = s.top_k if 0 < s.top_k < x.size else x.size
        idx = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
        idx = idx[np.argsort(-x[idx], kind="stable")]
        p = np.exp(x[idx] - x[idx[0]])
        p /= p.sum()
        if s.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
            idx, p = idx[:keep], p[:keep] / p[:keep].sum()
        return int(idx[self.rng.choice(idx.size, p=p)])


@dataclass
class StepRecord:
    """One decode step: the token it produced and how it was produced."""

    index: int
    token_id: int
    latency_ms: float  # wall time of the whole step (forward + token choice)
    tau: float
    force_slices: int
    status: str
    avg_bits: float
    predicted_ms: float | None


@dataclass
class GenerationResult:
    """Prompt and generated tokens, text, prefill time and the per-step trace."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    prefill_ms: float
    prefill_avg_bits: float
    steps: list[StepRecord] = field(default_factory=list)
    stop_reason: str = "max_new_tokens"

    def summary(self) -> dict:
        """tok/s, p50/p95 step latency, average bits and the τ trace (decode steps only)."""
        lat = np.array([s.latency_ms for s in self.steps], np.float64)
        bits = np.array([s.avg_bits for s in self.steps], np.float64)
        statuses: dict[str, int] = {}
        for s in self.steps:
            statuses[s.status] = statuses.get(s.status, 0) + 1
        return {
            "prompt_tokens": len(self.prompt_ids),
            "new_tokens": len(self.token_ids),
            "prefill_ms": self.prefill_ms,
            "tokens_per_s": float(lat.size / lat.sum() * 1e3) if lat.size else None,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "avg_bits": float(bits.mean()) if bits.size else None,
            "status_counts": statuses,
            "tau_trace": [s.tau for s in self.steps],
            "stop_reason": self.stop_reason,
        }

    def trace(self) -> list[dict]:
        return [asdict(s) for s in self.steps]


def generate(
    session: MbqSession,
    prompt: str | Sequence[int],
    controller: Controller,
    max_new_tokens: int = 64,
    sampling: Sampling | None = None,
    stop_token_ids: Sequence[int] | None = None,
    on_token: TokenCallback | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens; the controller sets τ / forced slices per step.

    The prompt is prefilled at the controller's first decision; every decode step's wall time is
    fed back to the controller. Stops at any of ``stop_token_ids`` (default: the model's EOS ids),
    which is not included in the output. ``on_token(id, text_delta)`` streams the text.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt_ids = session.tokenizer.encode(prompt).ids if isinstance(prompt, str) else [int(t) for t in prompt]
    if not prompt_ids:
        raise ValueError("the prompt is empty (no tokens)")
    stops = set(session.eos_token_ids if stop_token_ids is None else stop_token_ids)
    sampler = TokenSampler(sampling or Sampling())

    d: Decision = controller.decision
    out = session.run(np.array([prompt_ids], np.int64), session.empty_cache(), d.tau, d.force_slices)
    result = GenerationResult(prompt_ids, [], "", out.latency_ms, session.average_bits(out.slice_counts))
    next_id = sampler(out.logits[0])
    past = out.present
    text = ""
    for i in range(max_new_tokens):
        if next_id in stops:
            result.stop_reason = "stop_token"
            break
        result.token_ids.append(next_id)
        if on_token is not None:
            new_text = session.tokenizer.decode(result.token_ids)
            if not new_text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                on_token(next_id, new_text[len(text) :])
                text = new_text
        if i == max_new_tokens - 1:
            break
        d = controller.decision
        t0 = time.perf_counter()
        out = session.run(np.array([[next_id]], np.int64), past, d.tau, d.force_slices)
        next_id = sampler(out.logits[0])
        step_ms = (time.perf_counter() - t0) * 1e3
        past = out.present
        result.steps.append(
            StepRecord(
                index=i,
                token_id=next_id,
                latency_ms=step_ms,
                tau=d.tau,
                force_slices=d.force_slices,
                status=d.status,
                avg_bits=session.average_bits(out.slice_counts),
                predicted_ms=None if np.isnan(d.predicted_ms) else d.predicted_ms,
            )
        )
        controller.update(step_ms)
    result.text = session.tokenizer.decode(result.token_ids)
    return result
