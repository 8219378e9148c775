"""The OpenAI-compatible HTTP surface of one replica: request schemas, validation, responses and SSE
(docs/serve.md, "Endpoints" and "Errors"). Independent of Ray: :mod:`.deployment` mounts it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..runtime.generate import Sampling
from .chat import ChatTemplate, ChatTemplateError
from .engine import BatchEngine, ContextLengthError, GenerationRequest, Refused, TokenEvent, stop_ids_for


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    max_tau: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)


class CompletionBody(_Body):
    prompt: str | list[str] | list[int]
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Literal[1] | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Literal[False] | None = None


def error(
    status: int, message: str, param: str | None = None, code: str | None = None, **headers: str
) -> Response:
    """An OpenAI-style error response."""
    kind = (
        "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


class BadRequest(Exception):
    """A 4xx answer with an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class OpenAIFrontend:
    """Turns OpenAI requests into engine requests and engine events into OpenAI responses."""

    DEFAULT_MAX_TOKENS = 16

    def __init__(self, engine: BatchEngine, model_name: str, chat: ChatTemplate | None, replica: str = ""):
        self.engine, self.model_name, self.chat, self.replica = engine, model_name, chat, replica
        self.tokenizer = engine.session.tokenizer
        self.vocab_size = self.tokenizer.get_vocab_size()

    # ---- endpoints ----------------------------------------------------------------------------------
    def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "owned_by": "mbq-onnx"}],
        }

    async def completions(self, request: Request) -> Response:
        return await self._handle(request, CompletionBody, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._handle(request, ChatBody, chat=True)

    # ---- the shared path ----------------------------------------------------------------------------
    async def _handle(self, request: Request, schema: type[_Body], chat: bool) -> Response:
        try:
            body = await self._parse(request, schema)
            req = self._generation_request(body, chat)
            self.engine.validate(req)
        except BadRequest as e:
            self.engine.metrics.bad_request()
            return error(e.status, str(e), e.param, e.code)
        except ContextLengthError as e:
            self.engine.metrics.bad_request()
            return error(400, str(e), "max_tokens", "context_length_exceeded")
        except ValueError as e:
            self.engine.metrics.bad_request()
            return error(400, str(e))
        try:
            events = await self.engine.submit(req)
        except Refused as e:
            return error(e.status, str(e), None, e.code, **{"Retry-After": str(e.retry_after_s)})
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        prompt_tokens = len(req.prompt_ids)
        if body.stream:
            return StreamingResponse(
                self._sse(events, rid, created, chat, prompt_tokens), media_type="text/event-stream"
            )
        text, final = "", None
        async for ev in events:
            text += ev.text
            final = ev
        return JSONResponse(self._final_body(rid, created, chat, text, final, prompt_tokens))

    async def _parse(self, request: Request, schema: type[_Body]) -> _Body:
        try:
            raw = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise BadRequest(400, "the request body must be a JSON object")
        try:
            body = schema.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise BadRequest(400, f"{param}: {first['msg']}", param) from None
        if body.model != self.model_name:
            raise BadRequest(404, f"model {body.model!r} does not exist; this server has {self.model_name!r}",
                             "model", "model_not_found")  # fmt: skip
        return body

    def _generation_request(self, body: _Body, chat: bool) -> GenerationRequest:
        if chat:
            assert isinstance(body, ChatBody)
            if self.chat is None:
                raise BadRequest(400, "this model has no chat template; use /v1/completions", "messages")
            try:
                text = self.chat.render([m.model_dump() for m in body.messages])
            except ChatTemplateError as e:
                raise BadRequest(400, str(e), "messages") from None
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            max_tokens = body.max_completion_tokens or body.max_tokens
        else:
            assert isinstance(body, CompletionBody)
            prompt = body.prompt
            if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                if len(prompt) != 1:
                    raise BadRequest(400, "only one prompt per request is supported", "prompt")
                prompt = prompt[0]
            if isinstance(prompt, str):
                ids = self.tokenizer.encode(prompt).ids
            else:
                ids = [int(t) for t in prompt]
                if any(not 0 <= t < self.vocab_size for t in ids):
                    raise BadRequest(400, f"prompt token ids must be in [0, {self.vocab_size})", "prompt")
            max_tokens = body.max_tokens
        if not ids:
            raise BadRequest(400, "the prompt is empty (no tokens)", "messages" if chat else "prompt")
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if any(not s for s in stops):
            raise BadRequest(400, "stop sequences must be non-empty strings", "stop")
        return GenerationRequest(
            prompt_ids=ids,
            max_tokens=max_tokens or self.DEFAULT_MAX_TOKENS,
            sampling=Sampling(temperature=body.temperature, top_p=body.top_p, seed=body.seed),
            stop_ids=stop_ids_for(self.engine.session),
            stop_strings=stops,
            max_tau=body.max_tau,
        )

    # ---- responses ----------------------------------------------------------------------------------
    def _choice(self, chat: bool, text: str, finish: str | None, delta: bool) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        key = "delta" if delta else "message"
        msg = {"role": "assistant", "content": text} if (text or not delta) else {}
        return {"index": 0, key: msg, "finish_reason": finish, "logprobs": None}

    def _envelope(self, rid: str, created: int, obj: str, choice: dict) -> dict[str, Any]:
        return {"id": rid, "object": obj, "created": created, "model": self.model_name, "choices": [choice]}

    def _final_body(self, rid, created, chat, text, final: TokenEvent | None, prompt_tokens) -> dict:
        choice = self._choice(chat, text, final.finish_reason if final else None, delta=False)
        body = self._envelope(rid, created, "chat.completion" if chat else "text_completion", choice)
        return {**body, **self._usage(final, prompt_tokens)}

    def _usage(self, final: TokenEvent | None, prompt_tokens: int) -> dict[str, Any]:
        stats = dict(final.stats or {}) if final else {}
        n = stats.pop("completion_tokens", 0)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        return {"usage": usage, "mbq": {**stats, "replica": self.replica}}

    async def _sse(
        self, events: AsyncIterator[TokenEvent], rid, created, chat, prompt_tokens
    ) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            async for ev in events:
                if ev.finish_reason is None and not ev.text:
                    continue
                chunk = self._envelope(
                    rid, created, obj, self._choice(chat, ev.text, ev.finish_reason, delta=True)
                )
                if ev.finish_reason is not None:
                    chunk.update(self._usage(ev, prompt_tokens))
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()  # a disconnect lands here too: the engine frees the slot
