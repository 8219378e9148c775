"""Continuous batching for one replica: a queue, up to ``max_batch`` running sequences, one session call
per step, the precision policy and admission control (docs/serve.md).

The loop runs on the replica's asyncio event loop; each ORT call runs in a worker thread (ORT releases
the GIL), so HTTP handlers stay responsive while a step runs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..runtime.batch import BatchKVCache
from ..runtime.controller import BudgetController, ControllerParams, LatencyMap
from ..runtime.generate import Sampling, TokenSampler
from ..runtime.probe import BatchScale
from ..runtime.session import MbqSession
from .metrics import ServeMetrics

#: The server aims the mean time per output token at 85 % of the target, so that its p95 (tokens of
#: sequences that saw more joins wait longer) lands within the target; admission tests the same setpoint.
SERVE_HEADROOM = 0.15

#: EMA gain of the prefill time per step (about the last 16 steps): smooth, so one join is no spike.
PREFILL_EMA_GAIN = 1.0 / 16.0


class Refused(Exception):
    """A request the replica will not serve now: HTTP ``status`` (429/503), ``code``, ``retry_after_s``."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int):
        super().__init__(message)
        self.status, self.code, self.retry_after_s = status, code, retry_after_s


@dataclass(frozen=True)
class Precision:
    """How a replica picks τ: ``slo_ms`` (load-adaptive, with admission), else a fixed ``tau`` or
    ``slices`` (router bypassed)."""

    slo_ms: float | None = None
    tau: float = 0.0
    slices: int = 0

    def __post_init__(self) -> None:
        if self.slo_ms is not None and not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise ValueError(f"--slo-ms must be a finite number > 0, got {self.slo_ms!r}")
        if not (math.isfinite(self.tau) and 0.0 <= self.tau <= 1.0):
            raise ValueError(f"τ must be in [0, 1], got {self.tau!r}")
        if self.slices < 0:
            raise ValueError(f"slices must be >= 1 (0: the router decides), got {self.slices!r}")


@dataclass
class GenerationRequest:
    """One completion: prompt tokens, limits, sampling, stop tokens and an optional precision floor."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    max_tau: float | None = None


@dataclass
class TokenEvent:
    """A generated token (``token_id`` None on the final event), its text, and on the final event the
    ``finish_reason`` and the sequence's stats (``avg_bits``, ``tau_min``, ``tau_max``, …)."""

    token_id: int | None
    text: str
    finish_reason: str | None = None
    stats: dict | None = None


@dataclass
class _Sequence:
    req: GenerationRequest
    sampler: TokenSampler
    events: asyncio.Queue
    admitted: asyncio.Future
    enqueued: float
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    bits: list[float] = field(default_factory=list)
    taus: list[float] = field(default_factory=list)
    queue_ms: float = 0.0
    first_token_at: float = 0.0
    cancelled: bool = False
    finished: bool = False


