"""The daemon's HTTP side (aiohttp): the WebSocket protocol, health, metrics, and the guard in front.

Every endpoint but `/health` needs the bearer token; any request that carries a browser `Origin` not
explicitly allowed is refused, so a web page cannot drive the local model. The OpenAI-compatible routes
live in `openai_api.py`. All model work goes through the `Hub`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import Counter
from typing import Any

from aiohttp import WSMsgType, web

from ..core.engine import EngineBusy, RequestTooLong
from ..core.errors import RWKVHubError
from ..core.sessions import SessionError
from ..hub.config import Config
from ..hub.hub import Hub, HubStream
from . import openai_api
from .protocol import VERSION, ProtocolError, parse

log = logging.getLogger("rwkv_hub")


def error_code(exc: BaseException) -> str:
    """The protocol's stable code for an error raised while taking a request."""
    if isinstance(exc, ProtocolError):
        return exc.code
    if isinstance(exc, EngineBusy):
        return "busy"
    if isinstance(exc, RequestTooLong):
        return "too_long"
    if isinstance(exc, SessionError):
        return "session"
    if isinstance(exc, RWKVHubError):
        return "bad_request"
    return "internal"


def error_text(exc: BaseException) -> str:
    """What the client is told: our own errors' messages; never the internals of an unexpected one."""
    return str(exc) if isinstance(exc, RWKVHubError) else "internal error; the daemon's log has the details"


