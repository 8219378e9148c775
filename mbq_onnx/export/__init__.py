"""ONNX export of mixed-bit models: ``com.mbq::MixedBitMatMul``, routers, ``tau`` input, KV cache (+ .ort).

CLI: ``python -m mbq_onnx.export --help``. Docs: ``docs/export.md``.
"""

from .exporter import ExportError, export_artifact, export_float_model
from .graph import check_graph, export_graph, graph_io
from .schema import register_schema

__all__ = [
    "ExportError",
    "check_graph",
    "export_artifact",
    "export_float_model",
    "export_graph",
    "graph_io",
    "register_schema",
]
