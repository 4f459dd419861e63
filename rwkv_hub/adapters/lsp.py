"""`rwkv-hub lsp`: a Language Server (stdio, on pygls) that serves editor completion from the daemon.

Every editor with an LSP client gets the daemon's completions this way: ghost text through
`textDocument/inlineCompletion` (LSP 3.18), a completion item through `textDocument/completion` for
editors without inline completion, and code actions on a selection (explain, docstring, translate,
rewrite) that run as `workspace/executeCommand` and come back as an edit or a message. The server keeps
the buffers through document sync and talks to the daemon with the project's WebSocket client; it never
loads a model itself.

A newer request for the same document makes the daemon drop the older one, which then answers with
`ContentModified` (-32801), the code editors take silently; `$/cancelRequest` cancels on the daemon too.
When the daemon is down the editor is told once, completions come back empty, and every new request
tries again. What the user or the editor got wrong (an address that is no daemon's, a wrong token,
malformed params, a document never opened) is a message or an `InvalidParams` answer, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import websockets
from cattrs import transform_error
from cattrs.errors import ClassValidationError
from cattrs.v import format_exception
from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified, JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import JsonRPCRequestMessage
from pygls.workspace import TextDocument

from ..hub.completion import SUFFIX_CHARS, clip_prefix
from ..hub.selection import COMMANDS
from ..hub.token import ENV as TOKEN_ENV
from ..hub.token import get_token, token_path
from .client import DEFAULT_URL, Client, Request, ServerError

log = logging.getLogger("rwkv_hub.lsp")
NAME = "rwkv-hub"
COMMAND_PREFIX = "rwkv-hub."


def daemon_url(url: str) -> str:
    """The daemon's WebSocket URL for `url`, which may also be the http:// address `rwkv-hub serve` prints
    (users paste that): http(s) becomes ws(s), and no path the daemon's /ws. Raises ValueError saying what
    to give instead."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port out of range raises here rather than at each request)
    except ValueError:
        parts = None
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme) if parts else ""
    if parts is None or scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(
            f"{url!r} is not a daemon address: give ws://HOST:PORT/ws or the http://HOST:PORT `rwkv-hub serve` prints"
        )
    if parts.scheme in ("http", "https") and parts.path in ("", "/"):
        parts = parts._replace(path="/ws")
    return urlunsplit(parts._replace(scheme=scheme))


@dataclass
class Settings:
    """What `initializationOptions` may set (the command line gives the defaults)."""

    url: str = DEFAULT_URL
    token_file: str | None = None
    preset: str | None = None
    max_lines: int | None = None
    format: str | None = None  # a completion format by name; default: the daemon's choice per language
    translate_to: str = "English"
    rewrite_instructions: list[str] = field(default_factory=lambda: ["make it simpler", "add comments"])

    def update(self, options: Any) -> list[str]:
        """Take the editor's options; returns what was wrong with them (each problem is skipped)."""
        if options is None:
            return []
        if not isinstance(options, dict):
            return [f"initializationOptions must be an object, not {type(options).__name__}"]
        problems = []
        kinds = {"url": str, "token_file": str, "preset": str, "max_lines": int, "format": str, "translate_to": str}
        optional = {"token_file", "preset", "max_lines", "format"}  # null: the default; url and target need a value
        known = {f.name for f in fields(self)}
        for key, value in options.items():
            if key not in known:
                problems.append(f"unknown option {key!r}; options are {', '.join(sorted(known))}")
            elif key == "rewrite_instructions":
                if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                    problems.append("rewrite_instructions must be a list of non-empty strings")
                else:
                    self.rewrite_instructions = value[:10]
            elif value is None and key in optional:
                setattr(self, key, None)
            elif not isinstance(value, kinds[key]) or isinstance(value, bool):
                got = "null" if value is None else type(value).__name__
                problems.append(f"option {key!r} must be {kinds[key].__name__}, not {got}")
            elif key == "max_lines" and not 1 <= value <= 200:
                problems.append("option 'max_lines' must be between 1 and 200")
            elif key == "translate_to" and not value.strip():
                problems.append("option 'translate_to' must name a language")
            else:
                try:
                    if key == "url":
                        daemon_url(value)
                    setattr(self, key, value)
                except ValueError as e:
                    problems.append(f"option 'url': {e}")
        return problems


