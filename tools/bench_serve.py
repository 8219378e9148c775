"""Serving benchmark: the real server (``python -m mbq_onnx.serve``) on loopback, driven by OpenAI clients.

Three servers over the same exported lean model, one after another, each on a free 127.0.0.1 port with
the same ``--max-batch``: pinned to full precision (``--slices N``), load-adaptive (``--slo-ms TARGET``) and
pinned to base precision (``--slices 1``). Per server:

1. closed loop at concurrency 1 and ``--max-batch`` (greedy, fixed ``--max-tokens``): completion tokens per
   second of wall time; the full server's single-sequence p50 TPOT × ``--target-factor`` is the target;
2. open-loop Poisson arrivals at rising request rates (``--rates``; ``Nx`` = N × the full server's closed-loop
   requests/s at ``--max-batch``), streaming: p50/p95 TTFT and TPOT, token-weighted average bits (the ``mbq``
   object of the last chunk), refusals (429/503 with Retry-After) and lost requests (any other failure, a
   stream without its final chunk, a wrong token count).

Bounded: each level stops at ``--requests-per-rate`` arrivals or ``--seconds-per-rate`` (whichever first) and
drains for at most ``--drain-s``; the whole run stops by itself within ``--time-budget-s``; every server is
stopped (SIGINT, then killed) on the way out, errors included.

    python tools/bench_serve.py [--model DIR] [--quick] [--target-factor 1.5] [--rates 0.1x,0.5x,1x,2x,3x]

Writes ``reports/serve_bench.json`` (``summary``: lost/refused requests per run and the target checks) and
``reports/serve_bench.png``.
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's mbq_onnx, not another installed one
sys.path.insert(1, str(REPO / "tools"))

from mbq_onnx.atomic import replace_file, write_file  # noqa: E402

HOST = "127.0.0.1"
READY = re.compile(r"serving (\S+) at (http://\S+/v1)")
TOLERANCE = 0.10  # "within +10 %" of the target
LOW_LOAD_BITS = 0.98  # "serves at full precision": ≥ 98 % of the full server's average bits
RATIO_TARGET = 3.0  # decode throughput at --max-batch sequences ≥ 3× one sequence's
PROMPTS = (
    "The President told Congress that the most important task for the coming year is",
    "In the last twelve months our economy has",
    "We must never forget that the strength of this nation lies in",
    "Tonight I want to speak with you about the future of our schools and",
    "The members of this Congress know that our farmers and workers",
    "Over the past decade, the cost of health care for American families has",
    "Our foreign policy rests on a simple idea: that",
    "Let me turn now to the budget, which I will send to you next month and which",
)


# ---------------------------------------------------------------------------------------------- the servers


@dataclass
class ServerSpec:
    """One server configuration: its report name and its precision flags."""

    name: str
    mode: list[str]
    role: str  # "full" | "adaptive" | "base"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


class Server:
    """A ``python -m mbq_onnx.serve`` subprocess on a free loopback port (its own process group).

    ``start()`` waits for the ready line and ``/health``; ``stop()`` sends SIGINT, then SIGTERM/SIGKILL to its
    process group, and is safe to call twice. Use as a context manager so it is stopped on every exit path.
    """

    def __init__(self, spec: ServerSpec, model_dir: Path, args: argparse.Namespace) -> None:
        self.spec, self.model_dir, self.args = spec, model_dir, args
        self.proc: subprocess.Popen[str] | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=300)
        self.url = ""
        self.model_name = ""
        self._ready = threading.Event()
        self.startup_s: float | None = None

    def command(self, port: int) -> list[str]:
        a = self.args
        cmd = [
            sys.executable,
            "-m",
            a.server_module,
            "--model",
            str(self.model_dir),
            *self.spec.mode,
            "--host",
            HOST,
            "--port",
            str(port),
            "--max-batch",
            str(a.max_batch),
            "--max-queue",
            str(a.max_queue),
            "--queue-timeout-s",
            f"{a.queue_timeout_s:g}",
        ]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        return cmd

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:  # __exit__ does not run when __enter__ raises
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        port = _free_port()
        cmd = self.command(port)
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        print(f"==> {self.spec.name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        limit = t0 + self.args.ready_timeout_s
        while not self._ready.wait(0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name}: server exited with {self.proc.returncode} before ready"
                )
            if time.monotonic() > limit:
                raise RuntimeError(f"{self.spec.name}: no ready line after {self.args.ready_timeout_s:g} s")
        root = self.url.removesuffix("/v1")
        while True:
            with contextlib.suppress(OSError):
                if _http_get(root + "/health")[0] == 200:
                    break
            if time.monotonic() > limit or self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name}: /health never answered 200")
            time.sleep(0.5)
        self.startup_s = time.monotonic() - t0
        print(f"    ready in {self.startup_s:.0f} s at {self.url}", file=sys.stderr, flush=True)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip()
            self.log.append(line)
            if self.args.verbose:
                print(f"    [{self.spec.name}] {line}", file=sys.stderr, flush=True)
            m = READY.search(line)
            if m and not self._ready.is_set():
                self.model_name, self.url = m.group(1), m.group(2)
                self._ready.set()

    def metrics(self) -> dict[str, float]:
        """The server's ``mbq_requests_total`` / ``mbq_tokens_total`` counters (empty if unreachable)."""
        out: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            status, text = _http_get(self.url.removesuffix("/v1") + "/metrics")
            for line in text.splitlines() if status == 200 else ():
                if line.startswith(("mbq_requests_total", "mbq_tokens_total")):
                    name, value = line.rsplit(None, 1)
                    out[name] = float(value)
        return out

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        self.proc = None
        pgid = p.pid  # start_new_session: the server leads its own process group
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
            try:
                p.wait(timeout=self.args.stop_timeout_s)
            except subprocess.TimeoutExpired:
                print(f"    {self.spec.name}: no exit after SIGINT; terminating", file=sys.stderr)
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):  # the leader and what it left
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                break
            if p.poll() is not None and sig == signal.SIGTERM:
                time.sleep(2.0)  # children shutting down after a clean exit of the leader
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, 0)
                    print(
                        f"    {self.spec.name}: leftover processes in its group; {sig.name}", file=sys.stderr
                    )
                    os.killpg(pgid, sig)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=wait)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=1.0)


