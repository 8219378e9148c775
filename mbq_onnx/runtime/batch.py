"""Rows of independent sequences decoded together in one call of a lean graph (continuous batching).

Layout and masks: docs/serve.md, "Continuous batching". Running sequences occupy rows ``0..rows-1``
of one buffer per layer and kind; a call binds a contiguous row range, so nothing is copied per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from .session import MbqSession, StepOutput


class BatchKVCache:
    """The KV cache of up to ``max_batch`` sequences of different lengths, for one lean-graph session.

    ``lengths[r]`` is the number of positions row r holds; ``rows`` the number of running rows.
    """

    def __init__(self, session: MbqSession, max_batch: int, capacity: int = 256):
        if not session.shared_kv:
            raise ValueError(f"{session.model_path}: batched decoding needs a lean graph (docs/export.md)")
        if max_batch < 1 or capacity < 1:
            raise ValueError(f"max_batch and capacity must be >= 1, got {max_batch} and {capacity}")
        self.session = session
        self.max_batch = max_batch
        self.lengths = np.zeros(max_batch, np.int64)
        self.rows = 0
        self.capacity = 0
        self._arrays: list[np.ndarray] = []
        self.reserve(capacity)

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` positions per row (keeps what the rows hold)."""
        if capacity <= self.capacity:
            return
        c = self.session.config
        shape = (self.max_batch, c.num_kv_heads, capacity, c.head_dim)
        new = [np.zeros(shape, np.float32) for _ in range(2 * c.num_layers)]
        keep = int(self.lengths.max())
        for old, arr in zip(self._arrays, new, strict=False):
            arr[:, :, :keep] = old[:, :, :keep]
        self._arrays = new
        self.capacity = capacity
        self._bindings: dict[tuple[int, int], Any] = {}  # (first row, end row) → IOBinding on row views

    def _binding(self, lo: int, hi: int) -> Any:
        io = self._bindings.get((lo, hi))
        if io is None:  # rows [lo, hi) of a C-contiguous [max_batch, …] array are one contiguous view
            views = [ort.OrtValue.ortvalue_from_numpy(a[lo:hi]) for a in self._arrays]
            io = self._bindings[(lo, hi)] = (self.session.bind_cache(views), views)
        return io[0]

    def prefill(self, prompt_ids: list[int], tau: float, force_slices: int = 0) -> StepOutput:
        """Add a sequence as row ``rows`` and run its prompt alone; logits ``[1, vocab]`` (last position)."""
        if self.rows >= self.max_batch:
            raise RuntimeError(f"all {self.max_batch} rows are running")
        if not prompt_ids:
            raise ValueError("the prompt is empty (no tokens)")
        row, n = self.rows, len(prompt_ids)
        if n > self.capacity:
            self.reserve(max(n, 2 * self.capacity))
        self.lengths[row] = 0
        ids = np.array([prompt_ids], np.int64)
        out = self.session.run_bound(
            self._binding(row, row + 1), ids, np.ones((1, n), np.int64), tau, force_slices
        )
        self.lengths[row] = n
        self.rows += 1
        out.logits, out.present = out.logits[:, -1, :], self
        return out

    def decode(self, token_ids: list[int], tau: float, force_slices: int = 0) -> StepOutput:
        """One token for each running row (``token_ids[r]`` continues row r); logits ``[rows, vocab]``,
        ``slice_counts [groups, rows, 1]``."""
        n = self.rows
        if len(token_ids) != n or n == 0:
            raise ValueError(f"decode needs one token per running row ({n}), got {len(token_ids)}")
        lengths = self.lengths[:n]
        total = int(lengths.max()) + 1
        if total > self.capacity:
            self.reserve(max(total, 2 * self.capacity))
        # Row r attends to its len_r past positions and the new one; GroupQueryAttention reads each row's
        # past length from the mask (seqlens_k) and writes the new key/value at that position.
        mask = (np.arange(total)[None, :] <= lengths[:, None]).astype(np.int64)
        ids = np.array(token_ids, np.int64)[:, None]
        out = self.session.run_bound(self._binding(0, n), ids, mask, tau, force_slices)
        self.lengths[:n] += 1
        out.logits, out.present = out.logits[:, -1, :], self
        return out

    def remove(self, row: int) -> int | None:
        """Drop row ``row``; the last running row moves into it (returns its old index, or None)."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} is not running (rows: {self.rows})")
        last = self.rows - 1
        moved = None
        if row != last:
            keep = int(self.lengths[last])
            for a in self._arrays:
                a[row, :, :keep] = a[last, :, :keep]
            self.lengths[row] = keep
            moved = last
        self.lengths[last] = 0
        self.rows -= 1
        return moved