class Bridge:
    """The link to the daemon: connects on demand, and tells the editor once when it cannot."""

    def __init__(self, server: LanguageServer, settings: Settings):
        self.server = server
        self.settings = settings
        self.client: Client | None = None
        self.down_reported = False
        self.failing = False  # the last try to connect failed: the next success is announced
        self.errors_reported: set[str] = set()
        self._connecting = asyncio.Lock()  # requests that arrive together share one connection

    def _token(self) -> str | None:
        if self.settings.token_file:
            path = Path(self.settings.token_file).expanduser()
            try:
                return path.read_text().strip() or None
            except OSError as e:
                raise ConnectionError(f"cannot read the token file {path}: {e.strerror}") from None
        return get_token(create=False)

    def _token_source(self) -> str:
        if self.settings.token_file:
            return str(Path(self.settings.token_file).expanduser())
        return f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else str(token_path())

    def _set_up_wrongly(self, e: Exception) -> str:
        """What to tell of a connection that retrying will not mend: the address or the token is wrong."""
        if isinstance(e, ValueError):
            return str(e)
        url = daemon_url(self.settings.url)
        if isinstance(e, ServerError) and e.status == 401:
            return (
                f"the daemon refused the token from {self._token_source()} (401): it must be what "
                "`rwkv-hub token` prints; set token_file to the file that holds it"
            )
        if isinstance(e, ServerError):
            return f"{url} is not the daemon's WebSocket (HTTP {e.status}): give the address `rwkv-hub serve` prints"
        return f"{url} did not answer as an rwkv-hub daemon ({e}): give the address `rwkv-hub serve` prints"

    def tell(self, kind: types.MessageType, text: str) -> None:
        self.server.window_show_message(types.ShowMessageParams(type=kind, message=f"{NAME}: {text}"))

    def tell_once(self, text: str) -> None:
        if text not in self.errors_reported:
            self.errors_reported.add(text)
            self.tell(types.MessageType.Error, text)

    async def _connected(self) -> Client | None:
        async with self._connecting:
            return await self._connect()

    async def _connect(self) -> Client | None:
        if self.client is not None and self.client.connected:
            return self.client
        try:
            client = Client(daemon_url(self.settings.url), token=self._token(), retries=0)
            await client.connect()
        except ConnectionError as e:  # not running (yet): one warning, and every request tries again
            if not self.down_reported:
                self.tell(types.MessageType.Warning, f"{e}; completions resume when it is reachable")
            self.down_reported = self.failing = True
            return None
        except (ValueError, ServerError, websockets.WebSocketException) as e:  # set up wrongly: one error
            self.tell_once(self._set_up_wrongly(e))
            self.failing = True
            return None
        if self.failing:
            self.failing = self.down_reported = False
            self.tell(types.MessageType.Info, f"connected to the daemon at {client.url}")
        self.client = client
        return client

    async def run(self, make: Any) -> tuple[str, dict] | None:
        """Run the request `make(client)` builds; its text and done event, or None when the daemon is not
        there or refused it (the editor has been told). Cancelling the caller cancels it on the daemon."""
        client = await self._connected()
        if client is None:
            return None
        req: Request = make(client)
        try:
            async with req:
                text = await req.text()
        except ConnectionError:
            self.client = None
            return None
        except ServerError as e:
            self.tell_once(str(e))
            return None
        if req.done and req.done.get("finish_reason") == "cancelled":
            raise JsonRpcContentModified("superseded by a newer request for this document")
        return text, req.done or {}

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


