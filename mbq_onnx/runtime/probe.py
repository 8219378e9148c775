"""The on-device probe: measure the τ → (average bits, step latency) map, cached per device/threads.

Procedure and cache key: docs/controller.md, "on-device probe and cache".
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from ..atomic import write_file
from ..tau_table import table_points
from .controller import LatencyMap, MapPoint
from .session import CONFIG_NAME, MbqSession

PROBE_VERSION = 1
PROBE_TEXT = (
    "The committee met on Tuesday to review the annual budget. After a long discussion about "
    "schools, roads and the new hospital, the members agreed to"
)
EXTRA_GRID = (0.25, 0.5, 0.75)
MAX_TABLE_POINTS = 9


def probe_grid(tau_table: Sequence[object]) -> list[float]:
    """{0, 1} ∪ up to 9 τ values of ``tau_table`` (``mbq_config.json``'s rows, τ clipped to [0, 1]) — the
    rows nearest to evenly spaced average bits, so a τ schedule that moves the bits fast somewhere
    (bracketed: just above each uniform point) is sampled where the latency changes — padded to >= 5
    points. Rows without finite τ and bits are skipped. The Android probe (``LatencyProbe.grid``) gives
    the same grid: both are checked against ``tests/android/fixtures/probe_grid.json``."""
    rows = table_points(tau_table)
    taus = {0.0, 1.0}
    if rows:
        bits = np.array([b for _, b in rows])
        for target in np.linspace(bits.min(), bits.max(), MAX_TABLE_POINTS):
            taus.add(rows[int(np.abs(bits - target).argmin())][0])
    if len(taus) < 5:
        taus.update(EXTRA_GRID)
    return sorted(taus)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def probe_key(session: MbqSession) -> str:
    """SHA-256 over the model identity, thread count, CPU and ORT version."""
    h = hashlib.sha256()
    for part in (
        f"probe-v{PROBE_VERSION}",
        str(session.model_path.stat().st_size),
        str(session.ops_library.stat().st_size) if session.ops_library else "no-ops-library",
        (session.model_dir / CONFIG_NAME).read_bytes().decode(),
        f"threads={session.threads}",
        platform.machine(),
        _cpu_name(),
        ort.__version__,
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    from mbq_onnx.assets import cache_dir  # stdlib-only module

    return cache_dir() / "probe"


def measure_map(session: MbqSession, steps: int = 4, rounds: int = 2, progress: bool = True) -> LatencyMap:
    """Run the probe (no cache): ``rounds`` passes over the grid, alternating direction."""
    if steps < 1 or rounds < 1:
        raise ValueError("probe steps and rounds must be >= 1")
    ids = np.array([session.tokenizer.encode(PROBE_TEXT).ids], np.int64)
    prefill = session.run(ids, session.empty_cache(), tau=0.0)
    grid = probe_grid(session.config.tau_table)
    lat: dict[float, list[float]] = {t: [] for t in grid}
    bits: dict[float, list[float]] = {t: [] for t in grid}

    def one_run(tau: float, record: bool) -> None:
        past, token = prefill.present, int(np.argmax(prefill.logits[0]))
        for _ in range(steps):
            out = session.run(np.array([[token]], np.int64), past, tau=tau)
            past, token = out.present, int(np.argmax(out.logits[0]))
            if record:
                lat[tau].append(out.latency_ms)
                bits[tau].append(session.average_bits(out.slice_counts))

    one_run(grid[len(grid) // 2], record=False)  # warm-up
    order = [t for r in range(rounds) for t in (grid if r % 2 == 0 else grid[::-1])]
    for tau in tqdm(order, desc="latency probe", unit="τ", disable=not progress, leave=False):
        one_run(tau, record=True)
    return LatencyMap([MapPoint(t, float(np.mean(bits[t])), float(np.median(lat[t]))) for t in grid])


def load_or_probe(
    session: MbqSession, cache_dir: Path | None = None, refresh: bool = False, progress: bool = True
) -> tuple[LatencyMap, bool]:
    """The cached map for this model/device/threads, probing (and caching) on a miss.

    Returns (map, came_from_cache).
    """
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    key = probe_key(session)
    path = folder / f"{key}.json"
    if path.is_file() and not refresh:
        try:
            data = json.loads(path.read_text())
            return LatencyMap([MapPoint(**p) for p in data["points"]]), True
        except (ValueError, KeyError, TypeError):
            pass  # unreadable cache entry: probe again and overwrite it
    lm = measure_map(session, progress=progress)
    record = {
        "key": key,
        "version": PROBE_VERSION,
        "model_dir": str(session.model_dir),
        "threads": session.threads,
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "onnxruntime": ort.__version__,
        "points": lm.to_json(),
    }
    write_file(path, json.dumps(record, indent=1))
    return lm, False


class BatchScale:
    """``s(n)``: step latency with n decoding rows over that with one (docs/controller.md, "Batch scale"),
    linear between the probed sizes and clamped at both ends."""

    def __init__(self, sizes: list[int], scales: list[float]):
        if len(sizes) != len(scales) or not sizes or sizes != sorted(set(sizes)):
            raise ValueError(f"batch scale needs strictly increasing sizes with one scale each, got {sizes}")
        self.sizes, self.scales = [float(n) for n in sizes], [float(s) for s in scales]

    def __call__(self, rows: int) -> float:
        return float(np.interp(rows, self.sizes, self.scales))

    def to_json(self) -> dict[str, list[float]]:
        return {"sizes": self.sizes, "scales": self.scales}


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, … below ``max_batch``, and ``max_batch`` itself."""
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return [*sizes, max_batch]


def measure_batch_scale(
    session: MbqSession, max_batch: int, steps: int = 4, progress: bool = True
) -> BatchScale:
    """Probe :class:`BatchScale` on a lean graph: for each size, all slices and the base slice, the median of
    ``steps`` decode steps after a warm-up one, every row continuing the probe text."""
    from .batch import BatchKVCache

    if steps < 1 or max_batch < 1:
        raise ValueError("probe steps and max_batch must be >= 1")
    ids = session.tokenizer.encode(PROBE_TEXT).ids
    modes = (0, 1)  # force_slices: 0 = the router at τ=0 (all slices), 1 = the base slice only
    medians: dict[int, list[float]] = {}
    sizes = batch_sizes(max_batch)
    for n in tqdm(sizes, desc="batch probe", unit="size", disable=not progress, leave=False):
        cache = BatchKVCache(session, n, capacity=len(ids) + 2 * (steps + 1) + 1)
        for _ in range(n):
            out = cache.prefill(ids, tau=0.0)
        token = [int(np.argmax(out.logits[0]))] * n
        medians[n] = []
        for force in modes:
            lat = [cache.decode(token, 0.0, force).latency_ms for _ in range(steps + 1)][1:]
            medians[n].append(float(np.median(lat)))
    base = medians[1]
    scales, prev = [], 1.0
    for n in sizes:  # monotone and at most n: a noisy probe must not stop admission (s(2) = 20 was seen)
        ratio = float(np.mean([m / b for m, b in zip(medians[n], base, strict=True)]))
        prev = min(max(ratio, prev), float(n))
        scales.append(prev)
    return BatchScale(sizes, scales)
