"""The HTTP side: an OpenAI-compatible API (GET /v1/models, POST /v1/completions and
/v1/chat/completions, server-sent events with ``stream: true``) and the chat page at ``/``.

Every choice of every request becomes one engine Request; its tokens come back on an asyncio
queue. Errors are OpenAI error objects: 400 for a malformed body, 404 for an unknown model,
413 for a prompt longer than --max-model-len, 429 (with Retry-After) when the queue is full.
A streaming client that goes away cancels its requests, which frees their slots at the next step.
"""

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, List, Optional

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from megalite.data.chat import render_chat
from megalite.data.tokenizer import Tokenizer
from megalite.eval.sampling import Sampling
from megalite.serve import engine as eng
from megalite.serve.protocol import ChatRequest, CompletionRequest
from megalite.serve.text import ChoiceText

STATIC = os.path.join(os.path.dirname(__file__), "static")


@dataclass
class Served:
    """What the server serves: a model's engine, its tokenizer and its chat template."""
    engine: eng.Engine
    tokenizer: Tokenizer
    name: str
    max_model_len: int
    chat_template: Optional[str] = None
    no_template: str = ""  # why there is no chat template, when there is none
    chat_stops: tuple = ()  # strings that end an assistant turn of the template


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def _error_body(message: str, kind: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def build_app(served: Served) -> FastAPI:
    app = FastAPI(title="megalite", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        kind = {429: "rate_limit_exceeded", 404: "not_found_error", 500: "server_error"}.get(
            e.status, "invalid_request_error")
        return JSONResponse(_error_body(e.message, kind, e.param, e.code), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        message = f"{where}: {first['msg']}" if where else first["msg"]
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        return JSONResponse(_error_body(message, "invalid_request_error", where), 400)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                            "owned_by": "megalite", "max_model_len": served.max_model_len}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "open_slots": served.engine.open_slots, "waiting": served.engine.waiting}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        _check_model(served, body.model)
        prompts = _completion_prompts(served.tokenizer, body.prompt)
        return await _serve(served, body, prompts, chat=False, max_tokens=body.max_tokens,
                            logprobs=body.logprobs, stops=body.stop_strings(), default_max=16)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        _check_model(served, body.model)
        if served.chat_template is None:
            raise ApiError(400, f"this model has no chat template ({served.no_template}); use /v1/completions")
        tok = served.tokenizer
        text = render_chat(served.chat_template, [{"role": m.role, "content": m.text()} for m in body.messages],
                           add_generation_prompt=True, **tok.special_tokens)
        k = (body.top_logprobs or 0) if body.logprobs else None
        return await _serve(served, body, [tok.encode(text)], chat=True,
                            max_tokens=body.max_completion_tokens or body.max_tokens, logprobs=k,
                            stops=body.stop_strings() + list(served.chat_stops), default_max=served.max_model_len)

    @app.get("/")
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _check_model(served: Served, model: Optional[str]) -> None:
    if model is not None and model != served.name:
        raise ApiError(404, f"The model '{model}' does not exist; this server serves '{served.name}'", "model",
                       "model_not_found")


def _completion_prompts(tok: Tokenizer, prompt) -> List[List[int]]:
    if isinstance(prompt, str):
        prompts = [prompt]
    elif all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        return [list(prompt)]
    return [tok.encode(p) for p in prompts]


async def _serve(served: Served, body, prompts: List[List[int]], chat: bool,
                 max_tokens: Optional[int], logprobs: Optional[int], stops: List[str], default_max: int):
    """``default_max``: new tokens at most when max_tokens is not given (as many as fit, up to it)."""
    tok, limit = served.tokenizer, served.max_model_len
    for ids in prompts:
        if not ids:
            raise ApiError(400, "the prompt is empty", "prompt")
        if len(ids) >= limit:
            raise ApiError(413, f"the prompt has {len(ids)} tokens; this server takes at most {limit - 1} "
                                f"(--max-model-len {limit}, the reply included)", "messages" if chat else "prompt",
                           "context_length_exceeded")
        if max_tokens is not None and len(ids) + max_tokens > limit:
            raise ApiError(400, f"max_tokens {max_tokens} + the prompt's {len(ids)} tokens exceed "
                                f"--max-model-len {limit}", "max_tokens", "context_length_exceeded")
    vocab = served.engine.vocab
    if any(not 0 <= i < vocab for ids in prompts for i in ids):
        raise ApiError(400, f"token ids must lie in [0, {vocab})", "prompt")
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    requests, texts = [], []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            index = p * body.n + j

            def emit(event, index=index):
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (index, event))
                except RuntimeError:  # the event loop is gone (the server is shutting down)
                    pass

            seed = None if body.seed is None else body.seed + j
            sampling = Sampling(temperature=body.temperature, top_p=body.top_p, stop_ids=[tok.eod],
                                stop_strings=stops, seed=seed)
            budget = max_tokens if max_tokens is not None else min(default_max, limit - len(ids))
            requests.append(eng.Request(ids, budget, emit, sampling, logprobs))
            texts.append(ChoiceText(tok.decode, stops))
    try:
        served.engine.submit(requests)
    except eng.QueueFull as e:
        raise ApiError(429, f"the server is busy: {e}; retry shortly", code="queue_full",
                       headers={"Retry-After": "1"}) from None
    reply = _Reply(served, chat, prompts, requests, texts, logprobs, body)
    if body.stream:
        return StreamingResponse(reply.stream(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await reply.collect(events)
    finally:
        reply.cancel()
    return reply.whole()


class _Reply:
    """The answer to one API call: its choices as they arrive, streamed or whole."""

    def __init__(self, served: Served, chat: bool, prompts, requests, texts, logprobs, body):
        self.served, self.chat, self.prompts, self.requests, self.texts = served, chat, prompts, requests, texts
        self.logprobs, self.body = logprobs, body
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.tokens: List[List[eng.Token]] = [[] for _ in requests]
        self.finish: List[Optional[str]] = [None] * len(requests)
        self.error: Optional[str] = None

    def cancel(self) -> None:
        for i, r in enumerate(self.requests):
            if self.finish[i] is None:
                self.served.engine.cancel(r)

    def _take(self, index: int, event) -> None:
        if isinstance(event, eng.Token):
            self.tokens[index].append(event)
            self.texts[index].add(event.id)
        else:
            self.finish[index] = event.reason
            if event.reason == "error" or (event.reason == "cancelled" and event.message):
                self.error = event.message

    async def collect(self, events: asyncio.Queue) -> None:
        while None in self.finish:
            self._take(*await events.get())

    def whole(self) -> JSONResponse:
        if self.error:
            raise ApiError(500, f"decoding failed: {self.error}")
        choices = []
        for i, text in enumerate(self.texts):
            choice = {"index": i, "finish_reason": self.finish[i],
                      "logprobs": self._logprobs(self.tokens[i]) if self.logprobs is not None else None}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text.text()}
            else:
                choice["text"] = text.text()
            choices.append(choice)
        return JSONResponse({"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                             "created": self.created, "model": self.served.name, "choices": choices,
                             "usage": self._usage()})

    async def stream(self, events: asyncio.Queue) -> AsyncIterator[str]:
        try:
            if self.chat:
                for i in range(len(self.requests)):
                    yield self._chunk(i, {"role": "assistant", "content": ""}, None, [])
            sent = [0] * len(self.requests)
            while None in self.finish:
                index, event = await events.get()
                self._take(index, event)
                if self.error:
                    yield _sse(_error_body(f"decoding failed: {self.error}", "server_error"))
                    break
                done = self.finish[index] is not None
                piece = self.texts[index].delta(final=done)
                new_tokens = self.tokens[index][sent[index]:]
                if piece or done or (new_tokens and self.logprobs is not None):
                    sent[index] = len(self.tokens[index])
                    content = {"content": piece} if self.chat else piece
                    if piece or new_tokens:
                        yield self._chunk(index, content, None, new_tokens)
                    if done:
                        yield self._chunk(index, {} if self.chat else "", self.finish[index], [])
            options = self.body.stream_options
            if options is not None and options.include_usage and not self.error:
                yield _sse(self._envelope([], usage=self._usage()))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()

    def _chunk(self, index: int, content, finish: Optional[str], tokens: List[eng.Token]) -> str:
        choice = {"index": index, "finish_reason": finish,
                  "logprobs": self._logprobs(tokens) if self.logprobs is not None and tokens else None}
        choice["delta" if self.chat else "text"] = content
        return _sse(self._envelope([choice]))

    def _envelope(self, choices, usage=None) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.served.name, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def _usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(len(t) for t in self.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _logprobs(self, tokens: List[eng.Token]) -> dict:
        """OpenAI's shape: chat's ``content`` list, or the completions API's parallel lists. Token
        strings are the vocabulary's own pieces (a leading space shows as the tokenizer writes it)."""
        name = self.served.tokenizer.id_to_token
        if self.chat:
            return {"content": [{"token": name(t.id), "logprob": t.logprob, "bytes": list(name(t.id).encode()),
                                 "top_logprobs": [{"token": name(i), "logprob": lp, "bytes": list(name(i).encode())}
                                                  for i, lp in t.top]} for t in tokens]}
        return {"tokens": [name(t.id) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{name(i): lp for i, lp in t.top} for t in tokens]}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
