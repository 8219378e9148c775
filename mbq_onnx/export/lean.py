"""The lean graph: ONNX Runtime GenAI's model builder lays out the float graph; we swap in mixed bits.

Why this route (issue [fast]): the builder already emits the graph ORT's CPU kernels are fastest on —
``GroupQueryAttention`` with rotary inside and one past/present buffer, ``SkipSimplifiedLayerNormalization``,
q/k/v fused into one MatMul — in ~340 nodes where our dynamo trace needed ~3,800. Rewriting the trace
with fusion passes would re-derive what the builder knows per architecture; building our own graph
would duplicate it. So :func:`build_lean_graph`:

1. writes the artifact's model with dequantized linears as a transformers folder, runs
   ``onnxruntime_genai.models.builder -p fp32 -e cpu`` on it (a subprocess: the builder keeps globals);
2. replaces every decoder ``MatMul`` by one ``com.mbq::MixedBitMatMul`` holding the artifact's packed
   codes — q/k/v stay fused (codes concatenated along N), gate/up are fused into one node + ``Split``;
3. adds one ``com.mbq::RouterCounts`` node per router group (q/k/v, o, gate/up, down of a layer, or one
   per layer for block routers): a fused group takes the max of its members' counts (``combine=1``);
   the PyTorch twin is :func:`mbq_onnx.export.routers.grouped_routers` with ``combine_max=True``;
4. optionally quantizes the tied LM head (8-bit RTN, one slice), adds ``logits_to_keep`` (logits only for
   the last k positions), ``tau`` / ``force_slices`` inputs and the ``slice_counts`` output
   ``[num_groups, batch, seq]``.

Graph I/O (``docs/export.md``, "Lean graph"): ``input_ids [b, s]``, ``attention_mask [b, past + s]``,
``past_key_values.{i}.key/value [b, kv_heads, capacity, head_dim]`` (the buffer is shared with
``present.{i}.*``: bind both to one OrtValue, see :class:`mbq_onnx.runtime.session.KVCache`), ``tau``,
``force_slices``, ``logits_to_keep`` (int64 scalar, 1..s) → ``logits [b, logits_to_keep, vocab]``,
``present.*``, ``slice_counts``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..model.linear import MixedBitLinear
from ..model.routing import DEFAULT_TAU_SCHEDULE, check_tau_schedule
from ..model.surgery import decoder_layers
from ..quant.packing import pack, unpack
from ..quant.residual import minmax_params, quantize_linear
from ..quant.spec import QuantSpec
from .schema import DOMAIN, OP_VERSION, register_schema

#: Accepted values of the LM-head option: keep float32; 8-bit RTN (groups of the artifact's size); or
#: "mixed": RTN codes in the artifact's slices, each row at the rounded mean of its token's slice counts.
LM_HEAD_CHOICES = ("float", "8bit", "mixed")
#: Attention / MLP linears of a LLaMA-style decoder layer, as the builder names its MatMul weights.
_ATTN, _MLP = "self_attn", "mlp"


#: Model types whose builder graph :func:`rewrite_graph` knows (LLaMA layout: q/k/v, o, gate/up, down).
LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2")


def lean_unsupported(config: Any) -> str | None:
    """Why a transformers config cannot take the lean graph, or ``None`` when it can."""
    if config.model_type not in LEAN_MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {', '.join(LEAN_MODEL_TYPES)}"
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim % 16:
        return f"head size {head_dim} is not a multiple of 16 (ORT's CPU GroupQueryAttention needs one)"
    return None


class LeanGraphError(RuntimeError):
    """The builder failed or produced a graph this module does not know how to rewrite."""


@dataclass(frozen=True)
class RouterGroup:
    """One routing decision per row: the linears it drives (HF names) and the tensor its router reads."""

    name: str
    linears: tuple[str, ...]
    weights: tuple[int, ...]  # N·K of each member (bits-per-weight accounting)


def run_builder(hf_dir: Path, out_dir: Path, cache_dir: Path) -> Path:
    """``python -m onnxruntime_genai.models.builder -p fp32 -e cpu`` on ``hf_dir``; returns the graph path."""
    hf_dir, out_dir, cache_dir = (Path(p).resolve() for p in (hf_dir, out_dir, cache_dir))
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
        "-p", "fp32", "-e", "cpu", "-c", str(cache_dir), "--extra_options", "hf_token=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out_dir.parent)
    graph = out_dir / "model.onnx"
    if proc.returncode or not graph.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LeanGraphError(f"onnxruntime_genai model builder failed (exit {proc.returncode}):\n{tail}")
    return graph


class _Graph:
    """Small helpers over an ``onnx.GraphProto`` being rewritten."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.g = model, model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.new_nodes: list[onnx.NodeProto] = []

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.g.node if tensor in n.output), None)

    def init(self, name: str, array: np.ndarray) -> str:
        t = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs):
        n = helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs)
        self.new_nodes.append(n)
        return n

    def drop_init(self, name: str) -> None:
        t = self.inits.pop(name, None)
        if t is not None:
            self.g.initializer.remove(t)