class Daemon:
    """The web application around a Hub: routes, guard, per-connection bookkeeping, metrics."""

    def __init__(self, hub: Hub, config: Config, token: str):
        self.hub = hub
        self.config = config
        self.token = token
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self.sockets: set[web.WebSocketResponse] = set()

    async def close_connections(self) -> None:
        """Say goodbye to every WebSocket client (code 1001, going away), so a shutdown need not wait."""
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"the daemon is stopping")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.config.limits.max_message_bytes)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ws", self._websocket)
        openai_api.add_routes(app, self)
        return app

    # --- the guard ------------------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.config.allow_origins:
            self.counters["refused_origin"] += 1
            return http_error(
                403, "forbidden_origin", "requests from web pages are refused unless allow_origins lists them"
            )
        if request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                self.counters["refused_token"] += 1
                return http_error(
                    401,
                    "unauthorized",
                    "a bearer token is required (Authorization: Bearer ...; `rwkv-hub token` prints it)",
                )
        return await handler(request)

    # --- health and metrics ---------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        engine = self.hub.engine
        cache = engine.cache.stats if engine.cache is not None else None
        lines = [
            "# TYPE rwkv_hub_requests_total counter",
            *(f'rwkv_hub_requests_total{{kind="{k}"}} {v}' for k, v in sorted(self._kinds().items())),
            "# TYPE rwkv_hub_tokens_generated_total counter",
            f"rwkv_hub_tokens_generated_total {self.counters['tokens']}",
            "# TYPE rwkv_hub_prompt_tokens_total counter",
            f"rwkv_hub_prompt_tokens_total {self.counters['prompt_tokens']}",
            "# TYPE rwkv_hub_cancelled_total counter",
            f"rwkv_hub_cancelled_total {self.counters['cancelled']}",
            "# TYPE rwkv_hub_errors_total counter",
            f"rwkv_hub_errors_total {self.counters['errors']}",
            "# TYPE rwkv_hub_active_streams gauge",
            f"rwkv_hub_active_streams {engine.active}",
            "# TYPE rwkv_hub_queue_length gauge",
            f"rwkv_hub_queue_length {engine.queued}",
            "# TYPE rwkv_hub_websocket_connections gauge",
            f"rwkv_hub_websocket_connections {self.counters['ws_open']}",
        ]
        if cache is not None:
            lines += [
                "# TYPE rwkv_hub_cache_hits_total counter",
                f"rwkv_hub_cache_hits_total {cache.hits}",
                "# TYPE rwkv_hub_cache_misses_total counter",
                f"rwkv_hub_cache_misses_total {cache.misses}",
                "# TYPE rwkv_hub_cache_bytes gauge",
                f"rwkv_hub_cache_bytes {engine.cache.nbytes}",
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def _kinds(self) -> dict[str, int]:
        return {k.removeprefix("req_"): v for k, v in self.counters.items() if k.startswith("req_")}

    def count_finished(self, stream: HubStream) -> None:
        r = stream.result
        if r is not None:
            self.counters["tokens"] += r.completion_tokens
            self.counters["prompt_tokens"] += r.prompt_tokens
            if r.finish_reason == "cancelled":
                self.counters["cancelled"] += 1

    # --- what the server says about itself --------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        model = self.hub.engine.model
        host = self.hub.host
        return {
            "type": "hello",
            "protocol": VERSION,
            "model": {
                "name": model.path.name,
                "n_layer": model.spec.n_layer,
                "n_embd": model.spec.n_embd,
                "vocab_size": model.spec.vocab_size,
                "strategy": model.strategy.name,
            },
            "formats": sorted(host.formats),
            "presets": sorted(host.presets),
            "format_details": [{"name": n, "description": f.description} for n, f in sorted(host.formats.items())],
            "preset_details": [p.to_dict() for _, p in sorted(host.presets.items())],
            "limits": dict(self.config.limits.__dict__),
        }

    # --- the WebSocket protocol -------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.config.limits.max_message_bytes, heartbeat=30)
        await ws.prepare(request)
        self.counters["ws_open"] += 1
        self.sockets.add(ws)
        conn = _Connection(self, ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await conn.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await conn.send_error(
                        None, "bad_request", "binary frames are not part of the protocol; send JSON text"
                    )
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.counters["ws_open"] -= 1
            self.sockets.discard(ws)
            conn.close()  # a client that goes away cancels its generations
        return ws


class _Connection:
    """One WebSocket client: its running requests by id."""

    def __init__(self, daemon: Daemon, ws: web.WebSocketResponse):
        self.daemon = daemon
        self.ws = ws
        self.running: dict[str, tuple[asyncio.Task, HubStream | None]] = {}
        self.completing: dict[str, str] = {}  # document path -> its running completion's id

    async def send(self, event: dict[str, Any]) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_str(json.dumps(event, ensure_ascii=False))
            except (ConnectionError, RuntimeError):  # the client went away mid-send
                pass

    async def send_error(self, rid: str | None, code: str, message: str) -> None:
        self.daemon.counters["errors"] += 1
        await self.send({"type": "error", "id": rid, "code": code, "message": message})

    def close(self) -> None:
        for task, stream in self.running.values():
            if stream is not None:
                stream.cancel()
            task.cancel()

    async def handle(self, text: str) -> None:
        limits = self.daemon.config.limits
        try:
            msg = parse(text, limits.max_json_depth)
        except ProtocolError as e:
            await self.send_error(e.request_id, e.code, str(e))
            return
        kind, rid = msg["type"], msg.get("id")
        try:
            if kind == "hello":
                await self.send(self.daemon.hello() | ({"id": rid} if rid else {}))
            elif kind == "cancel":
                entry = self.running.get(rid)
                if entry is None:
                    raise ProtocolError("not_found", f"no running request with id {rid!r}", rid)
                if entry[1] is not None:
                    entry[1].cancel()
            elif kind.startswith("sessions."):
                await self.send({"type": "result", "id": rid, "data": self._session_op(kind, msg)})
            else:
                if rid in self.running:
                    raise ProtocolError("bad_request", f"a request with id {rid!r} is already running", rid)
                if len(self.running) >= limits.max_requests_per_connection:
                    raise ProtocolError(
                        "busy", f"at most {limits.max_requests_per_connection} requests per connection", rid
                    )
                if kind == "complete":
                    self._supersede(msg)
                    stream = self.daemon.hub.complete(msg)
                elif kind == "selection":
                    stream = self.daemon.hub.selection(msg)
                elif kind == "compose":
                    stream = self.daemon.hub.compose(self._compose_request(msg))
                else:
                    stream = self.daemon.hub.submit(self._hub_request(kind, msg))
                self.daemon.counters[f"req_{kind}"] += 1
                finish = self._save_piece(msg, stream) if kind == "compose" and msg.get("save", True) else None
                task = asyncio.create_task(self._pump(rid, stream, finish))
                self.running[rid] = (task, stream)
                if kind == "complete":
                    self.completing[msg.get("path") or ""] = rid
        except Exception as e:  # every failure becomes an error event; the connection stays usable
            if not isinstance(e, RWKVHubError):
                log.exception("unexpected error on a %s request", kind)
            await self.send_error(rid, error_code(e), error_text(e))

    def _supersede(self, msg: dict[str, Any]) -> None:
        """A new completion for a document cancels the one still running for it (the user typed on)."""
        old = self.completing.pop(msg.get("path") or "", None)
        entry = self.running.get(old) if old else None
        if entry is not None and entry[1] is not None:
            entry[1].cancel()

    def _hub_request(self, kind: str, msg: dict[str, Any]) -> dict[str, Any]:
        req: dict[str, Any] = {
            k: msg[k] for k in ("preset", "params", "logit_processors", "stream_filters") if k in msg
        }
        if kind == "generate":
            req |= {"format": "raw", "input": {"text": msg["prompt"]}}
        else:  # chat
            inp = dict(msg.get("input") or {})
            if "messages" in msg:
                inp["messages"] = msg["messages"]
            if "message" in msg:
                inp["input"] = msg["message"]
            if "system" in msg:
                inp["system"] = msg["system"]
            req |= {"input": inp}
            for k in ("format", "initial_state"):
                if k in msg:
                    req[k] = msg[k]
            sid = msg.get("session")
            if sid is not None:
                sessions = self.daemon.hub.engine.sessions
                if sessions is None:
                    raise SessionError("this daemon keeps no sessions")
                if sid not in sessions:
                    sessions.create(sid)
                req["session"] = sid
        return req

    def _session_op(self, kind: str, msg: dict[str, Any]) -> Any:
        sessions = self.daemon.hub.engine.sessions
        if sessions is None:
            raise SessionError("this daemon keeps no sessions")
        sid = msg.get("session")
        if kind == "sessions.list":
            return sessions.list()
        if kind == "sessions.create":
            initial = self.daemon.hub.initial_state(msg["initial_state"]) if msg.get("initial_state") else None
            return sessions.create(sid, initial).info()
        if sid is None:
            raise ProtocolError("bad_request", f"{kind} needs a session", msg.get("id"))
        if kind == "sessions.fork":
            return sessions.fork(sid, msg.get("new")).info()
        if kind == "sessions.get":
            s = sessions.get(sid)
            return s.info() | {"transcript": s.transcript}
        if kind == "sessions.rewind":
            s = sessions.rewind(sid)
            return s.info() | {"transcript": s.transcript}
        if kind == "sessions.rename":
            if not msg.get("new"):
                raise ProtocolError("bad_request", "sessions.rename needs 'new'", msg.get("id"))
            return sessions.rename(sid, msg["new"]).info()
        if kind == "sessions.reset":
            return sessions.reset(sid).info()
        sessions.delete(sid)
        return {"deleted": sid}

    def _compose_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A compose message as the hub takes it; a .mid to continue comes base64-encoded."""
        req = {k: msg[k] for k in ("format", "continue", "preset", "params") if k in msg}
        if "midi" in msg:
            import base64
            import binascii

            from ..music.midi_text import midi_to_text

            try:
                data = base64.b64decode(msg["midi"], validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError("bad_request", "midi: not base64 of a .mid file", msg.get("id")) from None
            req["continue"] = midi_to_text(data, close=False)
        return req

    def _save_piece(self, msg: dict[str, Any], stream: HubStream):
        """What a finished composition adds to its done event: the files it was saved as."""

        async def finish() -> dict[str, Any]:
            from ..hub.music import piece_text, safe_stem, write_piece

            fmt = stream.request["format"]
            text = piece_text(fmt, stream.request.get("start", ""), stream.result.text)  # no filters: as streamed
            stem = f"{safe_stem(msg.get('name') or msg['id'])}-{time.strftime('%Y%m%d-%H%M%S')}"
            out = self.daemon.config.compositions_path() / stem
            try:
                piece = await asyncio.to_thread(
                    write_piece, fmt, text, out, svg=bool(msg.get("svg")), wav=bool(msg.get("wav"))
                )
            except RWKVHubError as e:  # nothing playable came back: the notation is still the answer
                return {"piece": {"notation": text, "error": str(e)}}
            return {"piece": {"notation": piece.notation} | piece.to_dict()}

        return finish

    async def _pump(self, rid: str, stream: HubStream, finish=None) -> None:
        """Forward a request's deltas and its end (`finish()` adds fields to the done event)."""
        try:
            async for delta in stream:
                await self.send({"type": "delta", "id": rid, "text": delta})
            r = stream.result
            self.daemon.count_finished(stream)
            extra = await finish() if finish is not None and r.finish_reason != "cancelled" else {}
            await self.send(
                extra
                | {
                    "type": "done",
                    "id": rid,
                    "finish_reason": stream.finish_reason,
                    "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
                    "timings": {
                        "queue_s": stream.stats.queue_s,
                        "first_token_s": stream.stats.first_token_s,
                        "prefill_s": r.prefill_s,
                        "decode_s": r.decode_s,
                        "cached_tokens": stream.stats.cached_tokens,
                    },
                }
            )
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as e:  # a failed generation is this request's error, not the connection's
            await self.send_error(rid, error_code(e), error_text(e))
        finally:
            self.running.pop(rid, None)


def http_error(status: int, code: str, message: str) -> web.Response:
    """Errors in the OpenAI API's shape, which its clients know how to show."""
    return web.json_response({"error": {"message": message, "type": code, "code": code}}, status=status)