# -------------------------------------------------------------------------------------------- the clients


def _new_record(t_send: float) -> dict[str, Any]:
    return {"t_send": t_send, "outcome": "unfinished", "tokens": 0}


async def _request(client: Any, model: str, prompt: str, max_tokens: int, rec: dict[str, Any]) -> None:
    """One streaming completion; fills ``rec``: outcome (ok, refused_429/503, lost), timings, mbq."""
    import openai

    t0 = time.perf_counter()
    times: list[float] = []  # arrival of each chunk that carries a token (or the final one)
    finish = None
    usage = None
    mbq = None
    after_final = 0
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
        )
        async for chunk in stream:
            now = time.perf_counter()
            choice = chunk.choices[0] if chunk.choices else None
            if finish is not None:
                after_final += 1
            elif choice is not None:
                times.append(now)  # the final chunk too: it arrives with the last token (or the stop)
                finish = choice.finish_reason or None
            usage = getattr(chunk, "usage", None) or usage
            mbq = (chunk.model_extra or {}).get("mbq", mbq)
            rec["tokens"] = len(times)
    except openai.APIStatusError as e:
        code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
        rec.update(status=e.status_code, code=code, error=str(e)[:200])
        retry = e.response.headers.get("retry-after")
        if e.status_code in (429, 503) and not times:
            rec.update(outcome=f"refused_{e.status_code}", retry_after=retry)
        else:
            rec.update(outcome="lost", reason=f"HTTP {e.status_code}" + (" mid-stream" if times else ""))
        return
    except openai.APIError as e:  # connection errors, timeouts, malformed streams
        rec.update(outcome="lost", reason=type(e).__name__, error=str(e)[:200])
        return
    except asyncio.CancelledError:
        rec.update(outcome="lost", reason="cancelled by the bench at its time limit")
        raise
    finally:
        rec["t_done"] = time.perf_counter()
    chunks = len(times)
    reported = getattr(usage, "completion_tokens", None)
    # the server's count is the token count (a token whose text is still an incomplete UTF-8 sequence
    # sends no chunk of its own); without usage, one chunk per token
    n = reported if reported is not None else chunks
    rec.update(tokens=n, chunks=chunks, finish_reason=finish)
    if times:
        rec["ttft_s"] = times[0] - t0
    if n >= 2 and chunks >= 2:
        rec["tpot_s"] = (times[-1] - times[0]) / (n - 1)
    if finish is None:
        rec.update(outcome="lost", reason="no final chunk")
    elif after_final:
        rec.update(outcome="lost", reason=f"{after_final} chunk(s) after the final one")
    elif n == 0:
        rec.update(outcome="lost", reason="no tokens")
    elif chunks > n + 1:  # + 1: a text-less final chunk (the stop) may come on its own
        rec.update(outcome="lost", reason=f"usage says {n} tokens, {chunks} chunks streamed")
    elif finish == "length" and n != max_tokens:
        rec.update(outcome="lost", reason=f"finish 'length' after {n} of {max_tokens} tokens")
    else:
        rec["outcome"] = "ok"
    if isinstance(mbq, dict):
        rec.update({k: mbq.get(k) for k in ("avg_bits", "tau_min", "tau_max", "queue_ms")})
    else:
        rec["no_mbq"] = True


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000.0 * x, 2)


