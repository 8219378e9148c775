"""The models a quality report compares, each evaluated on every held-out text into one report row.

float32 · bit-specific RTN / GPTQ (fake-quantized float models) · MoBiQuant at a fixed slice count or a
τ (recording the per-token slice counts for average bits) · MoBiQuant with random per-token slice counts at
a τ row's average bits (the routing baseline) · same-method single-precision calibrations.

Every result carries ``avg_bits_per_weight``: bits per decoder-linear weight read, each routed call's
tokens weighted by the weights that call reads (the calibration τ table's ``avg_bits_per_call`` instead
counts every routed call once per token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mbq_onnx.baselines import (
    BaselineSpec,
    float_model_bytes,
    gptq_quantize_model,
    quantized_model_bytes,
    rtn_quantize_model,
)
from mbq_onnx.export.routers import grouped_routers
from mbq_onnx.model.artifact import Artifact, build_model
from mbq_onnx.model.linear import MixedBitLinear, iter_mixed_bit_linears
from mbq_onnx.model.routing import OracleCounts, RandomCounts, RoutingContext
from mbq_onnx.model.surgery import decoder_layers
from mbq_onnx.quant.spec import QuantSpec

from .methods import label
from .perplexity import DEFAULT_MAX_WINDOWS, DEFAULT_WINDOW, LogitsFn, perplexity, torch_logits_fn
from .report import FLOAT_BITS
from .rows import ReportRow, TextResult

if TYPE_CHECKING:
    from mbq_onnx.calibrate.config import CalibConfig

ModelLoader = Callable[[], nn.Module]
"""Returns a fresh float32 causal LM (baselines modify it in place)."""


@dataclass
class EvalSetup:
    """Held-out token ids per text and the window settings shared by every row."""

    texts: Mapping[str, np.ndarray]
    window: int = DEFAULT_WINDOW
    max_windows: int | None = DEFAULT_MAX_WINDOWS
    max_tokens: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def run(
        self,
        logits_fn: LogitsFn,
        label: str,
        bits: Callable[[], float] | float,
        reset: Callable[[], None] | None = None,
    ) -> dict[str, TextResult]:
        """Perplexity of ``logits_fn`` on every text; ``bits`` is a number or read after each text."""
        results = {}
        for name, ids in self.texts.items():
            if reset is not None:
                reset()
            res = perplexity(
                logits_fn,
                ids,
                window=self.window,
                max_windows=self.max_windows,
                max_tokens=self.max_tokens,
                desc=f"{label} · {name}",
                progress=self.progress,
            )
            results[name] = TextResult.of(res, bits() if callable(bits) else bits)
        return results

    def only(self, name: str) -> EvalSetup:
        """The same settings on text ``name`` alone."""
        return replace(self, texts={name: self.texts[name]}, extra={})


def _row(
    method: str,
    name: str,
    *,
    bits: float | None,
    model_bytes: int,
    results: dict[str, TextResult],
    group_size: int | None = None,
    slices: int | None = None,
    tau: float | None = None,
    **extra: Any,
) -> ReportRow:
    return ReportRow(method, name, bits, group_size, slices, tau, int(model_bytes), results, **extra)


def eval_float(setup: EvalSetup, load: ModelLoader) -> ReportRow:
    model = load()
    results = setup.run(torch_logits_fn(model), label("float"), FLOAT_BITS)
    return _row("float", label("float"), bits=None, model_bytes=float_model_bytes(model), results=results)


def _eval_uniform(
    setup: EvalSetup, method: str, name: str, model: nn.Module, spec: BaselineSpec, **extra: Any
) -> ReportRow:
    """Evaluate a uniformly quantized (RTN/GPTQ) ``model`` and make its row."""
    results = setup.run(torch_logits_fn(model), name, spec.bits)
    return _row(
        method,
        name,
        bits=spec.bits,
        group_size=spec.group_size,
        model_bytes=quantized_model_bytes(model, spec.bits, spec.group_size),
        results=results,
        **extra,
    )


def eval_rtn(setup: EvalSetup, load: ModelLoader, spec: BaselineSpec) -> ReportRow:
    model = rtn_quantize_model(load(), spec)
    name = label("rtn", bits=spec.bits, group_size=spec.group_size)
    return _eval_uniform(setup, "rtn", name, model, spec)


def eval_gptq(
    setup: EvalSetup,
    load: ModelLoader,
    spec: BaselineSpec,
    samples: torch.Tensor,
    *,
    act_order: bool = False,
    damp: float = 0.01,
) -> ReportRow:
    model = gptq_quantize_model(
        load(), samples, spec, act_order=act_order, damp=damp, progress=setup.progress
    )
    name = label("gptq", bits=spec.bits, group_size=spec.group_size, act_order=act_order)
    return _eval_uniform(
        setup,
        "gptq",
        name,
        model,
        spec,
        calibration={
            "samples": int(samples.shape[0]),
            "seqlen": int(samples.shape[-1]),
            "act_order": act_order,
            "damp": damp,
        },
    )


def artifact_bytes(artifact: Artifact, n_slices: int) -> int:
    """Stored bytes of an artifact truncated to its first ``n_slices`` slice planes (routers, norms and
    embeddings at their stored dtype; scales float32 and zeros uint8 per group)."""
    spec = artifact.spec
    total = 0
    quantized = set()
    for name, info in artifact.quantized.items():
        n, k = int(info["out_features"]), int(info["in_features"])
        total += sum(spec.plane_nbytes(j, n, k) for j in range(n_slices))
        quantized.update(f"{name}.{s}" for s in ("packed", "scales", "zeros"))
        total += n * spec.num_groups(k) * 5
    total += sum(t.numel() * t.element_size() for key, t in artifact.tensors.items() if key not in quantized)
    return total


class AvgBitsMeter:
    """Average bits per weight of a routed MoBiQuant model, from ``ctx.records``.

    Each record (one per routed call: per linear, or per block) is weighted by the number of weights
    its slice counts select, so the result is the bits per weight actually read.
    """

    def __init__(self, model: nn.Module, ctx: RoutingContext, spec: QuantSpec):
        self.ctx, self.spec = ctx, spec
        self.bits_of_count = torch.tensor((0, *spec.cum_bits), dtype=torch.float64)
        self._weights: list[int] = []
        self._handles = []
        granularity = getattr(model, "mbq_granularity", "linear")
        if granularity == "block":
            for layer in decoder_layers(model):
                size = sum(
                    m.in_features * m.out_features for m in layer.modules() if isinstance(m, MixedBitLinear)
                )
                self._handles.append(layer.register_forward_pre_hook(self._hook(size)))
        else:
            for _, m in iter_mixed_bit_linears(model):
                if m.router is not None:
                    self._handles.append(
                        m.register_forward_pre_hook(self._hook(m.in_features * m.out_features))
                    )
        self.reset()
        ctx.record = True

    def _hook(self, size: int):
        def hook(*_args: Any) -> None:
            self._weights.append(size)

        return hook

    def reset(self) -> None:
        self.ctx.reset_records()
        self._weights.clear()
        self.bit_sum = self.weight_sum = 0.0

    def consume(self) -> None:
        """Fold the current records into the running average and clear them."""
        records = self.ctx.records
        weights = self._weights if len(self._weights) == len(records) else [1] * len(records)
        for counts, w in zip(records, weights, strict=True):
            self.bit_sum += float(self.bits_of_count[counts.reshape(-1).cpu()].sum()) * w
            self.weight_sum += counts.numel() * w
        self.ctx.reset_records()
        self._weights.clear()

    def average(self) -> float:
        self.consume()
        if self.weight_sum == 0:
            raise RuntimeError("no routed calls were recorded: does the model have routers?")
        return self.bit_sum / self.weight_sum

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self.ctx.record = False
        self.ctx.reset_records()


def routed_weights(model: nn.Module, ctx: RoutingContext, spec: QuantSpec) -> list[int]:
    """Weights each routed call reads, in the order of the exported ``slice_counts`` rows (one forward over
    two tokens with recording on)."""
    meter = AvgBitsMeter(model, ctx, spec)
    old_tau, old_force = ctx.tau, ctx.force_slices
    ctx.tau, ctx.force_slices = 0.5, None
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long), use_cache=False)
        weights = list(meter._weights)
    finally:
        ctx.tau, ctx.force_slices = old_tau, old_force
        meter.close()
    return weights


def load_mobiquant(artifact: Artifact) -> tuple[nn.Module, RoutingContext]:
    """The artifact's PyTorch model with dense per-slice weights cached (fast eager evaluation)."""
    return build_model(artifact, cache_weights=True)


