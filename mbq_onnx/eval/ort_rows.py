"""The ONNX Runtime side of a quality report: exported models, ORT perplexity and its agreement with
PyTorch, end-to-end speed, and the ORT-only MatMulNBits baseline rows.

Exports are made once and kept under ``<exports>/<source name>/<variant>`` with a fingerprint of their
source (``eval_source.json``), so a later report reuses them unless the model or artifact changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .methods import label
from .perplexity import LogitsFn
from .rows import OrtPart, ReportRow, TextResult
from .speed import (
    DEFAULT_DECODE_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    DEFAULT_REPEATS,
    BitsMeter,
    measure_speed,
    tokens_needed,
)
from .variants import EvalSetup, _row

FINGERPRINT_FILE = "eval_source.json"
#: Export key of the artifact exported with int8 activations (``accuracy_level=4``).
INT8_EXPORT = "mixed-bit-int8act"
EXPORT_CODE = ("export", "model", "quant")
#: Default relative perplexity tolerance between ORT and PyTorch (measured gaps: docs/eval.md).
DEFAULT_TOLERANCE = 1e-3


@dataclass
class OrtSettings:
    """What the ORT part of a report runs."""

    exports: Path
    threads: tuple[int, ...] = (1, 2)
    speed: bool = True
    tolerance: float = DEFAULT_TOLERANCE
    nbits: tuple[int, ...] = (4, 8)
    nbits_block: int = 32
    #: ``--int8-cost``: MatMulNBits also at accuracy_level 0 and MoBiQuant's slice counts also at 4
    int8_cost: bool = False
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    decode_tokens: int = DEFAULT_DECODE_TOKENS
    repeats: int = DEFAULT_REPEATS
    progress: bool = True
    speed_ids: np.ndarray | None = field(default=None, repr=False)

    @property
    def nbits_accuracy_levels(self) -> tuple[int, ...]:
        """MatMulNBits rows' accuracy levels: 4 (int8 activations, its fast path), and 0 with int8_cost."""
        return (4, 0) if self.int8_cost else (4,)

    def as_dict(self) -> dict[str, Any]:
        return {
            "threads": list(self.threads),
            "speed": self.speed,
            "tolerance": self.tolerance,
            "matmul_nbits": {"bits": list(self.nbits), "block_size": self.nbits_block, "accuracy_level": 4},
            **({"int8_cost": True} if self.int8_cost else {}),
            "prompt_tokens": self.prompt_tokens,
            "decode_tokens": self.decode_tokens,
            "repeats": self.repeats,
        }


def nbits_export(bits: int, accuracy_level: int = 4) -> str:
    """Export key of a MatMulNBits model (``int4``; ``int4-acc0`` for float activations)."""
    return f"int{bits}" if accuracy_level == 4 else f"int{bits}-acc{accuracy_level}"