def _matmul_nodes(graph: _Graph) -> dict[str, onnx.NodeProto]:
    """Builder MatMul nodes by their weight initializer's name."""
    return {n.input[1]: n for n in graph.g.node if n.op_type == "MatMul" and n.input[1] in graph.inits}


def _fused_codes(linears: list[MixedBitLinear], spec: QuantSpec) -> tuple[np.ndarray, ...]:
    """Packed codes, scales and zeros of ``linears`` concatenated along N (one MixedBitMatMul)."""
    if len(linears) == 1:
        m = linears[0]
        return m.packed.numpy(), m.scales.numpy(), m.zeros.numpy()
    k = linears[0].in_features
    codes = np.concatenate([unpack(m.packed.numpy(), spec, m.out_features, k) for m in linears])
    scales = np.concatenate([m.scales.numpy() for m in linears])
    zeros = np.concatenate([m.zeros.numpy() for m in linears])
    return pack(codes, spec), scales, zeros


def _mixed_bit_matmul(
    graph: _Graph, x: str, count: str, y: str, name: str, packed, scales, zeros, k: int, n: int,
    spec: QuantSpec, accuracy_level: int,
) -> None:  # fmt: skip
    extra = {"accuracy_level": accuracy_level} if accuracy_level else {}
    graph.node(
        "MixedBitMatMul",
        [x, count, graph.init(f"{name}.packed", packed), graph.init(f"{name}.scales", scales),
         graph.init(f"{name}.zeros", zeros)],
        [y], name, DOMAIN, K=k, N=n, group_size=spec.group_size, slice_bits=list(spec.slice_bits), **extra,
    )  # fmt: skip


def _thresholds(graph: _Graph, num_slices: int, schedule: str) -> str:
    """``[0, t_1, …, t_{S-1}, 0]`` from ``tau``/``force_slices`` under the τ schedule
    (``routers.routing_thresholds``: the same float32 operations), once per graph."""
    c = lambda name, v, dt=np.float32: graph.init(f"/mbq/thr/{name}", np.asarray(v, dt))  # noqa: E731
    p = "/mbq/thr/"
    gates = num_slices - 1
    if check_tau_schedule(schedule) == "shared":
        graph.node("Expand", ["tau", c("shape", [gates], np.int64)], [p + "tau_j"], p + "Expand")
    else:  # tau_j = clamp(j - G·(1 - tau), 0, 1)
        graph.node("Sub", [c("one", 1.0), "tau"], [p + "1-tau"], p + "Sub")
        graph.node("Mul", [c("G", float(gates)), p + "1-tau"], [p + "G(1-tau)"], p + "Mul")
        graph.node("Sub", [c("jf", np.arange(1, num_slices)), p + "G(1-tau)"], [p + "pre"], p + "SubJ")
        graph.node("Clip", [p + "pre", c("zero_f", 0.0), c("one_f", 1.0)], [p + "tau_j"], p + "Clip")
    graph.node("Sub", [c("one_j", 1.0), p + "tau_j"], [p + "1-tau_j"], p + "Sub1")
    graph.node("Log", [p + "tau_j"], [p + "log_tau"], p + "Log0")
    graph.node("Log", [p + "1-tau_j"], [p + "log_1-tau"], p + "Log1")
    graph.node("Sub", [p + "log_tau", p + "log_1-tau"], [p + "thr_tau"], p + "Logit")
    graph.node("Less", [c("j", np.arange(1, num_slices), np.int64), "force_slices"], [p + "on"], p + "Less")
    graph.node("Where", [p + "on", c("ninf", -np.inf), c("pinf", np.inf)], [p + "thr_force"], p + "WhereF")
    graph.node("Greater", ["force_slices", c("zero_i", 0, np.int64)], [p + "forced"], p + "Forced")
    graph.node("Where", [p + "forced", p + "thr_force", p + "thr_tau"], [p + "thr"], p + "Where")
    zero = c("zero", [0.0])
    graph.node("Concat", [zero, p + "thr", zero], ["/mbq/thresholds"], p + "Concat", axis=0)
    return "/mbq/thresholds"


