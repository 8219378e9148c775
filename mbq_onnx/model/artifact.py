"""The calibrated artifact directory (``docs/architecture.md``, "Artifact format"): save, load, build.

``config.json`` + ``weights.safetensors`` (+ tokenizer files, ``calibration_report.json``),
written atomically: everything goes to a temporary directory beside the target, which is then
renamed into place, so a failed run never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import replace_directory
from ..quant.spec import QuantSpec
from ..tau_table import tau_table_row
from .linear import (
    GRANULARITIES,
    MixedBitLinear,
    block_key_of,
    iter_mixed_bit_linears,
)
from .routing import (
    DEFAULT_HIDDEN,
    DEFAULT_TAU_SCHEDULE,
    TAU_SCHEDULES,
    RoutingContext,
    SliceRouter,
    attach_block_router,
)
from .surgery import decoder_layers, decoder_layers_name, set_submodule

FORMAT = "mbq-artifact"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
REPORT_FILE = "calibration_report.json"


#: The τ schedule of artifacts whose router config names none (written before schedules existed).
LEGACY_TAU_SCHEDULE = "shared"


class ArtifactError(ValueError):
    """An artifact directory is missing, malformed or does not match what the caller expects."""


@dataclass
class Artifact:
    """A loaded artifact: parsed ``config.json`` and all tensors (CPU)."""

    path: Path
    spec: QuantSpec
    granularity: str
    router_hidden: int
    hf_config: dict[str, Any]
    quantized: dict[str, dict[str, Any]]
    tensors: dict[str, Tensor]
    tau_table: list[dict[str, float]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    #: how τ sets the gate thresholds (:func:`~mbq_onnx.model.routing.gate_taus`); artifacts written before
    #: the schedule existed have none in their config and route every gate at τ (``"shared"``)
    tau_schedule: str = LEGACY_TAU_SCHEDULE


def _tied_output_name(model: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """Name of the output-embedding weight when it shares storage with the input embedding."""
    get_in, get_out = (
        getattr(model, "get_input_embeddings", None),
        getattr(model, "get_output_embeddings", None),
    )
    if get_in is None or get_out is None or get_out() is None:
        return None
    w_in, w_out = get_in().weight, get_out().weight
    if w_in.data_ptr() != w_out.data_ptr():
        return None
    for name, module in model.named_modules():
        if module is get_out():
            return f"{name}.weight"
    return None


def _router_config(model: nn.Module, granularity: str | None) -> dict[str, Any]:
    """``{"granularity", "hidden", "tau_schedule"}`` of ``model``'s routers (the schedule: its context's)."""
    routers = [m for m in model.modules() if isinstance(m, SliceRouter)]
    if granularity is None:
        granularity = getattr(model, "mbq_granularity", None)
    if granularity is None:
        has_linear = any(m.router is not None for _, m in iter_mixed_bit_linears(model))
        granularity = "linear" if has_linear else ("block" if routers else "none")
    if granularity not in GRANULARITIES:
        raise ArtifactError(f"router granularity {granularity!r}: expected one of {GRANULARITIES}")
    if granularity != "none" and not routers:
        raise ArtifactError(f"router granularity {granularity!r} but the model has no SliceRouter")
    ctx = getattr(model, "mbq_ctx", None)
    return {
        "granularity": granularity,
        "hidden": routers[0].hidden if routers else DEFAULT_HIDDEN,
        "tau_schedule": ctx.tau_schedule if ctx is not None else DEFAULT_TAU_SCHEDULE,
    }


def save_artifact(
    path: str | os.PathLike,
    model: nn.Module,
    spec: QuantSpec | None = None,
    *,
    granularity: str | None = None,
    tau_table: Sequence[Mapping[str, float]] = (),
    source: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    report: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a transformers causal LM whose decoder linears are :class:`MixedBitLinear`) as an
    artifact directory, atomically. ``tokenizer``: an object with ``save_pretrained`` or a directory
    whose tokenizer files are copied. Returns the artifact path."""
    from safetensors.torch import save_file

    path = Path(path)
    spec = spec or getattr(model, "mbq_spec", None)
    if spec is None:
        raise ArtifactError("save_artifact: no QuantSpec given and the model has no mbq_spec")
    if path.exists() and not overwrite:
        raise FileExistsError(f"artifact {path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    linears = dict(iter_mixed_bit_linears(model))
    if not linears:
        raise ArtifactError("save_artifact: the model has no MixedBitLinear layers (quantize it first)")
    quantized = {}
    for name, m in linears.items():
        if m.spec != spec:
            raise ArtifactError(
                f"{name} uses slice_bits={list(m.spec.slice_bits)} group_size={m.spec.group_size}, "
                f"but the artifact is slice_bits={list(spec.slice_bits)} group_size={spec.group_size}"
            )
        quantized[name] = {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        }
    state = model.state_dict()
    tied = _tied_output_name(model, state)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if k != tied}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "slice_bits": list(spec.slice_bits),
        "group_size": spec.group_size,
        "router": {**_router_config(model, granularity), "num_slices": spec.num_slices},
        "hf_config": json.loads(model.config.to_json_string(use_diff=False)),
        "quantized": quantized,
        "tau_table": [tau_table_row(r) for r in tau_table],
        "source": dict(source or {}),
    }
    with replace_directory(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=_layout_metadata(spec))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(dict(report), indent=1) + "\n")
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp)
        load_artifact(tmp, expected_spec=spec)  # validate what was written
    return path