class BatchEngine:
    """Serves :class:`GenerationRequest` s on one lean-graph session with continuous batching."""

    def __init__(
        self,
        session: MbqSession,
        precision: Precision,
        latency_map: LatencyMap | None = None,
        batch_scale: BatchScale | None = None,
        max_batch: int = 8,
        max_queue: int = 16,
        queue_timeout_s: float = 30.0,
        metrics: ServeMetrics | None = None,
    ):
        if max_batch < 1 or max_queue < 0 or not queue_timeout_s > 0:
            raise ValueError("max_batch must be >= 1, max_queue >= 0 and queue_timeout_s > 0")
        if precision.slices > session.config.num_slices:
            raise ValueError(f"--slices must be in 1..{session.config.num_slices}, got {precision.slices}")
        self.session, self.precision = session, precision
        self.max_batch, self.max_queue, self.queue_timeout_s = max_batch, max_queue, queue_timeout_s
        self.max_positions = int(session.config.raw.get("max_position_embeddings") or 2048)
        self.controller = None
        if precision.slo_ms is not None:
            if latency_map is None or batch_scale is None:
                raise ValueError("an --slo-ms replica needs the latency map and the batch scale")
            self.controller = BudgetController(
                latency_map, precision.slo_ms, ControllerParams(headroom=SERVE_HEADROOM)
            )
        self.batch_scale = batch_scale
        self.metrics = metrics or ServeMetrics()
        self.cache = BatchKVCache(session, max_batch)
        self.waiting: deque[_Sequence] = deque()
        self.running: list[_Sequence] = []  # running[r] decodes in cache row r
        self.step_ms = math.nan  # the last decode step's wall time plus the amortized prefill time
        self.prefill_ms_per_step = 0.0  # EMA of the prefill time spent between two decode steps
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ---- the request side -------------------------------------------------------------------------
    def validate(self, req: GenerationRequest) -> None:
        """Raise ValueError naming what is wrong with ``req`` for this model."""
        if not req.prompt_ids:
            raise ValueError("the prompt is empty (no tokens)")
        if req.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {req.max_tokens}")
        if len(req.prompt_ids) + req.max_tokens > self.max_positions:
            raise ContextLengthError(
                f"prompt ({len(req.prompt_ids)} tokens) + max_tokens ({req.max_tokens}) exceeds the model's "
                f"context of {self.max_positions} tokens"
            )
        if req.max_tau is not None and not (math.isfinite(req.max_tau) and 0.0 <= req.max_tau <= 1.0):
            raise ValueError(f"max_tau must be a number in [0, 1], got {req.max_tau!r}")

    async def submit(self, req: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Queue ``req``; return its event stream once it has a slot (its first token is then ready).

        Raises :class:`Refused` (429 queue full, 503 no slot within the queue timeout) before that.
        """
        self.validate(req)
        self._ensure_loop()
        if len(self.waiting) >= self.max_queue + self.max_batch - len(self.running):
            self.metrics.refused(429)
            raise Refused(429, "queue_full", "the server's queue is full; retry later", self._retry_after())
        loop = asyncio.get_running_loop()
        seq = _Sequence(
            req, TokenSampler(req.sampling), asyncio.Queue(), loop.create_future(), time.perf_counter()
        )
        self.waiting.append(seq)
        self.metrics.queue_depth.set(len(self.waiting))
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(seq.admitted), self.queue_timeout_s)
        except asyncio.TimeoutError:
            if not seq.admitted.done():
                self.waiting.remove(seq)
                self.metrics.queue_depth.set(len(self.waiting))
                self.metrics.refused(503)
                raise Refused(
                    503,
                    "overloaded",
                    f"no slot within {self.queue_timeout_s:g} s; retry later",
                    self._retry_after(),
                ) from None
        except asyncio.CancelledError:
            seq.cancelled = True
            if seq in self.waiting:
                self.waiting.remove(seq)
            raise
        seq.admitted.result()  # re-raises a prefill failure
        return self._events(seq)

    async def _events(self, seq: _Sequence) -> AsyncIterator[TokenEvent]:
        try:
            while True:
                event = await seq.events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not seq.finished:  # the consumer went away (client disconnect): free the slot at the next step
                seq.cancelled = True
                self._wake.set()

    def _retry_after(self) -> int:
        """Seconds until one running sequence is predicted to finish (at least 1)."""
        step_s = (self.step_ms if math.isfinite(self.step_ms) else 50.0) / 1e3
        left = min((s.req.max_tokens - len(s.tokens) for s in self.running), default=1)
        return max(1, math.ceil(left * step_s))

    # ---- the loop -----------------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            self.metrics.queue_depth.set(len(self.waiting))
            self.metrics.running.set(len(self.running))
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            t0 = time.perf_counter()
            await self._admit_one()
            t1 = time.perf_counter()
            # Every running sequence waits for a join's prefill: its amortized share is part of each token.
            self.prefill_ms_per_step += PREFILL_EMA_GAIN * ((t1 - t0) * 1e3 - self.prefill_ms_per_step)
            if self.running:
                await self._decode_step()
                decode_ms = (time.perf_counter() - t1) * 1e3
                self.step_ms = decode_ms + self.prefill_ms_per_step
                if self.controller is not None:
                    self.controller.update(self.step_ms)
            else:
                await asyncio.sleep(0.005)  # waiting requests held back by admission control

    def _tau(self) -> tuple[float, int]:
        """This step's (τ, force_slices): the policy's, floored by the running requests' ``max_tau``."""
        p = self.precision
        if p.slices:
            return 0.0, p.slices
        tau = self.controller.decision.tau if self.controller is not None else p.tau
        floors = [s.req.max_tau for s in self.running if s.req.max_tau is not None]
        return (min(tau, *floors) if floors else tau), 0

    def _may_join(self) -> bool:
        if len(self.running) >= self.max_batch:
            return False
        c = self.controller
        if c is None or not self.running:
            return True
        n = len(self.running) + 1
        return c.predict_ms(c.map.tau_max, self.batch_scale(n)) <= c.setpoint_ms

    async def _admit_one(self) -> None:
        """Prefill at most one waiting request into the next row (one per step bounds the others' stall)."""
        while self.waiting and self.waiting[0].cancelled:
            self.waiting.popleft()
        if not self.waiting or not self._may_join():
            return
        seq = self.waiting.popleft()
        seq.queue_ms = (time.perf_counter() - seq.enqueued) * 1e3
        self._set_scale(len(self.running) + 1)
        tau, force = self._tau()
        if seq.req.max_tau is not None and not force:
            tau = min(tau, seq.req.max_tau)
        try:
            out = await asyncio.to_thread(self.cache.prefill, seq.req.prompt_ids, tau, force)
        except Exception as e:  # a failed call must not take the replica down
            seq.admitted.set_exception(e)
            return
        self.running.append(seq)
        seq.bits.append(float(self._row_bits(out.slice_counts[..., -1:], 1)[0]))
        seq.taus.append(tau)
        self.metrics.tokens("prompt", len(seq.req.prompt_ids))
        seq.first_token_at = time.perf_counter()
        self.metrics.ttft.observe(seq.first_token_at - seq.enqueued)
        seq.admitted.set_result(None)
        self._emit(seq, seq.sampler(out.logits[0]))
        self._finish_done()

    async def _decode_step(self) -> None:
        tau, force = self._tau()
        tokens = [s.tokens[-1] for s in self.running]
        out = await asyncio.to_thread(self.cache.decode, tokens, tau, force)
        bits = self._row_bits(out.slice_counts, len(tokens))
        self.metrics.step(tau, float(bits.mean()))
        for r, seq in enumerate(self.running):
            seq.bits.append(float(bits[r]))
            seq.taus.append(tau)
            if not seq.finished and not seq.cancelled:
                self._emit(seq, seq.sampler(out.logits[r]))
        self._finish_done()

    def _row_bits(self, slice_counts: np.ndarray, rows: int) -> np.ndarray:
        """Average bits per routed call of each row (docs/controller.md), ``[rows]``."""
        cfg = self.session.config
        if not self.session.mixed_bit or slice_counts.size == 0:
            return np.full(rows, float(sum(cfg.slice_bits)))
        counts = np.clip(slice_counts.reshape(slice_counts.shape[0], rows), 1, cfg.num_slices)
        return cfg.bits_per_count[counts].mean(axis=0)

    def _emit(self, seq: _Sequence, token: int) -> None:
        """Account one sampled token: stop, or append and stream its text."""
        if token in seq.req.stop_ids:
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        self.metrics.tokens("completion", 1)
        text = self.session.tokenizer.decode(seq.tokens)
        stops = seq.req.stop_strings
        if stops:
            longest = max(map(len, stops))
            start = max(0, len(seq.text) - longest)
            hits = [i for i in (text.find(st, start) for st in stops) if i >= 0]
            if hits:
                self._finish(seq, "stop", text[: min(hits)])
                return
            safe = len(text) - (longest - 1)  # hold back what could begin a stop string
        else:
            safe = len(text)
        delta = ""
        if safe > len(seq.text) and not text[:safe].endswith("\ufffd"):  # and incomplete characters
            delta, seq.text = text[len(seq.text) : safe], text[:safe]
        seq.events.put_nowait(TokenEvent(token, delta))
        if len(seq.tokens) >= seq.req.max_tokens:
            self._finish(seq, "length")

    def _finish(self, seq: _Sequence, reason: str, text: str | None = None) -> None:
        """End ``seq``: its final event carries the rest of its ``text`` (default: all tokens decoded)."""
        seq.finished = True
        now = time.perf_counter()
        n = len(seq.tokens)
        tpot_s = (now - seq.first_token_at) / (n - 1) if n > 1 else None
        if tpot_s is not None:
            self.metrics.tpot.observe(tpot_s)
        self.metrics.completed()
        stats = {
            "avg_bits": float(np.mean(seq.bits)) if seq.bits else None,
            "tau_min": min(seq.taus) if seq.taus else None,
            "tau_max": max(seq.taus) if seq.taus else None,
            "slices_forced": self.precision.slices,
            "queue_ms": seq.queue_ms,
            "completion_tokens": n,
        }
        if text is None:
            text = self.session.tokenizer.decode(seq.tokens)
        seq.events.put_nowait(TokenEvent(None, text[len(seq.text) :], reason, stats))
        seq.text = text

    def _finish_done(self) -> None:
        for r in range(len(self.running) - 1, -1, -1):
            if self.running[r].finished:
                self._remove_row(r)

    def _drop_cancelled(self) -> None:
        for r in range(len(self.running) - 1, -1, -1):
            if self.running[r].cancelled:
                self.metrics.cancelled()
                self._remove_row(r)

    def _remove_row(self, r: int) -> None:
        moved = self.cache.remove(r)
        last = self.running.pop()
        if moved is not None:
            self.running[r] = last
        self._set_scale(len(self.running))

    def _set_scale(self, rows: int) -> None:
        if self.controller is not None and rows >= 1:
            self.controller.set_scale(self.batch_scale(rows))


class ContextLengthError(ValueError):
    """Prompt plus ``max_tokens`` do not fit the model's context."""


def stop_ids_for(session: MbqSession, extra: Sequence[int] = ()) -> frozenset[int]:
    """The model's EOS ids plus ``extra``."""
    return frozenset((*session.eos_token_ids, *extra))
