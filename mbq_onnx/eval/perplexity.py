"""Held-out perplexity over non-overlapping windows, for any logits function (PyTorch or ORT).

``perplexity(logits_fn, ids)`` only needs a callable mapping token ids ``[1, T]`` to logits
``[1, T, vocab]`` — a PyTorch model (:func:`torch_logits_fn`) or an exported ONNX Runtime session.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LogitsFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]
"""Token ids int64 ``[1, T]`` → logits float ``[1, T, vocab]``."""

DEFAULT_WINDOW = 2048
DEFAULT_MAX_WINDOWS = 20


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl = exp(nll / tokens)`` over ``windows`` windows of ``window`` tokens (``tokens`` predicted)."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    window: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


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
    nll, tokens = 0.0, 0
    for w in tqdm(wins, desc=desc, disable=not progress, leave=False):
        nll += window_nll(logits_fn(w[None, :]), w)
        tokens += w.size - 1
    ppl = math.exp(nll / tokens)
    if not math.isfinite(ppl):
        ppl = float("inf")
    return PerplexityResult(ppl=ppl, nll=nll, tokens=tokens, windows=len(wins), window=int(wins[0].size))


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """Wrap a transformers causal LM as a :data:`LogitsFn` (eval mode, no grad, no KV cache)."""
    model.eval()

    @torch.no_grad()
    def fn(ids: np.ndarray) -> torch.Tensor:
        return model(input_ids=torch.as_tensor(ids, dtype=torch.long), use_cache=False).logits.float()

    return fn
