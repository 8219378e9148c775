"""The evaluated methods: one :class:`Method` per kind of model a quality report compares, in one ordered
table, :data:`METHODS` (like ggml's one ``type_traits`` row per format).

A row of the table says everything the rest of ``mbq_onnx.eval`` needs to know about a method: the
``method`` key of its report rows, how their labels read, its legend name and plot style, which models
of it a command line asks for (:attr:`Method.variants`), how one is evaluated (:attr:`Method.evaluate`),
and how its row also runs in ONNX Runtime (:attr:`Method.ort`, or ``None`` when there is no ORT graph of
it). The command (:mod:`.cli`), the report (:mod:`.report`: method check, table order, plot styles) and the
label of every row (:func:`label`) read this table; the table order is the order of the report's rows
and of its markdown table. Adding a method is adding a row here (plus its ``eval_*`` function and, if it
needs one, a command-line option).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from mbq_onnx.calibrate.config import CalibConfig
    from mbq_onnx.model.artifact import Artifact
    from mbq_onnx.model.routing import RoutingContext

    from .cli import Plan
    from .ort_rows import OrtModel, OrtSettings
    from .rows import ReportRow
    from .variants import EvalSetup


@dataclass(frozen=True)
class Style:
    """How a method's points are drawn (matplotlib marker and colour)."""

    marker: str
    color: str


@dataclass(frozen=True)
class Variant:
    """One model to evaluate: a method (a key of :data:`METHODS`) and the parameters its label names."""

    method: str
    bits: int | None = None
    group_size: int | None = None
    slices: int | None = None
    tau: float | None = None
    act_order: bool = False
    #: ORT-only rows: the ``accuracy_level`` of their quantized MatMuls (4 = int8 activations, 0 = float)
    accuracy_level: int | None = None

    @property
    def label(self) -> str:
        """The report row's label (unique per evaluated model; ``--resume`` matches rows by it)."""
        return method(self.method).label(self)


class Context(Protocol):
    """What :attr:`Method.evaluate` gets: the resolved plan, the held-out texts and the shared, lazily made
    inputs of a run (:class:`mbq_onnx.eval.cli.Execution`)."""

    plan: Plan
    setup: EvalSetup
    #: the plan's ORT settings with the speed runs' token ids (``None`` with ``--no-ort``)
    ort: OrtSettings | None

    @property
    def artifact(self) -> Artifact: ...

    def load(self) -> nn.Module:
        """A fresh float32 model (baselines modify it in place)."""
        ...

    @property
    def gptq_samples(self) -> torch.Tensor: ...

    @property
    def single_calibration(self) -> tuple[CalibConfig, torch.Tensor]: ...

    @property
    def mbq(self) -> tuple[nn.Module, RoutingContext]: ...

    @property
    def combine_max(self) -> bool: ...

    def row(self, label: str) -> ReportRow:
        """The row with this label (evaluated or resumed)."""
        ...

    def ort_model(self, export: str) -> OrtModel | None:
        """The ORT model of an export key of :func:`~mbq_onnx.eval.ort_rows.prepare_exports`."""
        ...


@dataclass(frozen=True)
class OrtRun:
    """How a PyTorch-evaluated row also runs in ONNX Runtime: the export it runs on (a key of
    :func:`~mbq_onnx.eval.ort_rows.prepare_exports`) and the graph inputs for the row (``tau``, ``force``)."""

    export: str
    inputs: Callable[[ReportRow], dict[str, Any]] = lambda _row: {}


@dataclass(frozen=True)
class Method:
    """One kind of evaluated model (see the module docstring)."""

    key: str  #: the ``method`` of its report rows
    name: str  #: legend name
    style: Style
    label: Callable[[Variant], str]
    #: the models of this method a resolved command line asks for, in report order
    variants: Callable[[Plan], Iterable[Variant]]
    #: evaluate one: PyTorch, or ONNX Runtime when ``backend == "ort"``
    evaluate: Callable[[Context, Variant], ReportRow]
    ort: OrtRun | None = None  #: its row's ORT run (agreement and speed), ``None``: no ORT graph of it
    backend: str = "torch"  #: "ort": scored in ONNX Runtime only, after the ORT exports are made
    baseline: bool = False  #: chosen with ``--baselines``
    legend_group_size: bool = False  #: the legend names the group size (``RTN g128``)
    connect: bool = False  #: its points are joined by a line in the plots
    reference: bool = False  #: the float model every other row is compared with


# ---------------------------------------------------------------------------------------------- labels
def _bits_label(v: Variant) -> str:
    return f"{v.method.upper()} {v.bits}-bit g{v.group_size}" + (" act-order" if v.act_order else "")


def _uniform_label(v: Variant) -> str:
    return f"MoBiQuant {v.slices} slice{'s' if v.slices != 1 else ''} ({v.bits}-bit)"


# ----------------------------------------------------------------------------- which models a plan asks for
def _float_variants(plan: Plan) -> Iterable[Variant]:
    return [Variant("float")]