def _stats(recs: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Aggregates of one batch of requests: counts, tokens/s, TTFT/TPOT percentiles (ms), average bits."""
    ok = [r for r in recs if r["outcome"] == "ok"]
    ttft = [r["ttft_s"] for r in ok if "ttft_s" in r]
    tpot = [r["tpot_s"] for r in ok if "tpot_s" in r]
    tokens = sum(r["tokens"] for r in ok)
    weighted = [(r["avg_bits"], r["tokens"]) for r in ok if r.get("avg_bits") is not None]
    wsum = sum(t for _, t in weighted)
    lost = [r for r in recs if r["outcome"] == "lost"]
    refused = [r for r in recs if r["outcome"].startswith("refused")]
    taus = [t for r in ok for t in (r.get("tau_min"), r.get("tau_max")) if t is not None]
    queue = [r["queue_ms"] for r in ok if r.get("queue_ms") is not None]
    return {
        "requests": len(recs),
        "completed": len(ok),
        "refused_429": sum(r["outcome"] == "refused_429" for r in recs),
        "refused_503": sum(r["outcome"] == "refused_503" for r in recs),
        "refused_without_retry_after": sum(not r.get("retry_after") for r in refused),
        "lost": len(lost),
        "lost_reasons": dict(collections.Counter(r.get("reason", "?") for r in lost)),
        "no_mbq": sum(bool(r.get("no_mbq")) for r in ok),
        "wall_s": round(wall_s, 3),
        "completion_tokens": tokens,
        "tok_s": round(tokens / wall_s, 2) if wall_s > 0 else None,
        "req_s": round(len(ok) / wall_s, 4) if wall_s > 0 else None,
        "ttft_p50_ms": _ms(_pct(ttft, 50)),
        "ttft_p95_ms": _ms(_pct(ttft, 95)),
        "tpot_p50_ms": _ms(_pct(tpot, 50)),
        "tpot_p95_ms": _ms(_pct(tpot, 95)),
        "tpot_mean_ms": _ms(sum(tpot) / len(tpot)) if tpot else None,
        "avg_bits": round(sum(b * t for b, t in weighted) / wsum, 4) if wsum else None,
        "tau_range": [min(taus), max(taus)] if taus else None,
        "queue_p95_ms": _pct(queue, 95),
    }


async def _closed_loop(
    client: Any, model: str, concurrency: int, per_worker: int, max_tokens: int, deadline: float, bar: Any
) -> dict[str, Any]:
    """``concurrency`` workers, each sending ``per_worker`` requests back to back."""
    recs: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    async def worker(w: int) -> None:
        for j in range(per_worker):
            rec = _new_record(time.perf_counter() - t0)
            recs.append(rec)
            await _request(client, model, PROMPTS[(w + j * concurrency) % len(PROMPTS)], max_tokens, rec)
            bar.update(1)

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out = {"concurrency": concurrency, **_stats(recs, time.perf_counter() - t0)}
    mean = out["tpot_mean_ms"]  # while all `concurrency` sequences decode: one token each per TPOT
    out["decode_tok_s"] = round(concurrency * 1000.0 / mean, 2) if mean else None
    if pending:
        out["stopped"] = "time budget"
    return out


async def _open_loop(
    client: Any, model: str, rate: float, args: argparse.Namespace, seed: int, deadline: float, bar: Any
) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` req/s up to ``--requests-per-rate`` / ``--seconds-per-rate``; drain."""
    import numpy as np

    rng = np.random.default_rng(seed)
    recs: list[dict[str, Any]] = []
    tasks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    at = 0.0
    for i in range(args.requests_per_rate):
        if i:
            at += float(rng.exponential(1.0 / rate))
        if at > args.seconds_per_rate or time.monotonic() + (at - (time.perf_counter() - t0)) > deadline:
            break
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = _new_record(time.perf_counter() - t0)
        recs.append(rec)
        task = asyncio.create_task(_request(client, model, PROMPTS[i % len(PROMPTS)], args.max_tokens, rec))
        task.add_done_callback(lambda _: bar.update(1))
        tasks.append(task)
    arrivals_s = time.perf_counter() - t0
    drain = min(args.drain_s, max(1.0, deadline - time.monotonic()))
    pending: set[asyncio.Task[None]] = set()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=drain)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = max([arrivals_s, *(r["t_done"] - t0 for r in recs if r["outcome"] == "ok")])
    return {
        "rate_req_s": round(rate, 4),
        "offered_req_s": round((len(recs) - 1) / arrivals_s, 4) if arrivals_s > 0 and len(recs) > 1 else None,
        "arrivals_s": round(arrivals_s, 3),
        "unfinished_at_drain": len(pending),
        **_stats(recs, wall),
    }