@dataclass
class _Unparsed:
    """A request whose params did not parse, to be answered InvalidParams."""

    id: int | str
    method: str
    why: str


def _why(e: BaseException, kind: Any) -> str:
    """cattrs's words for a field that did not parse, but lsprotocol's own for a value out of range."""
    return str(e) if type(e) is ValueError else format_exception(e, kind)


class _Protocol(LanguageServerProtocol):
    """pygls's protocol, except that a request whose params do not parse is answered InvalidParams with its
    id, as JSON-RPC requires: pygls only reports it out of band, and the editor waits for ever."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        if not ("jsonrpc" in data and "id" in data and "method" in data and "error" not in data):
            return super().structure_message(data)
        try:
            return self._converter.structure(data, self.get_message_type(data["method"]) or JsonRPCRequestMessage)
        except Exception as e:  # what does not parse is the sender's error
            why = transform_error(e, format_exception=_why) if isinstance(e, ClassValidationError) else [str(e)]
            return _Unparsed(data["id"], data["method"], "; ".join(why))

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Unparsed):
            error = JsonRpcInvalidParams(f"invalid params for {message.method}: {message.why}")
            self._send_response(message.id, error=error.to_response_error())
        else:
            super().handle_message(message)


def _word_before(line: str) -> str:
    """The identifier the cursor is in (what a completion menu filters on)."""
    m = re.search(r"[\w$]*$", line)
    return m.group(0) if m else ""


def _opened(server: LanguageServer, uri: str) -> TextDocument | None:
    """The document the editor opened at `uri`; None for any other (pygls would read the disk instead,
    and fail on a missing file, an untitled buffer or a folder)."""
    return server.workspace.text_documents.get(unquote(uri))


def _locate(doc: TextDocument, pos: types.Position) -> tuple[int, types.Position]:
    """The offset in `doc.source` of a position in the client's units, and the position clamped to the
    text: past a line's end means its end, past the last line the document's end, as the LSP says (pygls's
    own conversion stops one character short at the end of a last line, and changes `pos`)."""
    lines = doc.lines
    line, character = pos.line, pos.character
    if line >= len(lines):
        ends_open = bool(lines) and not lines[-1].endswith(("\n", "\r"))
        line, character = (len(lines) - 1, sys.maxsize) if ends_open else (len(lines), 0)
    start = sum(len(x) for x in lines[:line])
    text = lines[line].rstrip("\r\n") if line < len(lines) else ""
    units = i = 0
    while i < len(text) and units < character:
        units += doc.position_codec.client_num_units(text[i])
        i += 1
    return start + i, types.Position(line, units)


def build_server(settings: Settings | None = None) -> LanguageServer:
    """The language server with every feature registered; `start_io()` runs it."""
    from .. import __version__

    server = LanguageServer(NAME, __version__, protocol_cls=_Protocol)
    bridge = Bridge(server, settings or Settings())
    server.bridge = bridge  # type: ignore[attr-defined]

    @server.feature(types.INITIALIZE)
    def initialize(params: types.InitializeParams) -> None:
        for problem in bridge.settings.update(params.initialization_options):
            bridge.tell(types.MessageType.Warning, problem)

    @server.feature(types.SHUTDOWN)
    async def shutdown(*_: Any) -> None:
        await bridge.close()

    async def complete(params: Any) -> tuple[str, types.Position, str] | None:
        """The daemon's completion at the cursor, the cursor clamped to the text, and the word before it."""
        doc = _opened(server, params.text_document.uri)
        if doc is None:
            return None
        offset, pos = _locate(doc, params.position)
        prefix, suffix = doc.source[:offset], doc.source[offset:]
        if not prefix.strip():
            return None
        s = bridge.settings

        def make(client: Client) -> Request:
            return client.complete(
                clip_prefix(prefix),
                suffix=suffix[:SUFFIX_CHARS],
                language=doc.language_id,
                path=doc.path or doc.uri,
                cursor={"line": pos.line, "character": pos.character},
                preset=s.preset,
                max_lines=s.max_lines,
                format=s.format,
            )

        got = await bridge.run(make)
        if not got or not got[0].strip():
            return None
        return got[0], pos, _word_before(prefix[prefix.rfind("\n") + 1 :])

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(params: types.InlineCompletionParams) -> types.InlineCompletionList:
        got = await complete(params)
        if got is None:
            return types.InlineCompletionList(items=[])
        text, pos, _ = got
        return types.InlineCompletionList(items=[types.InlineCompletionItem(text, range=types.Range(pos, pos))])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion(params: types.CompletionParams) -> types.CompletionList:
        got = await complete(params)
        if got is None:
            return types.CompletionList(is_incomplete=True, items=[])
        text, pos, word = got
        start = types.Position(pos.line, pos.character - server.workspace.position_codec.client_num_units(word))
        first = (word + text).split("\n", 1)[0]
        item = types.CompletionItem(
            label=first[:80] + ("…" if len(first) > 80 or "\n" in text else ""),
            kind=types.CompletionItemKind.Text,
            detail=NAME,
            filter_text=word + text,
            sort_text="0",
            text_edit=types.TextEdit(types.Range(start, pos), word + text),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    kinds = [types.CodeActionKind.RefactorRewrite, types.CodeActionKind.Empty]

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(code_action_kinds=kinds))
    def code_actions(params: types.CodeActionParams) -> list[types.CodeAction]:
        r = params.range
        uri = params.text_document.uri
        if r.start == r.end or _opened(server, uri) is None:
            return []
        rng = {
            "start": {"line": r.start.line, "character": r.start.character},
            "end": {"line": r.end.line, "character": r.end.character},
        }
        s = bridge.settings
        offers = [
            ("explain", "RWKV: explain the selection", types.CodeActionKind.Empty, None),
            ("docstring", "RWKV: write a docstring", types.CodeActionKind.RefactorRewrite, None),
            ("translate", f"RWKV: translate into {s.translate_to}", types.CodeActionKind.RefactorRewrite, None),
        ] + [
            ("rewrite", f"RWKV: rewrite: {ask}", types.CodeActionKind.RefactorRewrite, ask)
            for ask in s.rewrite_instructions
        ]
        return [
            types.CodeAction(
                title=title,
                kind=kind,
                command=types.Command(
                    title=title, command=COMMAND_PREFIX + cmd, arguments=[uri, rng] + ([ask] if ask else [])
                ),
            )
            for cmd, title, kind, ask in offers
        ]

    for cmd in COMMANDS:
        server.command(COMMAND_PREFIX + cmd)(_command_handler(server, bridge, cmd))
    return server