def _baseline_variants(key: str) -> Callable[[Plan], Iterable[Variant]]:
    def variants(plan: Plan) -> Iterable[Variant]:
        if key not in plan.baselines:
            return []
        act_order = plan.act_order if key == "gptq" else False
        return [
            Variant(key, bits=s.bits, group_size=s.group_size, act_order=act_order)
            for s in plan.baseline_specs
        ]

    return variants


def _per_slice_count(
    key: str, wanted: Callable[[Plan], bool], baseline_bits: bool = False
) -> Callable[[Plan], Iterable[Variant]]:
    """One variant per slice count of the artifact; ``baseline_bits``: only those at ``--bits``."""

    def variants(plan: Plan) -> Iterable[Variant]:
        if plan.artifact is None or not wanted(plan):
            return []
        spec = plan.artifact.spec
        bits = {s.bits for s in plan.baseline_specs}
        return [
            Variant(key, bits=spec.bits_at(k), slices=k)
            for k in range(1, spec.num_slices + 1)
            if not baseline_bits or spec.bits_at(k) in bits
        ]

    return variants


def _per_tau(key: str, wanted: Callable[[Plan], bool]) -> Callable[[Plan], Iterable[Variant]]:
    def variants(plan: Plan) -> Iterable[Variant]:
        if plan.artifact is None or not wanted(plan):
            return []
        return [Variant(key, tau=tau) for tau in plan.taus]

    return variants


def _nbits_variants(plan: Plan) -> Iterable[Variant]:
    if plan.ort is None:
        return []
    return [
        Variant("matmul-nbits", bits=b, group_size=plan.ort.nbits_block, accuracy_level=level)
        for level in plan.ort.nbits_accuracy_levels
        for b in plan.ort.nbits
    ]


def _int8_variants(plan: Plan) -> Iterable[Variant]:
    if plan.ort is None or not plan.ort.int8_cost or plan.artifact is None or not plan.uniform:
        return []
    spec = plan.artifact.spec
    return [
        Variant("mbq-int8act", bits=spec.bits_at(k), slices=k, accuracy_level=4)
        for k in range(1, spec.num_slices + 1)
    ]


def _nbits_label(v: Variant) -> str:
    float_act = v.accuracy_level is not None and v.accuracy_level != 4  # level 4 rows keep the old label
    return f"ORT MatMulNBits int{v.bits} b{v.group_size}" + (" float activations" if float_act else "")


# ---------------------------------------------------------------------------------------------- evaluation
def _eval_float(ctx: Context, v: Variant) -> ReportRow:
    from . import variants as V

    return V.eval_float(ctx.setup, ctx.load)


def _eval_rtn(ctx: Context, v: Variant) -> ReportRow:
    from mbq_onnx.baselines import BaselineSpec

    from . import variants as V

    return V.eval_rtn(ctx.setup, ctx.load, BaselineSpec(v.bits, v.group_size))


def _eval_gptq(ctx: Context, v: Variant) -> ReportRow:
    from mbq_onnx.baselines import BaselineSpec

    from . import variants as V

    spec = BaselineSpec(v.bits, v.group_size)
    return V.eval_gptq(ctx.setup, ctx.load, spec, ctx.gptq_samples, act_order=v.act_order)


def _eval_single(ctx: Context, v: Variant) -> ReportRow:
    from . import variants as V

    config, samples = ctx.single_calibration
    return V.eval_single(ctx.setup, ctx.load, ctx.artifact.spec, v.slices, samples, config)


def _eval_mbq_uniform(ctx: Context, v: Variant) -> ReportRow:
    from . import variants as V

    return V.eval_mbq_uniform(ctx.setup, ctx.artifact, v.slices, model=ctx.mbq)


def _eval_mbq_tau(ctx: Context, v: Variant) -> ReportRow:
    from . import variants as V

    return V.eval_mbq_tau(ctx.setup, ctx.artifact, v.tau, model=ctx.mbq, combine_max=ctx.combine_max)


def _eval_mbq_random(ctx: Context, v: Variant) -> ReportRow:
    from . import variants as V

    tau_row = ctx.row(Variant("mbq-tau", tau=v.tau).label)
    return V.eval_mbq_random(ctx.setup, ctx.artifact, tau_row, model=ctx.mbq)


def _eval_mbq_oracle(ctx: Context, v: Variant) -> ReportRow:
    from . import variants as V

    tau_row = ctx.row(Variant("mbq-tau", tau=v.tau).label)
    return V.eval_mbq_oracle(ctx.setup, ctx.artifact, tau_row, model=ctx.mbq)


def _eval_matmul_nbits(ctx: Context, v: Variant) -> ReportRow:
    from .ort_rows import eval_matmul_nbits, nbits_export

    level = 4 if v.accuracy_level is None else v.accuracy_level
    model = ctx.ort_model(nbits_export(v.bits, level))
    return eval_matmul_nbits(ctx.setup, model, v.bits, v.group_size, ctx.ort, accuracy_level=level)


