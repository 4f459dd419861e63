"""OpenAI-compatible routes: `/v1/models`, `/v1/completions`, `/v1/chat/completions`, streaming or not.

Requests are read the way OpenAI's API reads them (model, prompt or messages, max_tokens, temperature,
top_p, stop, presence and frequency penalties, seed, stream); RWKV's extras ride along as extra fields
(`penalty_decay`, `top_k`, `preset`, `format`). Chat messages are rendered by the chat format plugin
(or the format named). A client that disconnects cancels its generation.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.errors import RWKVHubError

if TYPE_CHECKING:
    from .server import Daemon

# Fields of an OpenAI request that become sampling parameters, and the name they take here.
PARAMS = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "penalty_decay": "penalty_decay",
    "seed": "seed",
    "stop": "stop",
}
# Accepted and ignored: they change nothing here (one choice, no log probabilities, no tools).
IGNORED = {
    "model",
    "n",
    "user",
    "logprobs",
    "top_logprobs",
    "echo",
    "best_of",
    "stream_options",
    "suffix",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "store",
    "metadata",
}
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def add_routes(app: web.Application, daemon: Daemon) -> None:
    api = _Api(daemon)
    app.router.add_get("/v1/models", api.models)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_post("/v1/chat/completions", api.chat)


class _Api:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    @property
    def model_id(self) -> str:
        return self.daemon.hub.engine.model.path.stem

    async def models(self, request: web.Request) -> web.Response:
        created = int(self.daemon.started)
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.model_id, "object": "model", "created": created, "owned_by": "rwkv-hub"}],
            }
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return _bad("prompt must be a string (one prompt per request)")
        req = {"format": body.get("format", "raw"), "input": {"text": prompt}}
        return await self._run(request, body, req, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _bad("messages must be a non-empty list of {role, content}")
        system, turns = [], []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                return _bad(f"messages[{i}] must be an object with a role and content")
            content = _content(m.get("content"))
            if content is None:
                return _bad(f"messages[{i}].content must be text (or a list of text parts)")
            role = {"developer": "system"}.get(m["role"], m["role"])
            if role not in ("system", "user", "assistant"):
                return _bad(f"messages[{i}].role {m['role']!r} is not supported; use system, user or assistant")
            if role == "system" and not turns:
                system.append(content)
            else:
                turns.append({"role": role, "content": content})
        if not turns:
            return _bad("messages need at least one user or assistant message")
        req = {"input": {"messages": turns, "system": "\n".join(system)}}
        if "format" in body:
            req["format"] = body["format"]
        return await self._run(request, body, req, chat=True)

    async def _run(self, request: web.Request, body: dict[str, Any], req: dict[str, Any], chat: bool):
        unknown = sorted(set(body) - set(PARAMS) - IGNORED - {"prompt", "messages", "stream", "preset", "format"})
        if unknown:
            return _bad(f"unknown field {unknown[0]!r}")
        params = {PARAMS[k]: v for k, v in body.items() if k in PARAMS and v is not None}
        if not chat:
            params.setdefault("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
        if body.get("n", 1) != 1:
            return _bad("n must be 1: one choice per request")
        req["params"] = params
        if body.get("preset"):
            req["preset"] = body["preset"]
        try:
            stream = self.daemon.hub.submit(req)
        except RWKVHubError as e:
            from .server import error_code

            code = error_code(e)
            return _bad(str(e), status={"busy": 503, "too_long": 400}.get(code, 400), code=code)
        self.daemon.counters["req_openai_chat" if chat else "req_openai_completions"] += 1
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        base = {"id": rid, "created": created, "model": self.model_id}
        if body.get("stream"):
            return await self._sse(request, stream, base, chat)
        try:
            text = await stream.text()
        except BaseException:
            stream.cancel()  # the client went away, or the server is stopping
            raise
        self.daemon.count_finished(stream)
        r = stream.result
        usage = {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        }
        finish = _finish(r.finish_reason)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            return web.json_response(base | {"object": "chat.completion", "choices": [choice], "usage": usage})
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return web.json_response(base | {"object": "text_completion", "choices": [choice], "usage": usage})

    async def _sse(self, request: web.Request, stream, base: dict[str, Any], chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> bytes:
            if chat:
                d = ({"role": "assistant"} if first else {}) | ({"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps(base | {'object': obj, 'choices': [choice]}, ensure_ascii=False)}\n\n".encode()

        try:
            if chat:
                await resp.write(chunk(None, None, first=True))
            async for delta in stream:
                await resp.write(chunk(delta, None))
            self.daemon.count_finished(stream)
            await resp.write(chunk(None if chat else "", _finish(stream.result.finish_reason)))
            await resp.write(b"data: [DONE]\n\n")
        except BaseException:  # ConnectionResetError, CancelledError: the client is gone
            stream.cancel()
            raise
        return resp


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _bad("the body must be a JSON object")
    if not isinstance(body, dict):
        return _bad("the body must be a JSON object")
    return body


def _content(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _bad(message: str, status: int = 400, code: str = "invalid_request_error") -> web.Response:
    from .server import http_error

    return http_error(status, code, message)
