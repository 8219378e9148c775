"""Shared fixtures: a tiny seeded random LLaMA and tiny artifacts made from it (RTN + random routers)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import make_tiny_artifact, make_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_llama():
    """Factory fixture: ``tiny_llama(seed=0, tie_word_embeddings=True, **config_overrides)``."""
    return make_tiny_llama


@pytest.fixture
def tiny_artifact(tmp_path: Path) -> Callable[..., Path]:
    """Factory fixture: ``tiny_artifact(slices=(4, 2, 2), group=16, granularity="linear", ...) -> Path`` —
    an artifact from the tiny LLaMA with RTN parameters and random (spread) routers; no calibration."""

    def make(
        slices=(4, 2, 2),
        group: int = 16,
        granularity: str = "linear",
        seed: int = 0,
        tie_word_embeddings: bool = True,
        name: str | None = None,
        router_hidden: int = 8,
    ) -> Path:
        out = tmp_path / (name or f"artifact-{'-'.join(map(str, slices))}-g{group}-{granularity}-s{seed}")
        return make_tiny_artifact(out, slices, group, granularity, seed, tie_word_embeddings, router_hidden)

    return make
