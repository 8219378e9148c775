"""Run exported mixed-bit models in ONNX Runtime with a per-step latency-budget controller.

Torch-free: needs only onnxruntime, numpy, tokenizers and tqdm.
"""

from ..tau_table import table_points, tau_for_bits
from .controller import (
    FIXED,
    INFEASIBLE,
    MAX_PRECISION,
    TRACKING,
    BudgetController,
    ControllerParams,
    Decision,
    FixedController,
    LatencyMap,
    MapPoint,
)
from .generate import GenerationResult, Sampling, StepRecord, generate
from .probe import load_or_probe, measure_map
from .session import MbqSession, ModelConfig, ModelDirError, SharedKVCache, cache_length

__all__ = [
    "FIXED",
    "INFEASIBLE",
    "MAX_PRECISION",
    "TRACKING",
    "BudgetController",
    "ControllerParams",
    "Decision",
    "FixedController",
    "GenerationResult",
    "LatencyMap",
    "MapPoint",
    "MbqSession",
    "ModelConfig",
    "ModelDirError",
    "Sampling",
    "SharedKVCache",
    "StepRecord",
    "cache_length",
    "generate",
    "load_or_probe",
    "measure_map",
    "table_points",
    "tau_for_bits",
]
