"""``python -m mbq_onnx.eval``: perplexity of float, baselines and MoBiQuant → ``reports/quality.*``."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mbq_onnx.model.artifact import tau_table_bits as table_bits

from .ort_rows import DEFAULT_TOLERANCE
from .perplexity import DEFAULT_MAX_WINDOWS
from .report import upgrade_row
from .speed import DEFAULT_DECODE_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPEATS

TEXT_ALIASES = {
    "sotu": "sotu-2000+",
    "sotu-2000+": "sotu-2000+",
    "moby": "moby-dick",
    "moby-dick": "moby-dick",
}
BASELINES = ("rtn", "gptq", "single")
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
        help="comma list of rtn, gptq, single, or 'none' (default: rtn,gptq and, with --artifact, single)",
    )
    p.add_argument("--bits", help="baseline bit widths (default: the artifact's precisions, else 4,6,8)")
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


RESUME_KEYS = ("model", "window", "max_windows", "max_tokens", "text_files")


def _previous_rows(output: Path, settings: dict[str, Any], texts: list[str]) -> dict[str, dict[str, Any]]:
    """Rows of ``output/quality.json`` by label when it was made with the same settings (else nothing)."""
    import json

    path = output / "quality.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    same = old.get("texts") == texts and all(
        (old.get("settings", {}).get(k) or None) == (settings.get(k) or None) for k in RESUME_KEYS
    )
    if not same:
        print(f"--resume: {path} was made with other settings; starting afresh", file=sys.stderr)
        return {}
    rows = {r["label"]: upgrade_row(r) for r in old.get("rows", [])}
    if old.get("settings", {}).get("ort") != settings.get("ort"):  # ORT numbers of other settings: redo
        rows = {k: r for k, r in rows.items() if r.get("backend") != "ort"}
        for r in rows.values():
            r.pop("ort", None)
            r.pop("speed", None)
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
        prompt_tokens=pick(args.prompt_tokens, "prompt_tokens", DEFAULT_PROMPT_TOKENS),
        decode_tokens=pick(args.decode_tokens, "decode_tokens", DEFAULT_DECODE_TOKENS),
        repeats=pick(args.speed_repeats, "repeats", DEFAULT_REPEATS),
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np

    from mbq_onnx import assets
    from mbq_onnx.baselines import BaselineSpec
    from mbq_onnx.baselines.single import artifact_calib_settings
    from mbq_onnx.calibrate.config import CalibConfig
    from mbq_onnx.model.artifact import load_artifact

    from . import variants as V
    from .report import BITS_KEY, bits_of, check_report, new_report, ppl_cell, write_report

    files = list(args.text)
    texts = _texts(args.texts, files)
    file_names = text_file_names(files, texts)
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
        baseline_specs = [BaselineSpec(b, g) for g in groups for b in bits]
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
    progress = not args.no_progress
    ort_settings = None if args.no_ort else _ort_settings(args, spec.group_size if spec else 32)

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = {name: assets.heldout_ids(tokenizer, name).numpy() for name in texts}
    needed = tokens_needed(window, max_tokens)
    for (name, text), path in zip(file_texts.items(), files, strict=True):
        tok = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if tok.size < needed:
            raise ValueError(
                f"--text {path}: {tok.size} tokens, need at least {needed} (one window of --window {window}"
                + (
                    f", or --max-tokens {max_tokens}"
                    if max_tokens is not None and max_tokens < window
                    else ""
                )
                + ")"
            )
        ids[name] = tok
    named_texts, texts = texts, [*texts, *file_names]
    setup = V.EvalSetup(
        texts=ids, window=window, max_windows=args.max_windows, max_tokens=max_tokens, progress=progress
    )

    def load():
        return assets.load_model(model_dir)[0]

    settings = {
        "model": _shown(model_dir),
        "model_name": model_dir.name,
        "artifact": _shown(args.artifact) if artifact else None,
        "slice_bits": list(spec.slice_bits) if spec else None,
        "group_size": spec.group_size if spec else groups[0],
        "window": window,
        "max_windows": args.max_windows,
        "max_tokens": max_tokens,
        "quick": args.quick,
        "text_files": {
            name: {"file": _shown(f), "sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16]}
            for name, f in zip(file_names, files, strict=True)
        },
        "bos": False,
        BITS_KEY: "per weight of the decoder linears, weighted by weights read per token",
        "random_routing_seed": V.RANDOM_ROUTING_SEED,
        "command": "python -m mbq_onnx.eval " + " ".join(getattr(args, "argv", [])),
        "torch_threads": torch.get_num_threads(),
    }
    if ort_settings is not None:
        settings["ort"] = ort_settings.as_dict()
    report = new_report(settings, texts)
    previous = _previous_rows(args.output, settings, texts) if args.resume else {}
    started = time.time()

    def add(row: dict[str, Any]) -> None:
        row["seconds"] = round(time.time() - started, 1)
        labels = [r["label"] for r in report["rows"]]
        if row["label"] in labels:  # ORT numbers attached to an existing row: keep its place
            report["rows"][labels.index(row["label"])] = row
        else:
            report["rows"].append(row)
        write_report(report, args.output, plot=False)
        short = ", ".join(f"{t}: {ppl_cell(r)} @ {bits_of(r):.2f} bits" for t, r in row["results"].items())
        if "ort" in row and "agreement" in row["ort"]:
            short += f"; ORT gap {max(row['ort']['agreement'].values()):.1e}"
        for t, sp in (row.get("speed") or {}).items():
            short += f"; {t}T decode {sp['decode_tok_s']:.1f} tok/s prefill {sp['prefill_tok_s']:.0f} tok/s"
        print(f"{row['label']}: {short}", file=sys.stderr)

    report["rows"].extend(previous.values())

    def maybe(name: str, evaluate: Callable[[], dict[str, Any]]) -> None:
        if name in previous:
            print(f"{name}: reused from {args.output / 'quality.json'}", file=sys.stderr)
        else:
            add(evaluate())

    maybe(V.label("float"), lambda: V.eval_float(setup, load))
    if "rtn" in baselines:
        for bs in baseline_specs:
            maybe(
                V.label("rtn", bits=bs.bits, group_size=bs.group_size),
                lambda bs=bs: V.eval_rtn(setup, load, bs),
            )
    calib_cfg, calib_sizes = artifact_calib_settings(artifact.path) if artifact is not None else (None, None)
    if "gptq" in baselines:
        n_s, seqlen = calib_sizes or DEFAULT_GPTQ_SAMPLES
        if args.quick:
            n_s, seqlen = QUICK["calib_samples"], QUICK["calib_seqlen"]
        n_s, seqlen = args.gptq_samples or n_s, args.gptq_seqlen or seqlen
        samples = assets.calibration_samples(tokenizer, n_s, seqlen, seed=0)
        for bs in baseline_specs:
            maybe(
                V.label("gptq", bits=bs.bits, group_size=bs.group_size, act_order=args.act_order),
                lambda bs=bs: V.eval_gptq(setup, load, bs, samples, act_order=args.act_order),
            )
    if "single" in baselines:
        cfg = calib_cfg or CalibConfig()
        if args.quick:
            cfg = cfg.with_overrides(
                samples=QUICK["calib_samples"],
                seqlen=QUICK["calib_seqlen"],
                base_epochs=0,
                epochs=1,
                batch_size=QUICK["calib_samples"],
            )
        n_s, seqlen = (cfg.samples, cfg.seqlen) if args.quick or calib_sizes is None else calib_sizes
        samples = assets.calibration_samples(tokenizer, n_s, seqlen, seed=cfg.seed)
        for k in range(1, spec.num_slices + 1):
            maybe(
                V.label("single", bits=spec.bits_at(k)),
                lambda k=k: V.eval_single(setup, load, spec, k, samples, cfg),
            )
    if artifact is not None:
        mbq = V.load_mobiquant(artifact)
        # τ rows route as the ORT export will: the lean graph decides once per fused group (max)
        from mbq_onnx.export.lean import lean_unsupported

        combine_max = lean_unsupported(mbq[0].config) is None
        if not args.no_uniform:
            for k in range(1, spec.num_slices + 1):
                maybe(
                    V.label("mbq-uniform", bits=spec.bits_at(k), slices=k),
                    lambda k=k: V.eval_mbq_uniform(setup, artifact, k, model=mbq),
                )
        for tau in taus:
            maybe(
                V.label("mbq-tau", tau=tau),
                lambda tau=tau: V.eval_mbq_tau(setup, artifact, tau, model=mbq, combine_max=combine_max),
            )
        if not args.no_random:
            tau_rows = {r["label"]: r for r in report["rows"] if r["method"] == "mbq-tau"}
            for tau in taus:
                tau_row = tau_rows[V.label("mbq-tau", tau=tau)]
                maybe(
                    V.label("mbq-random", tau=tau),
                    lambda tau_row=tau_row: V.eval_mbq_random(setup, artifact, tau_row, model=mbq),
                )
    if ort_settings is not None:
        mbq_model = mbq if artifact is not None else None
        speed_text = (named_texts or texts)[0]  # a long named text when there is one
        _ort_stage(report, setup, ort_settings, model_dir, artifact, mbq_model, ids[speed_text], add, maybe)
    report["settings"]["seconds"] = round(time.time() - started, 1)
    paths = write_report(report, args.output, plot=not args.no_plot)
    problems = check_report(report)
    if problems:
        print("report problems:\n  " + "\n  ".join(problems), file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return report


def _ort_stage(
    report: dict[str, Any],
    setup: Any,
    ort_settings: Any,
    model_dir: Path,
    artifact: Any,
    mbq: Any,
    speed_ids: Any,
    add: Callable[[dict[str, Any]], None],
    maybe: Callable[[str, Callable[[], dict[str, Any]]], None],
) -> None:
    """Attach ORT perplexity, agreement and speed to the float and MoBiQuant rows that lack them, and add the
    MatMulNBits rows. ``mbq``: the artifact's PyTorch ``(model, ctx)`` (for the routed-weights order)."""
    from . import variants as V
    from .ort_rows import OrtModel, add_ort, eval_matmul_nbits, prepare_exports, speed_tokens_needed

    if ort_settings.speed and speed_ids.size < speed_tokens_needed(ort_settings):
        raise UsageError(
            f"the speed runs need {speed_tokens_needed(ort_settings)} held-out tokens, the text has "
            f"{speed_ids.size}: lower --prompt-tokens/--decode-tokens"
        )
    ort_settings.speed_ids = speed_ids
    print("ORT: preparing exports", file=sys.stderr)
    dirs = prepare_exports(model_dir, artifact.path if artifact is not None else None, ort_settings)
    mixed = None
    if artifact is not None:
        weights = V.routed_weights(*mbq, artifact.spec) if artifact.granularity != "none" else None
        mixed = OrtModel(dirs["mixed-bit"], weights)
    float_model = OrtModel(dirs["float32"])
    for row in list(report["rows"]):
        if "ort" in row:
            continue
        if row["method"] == "float":
            add(add_ort(row, setup, float_model, ort_settings))
        elif row["method"] == "mbq-uniform" and mixed is not None:
            add(add_ort(row, setup, mixed, ort_settings, force=row["slices"]))
        elif row["method"] == "mbq-tau" and mixed is not None:
            add(add_ort(row, setup, mixed, ort_settings, tau=row["tau"]))
    for bits in ort_settings.nbits:
        maybe(
            V.label("matmul-nbits", bits=bits, group_size=ort_settings.nbits_block),
            lambda bits=bits: eval_matmul_nbits(
                setup, OrtModel(dirs[f"int{bits}"]), bits, ort_settings.nbits_block, ort_settings
            ),
        )


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
