"""``MixedBitLinear`` and the swap of a causal LM's decoder linears for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..quant.residual import dequantize_codes, minmax_params, quantize_linear
from ..quant.spec import QuantSpec
from . import ops
from .routing import DEFAULT_HIDDEN, RoutingContext, SliceRouter, attach_block_router, routed_counts
from .surgery import decoder_layers, decoder_layers_name, set_submodule

Granularity = str  # "linear" | "block" | "none"
GRANULARITIES = ("linear", "block", "none")


class MixedBitLinear(nn.Module):
    """A linear layer whose weight is a truncation-ready residual quantization, used at a per-token
    slice count.

    Buffers: ``packed`` (uint8, the slice planes of ``custom_ops/README.md``), ``scales`` (float32
    ``[N, G]``), ``zeros`` (uint8 ``[N, G]``), optional ``bias``. Slice counts come from
    ``ctx.force_slices`` if set, else this layer's ``router`` (per-linear routing), else the counts
    its block router stored under ``block_key`` (per-block routing), else all slices.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spec: QuantSpec,
        bias: bool = False,
        router: SliceRouter | None = None,
        ctx: RoutingContext | None = None,
        block_key: str | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        n_groups = spec.num_groups(in_features)
        self.register_buffer(
            "packed", torch.zeros(spec.packed_nbytes(out_features, in_features), dtype=torch.uint8)
        )
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float32))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.router = router
        self.ctx = ctx
        self.block_key = block_key
        self._dense: list[Tensor] | None = None

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        spec: QuantSpec,
        scale: Tensor,
        zero: Tensor,
        router: SliceRouter | None = None,
        ctx: RoutingContext | None = None,
        block_key: str | None = None,
    ) -> MixedBitLinear:
        """Quantize ``linear.weight`` with ``(scale, zero)`` (each ``[N, G]``) and pack it."""
        n, k = linear.weight.shape
        m = cls(k, n, spec, bias=linear.bias is not None, router=router, ctx=ctx, block_key=block_key)
        packed, scales, zeros = quantize_linear(linear.weight.detach().float(), spec, scale, zero)
        m.packed.copy_(torch.from_numpy(packed))
        m.scales.copy_(torch.from_numpy(scales))
        m.zeros.copy_(torch.from_numpy(zeros))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach().float())
        return m.to(linear.weight.device)

    def codes(self) -> Tensor:
        """The full B-bit codes ``[N, K]`` (uint8)."""
        return ops.unpack_codes(self.packed, self.spec, self.out_features, self.in_features)

    def dequantized_weight(self, n_slices: int | None = None) -> Tensor:
        """Float32 weight ``[N, K]`` at ``n_slices`` slices (default all)."""
        n_slices = self.spec.num_slices if n_slices is None else n_slices
        return dequantize_codes(self.codes(), self.scales, self.zeros, self.spec, n_slices)

    def cache_weights(self, enabled: bool = True) -> None:
        """Keep dense float32 weights for every slice count (S·N·K·4 bytes) for fast eager inference.

        Same numbers as the op; ignored while ``torch.export`` traces (the op is always emitted).
        Call again after changing the buffers.
        """
        self._dense = (
            [self.dequantized_weight(s) for s in range(1, self.spec.num_slices + 1)] if enabled else None
        )

    def _weight_at(self, n_slices: int) -> Tensor:
        return self._dense[n_slices - 1] if self._dense is not None else self.dequantized_weight(n_slices)

    def slice_counts(self, x: Tensor) -> Tensor:
        """int64 counts ``x.shape[:-1]`` for this call (see class docstring; ``ctx.oracle_counts`` first)."""
        ctx = self.ctx
        if ctx is not None and ctx.oracle_counts is not None:
            oracle = ctx.oracle_counts
            counts = oracle.counts(x, self._weight_at(oracle.high) - self._weight_at(oracle.low))
            if ctx.record:
                ctx.records.append(counts)
            return counts
        if self.router is None and self.block_key is not None and ctx is not None:
            counts = ctx.block_counts.get(self.block_key)
            if counts is not None:
                return counts  # the block hook already applied force_slices
        counts = routed_counts(x, self.router, ctx, self.spec.num_slices)
        if self.router is not None and ctx is not None and ctx.record:
            ctx.records.append(counts.detach())
        return counts

    def forward(self, x: Tensor) -> Tensor:
        counts = self.slice_counts(x)
        if (
            self._dense is not None
            and not torch.compiler.is_exporting()
            and not torch.compiler.is_compiling()
        ):
            y = ops.dense_mixed_matmul(x, counts, self._dense)
        else:
            y = torch.ops.mbq.mixed_bit_matmul(
                x,
                counts,
                self.packed,
                self.scales,
                self.zeros,
                self.in_features,
                self.out_features,
                self.spec.group_size,
                list(self.spec.slice_bits),
            )
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"slice_bits={list(self.spec.slice_bits)}, group_size={self.spec.group_size}, "
            f"bias={self.bias is not None}, router={'yes' if self.router is not None else 'no'}"
        )


