"""``python -m mbq_onnx.eval``: perplexity of float, baselines and MoBiQuant → ``reports/quality.*``."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mbq_onnx.tau_table import tau_table_bits as table_bits

from .methods import BASELINES, METHOD_KEYS, METHODS, Variant, method
from .ort_rows import DEFAULT_TOLERANCE, fingerprint
from .perplexity import DEFAULT_MAX_WINDOWS
from .rows import ReportRow
from .speed import DEFAULT_DECODE_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPEATS

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from mbq_onnx.baselines import BaselineSpec
    from mbq_onnx.calibrate.config import CalibConfig
    from mbq_onnx.model.artifact import Artifact
    from mbq_onnx.model.routing import RoutingContext

    from .ort_rows import OrtModel, OrtSettings
    from .variants import EvalSetup

TEXT_ALIASES = {
    "sotu": "sotu-2000+",
    "sotu-2000+": "sotu-2000+",
    "moby": "moby-dick",
    "moby-dick": "moby-dick",
}
QUICK = {
    "window": 256,
    "max_tokens": 512,
    "calib_samples": 4,
    "calib_seqlen": 128,
    "num_taus": 3,
    "prompt_tokens": 32,
    "decode_tokens": 8,
    "repeats": 1,
}
DEFAULT_GPTQ_SAMPLES = (32, 512)
DEFAULT_NUM_TAUS = 6


class UsageError(ValueError):
    """A command-line value is invalid."""


def _int_list(s: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} {s!r}: expected comma-separated integers") from None
    if not vals:
        raise UsageError(f"{what} is empty")
    return vals


def _float_list(s: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} {s!r}: expected comma-separated numbers") from None
    bad = [v for v in vals if not 0.0 < v < 1.0]
    if bad:
        raise UsageError(f"{what}: every τ must lie strictly between 0 and 1, got {bad}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mbq_onnx.eval",
        description="Held-out perplexity of the float model, bit-specific baselines (RTN, GPTQ, same-method "
        "single-precision calibration) and a MoBiQuant artifact at each uniform slice count and over "
        "a τ sweep. Writes OUTPUT/quality.json, quality.md and quality.png.",
    )
    p.add_argument(
        "--artifact",
        type=Path,
        help="MoBiQuant artifact directory (python -m mbq_onnx.calibrate); "
        "without it only the float model and the RTN/GPTQ baselines are evaluated",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="float HF causal-LM folder (default: the artifact's source model, "
        "else the embedded SmolLM2-135M)",
    )
    p.add_argument(
        "--baselines",
        help=f"comma list of {', '.join(BASELINES)}, or 'none' "
        "(default: rtn,gptq and, with --artifact, single)",
    )
    p.add_argument(
        "--bits",
        help="baseline bit widths: RTN, GPTQ and the single-precision runs (default: the artifact's "
        "precisions, else 4,6,8)",
    )
    p.add_argument("--groups", help="baseline group sizes (default: the artifact's group size, else 128)")
    p.add_argument("--act-order", action="store_true", help="GPTQ with activation order (static groups)")
    p.add_argument(
        "--gptq-samples", type=int, help="GPTQ calibration samples (default: the artifact's, else 32)"
    )
    p.add_argument(
        "--gptq-seqlen", type=int, help="GPTQ sample length in tokens (default: the artifact's, else 512)"
    )
    p.add_argument(
        "--taus",
        help="comma list of τ for the sweep (default: points spread over the artifact's τ table), or 'none'",
    )
    p.add_argument("--no-uniform", action="store_true", help="skip MoBiQuant at each uniform slice count")
    p.add_argument(
        "--no-random",
        action="store_true",
        help="skip the random-routing baseline of each τ row (random per-token slice counts, same bits)",
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="add the oracle-routing reference of each τ row: same bits, the extra slice to the tokens whose "
        "linear output it changes most (reads the weights; ~1.3x a τ row's time)",
    )
    p.add_argument(
        "--texts",
        default="sotu,moby",
        help="named held-out texts: sotu (SOTU 2000+), moby (Moby-Dick), or 'none' (only --text files)",
    )
    p.add_argument(
        "--text",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="also score this UTF-8 text file (repeatable); its rows are labelled by the file's stem",
    )
    p.add_argument("--window", type=int, help="tokens per non-overlapping window (default 2048; --quick 256)")
    p.add_argument(
        "--max-windows",
        type=int,
        default=DEFAULT_MAX_WINDOWS,
        help="windows per text: all available up to this many (default %(default)s)",
    )
    p.add_argument("--max-tokens", type=int, help="use at most the first N tokens of each text")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test sizes: window {QUICK['window']}, {QUICK['max_tokens']} tokens per text, "
        f"GPTQ/single calibration on {QUICK['calib_samples']}x{QUICK['calib_seqlen']} tokens, "
        f"{QUICK['num_taus']} τ",
    )
    p.add_argument(
        "--output", type=Path, default=Path("reports"), help="report directory (default %(default)s)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse rows (by label) of an existing OUTPUT/quality.json made with the same model, texts "
        "and window settings; new rows are appended",
    )
    ort = p.add_argument_group(
        "ONNX Runtime",
        "Exports float32, ORT MatMulNBits and MoBiQuant models (reused from --exports when their source is "
        "unchanged), scores them through ONNX Runtime (ORT vs PyTorch perplexity must agree within "
        "--ort-tolerance) and measures prefill/decode tokens/s.",
    )
    ort.add_argument(
        "--no-ort", action="store_true", help="PyTorch only: no ORT exports, perplexity or speed"
    )
    ort.add_argument("--no-speed", action="store_true", help="ORT perplexity but no speed measurement")
    ort.add_argument(
        "--threads", default="1,2", help="ORT intra-op thread counts for speed (default %(default)s)"
    )
    ort.add_argument(
        "--exports", type=Path, help="directory for the exported models (default: <cache dir>/exports)"
    )
    ort.add_argument(
        "--ort-tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest relative ORT vs PyTorch perplexity gap accepted (default %(default)g)",
    )
    ort.add_argument(
        "--nbits", default="4,8", help="MatMulNBits baseline bit widths, or 'none' (default %(default)s)"
    )
    ort.add_argument(
        "--int8-cost",
        action="store_true",
        help="also score MatMulNBits with float activations (accuracy_level 0) and MoBiQuant's slice counts "
        "with int8 activations (accuracy_level 4), and report what int8 activations cost each (paired)",
    )
    ort.add_argument(
        "--nbits-block",
        type=int,
        help="MatMulNBits block size (default: the artifact's group size, for a like-for-like comparison; "
        "else 32)",
    )
    ort.add_argument(
        "--prompt-tokens",
        type=int,
        help=f"speed: prefill length (default {DEFAULT_PROMPT_TOKENS}; --quick 32)",
    )
    ort.add_argument(
        "--decode-tokens", type=int, help=f"speed: decode steps (default {DEFAULT_DECODE_TOKENS}; --quick 8)"
    )
    ort.add_argument(
        "--speed-repeats", type=int, help=f"speed: runs per setting (default {DEFAULT_REPEATS}; --quick 1)"
    )
    p.add_argument("--no-plot", action="store_true", help="skip quality.png and pareto.png")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _texts(arg: str, files: list[Path] | None = None) -> list[str]:
    if arg.strip().lower() == "none":
        if not files:
            raise UsageError("--texts none needs at least one --text FILE")
        return []
    names = [t.strip() for t in arg.split(",") if t.strip()]
    unknown = [t for t in names if t not in TEXT_ALIASES]
    if unknown or not names:
        raise UsageError(f"--texts {arg!r}: unknown {unknown}; choose from sotu, moby, or none")
    return list(dict.fromkeys(TEXT_ALIASES[t] for t in names))


def read_text_file(path: Path) -> str:
    """The contents of a user's ``--text`` file; a clear error naming it when it cannot be read as UTF-8."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--text {path}: the file does not exist")
    if not path.is_file():
        raise ValueError(f"--text {path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"--text {path}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--text {path}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def text_file_names(files: list[Path], named: list[str]) -> list[str]:
    """Text names of ``--text`` files: each file's stem (a usage error when two names collide)."""
    names = [Path(f).stem for f in files]
    clash = sorted({n for n in names if names.count(n) > 1 or n in named})
    if clash:
        raise UsageError(f"--text: the text names {clash} (file stems) are not unique; rename the files")
    return names


def tokens_needed(window: int, max_tokens: int | None) -> int:
    """Tokens a text needs: one full window (or ``max_tokens`` when that is fewer)."""
    return min(window, max_tokens) if max_tokens is not None else window


def _baselines(arg: str) -> list[str]:
    if arg.strip().lower() == "none":
        return []
    names = [b.strip().lower() for b in arg.split(",") if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise UsageError(
            f"--baselines {arg!r}: unknown {unknown}; choose from {', '.join(BASELINES)} or none"
        )
    return list(dict.fromkeys(names))


def pick_taus(tau_table: list[dict[str, float]], count: int) -> list[float]:
    """``count`` τ values from a calibration τ table whose average bits are spread evenly over its range."""
    rows = [(r["tau"], b) for r in tau_table if "tau" in r and (b := table_bits(r)) is not None]
    if not rows:
        return [round(0.1 + 0.8 * i / max(count - 1, 1), 3) for i in range(count)]
    lo, hi = min(b for _, b in rows), max(b for _, b in rows)
    targets = [lo + (hi - lo) * i / max(count - 1, 1) for i in range(count)]
    picked = {min(rows, key=lambda r, t=t: abs(r[1] - t))[0] for t in targets}
    return sorted(float(t) for t in picked)


#: Report settings that must match for ``--resume`` to reuse a report's rows (the artifact by folder and by
#: content: a recalibrated artifact in the same folder is another model).
RESUME_KEYS = (
    "model", "artifact", "artifact_fingerprint", "window", "max_windows", "max_tokens", "text_files"
)  # fmt: skip


def _previous_rows(output: Path, settings: dict[str, Any], texts: list[str]) -> dict[str, ReportRow]:
    """Rows of ``output/quality.json`` by label when it was made with the same settings (else nothing)."""
    import json

    path = output / "quality.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    differ = [k for k in RESUME_KEYS if (old.get("settings", {}).get(k) or None) != (settings.get(k) or None)]
    if old.get("texts") != texts:
        differ.insert(0, "texts")
    if differ:
        print(
            f"--resume: {path} was made with other settings ({', '.join(differ)}); starting afresh",
            file=sys.stderr,
        )
        return {}
    rows = {r.label: r.upgrade() for r in map(ReportRow.from_dict, old.get("rows", []))}
    if old.get("settings", {}).get("ort") != settings.get("ort"):  # ORT numbers of other settings: redo
        rows = {k: r for k, r in rows.items() if r.backend != "ort"}
        for r in rows.values():
            r.ort = r.speed = None
    return rows


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it, else its name (no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return Path(path).name


def _ort_settings(args: argparse.Namespace, group_size: int) -> Any:
    from mbq_onnx.assets import cache_dir

    from .ort_rows import OrtSettings

    def pick(value: int | None, key: str, default: int) -> int:
        v = value if value is not None else (QUICK[key] if args.quick else default)
        if v < 1:
            raise UsageError(f"--{key.replace('_', '-')} {v} must be >= 1")
        return v

    threads = _int_list(args.threads, "--threads")
    if any(t < 1 for t in threads):
        raise UsageError(f"--threads {args.threads}: thread counts must be >= 1")
    nbits = [] if args.nbits.strip().lower() == "none" else _int_list(args.nbits, "--nbits")
    if any(b not in (2, 4, 8) for b in nbits):
        raise UsageError(f"--nbits {args.nbits}: MatMulNBits supports 2, 4 and 8 bits")
    block = args.nbits_block or group_size
    if block < 16 or block & (block - 1):
        raise UsageError(f"--nbits-block {block} must be a power of two >= 16")
    if not 0 < args.ort_tolerance < 1:
        raise UsageError(f"--ort-tolerance {args.ort_tolerance} must lie in (0, 1)")
    return OrtSettings(
        exports=args.exports or cache_dir() / "exports",
        threads=tuple(sorted(set(threads))),
        speed=not args.no_speed,
        tolerance=args.ort_tolerance,
        nbits=tuple(nbits),
        nbits_block=block,
        int8_cost=args.int8_cost,
        prompt_tokens=pick(args.prompt_tokens, "prompt_tokens", DEFAULT_PROMPT_TOKENS),
        decode_tokens=pick(args.decode_tokens, "decode_tokens", DEFAULT_DECODE_TOKENS),
        repeats=pick(args.speed_repeats, "repeats", DEFAULT_REPEATS),
        progress=not args.no_progress,
    )


@dataclass(frozen=True, eq=False)
class Plan:
    """What one ``python -m mbq_onnx.eval`` command evaluates, resolved from its arguments
    (:func:`resolve_plan`) and run by :func:`execute`: every default filled in, every value checked."""

    argv: tuple[str, ...]
    model_dir: Path
    artifact: Artifact | None
    #: the named held-out texts, then the ``--text`` files' texts (name → path, name → contents)
    named_texts: tuple[str, ...]
    text_files: dict[str, Path]
    file_texts: dict[str, str]
    window: int
    max_windows: int
    max_tokens: int | None
    quick: bool
    baselines: tuple[str, ...]
    baseline_specs: tuple[BaselineSpec, ...]
    #: the report's group size (the artifact's, else the first ``--groups``)
    group_size: int
    act_order: bool
    #: GPTQ calibration ``(samples, seqlen)``; ``None`` without GPTQ rows
    gptq_calibration: tuple[int, int] | None
    #: single-precision runs: the calibration config and ``(samples, seqlen)``; ``None`` without them
    single_config: CalibConfig | None
    single_calibration: tuple[int, int] | None
    taus: tuple[float, ...]
    uniform: bool
    random: bool
    oracle: bool
    ort: OrtSettings | None
    output: Path
    resume: bool
    plot: bool
    progress: bool
    #: every model to evaluate, in report order (:data:`~mbq_onnx.eval.methods.METHODS` order)
    variants: tuple[Variant, ...] = ()

    @property
    def texts(self) -> list[str]:
        """Every text's name: the named texts, then the files."""
        return [*self.named_texts, *self.text_files]

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.variants]


def resolve_plan(args: argparse.Namespace) -> Plan:
    """The :class:`Plan` of parsed command-line arguments: validates them (a :class:`UsageError` naming the
    bad argument), fills in the defaults (the artifact's, ``--quick``'s), reads the ``--text`` files and the
    artifact, and lists the models to evaluate. Loads no model or tokenizer and writes nothing."""
    from mbq_onnx import assets
    from mbq_onnx.baselines import BaselineSpec
    from mbq_onnx.model.artifact import load_artifact

    files = list(args.text)
    named = _texts(args.texts, files)
    file_names = text_file_names(files, named)
    file_texts = {name: read_text_file(f) for name, f in zip(file_names, files, strict=True)}
    baselines = _baselines(args.baselines or ("rtn,gptq,single" if args.artifact is not None else "rtn,gptq"))
    window = args.window or (QUICK["window"] if args.quick else 2048)
    max_tokens = (
        args.max_tokens if args.max_tokens is not None else (QUICK["max_tokens"] if args.quick else None)
    )
    if window < 2:
        raise UsageError(f"--window {window} must be >= 2")
    if max_tokens is not None and max_tokens < 2:
        raise UsageError(f"--max-tokens {max_tokens} must be >= 2")
    if args.max_windows < 1:
        raise UsageError(f"--max-windows {args.max_windows} must be >= 1")
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"--output {args.output} exists and is not a directory")

    artifact = load_artifact(args.artifact) if args.artifact is not None else None
    if "single" in baselines and artifact is None:
        raise UsageError(
            "--baselines single needs --artifact (the single-precision runs repeat its calibration)"
        )
    if args.taus is not None and args.taus.strip().lower() != "none" and artifact is None:
        raise UsageError("--taus needs --artifact")

    spec = artifact.spec if artifact is not None else None
    bits = _int_list(args.bits, "--bits") if args.bits else (list(spec.cum_bits) if spec else [4, 6, 8])
    groups = _int_list(args.groups, "--groups") if args.groups else [spec.group_size if spec else 128]
    try:
        baseline_specs = tuple(BaselineSpec(b, g) for g in groups for b in bits)
    except ValueError as e:
        raise UsageError(f"--bits/--groups: {e}") from None
    if args.taus is None:
        n_taus = QUICK["num_taus"] if args.quick else DEFAULT_NUM_TAUS
        taus = pick_taus(artifact.tau_table, n_taus) if artifact and artifact.granularity != "none" else []
    else:
        taus = [] if args.taus.strip().lower() == "none" else _float_list(args.taus, "--taus")

    model_path = args.model
    if model_path is None and artifact is not None:
        src = artifact.source.get("model")
        if src and Path(src).is_dir():
            model_path = Path(src)
    model_dir = assets.resolve_model(model_path)
    ort = None if args.no_ort else _ort_settings(args, spec.group_size if spec else 32)
    gptq, single_config, single = _calibration_sizes(args, artifact, baselines)

    plan = Plan(
        argv=tuple(getattr(args, "argv", None) or ()),
        model_dir=model_dir,
        artifact=artifact,
        named_texts=tuple(named),
        text_files=dict(zip(file_names, files, strict=True)),
        file_texts=file_texts,
        window=window,
        max_windows=args.max_windows,
        max_tokens=max_tokens,
        quick=args.quick,
        baselines=tuple(baselines),
        baseline_specs=baseline_specs,
        group_size=spec.group_size if spec else groups[0],
        act_order=args.act_order,
        gptq_calibration=gptq,
        single_config=single_config,
        single_calibration=single,
        taus=tuple(taus),
        uniform=not args.no_uniform,
        random=not args.no_random,
        oracle=args.oracle,
        ort=ort,
        output=args.output,
        resume=args.resume,
        plot=not args.no_plot,
        progress=not args.no_progress,
    )
    # each model once (a repeated --bits or --taus value names the same row)
    variants = dict.fromkeys(v for m in METHODS for v in m.variants(plan))
    return dataclasses.replace(plan, variants=tuple(variants))


def _calibration_sizes(
    args: argparse.Namespace, artifact: Artifact | None, baselines: list[str]
) -> tuple[tuple[int, int] | None, CalibConfig | None, tuple[int, int] | None]:
    """GPTQ's ``(samples, seqlen)``; the single-precision runs' config and ``(samples, seqlen)`` — the
    artifact's calibration data by default (``--quick``: a few short samples)."""
    from mbq_onnx.baselines.single import artifact_calib_settings

    calib_cfg, calib_sizes = artifact_calib_settings(artifact.path) if artifact is not None else (None, None)
    gptq = single = None
    cfg = None
    if "gptq" in baselines:
        n_s, seqlen = calib_sizes or DEFAULT_GPTQ_SAMPLES
        if args.quick:
            n_s, seqlen = QUICK["calib_samples"], QUICK["calib_seqlen"]
        gptq = (args.gptq_samples or n_s, args.gptq_seqlen or seqlen)
    if "single" in baselines:
        from mbq_onnx.calibrate.config import CalibConfig

        cfg = calib_cfg or CalibConfig()
        if args.quick:
            cfg = cfg.with_overrides(
                samples=QUICK["calib_samples"],
                seqlen=QUICK["calib_seqlen"],
                base_epochs=0,
                epochs=1,
                batch_size=QUICK["calib_samples"],
            )
        single = (cfg.samples, cfg.seqlen) if args.quick or calib_sizes is None else calib_sizes
    return gptq, cfg, single


def _token_ids(plan: Plan, tokenizer: Any) -> dict[str, np.ndarray]:
    """Token ids of every text; a ``--text`` file shorter than one window is an error naming it."""
    import numpy as np

    from mbq_onnx import assets

    ids = {name: assets.heldout_ids(tokenizer, name).numpy() for name in plan.named_texts}
    needed = tokens_needed(plan.window, plan.max_tokens)
    for name, text in plan.file_texts.items():
        tok = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if tok.size < needed:
            short_cap = plan.max_tokens is not None and plan.max_tokens < plan.window
            raise ValueError(
                f"--text {plan.text_files[name]}: {tok.size} tokens, need at least {needed} (one window of "
                f"--window {plan.window}"
                + (f", or --max-tokens {plan.max_tokens}" if short_cap else "")
                + ")"
            )
        ids[name] = tok
    return ids


def _report_settings(plan: Plan) -> dict[str, Any]:
    """The report's ``settings`` (``--resume`` compares some of them)."""
    import torch

    from .report import BITS_KEY
    from .variants import RANDOM_ROUTING_SEED

    spec = plan.artifact.spec if plan.artifact is not None else None
    settings = {
        "model": _shown(plan.model_dir),
        "model_name": plan.model_dir.name,
        "artifact": _shown(plan.artifact.path) if plan.artifact is not None else None,
        "artifact_fingerprint": fingerprint(plan.artifact.path) if plan.artifact is not None else None,
        "slice_bits": list(spec.slice_bits) if spec else None,
        "group_size": plan.group_size,
        "window": plan.window,
        "max_windows": plan.max_windows,
        "max_tokens": plan.max_tokens,
        "quick": plan.quick,
        "text_files": {
            name: {"file": _shown(f), "sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16]}
            for name, f in plan.text_files.items()
        },
        "bos": False,
        BITS_KEY: "per weight of the decoder linears, weighted by weights read per token",
        "random_routing_seed": RANDOM_ROUTING_SEED,
        "command": "python -m mbq_onnx.eval " + " ".join(plan.argv),
        "torch_threads": torch.get_num_threads(),
    }
    if plan.ort is not None:
        settings["ort"] = plan.ort.as_dict()
    return settings


class Execution:
    """A plan being run: the report so far, and the inputs the methods share (each made on first use) —
    the :class:`~mbq_onnx.eval.methods.Context` of :attr:`Method.evaluate <mbq_onnx.eval.methods.Method>`."""

    def __init__(self, plan: Plan, tokenizer: Any, ids: dict[str, np.ndarray], ort: OrtSettings | None):
        from .report import new_report
        from .variants import EvalSetup

        self.plan, self.tokenizer, self.ort = plan, tokenizer, ort
        self.setup: EvalSetup = EvalSetup(
            texts=ids,
            window=plan.window,
            max_windows=plan.max_windows,
            max_tokens=plan.max_tokens,
            progress=plan.progress,
        )
        settings = _report_settings(plan)
        self.report = new_report(settings, plan.texts)
        self.previous = _previous_rows(plan.output, settings, plan.texts) if plan.resume else {}
        self.rows: list[ReportRow] = list(self.previous.values())
        self.started = time.time()
        self._ort_models: dict[str, OrtModel | None] = {}

    # ------------------------------------------------------------------------ what methods evaluate with
    @property
    def artifact(self) -> Artifact:
        if self.plan.artifact is None:
            raise RuntimeError("this method needs --artifact")
        return self.plan.artifact

    def load(self) -> nn.Module:
        from mbq_onnx import assets

        return assets.load_model(self.plan.model_dir)[0]

    @cached_property
    def gptq_samples(self) -> torch.Tensor:
        from mbq_onnx import assets

        n_s, seqlen = self.plan.gptq_calibration or DEFAULT_GPTQ_SAMPLES
        return assets.calibration_samples(self.tokenizer, n_s, seqlen, seed=0)

    @cached_property
    def single_calibration(self) -> tuple[CalibConfig, torch.Tensor]:
        from mbq_onnx import assets

        cfg, (n_s, seqlen) = self.plan.single_config, self.plan.single_calibration
        samples = assets.calibration_samples(self.tokenizer, n_s, seqlen, seed=cfg.seed, holdout=cfg.holdout)
        return cfg, samples

    @cached_property
    def mbq(self) -> tuple[nn.Module, RoutingContext]:
        from .variants import load_mobiquant

        return load_mobiquant(self.artifact)

    @cached_property
    def combine_max(self) -> bool:
        """τ rows route as the ORT export will: the lean graph decides once per fused group (max)."""
        from mbq_onnx.export.lean import lean_unsupported

        return lean_unsupported(self.mbq[0].config) is None

    def row(self, label: str) -> ReportRow:
        try:
            return next(r for r in self.rows if r.label == label)
        except StopIteration:
            raise KeyError(f"no row {label!r} in the report") from None

    @cached_property
    def _export_dirs(self) -> dict[str, Path]:
        from .ort_rows import prepare_exports

        print("ORT: preparing exports", file=sys.stderr)
        artifact = self.plan.artifact.path if self.plan.artifact is not None else None
        return prepare_exports(self.plan.model_dir, artifact, self.ort)

    def ort_model(self, export: str) -> OrtModel | None:
        if export not in self._ort_models:
            from .ort_rows import OrtModel

            directory, weights = self._export_dirs.get(export), None
            if export == "mixed-bit" and directory is not None and self.artifact.granularity != "none":
                from .variants import routed_weights

                weights = routed_weights(*self.mbq, self.artifact.spec)
            self._ort_models[export] = OrtModel(directory, weights) if directory is not None else None
        return self._ort_models[export]

    # ---------------------------------------------------------------------------------------- running
    def run(self) -> dict[str, Any]:
        """Every variant of the plan (PyTorch ones, then — with ORT — the ORT runs of their rows and the
        ORT-only ones); the report rewritten after each row, plotted at the end."""
        from .report import check_report

        variants = self.plan.variants
        for v in variants:
            if method(v.method).backend == "torch":
                self.evaluate(v)
        if self.ort is not None:
            self._export_dirs  # noqa: B018 (made once, before any ORT row)
            self.attach_ort()
            for v in variants:
                if method(v.method).backend == "ort":
                    self.evaluate(v)
        self.report["settings"]["seconds"] = round(time.time() - self.started, 1)
        paths = self.write(plot=self.plan.plot)
        problems = check_report(self.report)
        if problems:
            print("report problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
        return self.report

    def evaluate(self, v: Variant) -> None:
        """One variant's row, unless ``--resume`` found it."""
        if v.label in self.previous:
            print(f"{v.label}: reused from {self.plan.output / 'quality.json'}", file=sys.stderr)
        else:
            self.add(method(v.method).evaluate(self, v))

    def attach_ort(self) -> None:
        """ORT perplexity, agreement and speed for every row whose method runs in ORT and that lacks them."""
        from .ort_rows import add_ort

        for row in list(self.rows):
            ort_run = method(row.method).ort if row.method in METHOD_KEYS else None
            if row.ort is not None or ort_run is None:
                continue
            model = self.ort_model(ort_run.export)
            if model is not None:
                self.add(add_ort(row, self.setup, model, self.ort, **ort_run.inputs(row)))

    def add(self, row: ReportRow) -> None:
        """Put ``row`` in the report (replacing the row of its label: ORT numbers attached to an existing
        row keep its place), rewrite the report and print a line about it."""
        from .report import ppl_cell

        row.seconds = round(time.time() - self.started, 1)
        labels = [r.label for r in self.rows]
        if row.label in labels:
            self.rows[labels.index(row.label)] = row
        else:
            self.rows.append(row)
        self.write(plot=False)
        short = ", ".join(f"{t}: {ppl_cell(r)} @ {r.bits:.2f} bits" for t, r in row.results.items())
        if row.ort is not None and row.ort.agreement:
            short += f"; ORT gap {max(row.ort.agreement.values()):.1e}"
        for t, sp in (row.speed or {}).items():
            short += f"; {t}T decode {sp['decode_tok_s']:.1f} tok/s prefill {sp['prefill_tok_s']:.0f} tok/s"
        print(f"{row.label}: {short}", file=sys.stderr)

    def write(self, plot: bool) -> dict[str, Path]:
        from .report import write_report

        self.report["rows"] = [r.to_dict() for r in self.rows]
        return write_report(self.report, self.plan.output, plot=plot)


def execute(plan: Plan) -> dict[str, Any]:
    """Run a :class:`Plan`: tokenize the texts, evaluate every variant (reusing ``--resume`` rows), write
    ``quality.{json,md,png}`` (+ ``pareto.png``) into ``plan.output``. Returns the report."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from .ort_rows import speed_tokens_needed

    tokenizer = AutoTokenizer.from_pretrained(plan.model_dir)
    ids = _token_ids(plan, tokenizer)
    ort = plan.ort
    if ort is not None:
        speed_ids = ids[(plan.named_texts or plan.texts)[0]]  # a long named text when there is one
        if ort.speed and speed_ids.size < speed_tokens_needed(ort):
            raise UsageError(
                f"the speed runs need {speed_tokens_needed(ort)} held-out tokens, the text has "
                f"{speed_ids.size}: lower --prompt-tokens/--decode-tokens"
            )
        ort = dataclasses.replace(ort, speed_ids=speed_ids)
    return Execution(plan, tokenizer, ids, ort).run()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``execute(resolve_plan(args))``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return execute(resolve_plan(args))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    from mbq_onnx.assets import AssetError
    from mbq_onnx.model.artifact import ArtifactError

    try:
        run(args)
    except UsageError as e:
        parser.error(str(e))
    except (ArtifactError, AssetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
