"""Evaluation: held-out perplexity (any logits function: PyTorch, ONNX Runtime) and quality reports."""

from .perplexity import LogitsFn, PerplexityResult, eval_windows, perplexity, torch_logits_fn, window_nll
from .report import check_report, markdown_table, write_report

__all__ = [
    "LogitsFn",
    "PerplexityResult",
    "check_report",
    "eval_windows",
    "markdown_table",
    "perplexity",
    "torch_logits_fn",
    "window_nll",
    "write_report",
]