def _eval_mbq_int8act(ctx: Context, v: Variant) -> ReportRow:
    from .ort_rows import INT8_EXPORT, eval_mbq_int8act

    model = ctx.ort_model(INT8_EXPORT)
    return eval_mbq_int8act(ctx.setup, model, v.label, v.slices, v.bits, ctx.artifact, ctx.ort)


# ---------------------------------------------------------------------------------------------- the table
METHODS: tuple[Method, ...] = (
    Method(
        "float",
        "float32",
        Style("*", "black"),
        label=lambda v: "float32",
        variants=_float_variants,
        evaluate=_eval_float,
        ort=OrtRun("float32"),
        reference=True,
    ),
    Method(
        "rtn",
        "RTN",
        Style("o", "tab:gray"),
        label=_bits_label,
        variants=_baseline_variants("rtn"),
        evaluate=_eval_rtn,
        baseline=True,
        legend_group_size=True,
    ),
    Method(
        "gptq",
        "GPTQ",
        Style("s", "tab:orange"),
        label=_bits_label,
        variants=_baseline_variants("gptq"),
        evaluate=_eval_gptq,
        baseline=True,
        legend_group_size=True,
    ),
    Method(
        "single",
        "same-method single precision",
        Style("^", "tab:green"),
        label=lambda v: f"single-precision calib {v.bits}-bit",
        variants=_per_slice_count("single", lambda plan: "single" in plan.baselines, baseline_bits=True),
        evaluate=_eval_single,
        baseline=True,
    ),
    Method(
        "mbq-uniform",
        "MoBiQuant, uniform slices",
        Style("D", "tab:blue"),
        label=_uniform_label,
        variants=_per_slice_count("mbq-uniform", lambda plan: plan.uniform),
        evaluate=_eval_mbq_uniform,
        ort=OrtRun("mixed-bit", lambda row: {"force": row.slices}),
        connect=True,
    ),
    Method(
        "mbq-tau",
        "MoBiQuant, τ sweep",
        Style(".", "tab:red"),
        label=lambda v: f"MoBiQuant τ={v.tau:g}",
        variants=_per_tau("mbq-tau", lambda plan: True),
        evaluate=_eval_mbq_tau,
        ort=OrtRun("mixed-bit", lambda row: {"tau": row.tau}),
        connect=True,
    ),
    Method(
        "mbq-random",
        "MoBiQuant, random routing at the τ bits",
        Style("x", "tab:brown"),
        label=lambda v: f"MoBiQuant random routing (bits of τ={v.tau:g})",
        variants=_per_tau("mbq-random", lambda plan: plan.random),
        evaluate=_eval_mbq_random,  # after its τ row: the τ rows come first in the table
    ),
    Method(
        "mbq-oracle",
        "MoBiQuant, oracle routing at the τ bits",
        Style("+", "tab:olive"),
        label=lambda v: f"MoBiQuant oracle routing (bits of τ={v.tau:g})",
        variants=_per_tau("mbq-oracle", lambda plan: plan.oracle),
        evaluate=_eval_mbq_oracle,
    ),
    Method(
        "mbq-int8act",
        "MoBiQuant, uniform slices, int8 activations (ORT)",
        Style("d", "tab:cyan"),
        label=lambda v: f"{_uniform_label(v)}, int8 activations",
        variants=_int8_variants,
        evaluate=_eval_mbq_int8act,
        backend="ort",
        connect=True,
    ),
    Method(
        "matmul-nbits",
        "ORT MatMulNBits",
        Style("v", "tab:purple"),
        label=_nbits_label,
        variants=_nbits_variants,
        evaluate=_eval_matmul_nbits,
        backend="ort",
        legend_group_size=True,
    ),
)

_BY_KEY = {m.key: m for m in METHODS}
#: Method keys in table (= report) order.
METHOD_KEYS: tuple[str, ...] = tuple(_BY_KEY)
#: The methods ``--baselines`` chooses from.
BASELINES: tuple[str, ...] = tuple(m.key for m in METHODS if m.baseline)
#: The method of the float row (the reference of every comparison).
REFERENCE: str = next(m.key for m in METHODS if m.reference)


def method(key: str) -> Method:
    """The table row of a method key."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown method {key!r}; known: {', '.join(METHOD_KEYS)}") from None


def label(
    method_key: str,
    *,
    bits: int | None = None,
    group_size: int | None = None,
    slices: int | None = None,
    tau: float | None = None,
    act_order: bool = False,
    accuracy_level: int | None = None,
) -> str:
    """The row label of a report (unique per evaluated model; ``--resume`` matches rows by it)."""
    return Variant(method_key, bits, group_size, slices, tau, act_order, accuracy_level).label


def table_index(key: str | None) -> int:
    """Position of a method in the table (unknown methods after all known ones)."""
    return METHOD_KEYS.index(key) if key in _BY_KEY else len(METHOD_KEYS)
