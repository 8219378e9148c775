"""Helpers for the exporter tests: tiny artifacts, ORT sessions with the real op library (loaded from the
model dir, as the runtime does), and a PyTorch reference runner (transformers' own forward + DynamicCache)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Max |logits_ORT - logits_torch| for the tiny model (float32, |logits| ~ 3); seen ~2e-6.
TINY_LOGITS_ATOL = 1e-4


def make_artifact(
    out: Path,
    granularity: str = "linear",
    slices=(4, 2, 2),
    group: int = 16,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
) -> Path:
    """A tiny RTN artifact with spread random routers (the repo conftest's recipe, at a chosen path)."""
    from tiny_models import make_tiny_artifact

    return make_tiny_artifact(out, slices, group, granularity, seed, tokenizer_dir=tokenizer_dir)


def ort_session(model_dir: Path, file: str = "model.onnx"):
    """A CPU session of ``model_dir/file`` with the op library from the model dir (the runtime convention)."""
    import onnxruntime as ort

    cfg = json.loads((model_dir / "mbq_config.json").read_text())
    so = ort.SessionOptions()
    if cfg.get("custom_op_library"):
        so.register_custom_ops_library(str(model_dir / cfg["custom_op_library"]))
    return ort.InferenceSession(str(model_dir / file), so, providers=["CPUExecutionProvider"])


@dataclass
class OrtLM:
    """Feeds an exported model with optimum-style inputs; ``run`` returns a dict of outputs."""

    session: object
    config: dict

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        c = self.config
        shape = (batch, c["num_kv_heads"], 0, c["head_dim"])
        return {
            f"past_key_values.{i}.{k}": np.zeros(shape, np.float32)
            for i in range(c["num_layers"])
            for k in ("key", "value")
        }

    def run(
        self,
        input_ids: np.ndarray,
        past: dict[str, np.ndarray] | None = None,
        tau: float = 0.5,
        force: int = 0,
        attention_mask: np.ndarray | None = None,
        position_ids: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        b, s = input_ids.shape
        feeds: dict[str, np.ndarray] = {"input_ids": input_ids.astype(np.int64)}
        if self.config["with_past"]:
            past = past if past is not None else self.empty_past(b)
            feeds.update(past)
            p = next(iter(past.values())).shape[2]
        else:
            p = 0
        feeds["attention_mask"] = (
            attention_mask if attention_mask is not None else np.ones((b, p + s), np.int64)
        )
        if position_ids is None:
            position_ids = np.tile(np.arange(p, p + s, dtype=np.int64), (b, 1))
        feeds["position_ids"] = position_ids
        if "tau" in self.input_names:
            feeds["tau"] = np.array(tau, np.float32)
            feeds["force_slices"] = np.array(force, np.int64)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feeds), strict=True))

    @staticmethod
    def present_as_past(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            k.replace("present.", "past_key_values."): v for k, v in out.items() if k.startswith("present.")
        }


def open_lm(model_dir: Path, file: str = "model.onnx") -> OrtLM:
    return OrtLM(ort_session(model_dir, file), json.loads((model_dir / "mbq_config.json").read_text()))


def torch_forward(model, ctx, input_ids, cache=None, tau: float = 0.5, force: int = 0):
    """transformers' own forward of the mixed-bit model: ``(logits, slice_counts [routed, b, s], cache)``."""
    import torch
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    ids = torch.as_tensor(input_ids)
    ctx.tau, ctx.force_slices, ctx.record = tau, (force or None), True
    ctx.records.clear()
    try:
        with torch.no_grad():
            out = model(ids, cache=cache, use_cache=True)
        counts = torch.stack([r.expand(ids.shape) for r in ctx.records]).numpy() if ctx.records else None
    finally:
        ctx.record = False
        ctx.records.clear()
        ctx.force_slices = None
    return out.logits.numpy(), counts, cache