def _uint(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31


def _arguments(command: str, args: tuple) -> tuple[str, types.Range, str]:
    """A command's [uri, range] (rewrite: and instruction), checked: malformed ones are the caller's error,
    answered InvalidParams with the shape wanted rather than failing somewhere inside."""
    rewrite = command == "rewrite"
    bad = JsonRpcInvalidParams(
        f"{COMMAND_PREFIX}{command} takes the arguments [uri, range{', instruction' if rewrite else ''}]: the "
        "document's URI, {start, end} of {line, character} (integers from 0)"
        + (" and a non-empty instruction" if rewrite else "")
    )
    try:
        uri, rng = args[0], args[1]
        ends = [(rng[k]["line"], rng[k]["character"]) for k in ("start", "end")]
        ask = args[2] if rewrite else ""
    except (IndexError, KeyError, TypeError):
        raise bad from None
    if not isinstance(uri, str) or not all(_uint(n) for end in ends for n in end) or not isinstance(ask, str):
        raise bad
    if rewrite and not ask.strip():
        raise bad
    (l0, c0), (l1, c1) = ends
    return uri, types.Range(types.Position(l0, c0), types.Position(l1, c1)), ask.strip()


def _command_handler(server: LanguageServer, bridge: Bridge, command: str):
    async def handler(*args: Any) -> str | None:
        """Arguments: the document's URI, the range ({start, end} of {line, character}; either order), and
        for rewrite the instruction. The answer replaces the selection (rewrite, translate), is inserted
        below its first line (docstring) or is shown (explain); it is also the command's result."""
        uri, rng, ask = _arguments(command, args)
        doc = _opened(server, uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"{COMMAND_PREFIX}{command}: {uri} is not open in the editor")
        (a, start), (b, end) = sorted([_locate(doc, rng.start), _locate(doc, rng.end)], key=lambda x: x[0])
        selected = doc.source[a:b]
        s = bridge.settings

        def make(client: Client) -> Request:
            return client.selection(
                command,
                selected,
                instruction=ask or None,
                target=s.translate_to if command == "translate" else None,
                language=doc.language_id,
                path=doc.path or uri,
                preset=s.preset,
            )

        got = await bridge.run(make)
        if got is None:
            return None
        if command == "explain":
            text = got[0].strip()
            bridge.tell(types.MessageType.Info, text)
            return text
        if command == "docstring":
            edit = _docstring(doc, start.line, got[0])
        else:
            edit = types.TextEdit(types.Range(start, end), _fit(got[0], selected))
        await _apply(server, bridge, uri, edit)
        return edit.new_text

    return handler


def _fit(answer: str, selected: str) -> str:
    """The answer as the selection's replacement: without the space RWKV models put after `Response:`
    (unless the selection starts with one) and the blank lines around it; a selection of whole lines keeps
    its line break, so the line after it does not join its last."""
    text = answer.strip("\r\n").rstrip()
    if text.startswith(" ") and not selected[:1].isspace():
        text = text[1:]
    return text + selected[len(selected.rstrip("\r\n")) :]


def _docstring(doc: TextDocument, line: int, text: str) -> types.TextEdit:
    """The docstring as lines under the selection's first line, one level deeper than it. Under a last line
    with no line break (the line below does not exist) it goes at that line's end, after a break."""
    lines = doc.lines
    first = lines[line] if line < len(lines) else ""
    indent = first[: len(first) - len(first.lstrip())].rstrip("\r\n") + "    "
    body = text.strip()
    if doc.language_id == "python" and not body.startswith(('"""', "'''")):
        body = f'"""{body}"""'
    block = "".join(indent + x.strip() + "\n" if x.strip() else "\n" for x in body.split("\n"))
    if line + 1 < len(lines) or first.endswith(("\n", "\r")):
        below = types.Position(line + 1, 0)
        return types.TextEdit(types.Range(below, below), block)
    end = types.Position(line, doc.position_codec.client_num_units(first))
    return types.TextEdit(types.Range(end, end), "\n" + block.rstrip("\n"))


async def _apply(server: LanguageServer, bridge: Bridge, uri: str, edit: types.TextEdit) -> None:
    """Ask the editor to make the edit; one it refuses (a read-only buffer, say) is told, not raised."""
    try:
        result = await server.workspace_apply_edit_async(
            types.ApplyWorkspaceEditParams(edit=types.WorkspaceEdit(changes={uri: [edit]}), label=NAME)
        )
        refused = None if result.applied else result.failure_reason or "no reason given"
    except JsonRpcException as e:
        refused = e.message
    if refused:
        bridge.tell(types.MessageType.Error, f"the editor did not apply the edit: {refused}")


class _QuietSupersession(logging.Filter):
    """A superseded request is routine and malformed params are the sender's error, not failures: keep
    their tracebacks out of the editor's log (the answer says what happened)."""

    def filter(self, record: logging.LogRecord) -> bool:
        quiet = (JsonRpcContentModified, JsonRpcInvalidParams)
        return not (record.exc_info and isinstance(record.exc_info[1], quiet))


def serve_stdio(settings: Settings) -> None:
    """Run the server on stdin/stdout until the editor ends it."""
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_QuietSupersession())
    build_server(settings).start_io()