def decoder_linear_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers inside the decoder layers (attention q/k/v/o, MLP gate/up/down, …),
    in forward order; never ``lm_head``, embeddings or routers."""
    prefix = decoder_layers_name(model)
    return [
        f"{prefix}.{name}"
        for name, m in decoder_layers(model).named_modules()
        if isinstance(m, nn.Linear | MixedBitLinear) and ".router." not in f".{name}."
    ]


def block_key_of(name: str, model: nn.Module) -> str:
    """The decoder-layer name (e.g. ``model.layers.3``) a module name belongs to."""
    prefix = decoder_layers_name(model)
    rest = name[len(prefix) + 1 :]
    return f"{prefix}.{rest.split('.', 1)[0]}"


def iter_mixed_bit_linears(model: nn.Module) -> Iterator[tuple[str, MixedBitLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, MixedBitLinear):
            yield name, m


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    *,
    granularity: Granularity = "linear",
    params: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    routers: Mapping[str, SliceRouter] | None = None,
    router_hidden: int = DEFAULT_HIDDEN,
    ctx: RoutingContext | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RoutingContext:
    """Replace the decoder linears of ``model`` (in place) by :class:`MixedBitLinear`.

    ``params[name] = (scale, zero)`` per linear (missing ones: plain min/max RTN). ``routers`` maps a
    linear name (granularity ``"linear"``) or a layer name such as ``model.layers.0`` (``"block"``)
    to a trained router; missing ones are freshly initialised (seeded). ``"none"`` installs no
    routers (all slices unless ``ctx.force_slices``). Returns the model's :class:`RoutingContext`.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"router granularity {granularity!r}: expected one of {GRANULARITIES}")
    ctx = ctx if ctx is not None else RoutingContext()
    params = params or {}
    routers = routers or {}
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        names = decoder_linear_names(model)
        for name in tqdm(names, desc="quantize", disable=not progress):
            linear = model.get_submodule(name)
            if name in params:
                scale, zero = params[name]
            else:
                scale, zero = minmax_params(linear.weight.detach().float(), spec)
            router = None
            if granularity == "linear":
                router = (
                    routers[name]
                    if name in routers
                    else SliceRouter(linear.in_features, spec.num_slices, router_hidden)
                )
            block_key = block_key_of(name, model) if granularity == "block" else None
            new = MixedBitLinear.from_float(
                linear, spec, scale, zero, router=router, ctx=ctx, block_key=block_key
            )
            set_submodule(model, name, new)
        if granularity == "block":
            prefix = decoder_layers_name(model)
            hidden_size = model.config.hidden_size
            for i, layer in enumerate(decoder_layers(model)):
                key = f"{prefix}.{i}"
                router = (
                    routers[key]
                    if key in routers
                    else SliceRouter(hidden_size, spec.num_slices, router_hidden)
                )
                attach_block_router(layer, key, router, ctx)
    finally:
        torch.random.set_rng_state(gen_state)
    model.mbq_spec = spec
    model.mbq_granularity = granularity
    model.mbq_ctx = ctx
    return ctx


def set_weight_cache(model: nn.Module, enabled: bool = True) -> None:
    """:meth:`MixedBitLinear.cache_weights` on every mixed-bit linear of ``model``."""
    for _, m in iter_mixed_bit_linears(model):
        m.cache_weights(enabled)


def map_routers(model: nn.Module, fn: Callable[[str, SliceRouter], None]) -> None:
    """Call ``fn(name, router)`` for every router of ``model`` (per-linear or per-block)."""
    for name, m in model.named_modules():
        if isinstance(m, SliceRouter):
            fn(name, m)
