"""Perplexity over non-overlapping windows equals a direct cross-entropy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mbq_onnx.eval import eval_windows, perplexity, torch_logits_fn
from mbq_onnx.eval.perplexity import bootstrap_ppl, bootstrap_ratio


def test_matches_direct_cross_entropy(tiny_llama):
    model = tiny_llama()
    ids = np.random.default_rng(0).integers(0, 256, size=350)
    res = perplexity(torch_logits_fn(model), ids, window=100, progress=False)
    # direct: mean next-token cross-entropy over the three full windows (the 50-token tail is dropped)
    losses = []
    with torch.no_grad():
        for i in range(3):
            w = torch.as_tensor(ids[i * 100 : (i + 1) * 100])[None]
            logits = model(input_ids=w).logits[0]
            losses.append(F.cross_entropy(logits[:-1], w[0, 1:], reduction="none"))
    expected = math.exp(float(torch.cat(losses).mean()))
    assert res.windows == 3 and res.tokens == 3 * 99 and res.window == 100
    assert res.ppl == pytest.approx(expected, rel=1e-5)


def test_windows_are_independent_so_order_of_windows_does_not_matter(tiny_llama):
    model = tiny_llama()
    ids = np.random.default_rng(1).integers(0, 256, size=200)
    swapped = np.concatenate([ids[100:], ids[:100]])
    a = perplexity(torch_logits_fn(model), ids, window=100, progress=False)
    b = perplexity(torch_logits_fn(model), swapped, window=100, progress=False)
    assert a.ppl == pytest.approx(b.ppl, rel=1e-9)


def test_numpy_logits_function_gives_the_same_result(tiny_llama):
    """The seam for ONNX Runtime: any callable returning numpy logits works."""
    model = tiny_llama()
    fn = torch_logits_fn(model)
    ids = np.random.default_rng(2).integers(0, 256, size=160)
    a = perplexity(fn, ids, window=80, progress=False)
    b = perplexity(lambda x: fn(x).numpy(), ids, window=80, progress=False)
    assert a.ppl == pytest.approx(b.ppl, rel=1e-6)


def test_uniform_logits_give_vocab_size():
    ids = np.arange(64) % 10
    res = perplexity(
        lambda x: np.zeros((1, x.shape[1], 10), dtype=np.float32), ids, window=32, progress=False
    )
    assert res.ppl == pytest.approx(10.0, rel=1e-9)


def test_window_selection():
    ids = np.arange(1000)
    wins = eval_windows(ids, window=300)
    assert [w[0] for w in wins] == [0, 300, 600] and all(len(w) == 300 for w in wins)
    assert len(eval_windows(ids, window=100, max_windows=4)) == 4
    assert len(eval_windows(ids, window=100, max_tokens=250)) == 2
    short = eval_windows(ids, window=2048, max_tokens=500)
    assert len(short) == 1 and len(short[0]) == 500
    with pytest.raises(ValueError, match="window"):
        eval_windows(ids, window=1)
    with pytest.raises(ValueError, match="max_tokens"):
        eval_windows(ids, window=100, max_tokens=1)
    with pytest.raises(ValueError, match="at least 2"):
        eval_windows(ids[:1], window=100)


def test_logits_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="positions"):
        perplexity(
            lambda x: np.zeros((1, 5, 10), dtype=np.float32), np.arange(20) % 10, window=10, progress=False
        )


def _windows(n: int, seed: int = 0):
    """Per-window NLL sums of ``n`` windows of 100 tokens with a realistic spread (log ppl 3 ± 0.3)."""
    rng = np.random.default_rng(seed)
    return rng.normal(3.0, 0.3, n) * 100, np.full(n, 100)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_windows():
    widths = []
    for n in (10, 40, 160):
        nll, tok = _windows(n)
        lo, hi = bootstrap_ppl(nll, tok)
        assert lo < math.exp(nll.sum() / tok.sum()) < hi
        widths.append(math.log(hi / lo))
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.35)  # ~ 1/sqrt(windows)


def test_bootstrap_is_deterministic_with_its_seed():
    nll, tok = _windows(30)
    assert bootstrap_ppl(nll, tok) == bootstrap_ppl(nll, tok)
    assert bootstrap_ppl(nll, tok, seed=1) == bootstrap_ppl(nll, tok, seed=1)
    assert bootstrap_ppl(nll, tok, seed=1) != bootstrap_ppl(nll, tok, seed=2)
    one = bootstrap_ppl(nll[:1], tok[:1])  # a single window: no spread to resample
    assert one[0] == pytest.approx(one[1]) == pytest.approx(math.exp(nll[0] / 100))


def test_paired_ratio_sees_a_one_percent_difference_the_unpaired_intervals_cannot():
    nll, tok = _windows(40)
    rng = np.random.default_rng(1)
    worse = nll + 100 * (math.log(1.01) + rng.normal(0, 0.002, nll.size))  # +1 % on every window, a bit noisy
    ratio, lo, hi = bootstrap_ratio(worse, tok, nll, tok)
    assert ratio == pytest.approx(math.exp((worse.sum() - nll.sum()) / tok.sum()))
    assert 1.0 < lo < ratio < hi < 1.02
    a, b = bootstrap_ppl(worse, tok), bootstrap_ppl(nll, tok)
    assert a[0] < b[1]  # the separate intervals overlap: only the paired one resolves it
    with pytest.raises(ValueError, match="same windows"):
        bootstrap_ratio(worse[:-1], tok[:-1], nll, tok)


def test_perplexity_keeps_windows_and_interval(tiny_llama):
    model = tiny_llama()
    ids = np.random.default_rng(3).integers(0, 256, size=400)
    res = perplexity(torch_logits_fn(model), ids, window=50, progress=False)
    assert len(res.window_nll) == len(res.window_tokens) == res.windows == 8
    assert sum(res.window_tokens) == res.tokens and sum(res.window_nll) == pytest.approx(res.nll)
    assert res.ci95 == bootstrap_ppl(res.window_nll, res.window_tokens)
    assert res.ci95[0] <= res.ppl <= res.ci95[1]
    d = res.to_dict()
    assert d["ci95"] == list(res.ci95) and len(d["window_nll"]) == 8
