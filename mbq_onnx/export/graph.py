"""Trace a causal LM (mixed-bit or float) into an ONNX graph with optimum-style I/O names.

One function, :func:`export_graph`: wrap the model in
:class:`~mbq_onnx.export.wrapper.CausalLMWithTensorCache`, group its routers
(:func:`~mbq_onnx.export.routers.grouped_routers`), run ``torch.onnx.export(dynamo=True)``
with dynamic batch/sequence/past axes, give the axes optimum's names, then check the result with
``onnx.checker`` (full) and strict shape inference.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
import torch

from .routers import grouped_routers
from .schema import DOMAIN, register_schema
from .wrapper import CausalLMWithTensorCache

#: Example sizes for tracing: distinct values > 1 so no axis is specialised or unified with another.
TRACE_BATCH, TRACE_SEQ, TRACE_PAST = 2, 5, 7

PAST, SEQ = "past_sequence_length", "sequence_length"
TOTAL = f"{PAST} + {SEQ}"

DEFAULT_OPSET = 20
MIN_OPSET = 18


@dataclass(frozen=True)
class GraphIO:
    """Input and output names of an exported graph, in graph order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs)}


def graph_io(num_layers: int, with_past: bool, mixed_bit: bool) -> GraphIO:
    """optimum ``text-generation(-with-past)`` names, plus ``tau``/``force_slices`` → ``slice_counts``."""
    kv = [f"{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    if with_past:
        inputs += [f"past_key_values.{n}" for n in kv]
        outputs += [f"present.{n}" for n in kv]
    if mixed_bit:
        inputs += ["tau", "force_slices"]
        outputs += ["slice_counts"]
    return GraphIO(tuple(inputs), tuple(outputs))


def _example_inputs(config: Any, with_past: bool, mixed_bit: bool) -> tuple[tuple, dict]:
    b, s, p = TRACE_BATCH, TRACE_SEQ, TRACE_PAST if with_past else 0
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (b, s), generator=gen)
    attention_mask = torch.ones(b, p + s, dtype=torch.int64)
    position_ids = torch.arange(p, p + s).unsqueeze(0).expand(b, -1).contiguous()
    past = None
    if with_past:
        past = tuple(
            torch.randn(b, kv_heads, p, head_dim, generator=gen) for _ in range(2 * config.num_hidden_layers)
        )
    tau = torch.tensor(0.5, dtype=torch.float32) if mixed_bit else None
    force = torch.tensor(0, dtype=torch.int64) if mixed_bit else None
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence_length")
    dynamic: dict[str, Any] = {"input_ids": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq}}
    if with_past:
        past_len = torch.export.Dim("past_sequence_length")
        dynamic["attention_mask"] = {0: batch, 1: torch.export.Dim("total_sequence_length")}
        dynamic["past_key_values"] = tuple({0: batch, 2: past_len} for _ in past)
    else:
        dynamic["attention_mask"] = {0: batch, 1: seq}
        dynamic["past_key_values"] = None
    dynamic["tau"] = None
    dynamic["force_slices"] = None
    return (input_ids, attention_mask, position_ids, past, tau, force), dynamic


def _name_axes(model: onnx.ModelProto, with_past: bool) -> None:
    """Write optimum's axis names on the graph inputs/outputs and drop torch's intermediate value_info.

    torch's own symbol naming is unreliable (it labels the attention mask's past+sequence axis
    ``sequence_length``); the axes are known by construction, so they are set here explicitly.
    """
    total = TOTAL if with_past else SEQ
    axes = {
        "input_ids": ["batch_size", SEQ],
        "position_ids": ["batch_size", SEQ],
        "attention_mask": ["batch_size", total],
        "logits": ["batch_size", SEQ, None],
        "slice_counts": [None, "batch_size", SEQ],
    }
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith("past_key_values."):
            names = ["batch_size", None, PAST, None]
        elif value.name.startswith("present."):
            names = ["batch_size", None, TOTAL, None]
        else:
            names = axes.get(value.name, [])
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=False):
            if name is not None:
                dim.Clear()
                dim.dim_param = name
    del model.graph.value_info[:]


def _rename_initializers(model: onnx.ModelProto, prefix: str = "model.") -> None:
    """Name initializers after the model's state_dict (drop the wrapper's ``model.`` prefix), so the graph's
    ``...q_proj.packed`` is the artifact's tensor of the same name."""
    taken = {i.name for i in model.graph.initializer}
    mapping = {
        name: name[len(prefix) :]
        for name in taken
        if name.startswith(prefix) and name[len(prefix) :] not in taken
    }
    for init in model.graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]


