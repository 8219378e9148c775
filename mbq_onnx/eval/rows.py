"""Typed report rows: :class:`ReportRow` (one evaluated model), :class:`TextResult` (its score on one text)
and :class:`OrtPart` (the same model run in ONNX Runtime), each with ``to_dict``/``from_dict`` for the
``quality.json`` format (:mod:`mbq_onnx.eval.report`).

The JSON stays what it was: field names are the JSON keys, keys a row does not know are kept in ``extra``,
and a loaded object remembers its key order (and its explicit ``null`` values), so ``from_dict`` →
``to_dict`` gives back the same JSON text, old reports (``avg_bits`` results) included. For callers written
against the dict rows, every record also reads and writes by JSON key (``row["results"]``, ``res["ppl"]``,
``row["granularity"] = ...``).

Left as plain JSON values: ``speed`` entries (:meth:`mbq_onnx.eval.speed.Speed.to_dict`), ``agreement``
(text → relative gap), the paired ``{"ratio", "ci95"}`` comparisons and the ``calibration`` and
``random_routing``/``oracle_routing`` notes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from .perplexity import PerplexityResult

#: Key of a result's average bits per decoder-linear weight read; ``avg_bits`` in older reports.
BITS_KEY = "avg_bits_per_weight"
OLD_BITS_KEY = "avg_bits"

R = TypeVar("R", bound="JsonRecord")
_BOOKKEEPING = frozenset({"extra", "json_keys", "json_nulls", "old_bits_key"})


def _to_json(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


class JsonRecord:
    """A dataclass that is one JSON object (the base of the report's records).

    Subclasses are dataclasses whose last fields are ``extra``, ``json_keys`` and ``json_nulls``; ``ALWAYS``
    names the fields written even when ``None``, ``DECODE`` the nested records' readers.
    """

    ALWAYS: ClassVar[frozenset[str]] = frozenset()
    DECODE: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    extra: dict[str, Any]
    json_keys: tuple[str, ...]
    json_nulls: frozenset[str]

    def _json_key(self, name: str) -> str:
        return name

    def _names(self) -> Iterator[str]:
        return (f.name for f in fields(self) if f.name not in _BOOKKEEPING)  # type: ignore[arg-type]

    def _present(self, name: str) -> bool:
        if getattr(self, name) is not None or name in self.ALWAYS:
            return True
        return self._json_key(name) in self.json_nulls

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (fresh containers; in the loaded key order, new keys after it)."""
        d = {self._json_key(n): _to_json(getattr(self, n)) for n in self._names() if self._present(n)}
        d.update((k, _to_json(v)) for k, v in self.extra.items())
        if self.json_keys:
            d = {**{k: d[k] for k in self.json_keys if k in d}, **d}
        return d

    @classmethod
    def from_dict(cls: type[R], d: Mapping[str, Any]) -> R:
        """The record of a JSON object (keys it does not know go to ``extra``)."""
        names = {f.name for f in fields(cls) if f.name not in _BOOKKEEPING}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {n: None for n in names}
        extra = {}
        for key, value in d.items():
            name = cls._field_of(key, d)
            if name in names:
                decode = cls.DECODE.get(name)
                kwargs[name] = decode(value) if decode is not None and value is not None else value
            else:
                extra[key] = value
        rec = cls(
            **kwargs,
            extra=extra,
            json_keys=tuple(d),
            json_nulls=frozenset(k for k, v in d.items() if v is None),
        )  # type: ignore[call-arg]
        rec._loaded(d)
        return rec

    @classmethod
    def _field_of(cls, key: str, d: Mapping[str, Any]) -> str | None:
        return key

    def _loaded(self, d: Mapping[str, Any]) -> None:
        """Hook after :meth:`from_dict`."""

    @classmethod
    def coerce(cls: type[R], obj: R | Mapping[str, Any]) -> R:
        """``obj`` itself when it is a record, else the record of the JSON object."""
        return obj if isinstance(obj, cls) else cls.from_dict(obj)

    # by JSON key, as the dict rows were read and written
    def _name_of(self, key: str) -> str | None:
        return next((n for n in self._names() if self._json_key(n) == key), None)

    def __getitem__(self, key: str) -> Any:
        name = self._name_of(key)
        if name is not None and self._present(name):
            return getattr(self, name)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        name = self._name_of(key)
        if name is not None:
            setattr(self, name, value)
        else:
            self.extra[key] = value

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass(eq=False)
class TextResult(JsonRecord):
    """One model's perplexity on one text (``ppl`` … ``window_tokens``: :class:`PerplexityResult`), its
    average bits per weight read, and the comparisons :func:`~mbq_onnx.eval.report.annotate_report` fills:
    ``vs_float`` (paired ``{"ratio", "ci95"}``), ``vs_float_activations`` for int8-activation rows, and for
    τ rows ``interpolated_ppl``/``interpolated_between``
    (the uniform slice counts bracketing its bits), ``random_ppl``/``vs_random``, ``oracle_ppl``/``vs_oracle``
    and ``below_both``."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    window: int
    ci95: list[float] | None = None
    window_nll: list[float] | None = None
    window_tokens: list[int] | None = None
    avg_bits_per_weight: float | None = None
    target_bits_per_weight: float | None = None  # random/oracle-routing rows: the τ row's bits they aim at
    vs_float: dict[str, Any] | None = None
    #: int8-activation rows: paired ratio over the float-activation run of the same model
    vs_float_activations: dict[str, Any] | None = None
    #: MoBiQuant int8-activation rows: their vs_float_activations ratio over MatMulNBits' (same bits), paired
    int8_cost_vs_matmul_nbits: dict[str, Any] | None = None
    interpolated_ppl: float | None = None
    interpolated_between: list[float] | None = None
    random_ppl: float | None = None
    vs_random: dict[str, Any] | None = None
    oracle_ppl: float | None = None
    vs_oracle: dict[str, Any] | None = None
    below_both: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    json_keys: tuple[str, ...] = field(default=(), repr=False)
    json_nulls: frozenset[str] = field(default=frozenset(), repr=False)
    #: read from an old report (bits under ``avg_bits``): written back under that key until :meth:`upgrade`
    old_bits_key: bool = field(default=False, repr=False)

    ANNOTATIONS: ClassVar[tuple[str, ...]] = (
        "interpolated_ppl",
        "interpolated_between",
        "random_ppl",
        "vs_random",
        "oracle_ppl",
        "vs_oracle",
        "below_both",
    )

    @classmethod
    def of(cls, res: PerplexityResult, bits: float) -> TextResult:
        d = res.to_dict()
        return cls(**d, avg_bits_per_weight=float(bits))

    def _json_key(self, name: str) -> str:
        return OLD_BITS_KEY if name == "avg_bits_per_weight" and self.old_bits_key else name

    @classmethod
    def _field_of(cls, key: str, d: Mapping[str, Any]) -> str | None:
        if key == OLD_BITS_KEY and BITS_KEY not in d:
            return "avg_bits_per_weight"
        return key

    def _loaded(self, d: Mapping[str, Any]) -> None:
        self.old_bits_key = OLD_BITS_KEY in d and BITS_KEY not in d

    @property
    def bits(self) -> float | None:
        """Average bits per weight (either key)."""
        return None if self.avg_bits_per_weight is None else float(self.avg_bits_per_weight)

    def upgrade(self) -> TextResult:
        """Bits under ``avg_bits_per_weight`` from now on (an old ``avg_bits`` key is dropped), in place."""
        if self.old_bits_key:
            self.old_bits_key = False
            self.json_keys = tuple(k for k in self.json_keys if k != OLD_BITS_KEY)
        self.extra.pop(OLD_BITS_KEY, None)
        return self


def _results(d: Mapping[str, Any]) -> dict[str, TextResult]:
    return {text: TextResult.coerce(res) for text, res in d.items()}


@dataclass(eq=False)
class OrtPart(JsonRecord):
    """A row's model run in ONNX Runtime: the export's folder name and weight-file bytes, and for rows
    scored in PyTorch too, its ORT ``results`` and ``agreement`` (text → ``|ppl_ORT / ppl_PyTorch - 1|``)."""

    model_dir: str
    results: dict[str, TextResult] | None = None
    agreement: dict[str, float] | None = None
    file_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    json_keys: tuple[str, ...] = field(default=(), repr=False)
    json_nulls: frozenset[str] = field(default=frozenset(), repr=False)

    DECODE: ClassVar[dict[str, Callable[[Any], Any]]] = {"results": _results}


@dataclass(eq=False)
class ReportRow(JsonRecord):
    """One evaluated model of a report: its method (a key of :data:`mbq_onnx.eval.methods.METHODS`), unique
    label, nominal ``bits`` (``None`` for τ and random-routing rows, whose bits are measured per text),
    stored bytes, and a :class:`TextResult` per text; ``ort``/``speed`` when it ran in ONNX Runtime."""

    method: str
    label: str
    bits: float | None
    group_size: int | None
    slices: int | None
    tau: float | None
    model_bytes: int
    results: dict[str, TextResult]
    artifact: str | None = None  # MoBiQuant rows: the artifact folder's name
    calibration: dict[str, Any] | None = None  # GPTQ / single-precision rows: the data (and config) used
    backend: str | None = None  # "ort": scored in ONNX Runtime only (``results`` are ORT's)
    accuracy_level: int | None = None  # ORT-only rows: accuracy_level of the quantized MatMuls
    random_routing: dict[str, Any] | None = None  # random-routing rows: seed, per-text counts, τ row
    oracle_routing: dict[str, Any] | None = None  # oracle-routing rows: per-text counts, τ row
    seconds: float | None = None  # since the command started, when the row was done
    ort: OrtPart | None = None
    speed: dict[str, dict[str, Any]] | None = None  # thread count → Speed.to_dict()
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    json_keys: tuple[str, ...] = field(default=(), repr=False)
    json_nulls: frozenset[str] = field(default=frozenset(), repr=False)

    ALWAYS: ClassVar[frozenset[str]] = frozenset(
        {"method", "label", "bits", "group_size", "slices", "tau", "model_bytes", "results"}
    )
    DECODE: ClassVar[dict[str, Callable[[Any], Any]]] = {"results": _results, "ort": OrtPart.coerce}

    def upgrade(self) -> ReportRow:
        """Old ``avg_bits`` results renamed to ``avg_bits_per_weight`` (PyTorch and ORT), in place."""
        for res in (*(self.results or {}).values(), *((self.ort.results or {}) if self.ort else {}).values()):
            res.upgrade()
        return self
