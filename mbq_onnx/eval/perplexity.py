"""Held-out perplexity over non-overlapping windows, for any logits function (PyTorch or ORT).

``perplexity(logits_fn, ids)`` only needs a callable mapping token ids ``[1, T]`` to logits
``[1, T, vocab]`` — a PyTorch model (:func:`torch_logits_fn`) or an exported ONNX Runtime session.

Every result keeps the summed NLL and the predicted-token count of each window, so a 95 % confidence
interval follows by bootstrap over windows (:func:`bootstrap_ppl`), and two models scored on the same
windows get a paired interval for their perplexity ratio (:func:`bootstrap_ratio`): the same resampled
windows for both, which cancels most of the text-to-text variation a difference of 1 % would drown in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LogitsFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]
"""Token ids int64 ``[1, T]`` → logits float ``[1, T, vocab]``."""

DEFAULT_WINDOW = 2048
#: Windows per text by default: all available up to this cap (SOTU 2000+ has 78 windows of 2,048 tokens,
#: Moby-Dick 141).
DEFAULT_MAX_WINDOWS = 40
#: Bootstrap settings of every interval in a report (fixed seed: the same resampled windows for every row).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


def _resample_sums(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Sums of ``values`` over ``resamples`` bootstrap resamples of its windows ``[resamples]``: window
    indices drawn with replacement by a generator seeded with ``seed`` (so equal window counts give equal
    indices: paired across rows)."""
    n = values.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return values[idx].sum(axis=1)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _check_windows(nll: Sequence[float], tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    nll_a, tok_a = np.asarray(nll, np.float64).reshape(-1), np.asarray(tokens, np.float64).reshape(-1)
    if nll_a.size == 0 or nll_a.shape != tok_a.shape:
        raise ValueError(f"need one token count per window NLL: {nll_a.size} NLLs, {tok_a.size} counts")
    if (tok_a <= 0).any():
        raise ValueError("every window must predict at least one token")
    return nll_a, tok_a


def bootstrap_ppl(
    window_nll: Sequence[float],
    window_tokens: Sequence[int],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``exp(Σ NLL / Σ tokens)`` over windows resampled with replacement."""
    nll, tok = _check_windows(window_nll, window_tokens)
    with np.errstate(over="ignore"):
        ppl = np.exp(_resample_sums(nll, resamples, seed) / _resample_sums(tok, resamples, seed))
    return _interval(ppl, level)


def bootstrap_ratio(
    nll: Sequence[float],
    tokens: Sequence[int],
    ref_nll: Sequence[float],
    ref_tokens: Sequence[int],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> tuple[float, float, float]:
    """Paired bootstrap of ``ppl / ppl_ref`` for two models scored on the *same* windows: both resampled with
    the same window indices. Returns ``(ratio, lo, hi)``."""
    a_nll, a_tok = _check_windows(nll, tokens)
    b_nll, b_tok = _check_windows(ref_nll, ref_tokens)
    if a_nll.shape != b_nll.shape or not np.array_equal(a_tok, b_tok):
        raise ValueError("a paired interval needs both models scored on the same windows")
    # log ppl_a - log ppl_b = (Σ NLL_a - Σ NLL_b) / Σ tokens on every resample (same windows, same tokens)
    diff = _resample_sums(a_nll - b_nll, resamples, seed) / _resample_sums(a_tok, resamples, seed)
    ratio = math.exp((a_nll.sum() - b_nll.sum()) / a_tok.sum())
    with np.errstate(over="ignore"):
        lo, hi = _interval(np.exp(diff), level)
    return ratio, lo, hi


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl = exp(nll / tokens)`` over ``windows`` windows of ``window`` tokens (``tokens`` predicted);
    ``ci95``: bootstrap interval over windows; ``window_nll``/``window_tokens``: per window (to recompute it).
    """

    ppl: float
    nll: float
    tokens: int
    windows: int
    window: int
    ci95: tuple[float, float]
    window_nll: tuple[float, ...]
    window_tokens: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"], d["window_nll"], d["window_tokens"] = (
            list(self.ci95),
            list(self.window_nll),
            list(self.window_tokens),
        )
        return d


def eval_windows(
    ids: Sequence[int] | np.ndarray,
    window: int = DEFAULT_WINDOW,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Non-overlapping windows of ``window`` tokens from the start of ``ids`` (a partial tail is dropped).

    ``max_tokens`` caps the tokens used first; if fewer than ``window`` remain, one shorter window of all of
    them is used. ``max_windows`` caps the count (``None``: no cap).
    """
    if window < 2:
        raise ValueError(f"window {window} must be at least 2 tokens")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens {max_tokens} must be at least 2")
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if max_tokens is not None:
        arr = arr[:max_tokens]
    if arr.size < 2:
        raise ValueError(f"need at least 2 held-out tokens, got {arr.size}")
    if arr.size < window:
        return [arr]
    count = arr.size // window
    if max_windows is not None:
        count = min(count, max_windows)
    return [arr[i * window : (i + 1) * window] for i in range(count)]


def window_nll(logits: np.ndarray | torch.Tensor, ids: np.ndarray) -> float:
    """Summed next-token negative log-likelihood of one window (predicts tokens 1..T-1 from 0..T-2)."""
    lg = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    lg = lg.reshape(-1, lg.shape[-1]).double()
    target = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if lg.shape[0] != target.shape[0]:
        raise ValueError(f"logits have {lg.shape[0]} positions but the window has {target.shape[0]} tokens")
    return float(F.cross_entropy(lg[:-1], target[1:], reduction="sum"))


def perplexity(
    logits_fn: LogitsFn,
    ids: Sequence[int] | np.ndarray,
    *,
    window: int = DEFAULT_WINDOW,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    max_tokens: int | None = None,
    desc: str = "perplexity",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``logits_fn`` on ``ids``: windows scored independently (no BOS, no overlap)."""
    wins = eval_windows(ids, window, max_windows, max_tokens)
    nlls, counts = [], []
    for w in tqdm(wins, desc=desc, disable=not progress, leave=False):
        nlls.append(window_nll(logits_fn(w[None, :]), w))
        counts.append(int(w.size - 1))
    nll, tokens = float(sum(nlls)), int(sum(counts))
    ppl = _finite_exp(nll / tokens)
    lo, hi = bootstrap_ppl(nlls, counts)
    return PerplexityResult(
        ppl=ppl,
        nll=nll,
        tokens=tokens,
        windows=len(wins),
        window=int(wins[0].size),
        ci95=(lo, hi),
        window_nll=tuple(nlls),
        window_tokens=tuple(counts),
    )


def _finite_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """Wrap a transformers causal LM as a :data:`LogitsFn` (eval mode, no grad, no KV cache)."""
    model.eval()

    @torch.no_grad()
    def fn(ids: np.ndarray) -> torch.Tensor:
        return model(input_ids=torch.as_tensor(ids, dtype=torch.long), use_cache=False).logits.float()

    return fn