async def _drive(
    server: Server, args: argparse.Namespace, plan: Plan, run: dict[str, Any], deadline: float
) -> None:
    """Warm-up, phase 1 (closed loop) and phase 2 (rate sweep) against one running server."""
    import openai
    from tqdm import tqdm

    client = openai.AsyncOpenAI(
        base_url=server.url, api_key="none", max_retries=0, timeout=args.request_timeout_s
    )
    try:
        models = await client.models.list()
        model = models.data[0].id if models.data else server.model_name
        warm = await client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=4, temperature=0)
        run["warmup"] = {"text": warm.choices[0].text, "mbq": (warm.model_extra or {}).get("mbq")}
        for c in (1, args.max_batch):
            per = args.phase1_requests if c == 1 else max(1, args.phase1_rounds)
            with tqdm(total=c * per, desc=f"{run['name']} closed loop c={c}", unit="req", leave=False) as bar:
                row = await _closed_loop(client, model, c, per, args.max_tokens, deadline, bar)
            run["phase1"].append(row)
            print(
                f"    c={c}: {row['tok_s']} tok/s, TPOT p50 {row['tpot_p50_ms']} ms, "
                f"bits {row['avg_bits']}, lost {row['lost']}",
                file=sys.stderr,
                flush=True,
            )
        if run["role"] == "full":
            plan.calibrate(run["phase1"])
        for i, rate in enumerate(plan.rates):
            expect = min(args.requests_per_rate / rate, args.seconds_per_rate)
            if time.monotonic() + expect > deadline:
                run["sweep"].append({"rate_req_s": round(rate, 4), "skipped": "time budget"})
                continue
            desc = f"{run['name']} {rate:.2f} req/s"
            with tqdm(total=args.requests_per_rate, desc=desc, unit="req", leave=False) as bar:
                row = await _open_loop(client, model, rate, args, args.seed + i, deadline, bar)
            run["sweep"].append(row)
            print(
                f"    {rate:.2f} req/s: TPOT p95 {row['tpot_p95_ms']} ms, TTFT p95 {row['ttft_p95_ms']} ms, "
                f"bits {row['avg_bits']}, ok {row['completed']}, refused "
                f"{row['refused_429'] + row['refused_503']}, lost {row['lost']}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await client.close()


# ------------------------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """The target and the request rates, fixed by the full-precision server's phase 1 (or by flags)."""

    args: argparse.Namespace
    target_ms: float | None = None
    unit_req_s: float | None = None  # 1x: the full server's closed-loop requests/s at --max-batch
    rates: list[float] = field(default_factory=list)

    def calibrate(self, phase1: list[dict[str, Any]]) -> None:
        one = next(r for r in phase1 if r["concurrency"] == 1)
        many = next(r for r in phase1 if r["concurrency"] == self.args.max_batch)
        if self.target_ms is None:
            if not one["tpot_p50_ms"]:
                raise RuntimeError("full server: no single-sequence TPOT measured; cannot set the target")
            self.target_ms = round(self.args.target_factor * one["tpot_p50_ms"], 2)
        self.unit_req_s = many["req_s"]
        rates = []
        for value, relative in self.args.rate_list:
            if relative and not self.unit_req_s:
                raise RuntimeError("full server: no closed-loop throughput; give --rates in req/s")
            rates.append(value * self.unit_req_s if relative else value)
        self.rates = sorted(rates)
        print(
            f"==> target TPOT {self.target_ms} ms; rates {', '.join(f'{r:.2f}' for r in self.rates)} req/s",
            file=sys.stderr,
            flush=True,
        )


def _rates(text: str) -> list[tuple[float, bool]]:
    """``"0.1x,0.5x,2"`` → [(0.1, relative), (0.5, relative), (2.0, absolute req/s)]."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        relative = item.endswith("x")
        try:
            value = float(item.removesuffix("x"))
        except ValueError:
            raise SystemExit(f"bench_serve: --rates item {item!r}: expected a number or Nx") from None
        if value <= 0:
            raise SystemExit(f"bench_serve: --rates item {item!r}: rates must be > 0")
        out.append((value, relative))
    if not out:
        raise SystemExit("bench_serve: --rates is empty")
    return out


# --------------------------------------------------------------------------------------------- the summary


def _level(run: dict[str, Any] | None, i: int) -> dict[str, Any] | None:
    if run is None or i >= len(run["sweep"]) or "skipped" in run["sweep"][i]:
        return None
    return run["sweep"][i]


def summarize(runs: list[dict[str, Any]], target: float | None, max_batch: int) -> dict[str, Any]:
    """Per-run lost/refused counts and the four target checks as measured booleans with their figures."""
    by_role = {r["role"]: r for r in runs}
    full, ours, base = (by_role.get(k) for k in ("full", "adaptive", "base"))
    per_run = {}
    for r in runs:
        rows = [*r["phase1"], *(s for s in r["sweep"] if "skipped" not in s)]
        per_run[r["name"]] = {
            "requests": sum(x["requests"] for x in rows),
            "completed": sum(x["completed"] for x in rows),
            "lost_requests": sum(x["lost"] for x in rows),
            "refused_requests": sum(x["refused_429"] + x["refused_503"] for x in rows),
            "refused_429": sum(x["refused_429"] for x in rows),
            "refused_503": sum(x["refused_503"] for x in rows),
            "refused_without_retry_after": sum(x["refused_without_retry_after"] for x in rows),
            "error": r.get("error"),
        }
    checks: dict[str, Any] = {}
    limit = None if target is None else target * (1 + TOLERANCE)
    n_levels = max((len(r["sweep"]) for r in runs), default=0)

    def exceeds(level: dict[str, Any] | None, bound: float | None) -> bool:
        return bool(
            level and bound is not None and level["tpot_p95_ms"] is not None and level["tpot_p95_ms"] > bound
        )

    def holds(level: dict[str, Any] | None) -> bool:
        return bool(
            level and limit is not None and level["tpot_p95_ms"] is not None and level["tpot_p95_ms"] <= limit
        )

    # 1. where full precision misses the target but base precision still meets it: ours holds it, fewer bits
    rows = []
    for i in range(n_levels):
        f, o, b = _level(full, i), _level(ours, i), _level(base, i)
        if f is None or o is None or not exceeds(f, target) or exceeds(b, target):
            continue
        ok = holds(o) and o["lost"] == 0 and o["avg_bits"] is not None and f["avg_bits"] is not None
        ok = ok and o["avg_bits"] < f["avg_bits"]
        rows.append(
            {
                "rate_req_s": o["rate_req_s"],
                "full_p95_ms": f["tpot_p95_ms"],
                "ours_p95_ms": o["tpot_p95_ms"],
                "ours_avg_bits": o["avg_bits"],
                "full_avg_bits": f["avg_bits"],
                "ours_lost": o["lost"],
                "ours_refused": o["refused_429"] + o["refused_503"],
                "pass": ok,
            }
        )
    checks["holds_target_where_full_exceeds"] = {
        "rule": f"at rates where full's p95 TPOT > target (and base's ≤ target): ours p95 ≤ target × "
        f"{1 + TOLERANCE:g}, avg bits < full's, 0 lost",
        "rates": rows,
        "pass": bool(rows) and all(r["pass"] for r in rows),
        "reached": bool(rows),
    }
    # 2. past the rate where base precision misses it too: admission keeps accepted requests within the target
    rows = []
    for i in range(n_levels):
        o, b = _level(ours, i), _level(base, i)
        if o is None or not exceeds(b, target):
            continue
        ok = holds(o) and o["lost"] == 0
        rows.append(
            {
                "rate_req_s": o["rate_req_s"],
                "base_p95_ms": b["tpot_p95_ms"],
                "ours_p95_ms": o["tpot_p95_ms"],
                "ours_completed": o["completed"],
                "ours_refused": o["refused_429"] + o["refused_503"],
                "ours_lost": o["lost"],
                "ours_avg_bits": o["avg_bits"],
                "pass": ok,
            }
        )
    checks["admission_past_base"] = {
        "rule": f"at rates where base's p95 TPOT > target: ours (accepted requests) p95 ≤ target × "
        f"{1 + TOLERANCE:g}, 0 lost",
        "rates": rows,
        "pass": bool(rows) and all(r["pass"] for r in rows),
        "reached": bool(rows),
    }
    # 3. low load: full precision
    full_bits = next((x["avg_bits"] for x in (full or {}).get("phase1", []) if x["concurrency"] == 1), None)
    c1 = next((x for x in (ours or {}).get("phase1", []) if x["concurrency"] == 1), None)
    low = _level(ours, 0)
    figures = {
        "full_avg_bits": full_bits,
        "ours_c1_avg_bits": c1 and c1["avg_bits"],
        "ours_lowest_rate_req_s": low and low["rate_req_s"],
        "ours_lowest_rate_avg_bits": low and low["avg_bits"],
        "ours_lowest_rate_tau_range": low and low["tau_range"],
    }
    vals = [figures["ours_c1_avg_bits"], figures["ours_lowest_rate_avg_bits"]]
    checks["full_precision_at_low_load"] = {
        "rule": f"ours at concurrency 1 and at the lowest rate: avg bits ≥ {LOW_LOAD_BITS:g} × full's",
        **figures,
        "pass": full_bits is not None and all(v is not None and v >= LOW_LOAD_BITS * full_bits for v in vals),
    }
    # 4. batching: decode throughput at --max-batch concurrent sequences vs one
    ratios, decode = {}, {}
    for r in runs:
        p = {x["concurrency"]: x for x in r["phase1"]}
        if 1 in p and max_batch in p and p[1]["tok_s"] and p[max_batch]["tok_s"]:
            ratios[r["name"]] = round(p[max_batch]["tok_s"] / p[1]["tok_s"], 3)
        if 1 in p and max_batch in p and p[1].get("decode_tok_s") and p[max_batch].get("decode_tok_s"):
            decode[r["name"]] = round(p[max_batch]["decode_tok_s"] / p[1]["decode_tok_s"], 3)
    # The target is decode throughput: the decode steps alone (prefills of the closed loop's joins
    # are reported in `ratios`, end to end).
    pinned = [decode.get(r["name"]) for r in runs if r["role"] != "adaptive"]
    checks["batch_throughput_ratio"] = {
        "rule": f"pinned servers: decode tok/s at {max_batch} concurrent sequences ≥ {RATIO_TARGET:g} × at 1",
        "ratios": ratios,
        "note": "ratios: completion tokens / wall time of the closed loop (joins and prefills included); "
        "decode_ratios: concurrency / mean TPOT, the decode steps alone",
        "decode_ratios": decode,
        "pass": bool(pinned) and all(v is not None and v >= RATIO_TARGET for v in pinned),
    }
    return {
        "target_tpot_ms": target,
        "tolerance": TOLERANCE,
        "runs": per_run,
        "checks": checks,
        "all_pass": all(c["pass"] for c in checks.values()),
    }


# ----------------------------------------------------------------------------------------------- the plot


def plot(report: dict[str, Any], path: Path) -> None:
    """p95 TPOT (with the target), average bits, throughput and p95 TTFT against the request rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (a, b), (c, d) = axes
    colors = {"full": "tab:red", "adaptive": "tab:blue", "base": "tab:green"}
    for run in report["runs"]:
        rows = [s for s in run["sweep"] if "skipped" not in s]
        if not rows:
            continue
        x = [s["rate_req_s"] for s in rows]
        kw = {"color": colors.get(run["role"], "k"), "marker": "o", "label": run["name"]}
        a.plot(x, [s["tpot_p95_ms"] for s in rows], **kw)
        b.plot(x, [s["avg_bits"] for s in rows], **kw)
        c.plot(x, [s["tok_s"] for s in rows], **kw)
        d.plot(x, [s["ttft_p95_ms"] for s in rows], **kw)
        for s, xi in zip(rows, x, strict=True):
            refused = s["refused_429"] + s["refused_503"]
            if refused or s["lost"]:
                c.annotate(
                    f"{refused} refused" + (f", {s['lost']} lost" if s["lost"] else ""),
                    (xi, s["tok_s"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color=kw["color"],
                )
    target = report.get("target_tpot_ms")
    if target:
        a.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g} ms")
        a.axhline(target * (1 + TOLERANCE), color="k", ls=":", lw=1, label=f"target +{TOLERANCE:.0%}")
    a.set_ylabel("p95 time per output token (ms)")
    b.set_ylabel("average bits (token-weighted)")
    c.set_ylabel("completion tokens/s")
    d.set_ylabel("p95 time to first token (ms)")
    d.set_yscale("log")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xlabel("request rate (req/s, Poisson arrivals)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(
        f"mbq-onnx serve: {report['config']['model']} on {m.get('cpu')} ({m.get('cores')} cores), "
        f"--max-batch {report['config']['max_batch']}",
        fontsize=10,
    )
    fig.tight_layout()
    with replace_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- main


def _machine() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    with contextlib.suppress(OSError, AttributeError):
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        info["cpu"] = m.group(1) if m else info["cpu"]
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    info["python"] = platform.python_version()
    info["onnxruntime"] = onnxruntime.__version__
    for mod in ("ray", "openai"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def _interruptible() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (also in the background, where SIGINT starts ignored and the
    watchdog's ``interrupt_main`` would do nothing), so the servers are stopped on every exit."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model is not None:
        if not (args.model / "mbq_config.json").is_file():
            raise SystemExit(
                f"bench_serve: --model {args.model}: no mbq_config.json (not an exported model dir)"
            )
        return args.model
    from demo import MODEL_NAME, prepare_model  # tools/demo.py: calibrate (fast preset) + export

    from mbq_onnx.assets import cache_dir

    ready = cache_dir() / "models" / MODEL_NAME  # the demo's export: reused as is when complete
    if all((ready / f).is_file() for f in ("mbq_config.json", "model.onnx")):
        return ready
    return prepare_model(fresh=False)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", type=Path, help="exported lean model dir (default: tools/demo.py's fast export)"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny smoke run: 16 tokens, 3 short levels, 8 min budget"
    )
    p.add_argument(
        "--target-factor",
        type=float,
        default=1.5,
        help="target TPOT = factor × the full server's single-sequence p50 TPOT (default %(default)s)",
    )
    p.add_argument("--slo-ms", type=float, help="explicit target TPOT in ms (overrides --target-factor)")
    p.add_argument(
        "--rates",
        default="0.1x,0.5x,1x,2x,3x",
        help="request rates: req/s, or Nx = N × the full server's closed-loop req/s at --max-batch "
        "(default %(default)s)",
    )
    p.add_argument(
        "--requests-per-rate", type=int, default=40, help="arrivals per level at most (default %(default)s)"
    )
    p.add_argument(
        "--seconds-per-rate", type=float, default=40.0, help="arrival window per level (default %(default)s)"
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=60.0,
        help="wait for in-flight requests per level (default %(default)s)",
    )
    p.add_argument(
        "--max-tokens", type=int, default=64, help="completion tokens per request (default %(default)s)"
    )
    p.add_argument(
        "--phase1-requests",
        type=int,
        default=4,
        help="closed loop at concurrency 1: requests (default %(default)s)",
    )
    p.add_argument(
        "--phase1-rounds",
        type=int,
        default=2,
        help="closed loop at --max-batch: requests per client (default %(default)s)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="server --max-batch (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=16, help="server --max-queue (default %(default)s)")
    p.add_argument(
        "--queue-timeout-s", type=float, default=10.0, help="server --queue-timeout-s (default %(default)s)"
    )
    p.add_argument("--threads", type=int, help="server --threads (default: the server's)")
    p.add_argument(
        "--servers", default="full,adaptive,base", help="which runs, in this order (default %(default)s)"
    )
    p.add_argument(
        "--time-budget-s", type=float, default=1200.0, help="whole run, all servers (default %(default)s)"
    )
    p.add_argument(
        "--ready-timeout-s", type=float, default=300.0, help="server start-up limit (default %(default)s)"
    )
    p.add_argument(
        "--stop-timeout-s", type=float, default=30.0, help="wait after SIGINT (default %(default)s)"
    )
    p.add_argument(
        "--request-timeout-s", type=float, default=120.0, help="client timeout (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="arrival-time seed (default %(default)s)")
    p.add_argument(
        "--server-module", default="mbq_onnx.serve", help="run as python -m MODULE (default %(default)s)"
    )
    p.add_argument("--out", type=Path, default=REPO / "reports", help="report dir (default reports/)")
    p.add_argument("--verbose", action="store_true", help="echo the servers' output")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    given = {a.split("=")[0] for a in args.argv}
    if args.quick:
        for flag, value in (
            ("--max-tokens", 16),
            ("--rates", "0.2x,1x,3x"),
            ("--requests-per-rate", 12),
            ("--seconds-per-rate", 8.0),
            ("--drain-s", 30.0),
            ("--phase1-requests", 2),
            ("--phase1-rounds", 1),
            ("--time-budget-s", 480.0),
        ):
            if flag not in given:
                setattr(args, flag[2:].replace("-", "_"), value)
    args.rate_list = _rates(args.rates)
    for opt in (
        "max_tokens",
        "requests_per_rate",
        "phase1_requests",
        "phase1_rounds",
        "max_batch",
        "max_queue",
    ):
        if getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be >= 1")
    if args.max_batch < 2:
        p.error("--max-batch must be >= 2 (the throughput ratio compares it with 1)")
    roles = [s.strip() for s in args.servers.split(",") if s.strip()]
    if (
        not roles
        or any(r not in ("full", "adaptive", "base") for r in roles)
        or len(set(roles)) != len(roles)
    ):
        p.error("--servers: a comma list of full, adaptive, base")
    if "full" not in roles and (args.slo_ms is None or any(rel for _, rel in args.rate_list)):
        p.error("--servers without full needs --slo-ms and --rates in req/s (full's phase 1 sets both)")
    if "full" in roles and roles[0] != "full":
        p.error("--servers: full must come first (its phase 1 sets the target and the rates)")
    args.roles = roles
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    deadline = started + args.time_budget_s
    model_dir = _model_dir(args)
    cfg = json.loads((model_dir / "mbq_config.json").read_text())
    n_slices = int(cfg["num_slices"])
    specs = {
        "full": ServerSpec(
            f"pinned full ({cfg['bits_at_slices'][-1]}-bit, --slices {n_slices})",
            ["--slices", str(n_slices)],
            "full",
        ),
        "adaptive": ServerSpec("adaptive (--slo-ms)", [], "adaptive"),
        "base": ServerSpec(
            f"pinned base ({cfg['bits_at_slices'][0]}-bit, --slices 1)", ["--slices", "1"], "base"
        ),
    }
    plan = Plan(args, target_ms=args.slo_ms)
    if "full" not in args.roles:
        plan.rates = sorted(v for v, _ in args.rate_list)
    runs: list[dict[str, Any]] = []
    _interruptible()
    # a last resort above the per-phase bounds: interrupt the main thread (servers are stopped in finally)
    watchdog = threading.Timer(args.time_budget_s + 2 * args.stop_timeout_s + 60.0, _thread.interrupt_main)
    watchdog.daemon = True
    watchdog.start()
    interrupted = None
    try:
        for k, role in enumerate(args.roles):
            spec = specs[role]
            if role == "adaptive":
                if plan.target_ms is None:
                    print(
                        "==> adaptive server skipped: no target (the full server's run failed)",
                        file=sys.stderr,
                    )
                    continue
                spec.mode = ["--slo-ms", f"{plan.target_ms:g}"]
            share = (deadline - time.monotonic()) / (len(args.roles) - k)  # equal shares of what is left
            run: dict[str, Any] = {
                "name": spec.name,
                "role": role,
                "mode": spec.mode,
                "phase1": [],
                "sweep": [],
            }
            runs.append(run)
            server = Server(spec, model_dir, args)
            try:
                with server:
                    run["startup_s"] = round(server.startup_s or 0.0, 1)
                    asyncio.run(_drive(server, args, plan, run, time.monotonic() + share))
                    run["server_metrics"] = server.metrics()
            except Exception as e:  # report it, stop the server (with), go on to the next
                run["error"] = f"{type(e).__name__}: {e}"[:500]
                run["log_tail"] = list(server.log)[-40:]
                print(f"    {spec.name} failed: {run['error']}", file=sys.stderr)
                print("\n".join(run["log_tail"][-15:]), file=sys.stderr)
    except KeyboardInterrupt as e:
        interrupted = f"interrupted ({e or 'SIGINT: Ctrl-C or the time-budget watchdog'})"
        print(f"bench_serve: {interrupted}; writing what was measured", file=sys.stderr)
    finally:
        watchdog.cancel()
    report = {
        "tool": "tools/bench_serve.py",
        "command": "python tools/bench_serve.py " + " ".join(args.argv),
        "quick": args.quick,
        "complete": interrupted is None
        and all("error" not in r for r in runs)
        and len(runs) == len(args.roles),
        "interrupted": interrupted,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": _machine(),
        "config": {
            "model": model_dir.name,
            "graph": cfg.get("graph"),
            "slice_bits": cfg.get("slice_bits"),
            "bits_at_slices": cfg.get("bits_at_slices"),
            "accuracy_level": cfg.get("accuracy_level"),
            "max_batch": args.max_batch,
            "max_queue": args.max_queue,
            "queue_timeout_s": args.queue_timeout_s,
            "threads": args.threads,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": True,
            "endpoint": "/v1/completions",
            "target_factor": None if args.slo_ms else args.target_factor,
            "rates_spec": args.rates,
            "rate_unit_req_s": plan.unit_req_s,
            "rates_req_s": plan.rates,
            "requests_per_rate": args.requests_per_rate,
            "seconds_per_rate": args.seconds_per_rate,
            "drain_s": args.drain_s,
            "phase1_requests": args.phase1_requests,
            "phase1_rounds": args.phase1_rounds,
            "time_budget_s": args.time_budget_s,
            "seed": args.seed,
            "arrivals": "Poisson (open loop)",
            "client": "openai.AsyncOpenAI, max_retries=0, one process, loopback",
        },
        "target_tpot_ms": plan.target_ms,
        "runs": runs,
    }
    report["summary"] = summarize(runs, plan.target_ms, args.max_batch)
    args.out.mkdir(parents=True, exist_ok=True)
    write_file(args.out / "serve_bench.json", json.dumps(report, indent=1) + "\n")
    plot(report, args.out / "serve_bench.png")
    s = report["summary"]
    for name, r in s["runs"].items():
        print(
            f"{name}: {r['completed']}/{r['requests']} completed, {r['refused_requests']} refused, "
            f"{r['lost_requests']} lost",
            file=sys.stderr,
        )
    for name, c in s["checks"].items():
        print(f"check {name}: {'PASS' if c['pass'] else 'FAIL'}", file=sys.stderr)
    print(
        f"wrote {args.out / 'serve_bench.json'} and serve_bench.png ({report['elapsed_s']:.0f} s)",
        file=sys.stderr,
    )
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