def _tied_head_as_gemm(model: onnx.ModelProto) -> None:
    """``MatMul(x, Transpose(E))``, ``E`` a shared initializer (tied lm_head) → ``Gemm(x2d, E, transB=1)``.

    Left as is, ONNX Runtime's constant folding stores a transposed copy of the embedding (+113 MB in the
    ``.ort`` file of SmolLM2); Gemm reads ``E`` transposed in place.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    new_nodes = []
    for node in graph.node:
        src = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        perm = [list(a.ints) for a in src.attribute if a.name == "perm"] if src is not None else []
        if (
            src is None
            or src.op_type != "Transpose"
            or src.input[0] not in inits
            or perm not in ([], [[1, 0]])
        ):
            new_nodes.append(node)
            continue
        weight = inits[src.input[0]]
        k, n = weight.dims[1], weight.dims[0]
        x, y, tag = node.input[0], node.output[0], node.output[0]
        new_nodes += [
            onnx.helper.make_node("Shape", [x], [f"{tag}_xshape"], end=-1),
            onnx.helper.make_node("Constant", [], [f"{tag}_k"], value_ints=[-1, k]),
            onnx.helper.make_node("Constant", [], [f"{tag}_n"], value_ints=[n]),
            onnx.helper.make_node("Reshape", [x, f"{tag}_k"], [f"{tag}_x2d"]),
            onnx.helper.make_node("Gemm", [f"{tag}_x2d", weight.name], [f"{tag}_y2d"], transB=1),
            onnx.helper.make_node("Concat", [f"{tag}_xshape", f"{tag}_n"], [f"{tag}_yshape"], axis=0),
            onnx.helper.make_node("Reshape", [f"{tag}_y2d", f"{tag}_yshape"], [y]),
        ]
    used = {i for n in new_nodes for i in n.input}
    kept = [n for n in new_nodes if n.op_type != "Transpose" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node debug metadata (source stack traces with local paths): smaller, machine-independent."""
    for node in model.graph.node:
        del node.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
    del model.metadata_props[:]


#: Initializer bytes above which :func:`save_graph` writes external data (protobuf's 2 GB limit, with margin).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
DATA_SUFFIX = ".data"


def check_graph(model: onnx.ModelProto | str | Path, full_check: bool = True) -> None:
    """``onnx.checker`` full check and strict shape inference (with the MixedBitMatMul schema registered).

    ``full_check=False`` skips both: for graphs with ORT-internal ops that ONNX has no schema for (the lean
    graph's ``SimplifiedLayerNormalization``), which the exporter checks by loading them in ORT instead."""
    if not full_check:
        return
    register_schema()
    if not isinstance(model, onnx.ModelProto):
        onnx.checker.check_model(str(model), full_check=True)
        model = onnx.load(str(model), load_external_data=False)
    else:
        onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


@contextlib.contextmanager
def _quiet():
    """torch.onnx.export prints progress and warnings of its own; keep the CLI output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _optimize(model: onnx_ir.Model) -> None:
    """onnxscript's default optimizer minus its pattern-rewrite pass: inline, fold constants (weight
    transposes included), drop unused nodes, deduplicate, CSE. The rewrite pass adds little here and takes
    minutes on a 30-layer model."""
    common_passes.InlinePass()(model)
    onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True)
    passes = onnx_ir.passes.Sequential(
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedFunctionsPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )
    passes(model)


def export_graph(
    model: torch.nn.Module,
    ctx: Any,
    path: Path,
    *,
    with_past: bool = True,
    mixed_bit: bool = True,
    opset: int = DEFAULT_OPSET,
    translation_table: dict | None = None,
    external_data: bool | None = None,
) -> GraphIO:
    """Export ``model`` (a transformers causal LM, mixed-bit when ``ctx`` is a RoutingContext) to ``path``.

    Returns the graph's I/O names. The graph is checked (see :func:`save_graph`; ``external_data`` as there).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: the exporter needs opset >= {MIN_OPSET}")
    config = model.config
    wrapper = CausalLMWithTensorCache(model, ctx, with_past=with_past, mixed_bit=mixed_bit).eval()
    args, dynamic = _example_inputs(config, with_past, mixed_bit)
    io_names = graph_io(config.num_hidden_layers, with_past, mixed_bit)
    saved_attn = config._attn_implementation
    config._attn_implementation = "eager"  # plain MatMul/Softmax attention: exports to standard ops
    routers = grouped_routers(model, ctx) if ctx is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), routers, _quiet():
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                input_names=list(io_names.inputs),
                output_names=list(io_names.outputs),
                custom_translation_table=translation_table or {},
                optimize=False,
                verbose=False,
            )
    finally:
        config._attn_implementation = saved_attn
    _optimize(program.model)
    proto = program.model_proto
    _name_axes(proto, with_past)
    _strip_metadata(proto)
    _rename_initializers(proto)
    _tied_head_as_gemm(proto)
    proto.producer_name = "mbq_onnx.export"
    actual = GraphIO(tuple(i.name for i in proto.graph.input), tuple(o.name for o in proto.graph.output))
    if actual != io_names:
        raise RuntimeError(f"exported graph I/O {actual} differs from the expected {io_names}")
    if mixed_bit and not any(n.domain == DOMAIN for n in proto.graph.node):
        raise RuntimeError(
            "the exported graph has no MixedBitMatMul node: was the model built with MixedBitLinear?"
        )
    save_graph(proto, path, external_data)
    return io_names


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers held in the proto."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_graph(
    model: onnx.ModelProto, path: Path, external_data: bool | None = None, full_check: bool = True
) -> list[str]:
    """Check ``model`` and write it to ``path``; returns the file names written.

    ``external_data``: ``None`` (default) decides by size — above :data:`EXTERNAL_DATA_THRESHOLD` bytes of
    initializers (protobuf messages cannot exceed 2 GB) the tensors go to one ``<name>.data`` file beside
    the graph; ``True``/``False`` force it. ONNX Runtime loads such a pair from the graph's path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    if not external_data:
        check_graph(model, full_check)
        onnx.save_model(model, str(path))
        return [path.name]
    location = path.name + DATA_SUFFIX
    (path.parent / location).unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    check_graph(path, full_check)  # by path: the checker reads the external data itself
    return [path.name, location]