def eval_mbq_uniform(
    setup: EvalSetup,
    artifact: Artifact,
    n_slices: int,
    *,
    model: tuple[nn.Module, RoutingContext] | None = None,
) -> ReportRow:
    """MoBiQuant with every token forced to ``n_slices`` slices (``ctx.force_slices``)."""
    spec = artifact.spec
    if not 1 <= n_slices <= spec.num_slices:
        raise ValueError(
            f"slice count {n_slices} out of range 1..{spec.num_slices} for slices {list(spec.slice_bits)}"
        )
    m, ctx = model or load_mobiquant(artifact)
    bits = spec.bits_at(n_slices)
    name = label("mbq-uniform", bits=bits, slices=n_slices)
    old = ctx.force_slices
    ctx.force_slices = n_slices
    try:
        results = setup.run(torch_logits_fn(m), name, bits)
    finally:
        ctx.force_slices = old
    return _row(
        "mbq-uniform",
        name,
        bits=bits,
        group_size=spec.group_size,
        slices=n_slices,
        model_bytes=artifact_bytes(artifact, n_slices),
        results=results,
        artifact=artifact.path.name,
    )


def eval_mbq_tau(
    setup: EvalSetup,
    artifact: Artifact,
    tau: float,
    model: tuple[nn.Module, RoutingContext] | None = None,
    combine_max: bool = False,
) -> ReportRow:
    """MoBiQuant with routers deciding per token at threshold ``tau``; average bits from the routed counts.

    ``combine_max``: routers that share an input decide once, at their largest count — the rule of the lean
    graph's fused linears (``mbq_onnx.export.lean``), so PyTorch and ORT rows measure the same model."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau {tau} must lie strictly between 0 and 1")
    if artifact.granularity == "none":
        raise ValueError(f"artifact {artifact.path} has no routers (granularity 'none'): no τ sweep possible")
    m, ctx = model or load_mobiquant(artifact)
    old_tau, old_force = ctx.tau, ctx.force_slices
    ctx.tau, ctx.force_slices = float(tau), None
    meter = AvgBitsMeter(m, ctx, artifact.spec)
    base_fn = torch_logits_fn(m)

    def fn(ids: np.ndarray) -> torch.Tensor:
        out = base_fn(ids)
        meter.consume()
        return out

    try:
        with grouped_routers(m, ctx, combine_max=True) if combine_max else contextlib.nullcontext():
            results = setup.run(fn, label("mbq-tau", tau=tau), meter.average, reset=meter.reset)
    finally:
        meter.close()
        ctx.tau, ctx.force_slices = old_tau, old_force
    return _row(
        "mbq-tau",
        label("mbq-tau", tau=tau),
        bits=None,
        group_size=artifact.spec.group_size,
        tau=float(tau),
        model_bytes=artifact_bytes(artifact, artifact.spec.num_slices),
        results=results,
        artifact=artifact.path.name,
    )


def eval_single(
    setup: EvalSetup,
    load: ModelLoader,
    spec: QuantSpec,
    n_slices: int,
    samples: torch.Tensor,
    config: CalibConfig | None = None,
) -> ReportRow:
    """Our calibration run for precision ``n_slices`` only (same method, data, settings), evaluated there."""
    from mbq_onnx.baselines.single import single_precision_model

    bits = spec.bits_at(n_slices)
    model = single_precision_model(load(), spec, samples, n_slices, config, progress=setup.progress)
    name = label("single", bits=bits)
    results = setup.run(torch_logits_fn(model), name, bits)
    return _row(
        "single",
        name,
        bits=bits,
        group_size=spec.group_size,
        slices=n_slices,
        model_bytes=quantized_model_bytes(model, bits, spec.group_size),
        results=results,
        calibration={
            "samples": int(samples.shape[0]),
            "seqlen": int(samples.shape[-1]),
            **({"config": config.to_dict()} if config is not None else {}),
        },
    )


#: Seed of the random-routing baseline's generator (restarted for every text).
RANDOM_ROUTING_SEED = 0


def _eval_at_tau_bits(
    setup: EvalSetup,
    artifact: Artifact,
    tau_row: ReportRow | Mapping[str, Any],
    method: str,
    policy_for: Callable[[float], RandomCounts],
    install: Callable[[RoutingContext, RandomCounts | None], None],
    model: tuple[nn.Module, RoutingContext] | None,
) -> tuple[ReportRow, dict[str, dict[str, float]]]:
    """Row ``method`` of a τ row's artifact with the routers replaced, per text, by ``policy_for(the τ
    row's bits there)`` (``install`` puts a policy into the routing context, ``None`` takes it out); also
    the policies' ``{low, high, p_high}`` by text."""
    spec = artifact.spec
    tau_row = ReportRow.coerce(tau_row)
    m, ctx = model or load_mobiquant(artifact)
    tau = float(tau_row.tau)
    name = label(method, tau=tau)
    old_force = ctx.force_slices
    meter = AvgBitsMeter(m, ctx, spec)
    base_fn = torch_logits_fn(m)

    def fn(ids: np.ndarray) -> torch.Tensor:
        out = base_fn(ids)
        meter.consume()
        return out

    results, policies = {}, {}
    try:
        ctx.force_slices = None
        for text in setup.texts:
            target = tau_row.results[text].bits
            policy = policy_for(target)
            install(ctx, policy)
            results.update(setup.only(text).run(fn, name, meter.average, reset=meter.reset))
            results[text].target_bits_per_weight = target
            policies[text] = {"low": policy.low, "high": policy.high, "p_high": policy.p_high}
    finally:
        meter.close()
        install(ctx, None)
        ctx.force_slices = old_force
    row = _row(
        method,
        name,
        bits=None,
        group_size=spec.group_size,
        tau=tau,
        model_bytes=artifact_bytes(artifact, spec.num_slices),
        results=results,
        artifact=artifact.path.name,
    )
    return row, policies


