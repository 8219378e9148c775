"""``python -m mbq_onnx.serve``: the OpenAI-compatible server on Ray Serve (docs/serve.md)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from ..runtime.session import ModelConfig, ModelDirError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mbq_onnx.serve", description=__doc__)
    p.add_argument(
        "--model", type=Path, required=True, help="exported lean model dir (python -m mbq_onnx.export)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--slo-ms", type=float, help="p95 time-per-output-token target: load-adaptive τ + admission"
    )
    mode.add_argument("--tau", type=float, help="fixed router threshold τ in [0, 1]")
    mode.add_argument("--slices", type=int, help="fixed slice count (router bypassed); 1 = base precision")
    p.add_argument(
        "--max-batch", type=int, default=8, help="sequences decoded together per replica (default 8)"
    )
    p.add_argument(
        "--max-queue", type=int, default=16, help="requests waiting per replica before 429 (default 16)"
    )
    p.add_argument(
        "--queue-timeout-s", type=float, default=30.0, help="wait for a slot before 503 (default 30)"
    )
    p.add_argument("--threads", type=int, help="ORT intra-op threads per replica (default: all cores)")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-name", help="the model id clients send (default: the model dir's name)")
    p.add_argument("--probe-cache", type=Path, help="latency-map cache dir (default: the cache dir's probe/)")
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> ModelConfig:
    """Validate the arguments against the model before starting Ray (exit 2 with the reason)."""
    try:
        config = ModelConfig.load(args.model) if args.model.is_dir() else None
    except ModelDirError as e:
        p.error(str(e))
    if config is None:
        p.error(f"--model {args.model} is not a directory")
    if config.raw.get("graph") != "lean":
        p.error(
            f"--model {args.model}: the server needs a lean export (python -m mbq_onnx.export --graph lean)"
        )
    checks = [
        (args.slo_ms is None or (math.isfinite(args.slo_ms) and args.slo_ms > 0), "--slo-ms must be > 0"),
        (args.tau is None or (math.isfinite(args.tau) and 0 <= args.tau <= 1), "--tau must be in [0, 1]"),
        (
            args.slices is None or 1 <= args.slices <= config.num_slices,
            f"--slices must be in 1..{config.num_slices}",
        ),
        (args.max_batch >= 1, "--max-batch must be >= 1"),
        (args.max_queue >= 0, "--max-queue must be >= 0"),
        (args.queue_timeout_s > 0, "--queue-timeout-s must be > 0"),
        (args.threads is None or args.threads >= 1, "--threads must be >= 1"),
        (args.replicas >= 1, "--replicas must be >= 1"),
        (0 < args.port < 65536, "--port must be in 1..65535"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:  # load it once here: a broken model dir or op library is one clear line, not a Ray deploy failure
        from ..runtime.session import MbqSession

        MbqSession(args.model, threads=1)
    except Exception as e:
        p.error(f"--model {args.model}: {e}")
    with socket.socket() as sock:  # Ray's proxy would share a taken port silently (SO_REUSEPORT)
        try:
            sock.bind((args.host, args.port))
        except OSError as e:
            p.error(f"cannot listen on {args.host}:{args.port}: {e.strerror}")
    return config


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _check(p, args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray
    from ray import serve

    from .deployment import MbqReplica, ReplicaOptions
    from .engine import Precision

    name = args.model_name or args.model.resolve().name
    precision = Precision(slo_ms=args.slo_ms, tau=args.tau or 0.0, slices=args.slices or 0)
    options = ReplicaOptions(
        model_dir=str(args.model.resolve()),
        model_name=name,
        precision=precision,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout_s,
        threads=args.threads,
        probe_cache=str(args.probe_cache.resolve()) if args.probe_cache else None,
    )
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")  # fmt: skip
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        deployment = MbqReplica.options(
            num_replicas=args.replicas,
            # Admission is the engine's: let Ray hand every request to a replica, which answers 429/503.
            max_ongoing_requests=args.max_batch + args.max_queue + 64,
            ray_actor_options={"num_cpus": 1},
        )
        serve.run(deployment.bind(options), name="mbq", route_prefix="/")
        print(f"serving {name} at http://{args.host}:{args.port}/v1", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    except Exception as e:
        print(f"error: the server did not start: {e}", file=sys.stderr)
        return 1
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
