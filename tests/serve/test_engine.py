"""The batching engine on a real session, without HTTP: batched rows give one-by-one tokens, precision
floors, stop strings, refusals."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mbq_onnx.runtime import FixedController, MbqSession, generate
from mbq_onnx.runtime.batch import BatchKVCache
from mbq_onnx.serve.engine import BatchEngine, GenerationRequest, Precision, Refused

PROMPTS = [[7, 100, 42, 9, 201], list(range(30, 41)), [5] * 8, [250, 3, 77]]


@pytest.fixture(scope="module")
def session(serve_model) -> MbqSession:
    return MbqSession(serve_model, threads=1)


def _one_by_one(session: MbqSession, prompt: list[int], n: int, tau: float = 0.0) -> list[int]:
    return generate(session, prompt, FixedController(tau=tau), max_new_tokens=n, stop_token_ids=()).token_ids


def test_batch_cache_rows_decode_like_single_sequences(session):
    """Rows of different lengths, a row leaving mid-way (the last row moves into its place) and capacity
    growth give each sequence the logits it gets alone."""
    want = [_one_by_one(session, p, 20, tau=0.7) for p in PROMPTS]
    cache = BatchKVCache(session, 3, capacity=8)
    running: list[tuple[int, list[int]]] = []  # (prompt index, tokens), in row order
    pending, done = list(range(len(PROMPTS))), {}
    while pending or running:
        if pending and cache.rows < 3:
            i = pending.pop(0)
            out = cache.prefill(PROMPTS[i], 0.7)
            running.append((i, [int(np.argmax(out.logits[0]))]))
        out = cache.decode([t[-1] for _, t in running], 0.7)
        assert out.logits.shape[0] == len(running) and out.slice_counts.shape[1] == len(running)
        for r, (_, toks) in enumerate(running):
            toks.append(int(np.argmax(out.logits[r])))
        for r in range(len(running) - 1, -1, -1):
            i, toks = running[r]
            if len(toks) >= (7 if i == 0 else 20):
                done[i] = toks
                moved = cache.remove(r)
                last = running.pop()
                if moved is not None:
                    running[r] = last
    assert cache.capacity > 8
    for i, toks in done.items():
        assert toks == want[i][: len(toks)], f"prompt {i}"


def test_batch_cache_rejects_misuse(session):
    cache = BatchKVCache(session, 1)
    with pytest.raises(ValueError, match="one token per running row"):
        cache.decode([1], 0.0)
    cache.prefill([1, 2], 0.0)
    with pytest.raises(RuntimeError, match="all 1 rows"):
        cache.prefill([1], 0.0)
    with pytest.raises(IndexError):
        cache.remove(3)


async def _collect(engine: BatchEngine, req: GenerationRequest) -> tuple[list[int], dict, str]:
    tokens, final = [], None
    async for ev in await engine.submit(req):
        if ev.token_id is not None:
            tokens.append(ev.token_id)
        final = ev
    return tokens, final.stats, final.finish_reason


def test_engine_batches_concurrent_requests_like_one_by_one(session):
    lengths = [12, 5, 20, 9]
    want = [_one_by_one(session, p, n) for p, n in zip(PROMPTS, lengths, strict=True)]

    async def main():
        engine = BatchEngine(session, Precision(tau=0.0), max_batch=3, max_queue=4)
        reqs = [GenerationRequest(p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
        got = await asyncio.gather(*(_collect(engine, r) for r in reqs))
        await engine.close()
        return got, engine

    got, engine = asyncio.run(main())
    for (tokens, stats, reason), w, n in zip(got, want, lengths, strict=True):
        assert tokens == w and reason == "length" and stats["completion_tokens"] == n
        assert stats["tau_min"] == stats["tau_max"] == 0.0
    assert b'mbq_requests_total{outcome="completed"} 4.0' in engine.metrics.render()


def test_engine_honours_precision_floor_and_stop_strings(session):
    ref = _one_by_one(session, PROMPTS[1], 12, tau=0.2)
    text = session.tokenizer.decode(ref)
    stop = text[5:7]

    async def main():
        engine = BatchEngine(session, Precision(tau=0.9), max_batch=2)
        floored = await _collect(engine, GenerationRequest(PROMPTS[1], 12, max_tau=0.2))
        events = [ev async for ev in await engine.submit(GenerationRequest(PROMPTS[1], 12, max_tau=0.2,
                                                                          stop_strings=(stop,)))]  # fmt: skip
        await engine.close()
        return floored, events

    (tokens, stats, _), events = asyncio.run(main())
    assert tokens == ref and stats["tau_max"] == pytest.approx(0.2)
    assert events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events) == text[: text.find(stop)]


def test_engine_refuses_when_the_queue_is_full(session):
    async def main():
        engine = BatchEngine(session, Precision(tau=0.0), max_batch=1, max_queue=1, queue_timeout_s=0.05)
        long = [asyncio.ensure_future(_collect(engine, GenerationRequest([1, 2, 3], 400))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Refused) as queue_full:
            await engine.submit(GenerationRequest([4], 4))
        results = await asyncio.gather(*long, return_exceptions=True)
        await engine.close()
        return queue_full.value, results

    queue_full, results = asyncio.run(main())
    assert queue_full.status == 429 and queue_full.retry_after_s >= 1
    # The first request runs; the queued one times out with 503 (it waited 50 ms for a 400-token job).
    assert len(results[0][0]) == 400
    assert isinstance(results[1], Refused) and results[1].status == 503


def test_engine_rejects_bad_requests(session):
    engine = BatchEngine(session, Precision(), max_batch=1)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.validate(GenerationRequest([1], 0))
    with pytest.raises(ValueError, match="context"):
        engine.validate(GenerationRequest([1] * 1000, 100))
    with pytest.raises(ValueError, match="max_tau"):
        engine.validate(GenerationRequest([1], 4, max_tau=1.5))
    with pytest.raises(ValueError, match="slices"):
        BatchEngine(session, Precision(slices=9))
    with pytest.raises(ValueError, match="latency map"):
        BatchEngine(session, Precision(slo_ms=10.0))