def _layout_metadata(spec: QuantSpec) -> dict[str, str]:
    """Slice layout recorded inside weights.safetensors, so config and weights can be cross-checked."""
    return {
        "format": FORMAT,
        "slice_bits": ",".join(map(str, spec.slice_bits)),
        "group_size": str(spec.group_size),
    }


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
        return
    src = Path(tokenizer)
    names = [
        p
        for p in src.iterdir()
        if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges"))
        or p.name in ("added_tokens.json", "chat_template.jinja", "generation_config.json")
    ]
    if not names:
        raise ArtifactError(f"no tokenizer files found in {src}")
    for p in names:
        shutil.copy2(p, out / p.name)


def load_artifact(path: str | os.PathLike, expected_spec: QuantSpec | None = None) -> Artifact:
    """Read and validate an artifact directory.

    Raises :class:`ArtifactError` naming the problem: missing files, another format/version,
    an invalid slice layout, weights that do not match the config's slice layout, corrupt
    safetensors, or (``expected_spec``) an artifact calibrated with another slice layout.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"artifact {path} does not exist or is not a directory")
    cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ArtifactError(f"artifact {path} is missing {p.name}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{cfg_path} is not valid JSON: {e}") from None
    if cfg.get("format") != FORMAT:
        raise ArtifactError(f"{cfg_path}: format is {cfg.get('format')!r}, expected {FORMAT!r}")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{cfg_path}: format_version {cfg.get('format_version')!r} is not supported "
            f"(this mbq-onnx reads version {FORMAT_VERSION})"
        )
    missing = [k for k in ("slice_bits", "group_size", "router", "hf_config", "quantized") if k not in cfg]
    if missing:
        raise ArtifactError(f"{cfg_path}: missing keys {missing}")
    try:
        spec = QuantSpec(tuple(cfg["slice_bits"]), cfg["group_size"])
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{cfg_path}: invalid slice layout: {e}") from None
    if expected_spec is not None and expected_spec != spec:
        raise ArtifactError(
            f"artifact {path} was calibrated with slice_bits={list(spec.slice_bits)} "
            f"group_size={spec.group_size}, but slice_bits={list(expected_spec.slice_bits)} "
            f"group_size={expected_spec.group_size} was requested"
        )
    router = cfg["router"]
    granularity = router.get("granularity")
    if granularity not in GRANULARITIES:
        raise ArtifactError(
            f"{cfg_path}: router granularity {granularity!r}, expected one of {GRANULARITIES}"
        )
    tau_schedule = router.get("tau_schedule", LEGACY_TAU_SCHEDULE)
    if tau_schedule not in TAU_SCHEDULES:
        raise ArtifactError(
            f"{cfg_path}: router tau_schedule {tau_schedule!r}, expected one of {TAU_SCHEDULES}"
        )
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{w_path} is not a readable safetensors file: {e}") from None
    with safe_open(str(w_path), framework="pt") as f:
        meta = f.metadata() or {}
    layout = {k: meta.get(k) for k in ("slice_bits", "group_size")}
    if layout != {k: v for k, v in _layout_metadata(spec).items() if k in layout}:
        raise ArtifactError(
            f"{w_path} holds weights with slice_bits=[{layout['slice_bits']}] "
            f"group_size={layout['group_size']}, "
            f"but {CONFIG_FILE} says slice_bits={list(spec.slice_bits)} group_size={spec.group_size} — "
            "the weights do not match the config's slice layout"
        )
    for name, info in cfg["quantized"].items():
        n, k = int(info["out_features"]), int(info["in_features"])
        packed = tensors.get(f"{name}.packed")
        for suffix in ("packed", "scales", "zeros"):
            if f"{name}.{suffix}" not in tensors:
                raise ArtifactError(f"{w_path}: missing tensor {name}.{suffix}")
        expected = spec.packed_nbytes(n, k)
        if packed.dtype != torch.uint8 or packed.numel() != expected:
            raise ArtifactError(
                f"{w_path}: {name}.packed has {packed.numel()} {packed.dtype} values, "
                f"expected {expected} uint8 for "
                f"N={n} K={k} slice_bits={list(spec.slice_bits)} group_size={spec.group_size} — the weights "
                f"do not match the config's slice layout"
            )
        groups = (n, spec.num_groups(k))
        for suffix in ("scales", "zeros"):
            t = tensors[f"{name}.{suffix}"]
            if tuple(t.shape) != groups:
                raise ArtifactError(
                    f"{w_path}: {name}.{suffix} has shape {list(t.shape)}, expected {list(groups)} "
                    f"for group_size={spec.group_size} — the weights do not match the config"
                )
    return Artifact(
        path=path,
        spec=spec,
        granularity=granularity,
        router_hidden=int(router.get("hidden", 16)),
        hf_config=cfg["hf_config"],
        quantized=cfg["quantized"],
        tensors=tensors,
        tau_table=[tau_table_row(r) for r in cfg.get("tau_table", [])],
        source=dict(cfg.get("source", {})),
        config=cfg,
        tau_schedule=tau_schedule,
    )


def _skip_weight_init() -> contextlib.AbstractContextManager:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # other transformers versions: initialise normally
        return contextlib.nullcontext()
    return no_init_weights()


def build_model(
    artifact: Artifact | str | os.PathLike, *, cache_weights: bool = False, ctx: RoutingContext | None = None
) -> tuple[nn.Module, RoutingContext]:
    """Instantiate the transformers causal LM of an artifact (``from_config``), swap in
    :class:`MixedBitLinear` + routers and load all weights. Returns ``(model in eval mode, ctx)``.

    ``cache_weights``: keep dense per-slice-count weights for fast eager inference (see
    :meth:`MixedBitLinear.cache_weights`). ``ctx`` (default a new one) takes the artifact's τ schedule."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    hf = dict(artifact.hf_config)
    model_type = hf.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ArtifactError(
            f"{artifact.path}: hf_config model_type {model_type!r} is unknown to transformers"
        )
    config = CONFIG_MAPPING[model_type].from_dict(hf)
    with _skip_weight_init():  # every parameter is loaded below; random init would only cost time
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    spec, ctx = artifact.spec, ctx if ctx is not None else RoutingContext()
    ctx.tau_schedule = artifact.tau_schedule
    for name, info in artifact.quantized.items():
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ArtifactError(
                f"{artifact.path}: quantized module {name} does not exist in {type(model).__name__}"
            ) from None
        k, n = int(info["in_features"]), int(info["out_features"])
        router = (
            SliceRouter(k, spec.num_slices, artifact.router_hidden)
            if artifact.granularity == "linear"
            else None
        )
        block_key = block_key_of(name, model) if artifact.granularity == "block" else None
        set_submodule(
            model,
            name,
            MixedBitLinear(
                k, n, spec, bias=bool(info.get("bias")), router=router, ctx=ctx, block_key=block_key
            ),
        )
    if artifact.granularity == "block":
        prefix = decoder_layers_name(model)
        for i, layer in enumerate(decoder_layers(model)):
            attach_block_router(
                layer,
                f"{prefix}.{i}",
                SliceRouter(config.hidden_size, spec.num_slices, artifact.router_hidden),
                ctx,
            )
    result = model.load_state_dict(artifact.tensors, strict=False)
    tied = _tied_output_name(model, model.state_dict())
    missing = [k for k in result.missing_keys if k != tied]
    if missing or result.unexpected_keys:
        raise ArtifactError(
            f"{artifact.path}: weights do not match the model: missing {missing[:8]}"
            f"{'…' if len(missing) > 8 else ''}, unexpected {result.unexpected_keys[:8]}"
        )
    model.mbq_spec, model.mbq_granularity, model.mbq_ctx = spec, artifact.granularity, ctx
    if cache_weights:
        for _, m in iter_mixed_bit_linears(model):
            m.cache_weights(True)
    return model.eval(), ctx
