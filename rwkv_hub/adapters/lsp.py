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
tries again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified
from pygls.lsp.server import LanguageServer
from pygls.workspace import TextDocument

from ..core.errors import RWKVHubError
from ..hub.completion import SUFFIX_CHARS, clip_prefix
from ..hub.selection import COMMANDS
from ..hub.token import get_token
from .client import DEFAULT_URL, Client, Request, ServerError

log = logging.getLogger("rwkv_hub.lsp")
NAME = "rwkv-hub"
COMMAND_PREFIX = "rwkv-hub."


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
        known = {f.name for f in fields(self)}
        for key, value in options.items():
            if key not in known:
                problems.append(f"unknown option {key!r}; options are {', '.join(sorted(known))}")
            elif key == "rewrite_instructions":
                if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                    problems.append("rewrite_instructions must be a list of non-empty strings")
                else:
                    self.rewrite_instructions = value[:10]
            elif value is not None and (not isinstance(value, kinds[key]) or isinstance(value, bool)):
                problems.append(f"option {key!r} must be {kinds[key].__name__}, not {type(value).__name__}")
            elif key == "max_lines" and value is not None and not 1 <= value <= 200:
                problems.append("option 'max_lines' must be between 1 and 200")
            else:
                setattr(self, key, value)
        return problems


class Bridge:
    """The link to the daemon: connects on demand, and tells the editor once when it cannot."""

    def __init__(self, server: LanguageServer, settings: Settings):
        self.server = server
        self.settings = settings
        self.client: Client | None = None
        self.down_reported = False
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
            client = Client(self.settings.url, token=self._token(), retries=0)
            await client.connect()
        except (ConnectionError, ServerError) as e:
            if not self.down_reported:
                self.down_reported = True
                self.tell(types.MessageType.Warning, f"{e}; completions resume when it is reachable")
            return None
        if self.down_reported:
            self.down_reported = False
            self.tell(types.MessageType.Info, f"connected to the daemon at {self.settings.url}")
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


def _word_before(line: str) -> str:
    """The identifier the cursor is in (what a completion menu filters on)."""
    m = re.search(r"[\w$]*$", line)
    return m.group(0) if m else ""


def build_server(settings: Settings | None = None) -> LanguageServer:
    """The language server with every feature registered; `start_io()` runs it."""
    from .. import __version__

    server = LanguageServer(NAME, __version__)
    bridge = Bridge(server, settings or Settings())
    server.bridge = bridge  # type: ignore[attr-defined]

    @server.feature(types.INITIALIZE)
    def initialize(params: types.InitializeParams) -> None:
        for problem in bridge.settings.update(params.initialization_options):
            bridge.tell(types.MessageType.Warning, problem)

    @server.feature(types.SHUTDOWN)
    async def shutdown(*_: Any) -> None:
        await bridge.close()

    def where(params: Any) -> tuple[TextDocument, str, str]:
        doc = server.workspace.get_text_document(params.text_document.uri)
        offset = doc.offset_at_position(params.position)
        return doc, doc.source[:offset], doc.source[offset:]

    async def complete(params: Any) -> str | None:
        doc, prefix, suffix = where(params)
        if not prefix.strip():
            return None
        s = bridge.settings
        pos = params.position

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
        return got[0] if got and got[0].strip() else None

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(params: types.InlineCompletionParams) -> types.InlineCompletionList:
        text = await complete(params)
        here = types.Range(params.position, params.position)
        items = [types.InlineCompletionItem(insert_text=text, range=here)] if text else []
        return types.InlineCompletionList(items=items)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion(params: types.CompletionParams) -> types.CompletionList:
        text = await complete(params)
        if not text:
            return types.CompletionList(is_incomplete=True, items=[])
        _, prefix, _ = where(params)
        word = _word_before(prefix.rsplit("\n", 1)[-1])
        start = types.Position(params.position.line, params.position.character - len(word))
        first = (word + text).split("\n", 1)[0]
        item = types.CompletionItem(
            label=first[:80] + ("…" if len(first) > 80 or "\n" in text else ""),
            kind=types.CompletionItemKind.Text,
            detail=NAME,
            filter_text=word + text,
            sort_text="0",
            text_edit=types.TextEdit(types.Range(start, params.position), word + text),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    kinds = [types.CodeActionKind.RefactorRewrite, types.CodeActionKind.Empty]

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(code_action_kinds=kinds))
    def code_actions(params: types.CodeActionParams) -> list[types.CodeAction]:
        r = params.range
        if r.start == r.end:
            return []
        uri = params.text_document.uri
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


def _command_handler(server: LanguageServer, bridge: Bridge, command: str):
    async def handler(*args: Any) -> str | None:
        """Arguments: the document's URI, the range ({start, end} of {line, character}), and for rewrite
        the instruction. The answer replaces the selection (rewrite, translate), is inserted below its first
        line (docstring) or is shown (explain); it is also the command's result."""
        try:
            uri, rng = args[0], args[1]
            r = types.Range(
                types.Position(rng["start"]["line"], rng["start"]["character"]),
                types.Position(rng["end"]["line"], rng["end"]["character"]),
            )
            ask = args[2] if command == "rewrite" else ""
        except (IndexError, KeyError, TypeError):
            wanted = "uri, range, instruction" if command == "rewrite" else "uri, range"
            bridge.tell_once(f"{COMMAND_PREFIX}{command}: expected the arguments [{wanted}]")
            return None
        doc = server.workspace.get_text_document(uri)
        selected = doc.source[doc.offset_at_position(r.start) : doc.offset_at_position(r.end)]
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
        text = got[0].strip("\n")
        if command == "explain":
            bridge.tell(types.MessageType.Info, text.strip())
        elif command == "docstring":
            below = types.Position(r.start.line + 1, 0)
            await _apply(server, uri, types.TextEdit(types.Range(below, below), _docstring(doc, r, text)))
        else:
            await _apply(server, uri, types.TextEdit(r, text))
        return text

    return handler


def _docstring(doc: TextDocument, r: types.Range, text: str) -> str:
    """The docstring as lines under the selection's first line, one level deeper than it."""
    first = doc.lines[r.start.line] if r.start.line < len(doc.lines) else ""
    indent = first[: len(first) - len(first.lstrip())] + "    "
    body = text.strip()
    if doc.language_id == "python" and not body.startswith(('"""', "'''")):
        body = f'"""{body}"""'
    return "".join(indent + line.strip() + "\n" if line.strip() else "\n" for line in body.split("\n"))


async def _apply(server: LanguageServer, uri: str, edit: types.TextEdit) -> None:
    result = await server.workspace_apply_edit_async(
        types.ApplyWorkspaceEditParams(edit=types.WorkspaceEdit(changes={uri: [edit]}), label=NAME)
    )
    if not result.applied:
        raise RWKVHubError(f"the editor did not apply the edit: {result.failure_reason or 'no reason given'}")


class _QuietSupersession(logging.Filter):
    """A superseded request is routine, not a failure: keep its traceback out of the editor's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], JsonRpcContentModified))


def serve_stdio(settings: Settings) -> None:
    """Run the server on stdin/stdout until the editor ends it."""
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_QuietSupersession())
    build_server(settings).start_io()
