"""Artifact → exported model directory (``docs/architecture.md``, "Exported model dir").

:func:`export_artifact` builds the mixed-bit PyTorch model of a calibrated artifact, traces it to
``model.onnx`` (one ``com.mbq::MixedBitMatMul`` per quantized linear, one ``com.mbq::RouterCounts`` per
router group, ``tau``/``force_slices`` inputs, ``slice_counts`` output), and writes ``mbq_config.json``, the
tokenizer files and the op library beside it — atomically (a temporary directory renamed into
place). ``reference=True`` exports the same model as a standard-op float graph with dequantized
weights at a fixed slice count; :func:`export_float_model` exports a plain transformers model.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import replace_directory
from .graph import DEFAULT_OPSET, GraphIO, export_graph
from .wrapper import SUPPORTED_MODEL_TYPES

MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
CONFIG_FILE = "mbq_config.json"
LIBRARY_FILE = "libmbq_ops.so"
FORMAT = "mbq-onnx-model"
FORMAT_VERSION = 1
TAU_RANGE = (0.0, 1.0)
GRAPH_KINDS = ("lean", "dynamo")
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "vocab", "merges")
TOKENIZER_FILES = ("added_tokens.json", "chat_template.jinja", "generation_config.json")


class ExportError(RuntimeError):
    """The model cannot be exported (unsupported architecture, bad options, existing output, ...)."""


def check_architecture(hf_config: dict[str, Any] | Any, where: str) -> None:
    """Raise :class:`ExportError` unless the model type is one the exporter supports."""
    model_type = (
        hf_config.get("model_type") if isinstance(hf_config, dict) else getattr(hf_config, "model_type", None)
    )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"{where}: unsupported architecture {model_type!r}; the exporter handles "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} causal LMs"
        )


@contextmanager
def atomic_directory(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp directory beside ``output``; on success it replaces ``output``, on error it is removed."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise ExportError(f"output {output} exists; pass --overwrite to replace it")
    with replace_directory(output) as tmp:
        yield tmp


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files of ``src`` (``tokenizer*.json``, ``special_tokens_map.json``…) to ``dst``."""
    copied = []
    for p in sorted(Path(src).iterdir()):
        if p.is_file() and (p.name.startswith(TOKENIZER_PREFIXES) or p.name in TOKENIZER_FILES):
            shutil.copyfile(p, dst / p.name)
            copied.append(p.name)
    return copied


def copy_op_library(dst: Path) -> str | None:
    """Copy the built ``libmbq_ops.so`` into ``dst``; ``None`` (with a warning) when it is not built."""
    from ..ops_lib import library_path

    try:
        src = library_path()
    except FileNotFoundError as e:
        warnings.warn(
            f"{e} — exporting without a copy of the op library; the runtime will look in the "
            f"installed package",
            stacklevel=2,
        )
        return None
    shutil.copyfile(src, dst / LIBRARY_FILE)
    return LIBRARY_FILE


def _model_facts(config: Any) -> dict[str, Any]:
    heads = config.num_attention_heads
    return {
        "model_type": config.model_type,
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": heads,
        "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "max_position_embeddings": config.max_position_embeddings,
    }