def eval_mbq_random(
    setup: EvalSetup,
    artifact: Artifact,
    tau_row: ReportRow | Mapping[str, Any],
    model: tuple[nn.Module, RoutingContext] | None = None,
    seed: int = RANDOM_ROUTING_SEED,
) -> ReportRow:
    """The random-routing baseline of a τ row: every token of every routed call gets one of the two slice
    counts bracketing the τ row's average bits on that text, at random (seeded), with the probability that
    matches it (:meth:`RandomCounts.for_bits`). Same model, same windows: only the routing decisions differ,
    so it tells what the trained routers add over spending the same bits blindly."""

    def install(ctx: RoutingContext, policy: RandomCounts | None) -> None:
        ctx.random_counts = policy

    cum_bits = artifact.spec.cum_bits
    row, policies = _eval_at_tau_bits(
        setup,
        artifact,
        tau_row,
        "mbq-random",
        lambda bits: RandomCounts.for_bits(bits, cum_bits, seed=seed),
        install,
        model,
    )
    row.random_routing = {"seed": seed, "counts": policies, "of": ReportRow.coerce(tau_row).label}
    return row


def eval_mbq_oracle(
    setup: EvalSetup,
    artifact: Artifact,
    tau_row: ReportRow | Mapping[str, Any],
    model: tuple[nn.Module, RoutingContext] | None = None,
) -> ReportRow:
    """The oracle-routing reference of a τ row: the same two bracketing counts and share of tokens as its
    random-routing baseline, but in every routed call the extra slice goes to the tokens whose linear
    output it changes most (:class:`OracleCounts`: reads the weights, ranks the whole window). What a
    router that judged tokens by their linear's own output error could reach at the τ row's bits."""
    if artifact.granularity != "linear":
        raise ValueError(
            f"oracle routing needs per-linear routers; artifact {artifact.path} has granularity "
            f"{artifact.granularity!r}"
        )

    def install(ctx: RoutingContext, policy: RandomCounts | None) -> None:
        ctx.oracle_counts = policy

    cum_bits = artifact.spec.cum_bits
    row, policies = _eval_at_tau_bits(
        setup,
        artifact,
        tau_row,
        "mbq-oracle",
        lambda bits: OracleCounts.for_bits(bits, cum_bits),
        install,
        model,
    )
    row.oracle_routing = {"counts": policies, "of": ReportRow.coerce(tau_row).label}
    return row