def _router_node(graph: _Graph, x: str, thresholds: str, routers: list, name: str) -> str:
    from .routers import GroupedRouter

    grouped = GroupedRouter(routers)
    ins = [x, thresholds] + [
        graph.init(f"{name}.{p}", getattr(grouped, p).detach().cpu().numpy())
        for p in ("w1", "b1", "w2", "b2")
    ]
    out = f"{name}/counts"
    graph.node("RouterCounts", ins, [out], name, DOMAIN, pad=float(grouped.pad), members=grouped.members,
               combine=int(grouped.members > 1))  # fmt: skip
    return out


def _fixed_count(graph: _Graph, like: str, value: str, name: str) -> str:
    """``value`` (an int64 scalar tensor) expanded to ``like.shape[:-1]``."""
    graph.node("Shape", [like], [f"{name}/shape"], f"{name}/Shape", end=-1)
    graph.node("Expand", [value, f"{name}/shape"], [f"{name}/counts"], f"{name}/Expand")
    return f"{name}/counts"


def _quantize_head(
    weight_kn: np.ndarray, spec: QuantSpec | None, group_size: int
) -> tuple[QuantSpec, tuple[np.ndarray, ...]]:
    """RTN (asymmetric min/max per output channel and group) of an LM head stored ``[K, N]``: the artifact's
    slices (``spec``), or one 8-bit slice when ``spec`` is ``None``."""
    spec = spec or QuantSpec((8,), group_size)
    w = torch.from_numpy(np.ascontiguousarray(weight_kn.T))
    scale, zero = minmax_params(w, spec)
    return spec, quantize_linear(w, spec, scale, zero)


