#!/usr/bin/env python3
"""Record generation traces from the Python runtime for the Android Java core's tests.

The Java generation loop (``android_demo/core``, ``Generator``) cannot run ONNX Runtime here (the
AAR's native libraries are Android builds), so its tests replay what the Python runtime did: every
ORT call of ``mbq_onnx.runtime.generate`` (the feeds it got — input ids, attention-mask length,
position ids, τ, forced slices — and the logits and slice counts it returned) plus every latency
fed to the controller. The Java test feeds the same logits and latencies through its own loop and
must reproduce the Python decisions, tokens and statistics. A lean graph (``"graph": "lean"``) is
recorded at ``MbqSession._run_shared`` (its feeds go through an IOBinding): no position ids
(``position_ids`` is null), ``logits_to_keep`` 1, the attention mask ``past + s`` long.

Traces (both greedy, 16 new tokens at most, one intra-op thread):

- ``budget``: a latency budget with the map probed on this machine (``measure_map``);
- ``fixed_tau``: τ = 0.5, with a stop token taken from the run itself, so it ends with ``stop_token``.

The model is an exported model dir (``--model-dir``); without it a tiny random-weight mixed-bit
LLaMA is built and exported first (~30 s; needs the ``full`` extras and ``libmbq_ops``).

Usage: ``python tools/make_android_fixture.py [--model-dir DIR] [--out FILE]``
(default ``--out``: ``tests/android/fixtures/generation_trace.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mbq_onnx.atomic import write_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "android" / "fixtures" / "generation_trace.json"
FORMAT, VERSION = "mbq-generation-trace", 1
PROMPT = "The committee met on Tuesday to"
MAX_NEW_TOKENS = 16
FIXED_TAU = 0.5
RUNTIME_TESTLIB = REPO_ROOT / "tests" / "runtime" / "runtime_testlib.py"


def build_tiny_model(root: Path, seed: int = 0) -> Path:
    """A seeded random 2-layer LLaMA (hidden 512, byte-level vocab 256) → RTN mixed-bit → exported dir.

    The runtime tests' builder (``tests/runtime/runtime_testlib.py``), so the recording and the Python
    tests use the same recipe. Big enough that the slice count visibly changes step latency (the
    controller needs a slope)."""
    spec = importlib.util.spec_from_file_location("mbq_runtime_testlib", RUNTIME_TESTLIB)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load the tiny-model builder {RUNTIME_TESTLIB}")
    testlib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(testlib)
    return testlib.build_exported_model(root, seed=seed, max_positions=256, source_model="tiny-random-llama")


class _RecordingOrtSession:
    """Wraps an ``ort.InferenceSession``: records the feeds and outputs of every ``run``."""

    def __init__(self, inner: Any, output_names: list[str]):
        self._inner = inner
        self._names = output_names
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, output_names: Any, feeds: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> list:
        outs = self._inner.run(output_names, feeds, *args, **kwargs)
        by_name = dict(zip(output_names or self._names, outs, strict=True))
        ids = feeds["input_ids"]
        past = feeds["past_key_values.0.key"].shape[2]
        mask = feeds.get("attention_mask")
        positions = feeds.get("position_ids")
        counts = by_name.get("slice_counts")
        self.calls.append(
            {
                "input_ids": [int(t) for t in ids[0]],
                "past_length": int(past),
                "attention_mask_length": None if mask is None else int(mask.shape[1]),
                "position_ids": None if positions is None else [int(p) for p in positions[0]],
                "tau": float(np.float32(feeds["tau"])),
                "force_slices": int(feeds["force_slices"]),
                "logits": [float(x) for x in by_name["logits"][0, -1, :].astype(np.float32)],
                "slice_counts": [] if counts is None else [int(c) for c in counts[:, 0, -1]],
            }
        )
        return outs


def _recording_run_shared(session: Any, calls: list[dict[str, Any]]) -> Any:
    """``session._run_shared`` (a lean graph's call) wrapped to append each call's feeds and outputs."""
    inner = session._run_shared

    def run_shared(
        input_ids: np.ndarray,
        cache: Any,
        tau: float,
        force_slices: int,
        attention_mask: np.ndarray | None,
        all_positions: bool,
    ) -> Any:
        past = cache.length
        out = inner(input_ids, cache, tau, force_slices, attention_mask, all_positions)
        s = int(input_ids.shape[1])
        logits = out.logits[0, -1] if all_positions else out.logits[0]
        counts = out.slice_counts
        calls.append(
            {
                "input_ids": [int(t) for t in input_ids[0]],
                "past_length": int(past),
                "attention_mask_length": past + s if attention_mask is None else int(attention_mask.shape[1]),
                "position_ids": None,  # a lean graph computes positions from the attention mask
                "logits_to_keep": s if all_positions else 1,
                "tau": float(np.float32(tau)),
                "force_slices": int(force_slices),
                "logits": [float(x) for x in logits.astype(np.float32)],
                "slice_counts": [int(c) for c in counts[:, 0, -1]] if counts.ndim == 3 else [],
            }
        )
        return out

    return run_shared


def record_trace(
    session: Any, name: str, controller: Any, stop_token_ids: list[int], controller_json: dict[str, Any]
) -> dict[str, Any]:
    """Run ``generate`` greedily with recording hooks and return the trace dict."""
    from mbq_onnx.runtime import Sampling, generate

    recorder = _RecordingOrtSession(session.session, [o.name for o in session.session.get_outputs()])
    if session.shared_kv:  # a lean graph runs through an IOBinding, not session.run
        session._run_shared = _recording_run_shared(session, recorder.calls)
    measured: list[float] = []
    update = controller.update

    def recording_update(ms: float) -> Any:
        measured.append(float(ms))
        return update(ms)

    controller.update = recording_update
    session.session = recorder
    try:
        prompt_ids = session.tokenizer.encode(PROMPT).ids
        result = generate(
            session,
            prompt_ids,
            controller,
            max_new_tokens=MAX_NEW_TOKENS,
            sampling=Sampling(),
            stop_token_ids=stop_token_ids,
        )
    finally:
        session.session = recorder._inner
        session.__dict__.pop("_run_shared", None)
        controller.update = update
    summary = result.summary()
    calls = recorder.calls
    for i, call in enumerate(calls):  # call 0 is the prefill; call i >= 1 is decode step i - 1
        call["measured_ms"] = measured[i - 1] if i >= 1 else None
    return {
        "name": name,
        "controller": controller_json,
        "stop_token_ids": list(stop_token_ids),
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompt_ids": list(prompt_ids),
        "calls": calls,
        "expected": {
            "token_ids": result.token_ids,
            "stop_reason": result.stop_reason,
            "steps": [{k: v for k, v in s.items() if k != "index"} for s in result.trace()],
            "summary": {k: summary[k] for k in ("tokens_per_s", "p50_ms", "p95_ms", "avg_bits")},
        },
    }


def record(model_dir: Path) -> dict[str, Any]:
    """Both traces for the exported model in ``model_dir``."""
    from mbq_onnx.runtime import BudgetController, ControllerParams, FixedController, MbqSession, measure_map

    session = MbqSession(model_dir, threads=1)
    lm = measure_map(session, progress=False)
    params = ControllerParams()
    # A budget near the middle of the map; a generate step also pays for feeds and sampling (the probe
    # times the ORT call only), hence the 1.25: the trace then moves τ instead of saturating at once.
    mid = (lm.tau_min + lm.tau_max) / 2
    target = 1.25 * lm.latency_at(mid) / (1.0 - params.headroom)
    budget_json = {
        "mode": "budget",
        "target_ms": target,
        "map": lm.to_json(),
        "params": dataclasses.asdict(params),
    }
    budget = record_trace(session, "budget", BudgetController(lm, target, params), [], budget_json)

    tau_json = {"mode": "tau", "tau": FIXED_TAU}
    probe = record_trace(session, "fixed_tau", FixedController(tau=FIXED_TAU), [], tau_json)
    tokens = probe["expected"]["token_ids"]
    stop = [tokens[len(tokens) // 2]] if tokens else []
    fixed = record_trace(session, "fixed_tau", FixedController(tau=FIXED_TAU), stop, tau_json)
    return {
        "format": FORMAT,
        "version": VERSION,
        "source": "python-runtime",
        "generator": "tools/make_android_fixture.py",
        "model": {
            "slice_bits": list(session.config.slice_bits),
            "num_layers": session.config.num_layers,
            "vocab_size": len(budget["calls"][0]["logits"]),
        },
        "mbq_config": json.loads((model_dir / "mbq_config.json").read_text()),
        "traces": [budget, fixed],
    }


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    write_file(path, json.dumps(data, separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="exported model dir (default: build a tiny one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture file to write")
    args = parser.parse_args(argv)
    if args.model_dir is not None:
        if not (args.model_dir / "mbq_config.json").is_file():
            print(
                f"error: {args.model_dir} is not an exported model dir (no mbq_config.json)", file=sys.stderr
            )
            return 1
        data = record(args.model_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="mbq-android-fixture-") as tmp:
            print("building a tiny mixed-bit model ...", file=sys.stderr)
            data = record(build_tiny_model(Path(tmp)))
    write_atomic(args.out, data)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
