"""The Ray Serve deployment: one replica = one ORT session + :class:`BatchEngine` + the OpenAI frontend,
mounted on FastAPI through ``serve.ingress`` (docs/serve.md)."""

import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from ray import serve

from ..runtime.session import MbqSession
from .api import OpenAIFrontend
from .chat import ChatTemplate
from .engine import BatchEngine, Precision

app = FastAPI(title="mbq-onnx", docs_url=None, redoc_url=None)


@dataclass(frozen=True)
class ReplicaOptions:
    """Everything a replica needs to start (picklable: Ray ships it to each replica)."""

    model_dir: str
    model_name: str
    precision: Precision
    max_batch: int = 8
    max_queue: int = 16
    queue_timeout_s: float = 30.0
    threads: int | None = None
    probe_cache: str | None = None


def build_engine(options: ReplicaOptions, progress: bool = False) -> BatchEngine:
    """The session, (for ``--slo-ms``) the probed latency map and batch scale, and the engine over them."""
    from ..runtime.probe import load_or_probe, measure_batch_scale

    session = MbqSession(options.model_dir, threads=options.threads)
    if not session.shared_kv:
        raise ValueError(
            f"{options.model_dir}: the server needs a lean export (python -m mbq_onnx.export --graph lean)"
        )
    lmap = scale = None
    if options.precision.slo_ms is not None:
        cache = Path(options.probe_cache) if options.probe_cache else None
        lmap, _ = load_or_probe(session, cache, progress=progress)
        scale = measure_batch_scale(session, options.max_batch, steps=8, progress=progress)
    return BatchEngine(
        session,
        options.precision,
        lmap,
        scale,
        max_batch=options.max_batch,
        max_queue=options.max_queue,
        queue_timeout_s=options.queue_timeout_s,
    )


@serve.deployment
@serve.ingress(app)
class MbqReplica:
    """One replica of the OpenAI-compatible server."""

    def __init__(self, options: ReplicaOptions):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.engine = build_engine(options)
        chat = ChatTemplate.from_model_dir(Path(options.model_dir))
        replica = serve.get_replica_context().replica_id.unique_id
        self.frontend = OpenAIFrontend(self.engine, options.model_name, chat, replica)

    @app.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models(self) -> dict:
        return self.frontend.models()

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self.frontend.completions(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self.frontend.chat_completions(request)

    @app.get("/metrics")
    def metrics(self) -> Response:
        return PlainTextResponse(self.engine.metrics.render(), media_type="text/plain; version=0.0.4")