def rewrite_graph(
    model: onnx.ModelProto, hf_model: nn.Module, spec: QuantSpec, granularity: str, *,
    accuracy_level: int = 0, lm_head: str = "float",
) -> tuple[onnx.ModelProto, list[RouterGroup]]:  # fmt: skip
    """Rewrite a builder fp32 graph in place (see module docstring); returns it and its router groups."""
    if lm_head not in LM_HEAD_CHOICES:
        raise ValueError(f"lm_head {lm_head!r}: expected one of {LM_HEAD_CHOICES}")
    register_schema()
    graph = _Graph(model)
    matmuls = _matmul_nodes(graph)
    replaced: set[str] = set()
    groups: list[RouterGroup] = []
    count_outputs: list[str] = []
    S = spec.num_slices
    schedule = hf_model.mbq_ctx.tau_schedule if hasattr(hf_model, "mbq_ctx") else DEFAULT_TAU_SCHEDULE
    thresholds = _thresholds(graph, S, schedule) if granularity != "none" else None
    if granularity == "none":  # every row at force_slices (clamped to 1..S), or S when 0
        graph.init("/mbq/S", np.asarray(S, np.int64))
        graph.node("Clip", ["force_slices", graph.init("/mbq/one_i", np.asarray(1, np.int64)), "/mbq/S"],
                   ["/mbq/force_clipped"], "/mbq/ForceClip")  # fmt: skip
        graph.node("Greater", ["force_slices", graph.init("/mbq/zero_i", np.asarray(0, np.int64))],
                   ["/mbq/forced"], "/mbq/Forced")  # fmt: skip
        graph.node("Where", ["/mbq/forced", "/mbq/force_clipped", "/mbq/S"], ["/mbq/fixed"], "/mbq/Fixed")

    for i, layer in enumerate(decoder_layers(hf_model)):
        prefix = f"model.layers.{i}"
        lin = {n: m for n, m in layer.named_modules() if isinstance(m, MixedBitLinear)}
        attn = [f"{_ATTN}.{p}_proj" for p in "qkv"]
        plan = [  # (builder weight name, HF members, output split)
            (f"{prefix}.attn.qkv_proj.MatMul.weight", attn),
            (f"{prefix}.attn.o_proj.MatMul.weight", [f"{_ATTN}.o_proj"]),
            ((f"{prefix}.mlp.gate_proj.MatMul.weight", f"{prefix}.mlp.up_proj.MatMul.weight"),
             [f"{_MLP}.gate_proj", f"{_MLP}.up_proj"]),
            (f"{prefix}.mlp.down_proj.MatMul.weight", [f"{_MLP}.down_proj"]),
        ]  # fmt: skip
        block_counts = None
        if granularity == "block":
            first = next(n for n in graph.g.node if n.name == f"/model/layers.{i}/input_layernorm/LayerNorm"
                         or n.name == f"/model/layers.{i}/input_layernorm/SkipLayerNorm")  # fmt: skip
            x_layer = first.input[0] if first.op_type == "SimplifiedLayerNormalization" else first.output[3]
            block_counts = _router_node(graph, x_layer, thresholds, [layer.router], f"/mbq/layers.{i}/router")
            count_outputs.append(block_counts)
            sizes = tuple(m.in_features * m.out_features for m in lin.values())
            groups.append(RouterGroup(prefix, tuple(f"{prefix}.{n}" for n in lin), sizes))
        for weights, members in plan:
            weights = (weights,) if isinstance(weights, str) else weights
            nodes = [matmuls.get(w) for w in weights]
            if any(n is None for n in nodes) or any(m not in lin for m in members):
                raise LeanGraphError(f"layer {i}: expected builder MatMuls {weights} for {members}")
            mods = [lin[m] for m in members]
            x = nodes[0].input[0]
            if any(n.input[0] != x for n in nodes):
                raise LeanGraphError(f"layer {i}: {weights} do not share their input")
            tag = f"/mbq/layers.{i}/" + "_".join(m.split(".")[-1].removesuffix("_proj") for m in members)
            if granularity == "linear":
                counts = _router_node(graph, x, thresholds, [m.router for m in mods], tag + "/router")
                count_outputs.append(counts)
                groups.append(RouterGroup(tag, tuple(f"{prefix}.{m}" for m in members),
                                          tuple(m.in_features * m.out_features for m in mods)))  # fmt: skip
            elif granularity == "block":
                counts = block_counts
            else:
                counts = _fixed_count(graph, x, "/mbq/fixed", tag + "/count")
            packed, scales, zeros = _fused_codes(mods, spec)
            k, n = mods[0].in_features, sum(m.out_features for m in mods)
            y = nodes[0].output[0] if len(nodes) == 1 else tag + "/Y"
            _mixed_bit_matmul(graph, x, counts, y, tag + "/MixedBitMatMul", packed, scales, zeros, k, n, spec,
                              accuracy_level)  # fmt: skip
            if len(nodes) > 1:
                graph.node("Split", [y, graph.init(tag + "/split", np.array([m.out_features for m in mods]))],
                           [nd.output[0] for nd in nodes], tag + "/Split", axis=-1)  # fmt: skip
            replaced.update(n.name for n in nodes)
            for w in weights:
                graph.drop_init(w)

    _logits_tail(graph, spec, lm_head, accuracy_level, replaced)
    graph.g.input.extend([
        helper.make_tensor_value_info("tau", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("force_slices", TensorProto.INT64, []),
    ])  # fmt: skip
    if count_outputs:  # [b, s] each → Concat [G·b, s] → Reshape [G, b, s]: two nodes, not one per group
        graph.node("Concat", count_outputs, ["/mbq/counts_flat"], "/mbq/CountsConcat", axis=0)
        graph.node("Shape", ["input_ids"], ["/mbq/ids_shape"], "/mbq/IdsShape")
        groups_dim = graph.init("/mbq/num_groups", np.array([len(count_outputs)]))
        shape = "/mbq/counts_shape"
        graph.node("Concat", [groups_dim, "/mbq/ids_shape"], [shape], "/mbq/CountsShape", axis=0)
        graph.node("Reshape", ["/mbq/counts_flat", shape], ["slice_counts"], "/mbq/slice_counts")
    else:  # no routers: report the fixed count once, shaped [1, b, s]
        graph.node("Shape", ["input_ids"], ["/mbq/ids_shape"], "/mbq/IdsShape")
        graph.node("Expand", ["/mbq/fixed", "/mbq/ids_shape"], ["/mbq/fixed_bs"], "/mbq/FixedBS")
        graph.node("Unsqueeze", ["/mbq/fixed_bs", graph.init("/mbq/axis0", np.array([0]))], ["slice_counts"],
                   "/mbq/slice_counts")  # fmt: skip
    dims = [None, "batch_size", "sequence_length"]
    graph.g.output.append(helper.make_tensor_value_info("slice_counts", TensorProto.INT64, dims))

    kept = [n for n in graph.g.node if n.name not in replaced]
    del graph.g.node[:]
    graph.g.node.extend(_toposort(kept + graph.new_nodes, graph))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return model, groups


def _logits_tail(
    graph: _Graph, spec: QuantSpec, lm_head: str, accuracy_level: int, replaced: set[str]
) -> None:
    """``logits_to_keep`` slicing before the LM head; the head float, 8-bit or mixed; untie the embedding."""
    head = next((n for n in graph.g.node if n.op_type == "MatMul" and n.output[0] == "logits"), None)
    if head is None or head.input[1] not in graph.inits:
        raise LeanGraphError("the builder graph has no MatMul producing 'logits' from an initializer")
    w_name = head.input[1]
    weight = numpy_helper.to_array(graph.inits[w_name])  # [K, V]
    # The embedding reads the (tied) head weight through a Transpose: give it its own [V, K] table.
    for n in graph.g.node:
        if n.op_type == "Transpose" and n.input[0] == w_name:
            emb = next(m for m in graph.g.node if m.op_type == "Gather" and m.input[0] == n.output[0])
            emb.input[0] = graph.init("model.embed_tokens.weight", np.ascontiguousarray(weight.T))
            replaced.add(n.name)
    graph.g.input.append(helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, []))
    x, p = head.input[0], "/mbq/lm_head/"
    graph.node("Neg", ["logits_to_keep"], [p + "start"], p + "Neg")
    graph.node("Unsqueeze", [p + "start", graph.init(p + "axis0", np.array([0]))], [p + "starts"], p + "Unsq")
    graph.node("Slice", [x, p + "starts", graph.init(p + "ends", np.array([np.iinfo(np.int64).max])),
                         graph.init(p + "axes", np.array([1]))], [p + "kept"], p + "Slice")  # fmt: skip
    if lm_head == "float":
        head.input[0] = p + "kept"
        return
    head_spec, (packed, scales, zeros) = _quantize_head(
        weight, spec if lm_head == "mixed" else None, spec.group_size
    )
    if lm_head == "mixed":  # each row at the rounded mean of its token's routing decisions
        graph.node("Cast", ["slice_counts"], [p + "counts_f"], p + "CastF", to=TensorProto.FLOAT)
        graph.node("ReduceMean", [p + "counts_f", p + "axis0"], [p + "mean"], p + "Mean", keepdims=0)
        graph.node("Round", [p + "mean"], [p + "round"], p + "Round")
        graph.node("Cast", [p + "round"], [p + "counts_all"], p + "CastI", to=TensorProto.INT64)
        axis1 = graph.init(p + "axis1", np.array([1]))
        graph.node("Slice", [p + "counts_all", p + "starts", p + "ends", axis1],
                   [p + "counts"], p + "SliceCounts")  # fmt: skip
        counts = p + "counts"
    else:
        counts = _fixed_count(graph, p + "kept", graph.init(p + "one", np.asarray(1, np.int64)), p + "count")
    _mixed_bit_matmul(graph, p + "kept", counts, "logits", p + "MixedBitMatMul", packed, scales, zeros,
                      weight.shape[0], weight.shape[1], head_spec, accuracy_level)  # fmt: skip
    replaced.add(head.name)
    graph.drop_init(w_name)


