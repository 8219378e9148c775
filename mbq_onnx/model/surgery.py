"""Model surgery on transformers causal LMs: finding the decoder layers, swapping submodules, and
capturing what enters each layer — shared by quantization (:mod:`.linear`), calibration and the
baselines, so every one of them sees a model the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: Keyword arguments of a decoder layer's forward that are not kept when its inputs are captured: the
#: hidden states travel separately, and the calibration forwards run without a KV cache.
DROPPED_LAYER_KWARGS = ("hidden_states", "cache", "past_key_values", "past_key_value")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (``model.model.layers`` for LLaMA/Qwen2/Mistral…)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return layers
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module):
            return module
    raise ValueError(
        f"cannot find the decoder layers (a ModuleList named '*layers') in {type(model).__name__}"
    )


def decoder_layers_name(model: nn.Module) -> str:
    """The qualified name of :func:`decoder_layers` (e.g. ``model.layers``)."""
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError("decoder layers are not registered as a submodule of the model")


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted, relative to ``root``) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def layer_output(layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
    """A decoder layer's output hidden states (transformers layers may return a tuple)."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class _Captured(Exception):
    pass


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, samples: Sequence[Tensor]
) -> tuple[list[Tensor], list[list[dict[str, Any]]]]:
    """Run ``model`` on each token-id sample (``[1, L]``) up to its first decoder layer.

    Returns the hidden states entering layer 0 per sample (float32) and, per sample, the keyword
    arguments of every layer (rotary embeddings, mask, positions; :data:`DROPPED_LAYER_KWARGS` left out,
    ``use_cache=False`` added). Those are taken from the model's own forward of the first sample of each
    length, per layer, because they may differ between layers (a sliding-window layer gets its own
    mask, e.g. Qwen2 with ``layer_types``); samples of one length share them.
    """
    layers = decoder_layers(model)
    index = {id(layer): i for i, layer in enumerate(layers)}
    hidden: list[Tensor] = []
    kwargs_by_len: dict[int, list[dict[str, Any]]] = {}
    per_sample: list[list[dict[str, Any]]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        i = index[id(module)]
        if i == 0:
            h = args[0] if args else kwargs["hidden_states"]
            hidden.append(h.detach().float())
            per_sample.append(kwargs_by_len.setdefault(h.shape[1], []))
        per_layer = per_sample[-1]
        if len(per_layer) == i:  # first sample of this length: record every layer's own arguments
            per_layer.append(
                {k: v for k, v in kwargs.items() if k not in DROPPED_LAYER_KWARGS} | {"use_cache": False}
            )
        if len(per_layer) == len(layers):
            raise _Captured

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        for ids in samples:
            with contextlib.suppress(_Captured):
                model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return hidden, per_sample