def fingerprint(source: Path) -> str:
    """Identity of a model or artifact folder: hash of its small files, size and mtime of large ones."""
    h = hashlib.sha256()
    for p in sorted(Path(source).iterdir()):
        if not p.is_file():
            continue
        st = p.stat()
        h.update(p.name.encode())
        if st.st_size < 1 << 20:
            h.update(p.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def exporter_fingerprint() -> str:
    """Identity of the code that shapes an export (exporter, model, quantizer modules)."""
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in EXPORT_CODE:
        for p in sorted((pkg / sub).glob("*.py")):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def _cached(out: Path, source: Path, extra: dict[str, Any], make: Callable[[Path], Any]) -> Path:
    """``out`` when it was exported from this ``source`` by this code with these settings, else ``make(out)``
    first."""
    stamp = {
        "source": Path(source).name,
        "fingerprint": fingerprint(source),
        "code": exporter_fingerprint(),
        **extra,
    }
    marker = out / FINGERPRINT_FILE
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return out
    make(out)
    marker.write_text(json.dumps(stamp, indent=1) + "\n")
    return out


def prepare_exports(
    model_dir: Path,
    artifact: Path | None,
    settings: OrtSettings,
    int8_activations: bool = False,
    lm_head: str = "float",
) -> dict[str, Path]:
    """Export (or reuse) the ORT models of a report: ``float32``, ``int{b}`` MatMulNBits for each
    ``settings.nbits`` (:func:`nbits_export`; float-activation ones too with ``settings.int8_cost``), and
    ``mixed-bit`` when an artifact is given (plus :data:`INT8_EXPORT`, exported with ``accuracy_level=4``
    and the ``lm_head`` choice, when ``int8_activations`` or ``settings.int8_cost``). Returns their
    directories by key."""
    from mbq_onnx.export import export_artifact, export_float_model
    from mbq_onnx.export.matmul_nbits import quantize_matmul_nbits

    quiet = not settings.progress
    root = Path(settings.exports) / model_dir.name
    dirs = {
        "float32": _cached(
            root / "float32",
            model_dir,
            {"kind": "float32"},
            lambda out: export_float_model(model_dir, out, overwrite=True, progress=not quiet),
        )
    }
    for level in settings.nbits_accuracy_levels:
        for bits in settings.nbits:
            key = nbits_export(bits, level)
            nb = {"kind": "matmul_nbits", "bits": bits, "block_size": settings.nbits_block}
            if level != 4:  # level-4 stamps stay as they were, so their exports are reused
                nb["accuracy_level"] = level
            dirs[key] = _cached(
                root / f"matmulnbits-{key}-b{settings.nbits_block}",
                model_dir,
                nb,
                lambda out, bits=bits, level=level: quantize_matmul_nbits(
                    dirs["float32"],
                    out,
                    bits=bits,
                    block_size=settings.nbits_block,
                    overwrite=True,
                    accuracy_level=level,
                ),
            )
    if artifact is not None:
        dirs["mixed-bit"] = _cached(
            Path(settings.exports) / artifact.name / "mixed-bit",
            artifact,
            {"kind": "mixed-bit"},
            lambda out: export_artifact(artifact, out, overwrite=True, progress=not quiet),
        )
        if int8_activations or settings.int8_cost:
            suffix = "" if lm_head == "float" else f"-head-{lm_head}"
            dirs[INT8_EXPORT] = _cached(
                Path(settings.exports) / artifact.name / f"mixed-bit-int8act{suffix}",
                artifact,
                {"kind": "mixed-bit", "accuracy_level": 4, "lm_head": lm_head},
                lambda out: export_artifact(
                    artifact, out, overwrite=True, progress=not quiet, accuracy_level=4, lm_head=lm_head
                ),
            )
    return dirs


class OrtModel:
    """An exported model dir with one session per thread count (opened on first use)."""

    def __init__(self, model_dir: Path, routed_weights: Sequence[int] | None = None):
        self.model_dir = Path(model_dir)
        self.routed_weights = None if routed_weights is None else np.asarray(routed_weights, np.float64)
        self._sessions: dict[int, Any] = {}

    def session(self, threads: int):
        if threads not in self._sessions:
            from mbq_onnx.runtime import MbqSession

            self._sessions[threads] = MbqSession(self.model_dir, threads=threads)
        return self._sessions[threads]

    def file_bytes(self) -> int:
        from mbq_onnx.export.sizes import weight_file_bytes

        return weight_file_bytes(self.model_dir)


def ort_logits_fn(
    session, tau: float = 0.0, force_slices: int = 0, on_counts: Callable[[np.ndarray], None] | None = None
) -> LogitsFn:
    """A :data:`~mbq_onnx.eval.perplexity.LogitsFn` running a whole window through an exported session
    from an empty KV cache; ``on_counts`` receives each call's ``slice_counts``."""

    def fn(ids: np.ndarray) -> np.ndarray:
        out = session.run(ids, session.empty_cache(ids.shape[0]), tau, force_slices, all_positions=True)
        if on_counts is not None:
            on_counts(out.slice_counts)
        return out.logits

    return fn


def ort_results(
    setup: EvalSetup, model: OrtModel, name: str, bits: float, threads: int, tau: float = 0.0, force: int = 0
) -> dict[str, TextResult]:
    """Perplexity on every text through ORT; average bits from the routed counts when routing decides."""
    session = model.session(threads)
    routed = session.mixed_bit and force == 0
    meter = BitsMeter(session, model.routed_weights) if routed else None
    fn = ort_logits_fn(session, tau, force, meter.add if meter else None)
    return setup.run(
        fn, f"{name} · ORT", meter.average if meter else bits, reset=meter.reset if meter else None
    )


def agreement(torch_results: dict[str, TextResult], ort: dict[str, TextResult]) -> dict[str, float]:
    """Relative perplexity gap ``|ppl_ort / ppl_torch - 1|`` per text."""
    return {t: abs(ort[t].ppl / r.ppl - 1.0) for t, r in torch_results.items() if t in ort}


def speeds(
    model: OrtModel, settings: OrtSettings, tau: float = 0.0, force: int = 0
) -> dict[str, dict[str, Any]]:
    """Prefill/decode rates at each thread count of ``settings`` (keys are thread counts as strings)."""
    if not settings.speed:
        return {}
    if settings.speed_ids is None:
        raise ValueError("OrtSettings.speed_ids (token ids for the speed runs) is not set")
    out = {}
    for t in settings.threads:
        sp = measure_speed(
            model.session(t),
            settings.speed_ids,
            tau=tau,
            force_slices=force,
            prompt_tokens=settings.prompt_tokens,
            decode_tokens=settings.decode_tokens,
            repeats=settings.repeats,
            routed_weights=model.routed_weights,
        )
        out[str(t)] = sp.to_dict()
    return out


def speed_tokens_needed(settings: OrtSettings) -> int:
    return tokens_needed(settings.prompt_tokens, settings.decode_tokens)


def add_ort(
    row: ReportRow,
    setup: EvalSetup,
    model: OrtModel,
    settings: OrtSettings,
    tau: float = 0.0,
    force: int = 0,
) -> ReportRow:
    """Attach ``ort`` (model dir, results, agreement with the row's PyTorch results) and ``speed`` to a
    PyTorch-evaluated row (in place)."""
    threads = max(settings.threads)
    bits = row.bits if row.bits is not None else 32.0
    ort = ort_results(setup, model, row.label, bits, threads, tau, force)
    row.ort = OrtPart(
        model.model_dir.name,
        results=ort,
        agreement=agreement(row.results, ort),
        file_bytes=model.file_bytes(),
    )
    row.speed = speeds(model, settings, tau, force)
    return row


def eval_matmul_nbits(
    setup: EvalSetup,
    model: OrtModel,
    bits: int,
    block_size: int,
    settings: OrtSettings,
    accuracy_level: int = 4,
) -> ReportRow:
    """An ORT-only baseline row: ORT's MatMulNBits quantizer (``accuracy_level`` 4: int8 activations,
    its fast path; 0: float activations)."""
    name = label("matmul-nbits", bits=bits, group_size=block_size, accuracy_level=accuracy_level)
    results = ort_results(setup, model, name, bits, max(settings.threads))
    row = _row(
        "matmul-nbits",
        name,
        bits=bits,
        group_size=block_size,
        model_bytes=model.file_bytes(),
        results=results,
        backend="ort",
        accuracy_level=accuracy_level,
    )
    row.ort = OrtPart(model.model_dir.name, file_bytes=row.model_bytes)
    row.speed = speeds(model, settings)
    return row


def eval_mbq_int8act(
    setup: EvalSetup, model: OrtModel, name: str, slices: int, bits: int, artifact: Any, settings: OrtSettings
) -> ReportRow:
    """An ORT-only row: the artifact exported with int8 activations (``accuracy_level=4``), forced to
    ``slices`` slices; :func:`~mbq_onnx.eval.report.annotate_report` pairs it with the float-activation
    ORT run of the same slice count (``vs_float_activations``)."""
    from .variants import artifact_bytes

    results = ort_results(setup, model, name, bits, max(settings.threads), force=slices)
    row = _row(
        "mbq-int8act",
        name,
        bits=bits,
        slices=slices,
        group_size=artifact.spec.group_size,
        model_bytes=artifact_bytes(artifact, slices),
        results=results,
        backend="ort",
        accuracy_level=4,
        artifact=artifact.path.name,
    )
    row.ort = OrtPart(model.model_dir.name, file_bytes=model.file_bytes())
    row.speed = speeds(model, settings, force=slices)
    return row