def _toposort(nodes: list[onnx.NodeProto], graph: _Graph) -> list[onnx.NodeProto]:
    ready = {i.name for i in graph.g.input} | set(graph.inits) | {""}
    pending, out = list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise LeanGraphError(
                f"graph rewrite left {len(rest)} nodes with missing inputs, e.g. {rest[0].name}"
            )
        pending = rest
    return out


def build_lean_graph(
    hf_model: nn.Module, spec: QuantSpec, granularity: str, work: Path, *, accuracy_level: int = 0,
    lm_head: str = "float", tokenizer_dir: Path | None = None, progress=None,
) -> tuple[onnx.ModelProto, list[RouterGroup], dict[str, Any]]:  # fmt: skip
    """Builder graph of ``hf_model`` (a mixed-bit model from ``build_model``) rewritten to mixed bits.
    ``tokenizer_dir``: where the model's tokenizer files are (the builder insists on loading one).

    Returns the graph, its router groups and the builder's ``genai_config.json`` (as a dict)."""
    import json

    hf_dir, out_dir = work / "hf", work / "builder"
    out_dir.mkdir(parents=True)
    # The builder needs a float transformers folder; linears come back as MixedBitMatMul below, so a
    # copy with dequantized weights is only its scaffolding. Keep the mixed-bit modules for step 2.
    float_model = _float_scaffold(hf_model, spec.num_slices)
    float_model.save_pretrained(hf_dir, safe_serialization=True)
    del float_model
    _builder_tokenizer(tokenizer_dir, hf_dir)
    if progress:
        progress("GenAI model builder")
    graph_path = run_builder(hf_dir, out_dir, work / "builder-cache")
    model = onnx.load(str(graph_path), load_external_data=True)
    genai_config = json.loads((out_dir / "genai_config.json").read_text())
    if progress:
        progress("mixed-bit rewrite")
    model, groups = rewrite_graph(model, hf_model, spec, granularity, accuracy_level=accuracy_level,
                                  lm_head=lm_head)  # fmt: skip
    return model, groups, genai_config


def _builder_tokenizer(src: Path | None, hf_dir: Path) -> None:
    """The builder saves the model's tokenizer beside its graph; copy ours, or give it a stand-in."""
    from .exporter import copy_tokenizer_files

    if src is not None and (Path(src) / "tokenizer.json").is_file():
        copy_tokenizer_files(Path(src), hf_dir)
        return
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")).save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}\n')


def _float_scaffold(hf_model: nn.Module, n_slices: int) -> nn.Module:
    """A float copy of ``hf_model`` (``n_slices`` dequantized, routers removed) that transformers can save."""
    import copy

    from .exporter import dequantize_model

    clone = dequantize_model(copy.deepcopy(hf_model), n_slices)
    clone.hf_quantizer = None
    if hasattr(clone.config, "quantization_config"):
        del clone.config.quantization_config
    for attr in ("mbq_spec", "mbq_ctx", "mbq_granularity"):
        if hasattr(clone, attr):
            delattr(clone, attr)
    return clone


def temp_workdir(near: Path) -> tempfile.TemporaryDirectory:
    """A scratch dir beside ``near`` (same disk: the float scaffold of a large model is big)."""
    near.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".mbq-lean-", dir=near.parent)
