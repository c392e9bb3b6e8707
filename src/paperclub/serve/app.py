"""The OpenAI-compatible HTTP API over one engine: `/v1/models`, `/v1/completions`, `/v1/chat/completions`,
`/health`, `/metrics`, and the chat page at `/`.

A handler validates the request (pydantic, then the prompt against the model), hands it to the engine loop
(`engine_loop.py`) and streams back what the loop produces. Bad input is answered with OpenAI's error schema
and a 4xx, never a 500: malformed JSON, a wrong type or range (400, naming the field), an unknown model (404),
a missing or wrong API key (401), a body over the size limit (413), a full queue (429 with Retry-After), a
server that is draining (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from paperclub.engine.sampling import SamplingParams
from paperclub.errors import UserError
from paperclub.serve import protocol as api
from paperclub.serve.engine_loop import Delta, EngineLoop, QueueFull, RequestStream
from paperclub.serve.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    model_name: str
    api_key: str | None = None
    max_queue: int = 256  # sequences waiting beyond the running batch before requests get 429
    max_body_bytes: int = 4 << 20
    retry_after_s: int = 1


class Server:
    """What the handlers share: the LLM (tokenizer, limits), the engine loop, metrics and the draining flag."""

    def __init__(self, llm, config: ServeConfig):
        self.llm, self.config = llm, config
        self.metrics = Metrics(config.model_name)
        self.loop = EngineLoop(llm.engine, llm.tokenizer, self.metrics, max_queue=config.max_queue)
        self.draining = False

    # -- request -> engine inputs --------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.model_name:
            raise api.APIError(404, f"The model `{model}` does not exist: this server serves "
                                    f"`{self.config.model_name}`.", param="model", code="model_not_found")

    def prompt_ids(self, prompt: Any, param: str) -> list[int]:
        try:
            ids = self.llm.encode(prompt)
            self.llm.engine.check_prompt(ids)
        except UserError as e:
            raise api.APIError(400, str(e), param=param) from e
        return ids

    def sampling(self, req: api._Request, prompt_len: int, max_tokens: int | None, logprobs: int | None,
                 choice: int) -> SamplingParams:
        room = self.llm.engine.room_for(prompt_len)
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            raise api.APIError(400, f"This model's maximum context length is {self.llm.max_model_len} tokens: the "
                                    f"prompt has {prompt_len} and max_tokens asks for {max_tokens} more (at most "
                                    f"{room} fit). Lower max_tokens or shorten the prompt.", param="max_tokens")
        seed = req.seed
        if seed is not None and choice:
            seed = (seed + choice) % 2**63  # the n choices of a seeded request differ, each reproducibly
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=max(0, req.top_k or 0), seed=seed, stop=list(req.stop or []),
                stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos, logprobs=logprobs)
        except UserError as e:
            raise api.APIError(400, str(e)) from e

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]) -> RequestStream:
        try:
            return self.loop.submit(prompts, params)
        except QueueFull as e:
            raise api.APIError(429, f"{e}: retry shortly", type="rate_limit_error", code="queue_full",
                               headers={"Retry-After": str(self.config.retry_after_s)}) from e


# -- streaming and collecting --------------------------------------------------------------------------------------

def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


async def stream_events(server: Server, stream: RequestStream, chunks) -> AsyncIterator[str]:
    """SSE for a streamed request; a client that goes away (the generator is closed) aborts its sequences."""
    try:
        async for event in chunks:
            yield event
        yield "data: [DONE]\n\n"
    finally:
        if any(c.seq is None or not c.seq.finished for c in stream.choices):
            server.loop.abort(stream)


async def collect(server: Server, stream: RequestStream, request: Request) -> list[list[Delta]]:
    """All deltas of every choice, for a request that is not streamed; aborted if the client disconnects."""
    per_choice: list[list[Delta]] = [[] for _ in range(stream.num_choices)]

    async def gather() -> None:
        async for d in stream.deltas():
            per_choice[d.index].append(d)

    task = asyncio.ensure_future(gather())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                server.loop.abort(stream)
                raise asyncio.CancelledError
        task.result()
    finally:
        if not task.done():
            task.cancel()
            server.loop.abort(stream)
    for deltas in per_choice:
        errors = [d.error for d in deltas if d.error]
        if errors:
            raise api.APIError(500, errors[0], type="server_error")
    return per_choice


def joined(deltas: list[Delta]) -> tuple[str, list[dict[str, Any]], str | None, int]:
    text = "".join(d.text for d in deltas)
    logprobs = [e for d in deltas for e in (d.logprobs or [])]
    return text, logprobs, deltas[-1].finish_reason, deltas[-1].completion_tokens


async def respond(server: Server, request: Request, req: api._Request, stream: RequestStream, id_prefix: str,
                  obj: str, prompt_tokens: int, want_logprobs: bool, chunks, choice) -> Any:
    """The response to a submitted request: SSE events (`chunks`) when streamed, else one body whose choices
    `choice(text, logprobs)` builds once every choice has finished."""
    head = {"id": api.new_id(id_prefix), "object": None, "created": api.now(), "model": server.config.model_name}
    if req.stream:
        usage = req.stream_options is not None and req.stream_options.include_usage
        events = chunks(stream, head, want_logprobs, usage, prompt_tokens)
        return StreamingResponse(stream_events(server, stream, events), media_type="text/event-stream")
    choices, completion = [], 0
    per_choice = await collect(server, stream, request)
    for i, deltas in enumerate(per_choice):
        text, logprobs, finish, n = joined(deltas)
        completion += n
        choices.append({"index": i, **choice(text, logprobs), "finish_reason": finish})
    cached = per_choice[0][-1].cached_tokens  # the prompt's, as its first choice found it
    return {**head, "object": obj, "choices": choices, "usage": api.usage(prompt_tokens, completion, cached)}


def error_response(e: api.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


# -- the app --------------------------------------------------------------------------------------------------------

class BodyLimit:
    """Refuse request bodies over `limit` bytes with a 413 before they are read in full (ASGI middleware)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._too_large(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        body = api.error_body(f"the request body is larger than {self.limit} bytes", param=None)
        await JSONResponse(body, status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(server: Server, engine_thread: bool = True) -> FastAPI:
    """The ASGI app. `engine_thread`: start the engine loop in a thread with the app (False: the caller runs
    `server.loop.run()` in its own thread, as `paperclub serve` does in the main thread)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine_thread:
            server.loop.start()
        try:
            yield
        finally:
            server.loop.shutdown()

    app = FastAPI(title="paperclub", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    cfg = server.config

    async def authorized(request: Request) -> None:  # async: no thread-pool hop per request
        if server.draining:
            raise api.APIError(503, "the server is shutting down: retry on another replica", type="server_error",
                               code="draining")
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise api.APIError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                               type="authentication_error", code="invalid_api_key")

    @app.exception_handler(api.APIError)
    async def _api_error(request: Request, e: api.APIError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        if err.get("type") == "json_invalid":
            return error_response(api.APIError(400, f"the request body is not valid JSON: {err.get('msg')}"))
        if tuple(err.get("loc", ())) == ("body",):
            return error_response(api.APIError(400, "the request body must be a JSON object"))
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # pydantic adds the union member tried ("str", "list[int]"); keep the field path the user wrote
        path = [x for x in loc if not (x[:1].islower() and ("[" in x or x in ("str", "int", "float", "bool")))]
        param = ".".join(path) or None
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        return error_response(api.APIError(400, f"{param}: {msg}" if param else msg, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(api.APIError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("unhandled error in %s", request.url.path)
        return error_response(api.APIError(500, "internal server error", type="server_error"))

    @app.get("/health")
    async def health():
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return resources.files("paperclub.serve").joinpath("static", "index.html").read_text()

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [{
            "id": cfg.model_name, "object": "model", "created": api.now(), "owned_by": "paperclub",
            "max_model_len": server.llm.max_model_len}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(req: api.ChatCompletionRequest, request: Request):
        server.check_model(req.model)
        ids = server.prompt_ids(req.chat(), "messages")
        params = [server.sampling(req, len(ids), req.token_limit(), req.num_logprobs(), i) for i in range(req.n)]
        stream = server.submit([ids] * req.n, params)

        def choice(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
            return {"message": {"role": "assistant", "content": text},
                    "logprobs": api.chat_logprobs(logprobs) if req.logprobs else None}

        return await respond(server, request, req, stream, "chatcmpl", "chat.completion", len(ids), req.logprobs,
                             chat_chunks, choice)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(req: api.CompletionRequest, request: Request):
        server.check_model(req.model)
        prompts = [server.prompt_ids(p, "prompt") for p in req.prompts()]
        ids, params = [], []
        for p in prompts:
            for j in range(req.n):
                ids.append(p)
                params.append(server.sampling(req, len(p), req.max_tokens, req.logprobs, j))
        stream = server.submit(ids, params)
        want_logprobs = req.logprobs is not None

        def choice(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
            return {"text": text, "logprobs": api.completion_logprobs(logprobs) if want_logprobs else None}

        return await respond(server, request, req, stream, "cmpl", "text_completion", sum(len(p) for p in prompts),
                             want_logprobs, completion_chunks, choice)

    return BodyLimit(app, cfg.max_body_bytes)


async def sse_chunks(stream: RequestStream, base: dict[str, Any], include_usage: bool, prompt_tokens: int,
                     choice: Callable[[Delta], dict[str, Any]], first: list[dict[str, Any]] = ()) -> AsyncIterator[str]:
    """The SSE events of a streamed request: `first` choices, then one event per delta that carries something
    (`choice(delta)` is its body), an error event for a choice the engine failed, and the usage last if asked."""
    extra = {"usage": None} if include_usage else {}
    for body in first:
        yield sse({**base, "choices": [body], **extra})
    completion, cached = [0] * stream.num_choices, 0
    async for d in stream.deltas():
        if d.error:
            yield sse(api.error_body(d.error, type="server_error"))
            continue
        completion[d.index] = d.completion_tokens
        cached = d.cached_tokens if d.index == 0 else cached
        if d.text or d.finish_reason is not None or d.logprobs:  # else its text is held back (a partial
            yield sse({**base, "choices": [choice(d)], **extra})  # character or a possible stop string)
    if include_usage:
        yield sse({**base, "choices": [], "usage": api.usage(prompt_tokens, sum(completion), cached)})


def chat_chunks(stream: RequestStream, head: dict[str, Any], want_logprobs: bool, include_usage: bool,
                prompt_tokens: int) -> AsyncIterator[str]:
    def choice(d: Delta) -> dict[str, Any]:
        return {"index": d.index, "delta": {"content": d.text} if d.text else {},
                "logprobs": api.chat_logprobs(d.logprobs or []) if want_logprobs else None,
                "finish_reason": d.finish_reason}

    first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
             for i in range(stream.num_choices)]
    return sse_chunks(stream, {**head, "object": "chat.completion.chunk"}, include_usage, prompt_tokens, choice,
                      first)


def completion_chunks(stream: RequestStream, head: dict[str, Any], want_logprobs: bool, include_usage: bool,
                      prompt_tokens: int) -> AsyncIterator[str]:
    offsets = [0] * stream.num_choices  # where each choice's next token starts in its text

    def choice(d: Delta) -> dict[str, Any]:
        logprobs = None
        if want_logprobs:
            logprobs = api.completion_logprobs(d.logprobs or [], offsets[d.index])
            offsets[d.index] += sum(len(e["token"]) for e in d.logprobs or [])
        return {"index": d.index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}

    return sse_chunks(stream, {**head, "object": "text_completion"}, include_usage, prompt_tokens, choice)
