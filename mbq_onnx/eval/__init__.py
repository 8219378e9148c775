"""Evaluation: held-out perplexity (any logits function: PyTorch, ONNX Runtime) and quality reports."""

from .methods import METHODS, Method, Variant
from .perplexity import (
    LogitsFn,
    PerplexityResult,
    bootstrap_ppl,
    bootstrap_ratio,
    eval_windows,
    perplexity,
    torch_logits_fn,
    window_nll,
)
from .report import annotate_report, check_report, markdown_table, write_report
from .rows import OrtPart, ReportRow, TextResult

__all__ = [
    "METHODS",
    "LogitsFn",
    "Method",
    "OrtPart",
    "PerplexityResult",
    "ReportRow",
    "TextResult",
    "Variant",
    "annotate_report",
    "bootstrap_ppl",
    "bootstrap_ratio",
    "check_report",
    "eval_windows",
    "markdown_table",
    "perplexity",
    "torch_logits_fn",
    "window_nll",
    "write_report",
]