def write_config(dst: Path, config: dict[str, Any]) -> None:
    (dst / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")


def dequantize_model(model: nn.Module, n_slices: int) -> nn.Module:
    """Replace every MixedBitLinear (in place) by an ``nn.Linear`` holding its weights at ``n_slices`` slices,
    and remove all routers: a standard float model with the quantized model's numbers."""
    from ..model.linear import iter_mixed_bit_linears
    from ..model.surgery import decoder_layers, set_submodule

    for name, m in list(iter_mixed_bit_linears(model)):
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(m.dequantized_weight(n_slices))
            if m.bias is not None:
                linear.bias.copy_(m.bias)
        set_submodule(model, name, linear)
    for layer in decoder_layers(model):
        hook = getattr(layer, "_mbq_router_hook", None)
        if hook is not None:
            hook.remove()
            del layer._mbq_router_hook
        if hasattr(layer, "router"):
            del layer.router
    return model


def _convert_to_ort(tmp: Path, library: str | None, config: dict[str, Any]) -> None:
    """Write the ORT-format copy of ``tmp/model.onnx`` and record it in ``config``."""
    from .ort_format import convert_to_ort

    convert_to_ort(tmp / MODEL_FILE, tmp / library if library else None)
    config["ort_model_file"] = ORT_FILE


def export_artifact(
    artifact: str | os.PathLike,
    output: str | os.PathLike,
    *,
    with_past: bool = True,
    ort_format: bool = False,
    opset: int = DEFAULT_OPSET,
    reference: bool = False,
    reference_slices: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    accuracy_level: int = 0,
    external_data: bool | None = None,
    graph: str | None = None,
    lm_head: str = "float",
) -> Path:
    """Export a calibrated artifact directory to ``output`` (see module docstring). Returns ``output``.

    ``graph``: ``"lean"`` (the default for KV-cache mixed-bit exports: GenAI's builder layout with fused
    ORT ops and shared past/present buffers, :mod:`mbq_onnx.export.lean`) or ``"dynamo"`` (the traced
    graph; needed for ``with_past=False`` and ``reference``). ``lm_head``: ``"float"``, ``"8bit"`` or
    ``"mixed"`` (lean graphs only, :data:`mbq_onnx.export.lean.LM_HEAD_CHOICES`).

    ``accuracy_level`` (0 or 4) is written on every MixedBitMatMul node: 4 lets rows use int8
    activations (``custom_ops/README.md``). ``external_data``: see :func:`~mbq_onnx.export.graph.save_graph`
    (``None``: by size).

    Raises :class:`~mbq_onnx.model.ArtifactError` for a missing/corrupt artifact or weights that do
    not match its config, :class:`ExportError` for an unsupported architecture or bad options.
    """
    from ..model import build_model, load_artifact
    from .translation import ACCURACY_LEVELS, translation_table

    if accuracy_level not in ACCURACY_LEVELS:
        raise ExportError(
            f"--accuracy-level {accuracy_level!r}: expected one of {', '.join(map(str, ACCURACY_LEVELS))} "
            f"(0 = float activations, 4 = int8 activations)"
        )
    if accuracy_level and reference:
        raise ExportError("--accuracy-level applies to mixed-bit exports, not --reference graphs")
    if graph not in (None, *GRAPH_KINDS):
        raise ExportError(f"--graph {graph!r}: expected one of {', '.join(GRAPH_KINDS)}")
    if graph == "lean" and (reference or not with_past):
        raise ExportError("--graph lean needs a KV-cache mixed-bit export (not --reference or --no-past)")
    from .lean import LM_HEAD_CHOICES, lean_unsupported

    if lm_head not in LM_HEAD_CHOICES:
        raise ExportError(f"--lm-head {lm_head!r}: expected one of {', '.join(LM_HEAD_CHOICES)}")

    output = Path(output)
    stages = ["load artifact", "build ONNX graph", "tokenizer, config, op library"] + (
        ["ORT format"] if ort_format else []
    )
    bar = tqdm(total=len(stages), desc="export", unit="step", disable=not progress)
    try:
        bar.set_postfix_str(stages[0])
        art = load_artifact(artifact)
        check_architecture(art.hf_config, f"artifact {art.path}")
        spec = art.spec
        if reference_slices is not None and not reference:
            raise ExportError("--reference-slices needs --reference")
        n_ref = spec.num_slices if reference_slices is None else int(reference_slices)
        if reference and not 1 <= n_ref <= spec.num_slices:
            raise ExportError(
                f"--reference-slices {n_ref} is outside 1..{spec.num_slices} "
                f"(the artifact has slice_bits {list(spec.slice_bits)})"
            )
        model, ctx = build_model(art)
        why_not = lean_unsupported(model.config)
        if graph is None:  # auto: the lean graph wherever ORT's fused kernels take the model
            graph = "lean" if with_past and not reference and why_not is None else "dynamo"
        elif graph == "lean" and why_not:
            raise ExportError(f"--graph lean: {why_not}; use --graph dynamo")
        if lm_head != "float" and graph != "lean":
            raise ExportError(f"--lm-head {lm_head} needs the lean graph (--graph lean)")
        if reference:
            dequantize_model(model, n_ref)
        bar.update()
        with atomic_directory(output, overwrite) as tmp:
            bar.set_postfix_str(stages[1])
            lean_facts: dict[str, Any] = {}
            if graph == "lean":
                io, lean_facts = _export_lean(
                    model, art, tmp, accuracy_level, lm_head, external_data, bar.set_postfix_str
                )
            else:
                io = export_graph(
                    model,
                    None if reference else ctx,
                    tmp / MODEL_FILE,
                    with_past=with_past,
                    mixed_bit=not reference,
                    opset=opset,
                    translation_table=None if reference else translation_table(accuracy_level),
                    external_data=external_data,
                )
            bar.update()
            bar.set_postfix_str(stages[2])
            tokenizer = copy_tokenizer_files(art.path, tmp)
            library = None if reference else copy_op_library(tmp)
            config = _config_for(model.config, io, with_past, opset, tokenizer, library)
            config.update(
                {
                    "kind": "reference" if reference else "mixed-bit",
                    "slice_bits": list(spec.slice_bits),
                    "group_size": spec.group_size,
                    "num_slices": spec.num_slices,
                    "bits_at_slices": list(spec.cum_bits),
                    "router": {
                        "granularity": art.granularity,
                        "hidden": art.router_hidden,
                        "tau_schedule": art.tau_schedule,
                    },
                    "accuracy_level": None if reference else accuracy_level,
                    "tau_range": list(TAU_RANGE),
                    "tau_table": art.tau_table,
                    "source": {"artifact": art.path.name, **art.source},
                    "graph": graph,
                    **lean_facts,
                }
            )
            if reference:
                config["reference"] = {"slices": n_ref, "bits": spec.bits_at(n_ref)}
            bar.update()
            if ort_format:
                bar.set_postfix_str(stages[3])
                _convert_to_ort(tmp, library, config)
                bar.update()
            write_config(tmp, config)
    finally:
        bar.close()
    return output


def _export_lean(
    model: nn.Module, art: Any, tmp: Path, accuracy_level: int, lm_head: str, external_data, status
) -> tuple[GraphIO, dict[str, Any]]:
    """The lean graph of ``model`` into ``tmp/model.onnx``; returns its I/O and the config facts it adds."""
    from .graph import save_graph
    from .lean import build_lean_graph, temp_workdir

    with temp_workdir(tmp) as work:
        proto, groups, _ = build_lean_graph(
            model, art.spec, art.granularity, Path(work), accuracy_level=accuracy_level, lm_head=lm_head,
            tokenizer_dir=art.path, progress=status,
        )  # fmt: skip
    save_graph(proto, tmp / MODEL_FILE, external_data, full_check=False)
    io = GraphIO(tuple(i.name for i in proto.graph.input), tuple(o.name for o in proto.graph.output))
    facts = {
        "kv_cache": "shared-buffer",
        "lm_head": lm_head,
        "router_groups": [
            {"name": g.name, "linears": list(g.linears), "weights": list(g.weights)} for g in groups
        ],
    }
    return io, facts


def _config_for(
    hf_config: Any, io: GraphIO, with_past: bool, opset: int, tokenizer: list[str], library: str | None
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_file": MODEL_FILE,
        "ort_model_file": None,
        "with_past": with_past,
        "opset": opset,
        **_model_facts(hf_config),
        "io": io.as_dict(),
        "custom_op_library": library if library else (LIBRARY_FILE if "tau" in io.inputs else None),
        "tokenizer_files": tokenizer,
    }


def export_float_model(
    model_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    with_past: bool = True,
    ort_format: bool = False,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    progress: bool = True,
    external_data: bool | None = None,
) -> Path:
    """Export an unquantized transformers causal LM folder as a standard-op float32 graph (a baseline, and
    the input of :func:`~mbq_onnx.export.matmul_nbits.quantize_matmul_nbits`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir, output = Path(model_dir), Path(output)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} is not a transformers model folder (no config.json)")
    bar = tqdm(total=3 + ort_format, desc="export", unit="step", disable=not progress)
    try:
        bar.set_postfix_str("load model")
        hf_config = AutoConfig.from_pretrained(model_dir)
        check_architecture(hf_config, str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        bar.update()
        with atomic_directory(output, overwrite) as tmp:
            bar.set_postfix_str("trace + export ONNX")
            io = export_graph(
                model,
                None,
                tmp / MODEL_FILE,
                with_past=with_past,
                mixed_bit=False,
                opset=opset,
                external_data=external_data,
            )
            bar.update()
            config = _config_for(
                model.config, io, with_past, opset, copy_tokenizer_files(model_dir, tmp), None
            )
            config.update({"kind": "float", "source": {"model": model_dir.name}})
            bar.update()
            if ort_format:
                bar.set_postfix_str("ORT format")
                _convert_to_ort(tmp, None, config)
                bar.update()
            write_config(tmp, config)
    finally:
        bar.close()
    return output
