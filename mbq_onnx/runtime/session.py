"""An ONNX Runtime session over an exported model dir: custom-op library, config, tokenizer, one step.

The exported dir layout and graph I/O are described in docs/architecture.md ("Exported model dir").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

CONFIG_NAME = "mbq_config.json"
MODEL_NAMES = ("model.ort", "model.onnx")  # .ort first: the smaller, pre-optimized mobile format


class ModelDirError(ValueError):
    """The model dir is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class ModelConfig:
    """The parts of ``mbq_config.json`` the runtime needs (mixed-bit, or a float/reference graph)."""

    slice_bits: tuple[int, ...]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    custom_op_library: str | None
    model_file: str | None = None
    mixed_bit: bool = True
    tau_table: tuple[dict[str, float], ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_slices(self) -> int:
        return len(self.slice_bits)

    @property
    def bits_per_count(self) -> np.ndarray:
        """``bits[k]`` = total bits when k slices are on (index 0 unused, treated as base)."""
        cum = np.cumsum(self.slice_bits, dtype=np.float64)
        return np.concatenate([[cum[0]], cum])

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / CONFIG_NAME
        if not path.is_file():
            raise ModelDirError(f"{model_dir} is not an exported model dir: {CONFIG_NAME} is missing")
        try:
            raw = json.loads(path.read_text())
            eos = raw.get("eos_token_id")
            eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
            mixed_bit = raw.get("kind", "mixed-bit") == "mixed-bit"
            bits = raw.get("slice_bits") or [raw.get("reference", {}).get("bits", 32)]
            return cls(
                slice_bits=tuple(int(b) for b in bits),
                num_layers=int(raw["num_layers"]),
                num_kv_heads=int(raw["num_kv_heads"]),
                head_dim=int(raw["head_dim"]),
                custom_op_library=raw.get("custom_op_library", "libmbq_ops.so" if mixed_bit else None),
                model_file=raw.get("ort_model_file") or raw.get("model_file"),
                mixed_bit=mixed_bit,
                tau_table=tuple(raw.get("tau_table") or ()),
                eos_token_ids=tuple(int(e) for e in eos),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ModelDirError(f"{path}: invalid or incomplete ({e!r})") from e


def find_ops_library(model_dir: Path, file_name: str) -> Path:
    """The custom-op library: beside the model first, then the one shipped with the installed package."""
    beside = model_dir / file_name
    if beside.is_file():
        return beside
    try:
        from mbq_onnx import ops_lib  # torch-free; built by the package's setup

        packaged = Path(ops_lib.library_path())
        if packaged.is_file():
            return packaged
    except (ImportError, FileNotFoundError, OSError, RuntimeError):
        pass
    raise ModelDirError(
        f"custom-op library {file_name!r} not found beside the model ({model_dir}) "
        "nor in the installed mbq_onnx package; build it (tools/setup.sh) or copy it next to the model"
    )


class SharedKVCache:
    """The KV cache of a lean graph (``docs/export.md``, "Lean graph"): one preallocated OrtValue per layer
    and kind, bound as both ``past_key_values.{i}.*`` and ``present.{i}.*``, so ``GroupQueryAttention``
    appends in place and a decode step copies nothing. Capacity doubles (one copy) when a call needs more.

    One cache per sequence batch; ``length`` is the number of positions already in it.
    """

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int = 256):
        if batch < 1 or capacity < 1:
            raise ValueError(f"batch and capacity must be >= 1, got {batch} and {capacity}")
        self.num_layers, self.batch, self.kv_heads, self.head_dim = num_layers, batch, kv_heads, head_dim
        self.length = 0
        self.capacity = 0
        self.buffers: list[ort.OrtValue] = []
        self.reserve(capacity)

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` positions (keeps the first ``length``)."""
        if capacity <= self.capacity:
            return
        shape = (self.batch, self.kv_heads, capacity, self.head_dim)
        new = [np.zeros(shape, np.float32) for _ in range(2 * self.num_layers)]
        for old, arr in zip(self.buffers, new, strict=False):
            arr[:, :, : self.length] = old.numpy()[:, :, : self.length]
        self.buffers = [ort.OrtValue.ortvalue_from_numpy(a) for a in new]
        self._arrays = new  # the OrtValues borrow these arrays' memory
        self.capacity = capacity
        self.bindings: dict[int, Any] = {}  # per session: an IOBinding with these buffers bound

    def arrays(self) -> list[np.ndarray]:
        """Copies of the filled part, key0, value0, key1, … ``[b, kv_heads, length, head_dim]``."""
        return [b.numpy()[:, :, : self.length].copy() for b in self.buffers]


KVCache = list[np.ndarray] | SharedKVCache


def cache_length(past: KVCache) -> int:
    """Positions held by a KV cache (either kind)."""
    return past.length if isinstance(past, SharedKVCache) else int(past[0].shape[2])


@dataclass
class StepOutput:
    """One forward call: logits, the new KV cache, slice counts and its wall time."""

    logits: np.ndarray  # float32 [b, vocab] at the last position ([b, s, vocab] with all_positions)
    present: Any  # key0, value0, … (a lean graph: its SharedKVCache, advanced; batched: the BatchKVCache)
    slice_counts: np.ndarray  # int64 [num_routed, b, s]
    latency_ms: float


class MbqSession:
    """Loads an exported model dir into an ORT CPU session (safe to use from several threads).

    ``threads`` sets ORT's intra-op thread count (None: ORT's default, all cores).
    """

    def __init__(
        self, model_dir: str | Path, threads: int | None = None, ops_library: str | Path | None = None
    ):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelDirError(f"model dir {self.model_dir} does not exist")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.config = ModelConfig.load(self.model_dir)
        names = (self.config.model_file, *MODEL_NAMES) if self.config.model_file else MODEL_NAMES
        self.model_path = next((self.model_dir / n for n in names if (self.model_dir / n).is_file()), None)
        if self.model_path is None:
            raise ModelDirError(f"{self.model_dir} holds none of {', '.join(dict.fromkeys(names))}")
        lib = self.config.custom_op_library
        self.ops_library = (
            Path(ops_library) if ops_library else find_ops_library(self.model_dir, lib) if lib else None
        )
        tok_path = self.model_dir / "tokenizer.json"
        if not tok_path.is_file():
            raise ModelDirError(f"{self.model_dir} has no tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(tok_path))
        self.threads = threads
        opts = ort.SessionOptions()
        if self.ops_library is not None:
            opts.register_custom_ops_library(str(self.ops_library))
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._present_names = [
            f"present.{i}.{kv}" for i in range(self.config.num_layers) for kv in ("key", "value")
        ]
        self.mixed_bit = "tau" in self._input_names
        #: A lean graph (GenAI builder layout): shared past/present buffers, ``logits_to_keep``.
        self.shared_kv = "logits_to_keep" in self._input_names
        controls = ("tau", "force_slices") if self.mixed_bit else ()
        missing = [n for n in ("input_ids", *controls) if n not in self._input_names]
        missing += [n for n in ("logits", *self._present_names) if n not in self._output_names]
        if self.mixed_bit and "slice_counts" not in self._output_names:
            missing.append("slice_counts")
        if missing:
            raise ModelDirError(f"{self.model_path.name} lacks graph inputs/outputs {missing}")
        self.eos_token_ids = self.config.eos_token_ids or self._eos_from_files()

    def _eos_from_files(self) -> tuple[int, ...]:
        for name in ("generation_config.json", "config.json"):
            path = self.model_dir / name
            if path.is_file():
                eos = json.loads(path.read_text()).get("eos_token_id")
                if eos is not None:
                    return tuple(eos) if isinstance(eos, list) else (int(eos),)
        path = self.model_dir / "tokenizer_config.json"
        if path.is_file():
            tok = json.loads(path.read_text()).get("eos_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            tid = self.tokenizer.token_to_id(tok) if isinstance(tok, str) else None
            if tid is not None:
                return (tid,)
        return ()

    def empty_cache(self, batch: int = 1, capacity: int = 256) -> KVCache:
        """A past-length-0 KV cache (a lean graph's holds ``capacity`` positions before it grows)."""
        c = self.config
        if self.shared_kv:
            return SharedKVCache(c.num_layers, batch, c.num_kv_heads, c.head_dim, capacity)
        shape = (batch, c.num_kv_heads, 0, c.head_dim)
        return [np.zeros(shape, np.float32) for _ in range(2 * c.num_layers)]

    def run(
        self,
        input_ids: np.ndarray,
        past: list[np.ndarray],
        tau: float = 0.0,
        force_slices: int = 0,
        attention_mask: np.ndarray | None = None,
        all_positions: bool = False,
    ) -> StepOutput:
        """One forward call over ``input_ids`` [b, s] continuing ``past`` (``all_positions``: keep the
        logits of every position, e.g. for perplexity, instead of only the last one)."""
        b, s = input_ids.shape
        if self.shared_kv:
            return self._run_shared(input_ids, past, tau, force_slices, attention_mask, all_positions)
        past_len = past[0].shape[2]
        if attention_mask is None:
            attention_mask = np.ones((b, past_len + s), np.int64)
        feeds: dict[str, Any] = {"input_ids": np.ascontiguousarray(input_ids, np.int64)}
        if "attention_mask" in self._input_names:
            feeds["attention_mask"] = attention_mask
        if self.mixed_bit:
            feeds["tau"] = np.array(tau, np.float32)
            feeds["force_slices"] = np.array(force_slices, np.int64)
        if "position_ids" in self._input_names:
            feeds["position_ids"] = np.broadcast_to(
                np.arange(past_len, past_len + s, dtype=np.int64), (b, s)
            ).copy()
        for i in range(self.config.num_layers):
            feeds[f"past_key_values.{i}.key"] = past[2 * i]
            feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
        t0 = time.perf_counter()
        outs = self.session.run(None, feeds)
        latency_ms = (time.perf_counter() - t0) * 1e3
        by_name = dict(zip(self._output_names, outs, strict=True))
        return StepOutput(
            logits=by_name["logits"] if all_positions else by_name["logits"][:, -1, :],
            present=[by_name[n] for n in self._present_names],
            slice_counts=by_name.get("slice_counts", np.zeros((0,), np.int64)),
            latency_ms=latency_ms,
        )

    def _run_shared(
        self,
        input_ids: np.ndarray,
        cache: KVCache,
        tau: float,
        force_slices: int,
        attention_mask: np.ndarray | None,
        all_positions: bool,
    ) -> StepOutput:
        """One call of a lean graph through IOBinding: the cache buffers are bound as past and present."""
        if not isinstance(cache, SharedKVCache):
            raise TypeError("this model keeps its KV cache in shared buffers: pass session.empty_cache()")
        b, s = input_ids.shape
        if cache.batch != b:
            raise ValueError(f"input_ids batch {b} does not match the KV cache's batch {cache.batch}")
        total = cache.length + s
        if total > cache.capacity:
            cache.reserve(max(total, 2 * cache.capacity))
        if attention_mask is None:
            attention_mask = np.ones((b, total), np.int64)
        io = cache.bindings.get(id(self.session))
        if io is None:
            io = cache.bindings[id(self.session)] = self.bind_cache(cache.buffers)
        out = self.run_bound(io, input_ids, attention_mask, tau, force_slices, s if all_positions else 1)
        cache.length = total
        out.present = cache
        if not all_positions:
            out.logits = out.logits[:, -1, :]
        return out

    def run_bound(
        self,
        io: Any,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        tau: float,
        force_slices: int,
        logits_to_keep: int = 1,
    ) -> StepOutput:
        """One lean-graph call through ``io`` (an IOBinding from :meth:`bind_cache`): logits
        ``[b, logits_to_keep, vocab]``; ``present`` is left ``None`` for the caller's cache to fill in."""
        io.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        io.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, np.int64))
        io.bind_cpu_input("logits_to_keep", np.array(logits_to_keep, np.int64))
        if self.mixed_bit:
            io.bind_cpu_input("tau", np.array(tau, np.float32))
            io.bind_cpu_input("force_slices", np.array(force_slices, np.int64))
        io.bind_output("logits")  # (re)bound each call: ORT allocates them at this call's shape
        if self.mixed_bit:
            io.bind_output("slice_counts")
        t0 = time.perf_counter()
        self.session.run_with_iobinding(io)
        latency_ms = (time.perf_counter() - t0) * 1e3
        outs = io.get_outputs()[-2 if self.mixed_bit else -1 :]
        return StepOutput(
            logits=outs[0].numpy(),
            present=None,
            slice_counts=outs[1].numpy() if self.mixed_bit else np.zeros((0,), np.int64),
            latency_ms=latency_ms,
        )

    def bind_cache(self, buffers: list[ort.OrtValue]) -> Any:
        """An IOBinding with ``buffers`` (key0, value0, key1, …) bound as both past and present."""
        io = self.session.io_binding()
        for i in range(self.config.num_layers):
            for j, kind in enumerate(("key", "value")):
                buf = buffers[2 * i + j]
                io.bind_ortvalue_input(f"past_key_values.{i}.{kind}", buf)
                io.bind_ortvalue_output(f"present.{i}.{kind}", buf)
        return io

    def average_bits(self, slice_counts: np.ndarray) -> float:
        """Unweighted mean of bits(count) over all routed entries (docs/controller.md)."""
        if not self.mixed_bit:  # a float or fixed-precision reference graph
            return float(sum(self.config.slice_bits))
        counts = np.clip(slice_counts, 1, self.config.num_slices)
        return float(self.config.bits_per_count[counts].mean()) if counts.size else float("nan")
