"""`rwkv-hub lsp` driven over stdio by a scripted LSP client (pytest-lsp's), against a real daemon on
loopback: inline completion, completion items, superseded and cancelled requests, code actions and the
commands they run, bad options, a daemon that is down and comes back, wrong addresses and tokens,
malformed requests, UTF-16 positions, and documents the editor never opened."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import sys
import threading
from contextlib import asynccontextmanager

import pytest
import websockets
from conftest import DaemonThread
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import client_capabilities, make_test_lsp_client

from rwkv_hub import hookimpl
from rwkv_hub.hub.config import Config, Limits
from rwkv_hub.hub.plugins import PluginHost

TOKEN = "lsp-test-token-0123456789"
SHAPE = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64)
SOURCE = "import os\n\n\ndef add(a, b):\n    "
URI = "file:///tmp/project/calc.py"


@pytest.fixture(scope="module")
def daemon(checkpoint_factory, model_factory, tmp_path_factory):
    model = model_factory(checkpoint_factory(**SHAPE))
    server = DaemonThread()
    config = Config(port=0, limits=Limits(max_active=8))
    hub = server.hub(model, tmp_path_factory.mktemp("sessions"), cache_bytes=2**26, limits=config.limits.engine())
    running = server.start(hub, config, TOKEN)
    yield running
    server.stop(running).result(60)
    server.close()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "token"
    path.write_text(TOKEN + "\n")
    return path


def ws_url(daemon) -> str:
    return daemon.url.replace("http", "ws", 1) + "/ws"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


@asynccontextmanager
async def editor(options: dict, text: str = SOURCE, language: str = "python", args: tuple[str, ...] = ()):
    """A client that started `rwkv-hub lsp ARGS`, initialized it like VS Code, and opened one document.
    It applies the edits the server asks for while `client.applies` is true, and refuses them after."""
    client = make_test_lsp_client()
    edits: list[types.ApplyWorkspaceEditParams] = []

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        edits.append(params)
        if client.applies:
            return types.ApplyWorkspaceEditResult(applied=True)
        return types.ApplyWorkspaceEditResult(applied=False, failure_reason="the buffer is read-only")

    client.edits = edits
    client.applies = True
    # lsprotocol reads any code action that has a `command` as a Command, though a CodeAction may carry
    # one too: tell them apart by the field's type, as editors do.
    conv = client.protocol._converter
    conv.register_structure_hook(
        types.Command | types.CodeAction,
        lambda obj, _: conv.structure(obj, types.Command if isinstance(obj.get("command"), str) else types.CodeAction),
    )
    await client.start_io(sys.executable, "-m", "rwkv_hub", "lsp", *args)
    caps = client_capabilities("visual-studio-code")
    await client.initialize_session(types.InitializeParams(capabilities=caps, initialization_options=options))
    item = types.TextDocumentItem(uri=URI, language_id=language, version=1, text=text)
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=item))
    try:
        yield client
    finally:
        await client.shutdown_session()
        await client.stop()


def end_of(text: str) -> types.Position:
    lines = text.split("\n")
    return types.Position(len(lines) - 1, len(lines[-1]))


def inline_params(pos: types.Position) -> types.InlineCompletionParams:
    ctx = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)
    return types.InlineCompletionParams(context=ctx, text_document=types.TextDocumentIdentifier(URI), position=pos)


async def daemon_completion(daemon, prefix: str, **fields) -> str:
    """The same completion asked of the daemon directly, for comparison."""
    msg = {"type": "complete", "id": "direct", "prefix": prefix, "language": "python", "preset": "exact"} | fields
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with websockets.connect(ws_url(daemon), additional_headers=headers) as ws:
        await ws.send(json.dumps(msg))
        text = ""
        while True:
            ev = json.loads(await ws.recv())
            if ev["type"] == "delta":
                text += ev["text"]
            elif ev["type"] == "done":
                return text
            else:
                raise AssertionError(ev)


def test_inline_completion_and_completion_items_come_from_the_daemon(daemon, token_file):
    options = {"url": ws_url(daemon), "token_file": str(token_file), "preset": "exact", "max_lines": 3}

    async def go():
        async with editor(options) as client:
            inline = await client.text_document_inline_completion_async(inline_params(end_of(SOURCE)))
            params = types.CompletionParams(text_document=types.TextDocumentIdentifier(URI), position=end_of(SOURCE))
            items = await client.text_document_completion_async(params)
            messages = list(client.messages)
        expected = await daemon_completion(daemon, SOURCE, max_lines=3, path="/tmp/project/calc.py")
        return inline, items, messages, expected

    inline, items, messages, expected = run(go())
    assert messages == []
    assert expected.strip() and expected.count("\n") < 3
    assert [i.insert_text for i in inline.items] == [expected]
    assert inline.items[0].range == types.Range(end_of(SOURCE), end_of(SOURCE))
    (item,) = items.items
    assert item.text_edit.new_text == expected and item.detail == "rwkv-hub" and items.is_incomplete


def test_completion_item_replaces_the_word_being_typed(daemon, token_file):
    text = SOURCE + "ret"
    options = {"url": ws_url(daemon), "token_file": str(token_file), "preset": "exact"}

    async def go():
        async with editor(options, text) as client:
            params = types.CompletionParams(text_document=types.TextDocumentIdentifier(URI), position=end_of(text))
            return await client.text_document_completion_async(params), await daemon_completion(daemon, text)

    items, expected = run(go())
    (item,) = items.items
    start = types.Position(end_of(text).line, end_of(text).character - 3)
    assert item.text_edit.range == types.Range(start, end_of(text))
    assert item.text_edit.new_text == "ret" + expected and item.filter_text == "ret" + expected


def test_document_changes_are_followed(daemon, token_file):
    options = {"url": ws_url(daemon), "token_file": str(token_file), "preset": "exact"}
    typed = "x = 1\nif x:\n    "

    async def go():
        async with editor(options) as client:
            change = types.TextDocumentContentChangeWholeDocument(text=typed)
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2), content_changes=[change]
                )
            )
            got = await client.text_document_inline_completion_async(inline_params(end_of(typed)))
        return got, await daemon_completion(daemon, typed)

    got, expected = run(go())
    assert [i.insert_text for i in got.items] == [expected]


def test_a_superseded_request_comes_back_content_modified_and_a_cancelled_one_cancelled(daemon, token_file):
    # Prose with no line budget: nothing ends a completion early, so the first is still running.
    slow = {"url": ws_url(daemon), "token_file": str(token_file), "max_lines": 200}
    long_source = SOURCE + "x" * 10

    async def go():
        async with editor(slow, long_source, language="plaintext") as client:
            await client.text_document_inline_completion_async(inline_params(end_of(SOURCE)))  # connected now
            first = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(end_of(SOURCE))))
            await asyncio.sleep(0)  # sent
            second = await client.text_document_inline_completion_async(inline_params(end_of(long_source)))
            with pytest.raises(JsonRpcException) as superseded:
                await first
            third = asyncio.ensure_future(
                client.protocol.send_request_async(
                    types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(end_of(SOURCE)), msg_id="third"
                )
            )
            await asyncio.sleep(0)  # the request is on its way
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="third"))
            with pytest.raises(JsonRpcException) as cancelled:
                await third
            after = await client.text_document_inline_completion_async(inline_params(end_of(long_source)))
            return superseded.value, cancelled.value, second, after

    superseded, cancelled, second, after = run(go())
    assert superseded.code == -32801  # ContentModified: editors drop it silently
    assert cancelled.code == -32800  # RequestCancelled
    assert isinstance(second, types.InlineCompletionList) and isinstance(after, types.InlineCompletionList)


def test_code_actions_and_their_commands(daemon, token_file):
    options = {"url": ws_url(daemon), "token_file": str(token_file), "rewrite_instructions": ["use sum()"]}
    text = "def total(xs):\n    t = 0\n    for x in xs:\n        t += x\n    return t\n"
    rng = types.Range(types.Position(0, 0), types.Position(4, 12))

    async def go():
        async with editor(options, text) as client:
            ctx = types.CodeActionContext(diagnostics=[])
            actions = await client.text_document_code_action_async(
                types.CodeActionParams(text_document=types.TextDocumentIdentifier(URI), range=rng, context=ctx)
            )
            empty = await client.text_document_code_action_async(
                types.CodeActionParams(
                    text_document=types.TextDocumentIdentifier(URI),
                    range=types.Range(rng.start, rng.start),
                    context=ctx,
                )
            )
            results = {}
            for action in actions:
                cmd = action.command
                params = types.ExecuteCommandParams(command=cmd.command, arguments=cmd.arguments)
                results[cmd.command] = await client.workspace_execute_command_async(params)
            return actions, empty, results, list(client.edits), list(client.messages)

    actions, empty, results, edits, messages = run(go())
    assert not empty  # nothing selected: nothing offered
    titles = [a.title for a in actions]
    assert titles == [
        "RWKV: explain the selection",
        "RWKV: write a docstring",
        "RWKV: translate into English",
        "RWKV: rewrite: use sum()",
    ]
    assert set(results) == {"rwkv-hub.explain", "rwkv-hub.docstring", "rwkv-hub.translate", "rwkv-hub.rewrite"}
    assert all(isinstance(v, str) for v in results.values())
    # explain shows its answer; the others come back as edits to the document
    assert any(m.message == "rwkv-hub: " + results["rwkv-hub.explain"].strip() for m in messages)
    by_text = [e.edit.changes[URI][0] for e in edits]
    assert len(by_text) == 3
    docstring, translated, rewritten = by_text
    assert docstring.range.start == types.Position(1, 0) and docstring.new_text.startswith('    """')
    assert translated.range == rng and translated.new_text == results["rwkv-hub.translate"]
    assert rewritten.range == rng and rewritten.new_text == results["rwkv-hub.rewrite"]


def test_bad_options_are_reported_and_skipped(daemon, token_file):
    options = {"url": ws_url(daemon), "token_file": str(token_file), "max_lines": "eight", "colour": "blue"}

    async def go():
        async with editor(options) as client:
            got = await client.text_document_inline_completion_async(inline_params(end_of(SOURCE)))
            return got, [m.message for m in client.messages]

    got, messages = run(go())
    assert "rwkv-hub: option 'max_lines' must be int, not str" in messages
    assert any(m.startswith("rwkv-hub: unknown option 'colour'") for m in messages)
    assert len(got.items) == 1  # the good options still hold


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_daemon_that_is_down_is_reported_once_and_found_when_it_comes_up(
    checkpoint_factory, model_factory, tmp_path, token_file
):
    port = free_port()
    options = {"url": f"ws://127.0.0.1:{port}/ws", "token_file": str(token_file)}
    server = DaemonThread()

    async def go():
        async with editor(options) as client:
            down = [await client.text_document_inline_completion_async(inline_params(end_of(SOURCE))) for _ in range(3)]
            said_down = [m.message for m in client.messages]
            model = model_factory(checkpoint_factory(**SHAPE))
            config = Config(port=port)
            hub = server.hub(model, tmp_path / "sessions", limits=config.limits.engine())
            running = await asyncio.to_thread(server.start, hub, config, TOKEN)
            try:
                up = await client.text_document_inline_completion_async(inline_params(end_of(SOURCE)))
            finally:
                await asyncio.wrap_future(server.stop(running))
            return down, said_down, up, [m.message for m in client.messages]

    try:
        down, said_down, up, said = run(go())
    finally:
        server.close()
    assert all(not d.items for d in down)
    assert len(said_down) == 1 and f"no rwkv-hub daemon at ws://127.0.0.1:{port}/ws" in said_down[0]
    assert len(up.items) == 1
    assert said[1:] == [f"rwkv-hub: connected to the daemon at ws://127.0.0.1:{port}/ws"]


def test_a_wrong_token_is_reported_once(daemon, tmp_path):
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token\n")

    async def go():
        async with editor({"url": ws_url(daemon), "token_file": str(wrong)}) as client:
            for _ in range(2):
                got = await client.text_document_inline_completion_async(inline_params(end_of(SOURCE)))
                assert not got.items
            return list(client.messages)

    (message,) = run(go())
    assert message.type == types.MessageType.Error
    assert str(wrong) in message.message and "401" in message.message and "`rwkv-hub token`" in message.message


# --- wrong addresses, malformed requests, positions, documents not open --------------------------------------


def inline_request(uri: str, line: int, character: int) -> dict:
    """Inline completion params as JSON, so a test can send what lsprotocol would refuse to build."""
    return {"textDocument": {"uri": uri}, "position": position(line, character), "context": {"triggerKind": 2}}


async def answer(client, method: str, params: dict) -> object:
    """The server's answer to a request whose params are sent as JSON (lsprotocol would not build malformed
    ones), or its JSON-RPC error (raised); an answer that never comes fails."""
    typed = client.protocol.get_message_type
    client.protocol.get_message_type = lambda _: None  # a plain JSON-RPC request: params as they are
    try:
        reply = client.protocol.send_request(method, params)  # sent now, before the next line
    finally:
        client.protocol.get_message_type = typed
    return await asyncio.wait_for(asyncio.wrap_future(reply), 20)


def position(line, character) -> dict:
    return {"line": line, "character": character}


def span(a: tuple, b: tuple) -> dict:
    """A range as a command's argument: {start, end} of {line, character}."""
    return {"start": position(*a), "end": position(*b)}


async def execute(client, command: str, *arguments) -> object:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams("rwkv-hub." + command, arguments))


@pytest.fixture(scope="module")
def web_server():
    """A plain HTTP server on loopback: something listening that is not the daemon."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"ws://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.mark.parametrize(
    "case, said",
    [
        ("the printed http address", None),
        ("no scheme", "is not a daemon address"),
        ("a web server", "did not answer as an rwkv-hub daemon"),
        ("a wrong path", "(HTTP 404)"),
        ("a broken url option", "option 'url'"),
    ],
)
def test_the_printed_address_works_and_a_wrong_one_is_one_message(daemon, token_file, web_server, case, said):
    port = daemon.url.rsplit(":", 1)[1]
    args, options = {
        "the printed http address": ((), {"url": daemon.url}),  # http://127.0.0.1:PORT, as `serve` prints it
        "no scheme": (("--url", f"127.0.0.1:{port}"), {}),
        "a web server": (("--url", web_server), {}),
        "a wrong path": (("--url", ws_url(daemon).replace("/ws", "/nothing")), {}),
        "a broken url option": (("--url", ws_url(daemon)), {"url": "ws://[bad"}),  # skipped: --url holds
    }[case]

    async def go():
        async with editor(options | {"token_file": str(token_file)}, args=args) as client:
            got = [await client.text_document_inline_completion_async(inline_params(end_of(SOURCE))) for _ in range(2)]
            return got, list(client.messages)

    got, messages = run(go())
    works = said is None or case == "a broken url option"
    assert [len(g.items) for g in got] == ([1, 1] if works else [0, 0])
    assert [m.message for m in messages if said is None or said in m.message] == [m.message for m in messages]
    assert len(messages) == (0 if said is None else 1)
    if said and not works:
        assert messages[0].type == types.MessageType.Error


def test_requests_that_do_not_parse_are_answered_invalid_params(daemon, token_file):
    options = {"url": ws_url(daemon), "token_file": str(token_file)}
    no_position = {"textDocument": {"uri": URI}}

    async def go():
        async with editor(options) as client:
            errors = []
            for method, params in [
                (types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_request(URI, -1, 0)),
                (types.TEXT_DOCUMENT_COMPLETION, no_position),
            ]:
                with pytest.raises(JsonRpcException) as e:
                    await answer(client, method, params)
                errors.append(e.value)
            after = await client.text_document_inline_completion_async(inline_params(end_of(SOURCE)))
            return errors, after

    errors, after = run(go())
    assert [e.code for e in errors] == [-32602, -32602]  # InvalidParams, with the request's id
    assert "position" in errors[0].message and "position" in errors[1].message
    assert len(after.items) == 1  # the server goes on


def test_completion_item_ranges_count_utf16_code_units(daemon, token_file):
    text = "𠀀𠀀ab"  # two characters outside the BMP: two UTF-16 units each, and \\w, so part of the word
    options = {"url": ws_url(daemon), "token_file": str(token_file), "preset": "exact"}

    async def go():
        async with editor(options, text) as client:
            params = types.CompletionParams(text_document=types.TextDocumentIdentifier(URI), position=end)
            return await client.text_document_completion_async(params)

    end = types.Position(0, 6)
    (item,) = run(go()).items
    assert item.text_edit.range == types.Range(types.Position(0, 0), end)
    assert item.text_edit.new_text.startswith(text)


def test_a_cursor_past_the_end_of_the_last_line_is_at_its_end(daemon, token_file):
    text = SOURCE + "return a + b"  # no newline at the end
    options = {"url": ws_url(daemon), "token_file": str(token_file), "preset": "exact"}
    past = types.Position(end_of(text).line, 99)

    async def go():
        async with editor(options, text) as client:
            inline = await client.text_document_inline_completion_async(inline_params(past))
            params = types.CompletionParams(text_document=types.TextDocumentIdentifier(URI), position=past)
            items = await client.text_document_completion_async(params)
        return inline, items, await daemon_completion(daemon, text, path="/tmp/project/calc.py")

    inline, items, expected = run(go())
    assert [i.insert_text for i in inline.items] == [expected]  # the whole line is the prefix, its last "b" too
    assert inline.items[0].range == types.Range(end_of(text), end_of(text))
    (item,) = items.items
    assert item.text_edit.range.end == end_of(text) and item.text_edit.new_text == "b" + expected


def test_documents_not_open_get_no_completion_and_commands_on_them_invalid_params(daemon, token_file, tmp_path):
    options = {"url": ws_url(daemon), "token_file": str(token_file)}
    missing = (tmp_path / "missing.py").as_uri()

    async def go():
        async with editor(options) as client:
            client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(URI)))
            got = [
                await answer(client, types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_request(uri, 0, 0))
                for uri in (missing, "untitled:Untitled-1", tmp_path.as_uri(), URI)
            ]
            params = {"textDocument": {"uri": missing}, "position": position(0, 0)}
            got.append(await answer(client, types.TEXT_DOCUMENT_COMPLETION, params))
            with pytest.raises(JsonRpcException) as e:
                await execute(client, "explain", missing, span((0, 0), (0, 3)))
            return got, e.value, list(client.messages)

    got, error, messages = run(go())
    assert [list(g.items) for g in got] == [[]] * 5
    assert error.code == -32602 and "not open" in error.message and error.data is None
    assert messages == []


def test_a_docstring_under_a_last_line_without_newline_starts_with_one(daemon, token_file):
    text = "def add(a, b): return a + b"
    end = types.Position(0, len(text))

    async def go():
        async with editor({"url": ws_url(daemon), "token_file": str(token_file)}, text) as client:
            await execute(client, "docstring", URI, span((0, 0), (0, len(text))))
            return [e.edit.changes[URI][0] for e in client.edits]

    (edit,) = run(go())
    assert edit.range == types.Range(end, end)  # (1, 0) does not exist
    assert edit.new_text.startswith('\n    """') and not edit.new_text.endswith("\n")


def test_malformed_command_arguments_are_invalid_params(daemon, token_file):
    options = {"url": ws_url(daemon), "token_file": str(token_file)}
    good = span((0, 0), (0, 3))

    async def go():
        async with editor(options) as client:
            errors = []
            for command, arguments in [
                ("explain", [URI, {"start": position("0", 0), "end": position(0, 3)}]),
                ("explain", [5, good]),
                ("explain", [URI, [0, 0, 0, 3]]),
                ("explain", []),
                ("rewrite", [URI, good, 42]),
                ("rewrite", [URI, good, " "]),
            ]:
                with pytest.raises(JsonRpcException) as e:
                    await asyncio.wait_for(execute(client, command, *arguments), 20)
                errors.append(e.value)
            return errors

    errors = run(go())
    assert [e.code for e in errors] == [-32602] * 6
    assert all(e.data is None and "[uri, range" in e.message for e in errors)


def test_a_reversed_range_is_normalized_a_refused_edit_reported_and_a_null_target_skipped(daemon, token_file):
    options = {"url": ws_url(daemon), "token_file": str(token_file), "translate_to": None}
    backwards = span((3, 3), (0, 0))
    forwards = types.Range(types.Position(0, 0), types.Position(3, 3))

    async def go():
        async with editor(options) as client:
            ctx = types.CodeActionContext(diagnostics=[])
            actions = await client.text_document_code_action_async(
                types.CodeActionParams(text_document=types.TextDocumentIdentifier(URI), range=forwards, context=ctx)
            )
            await execute(client, "translate", URI, backwards)
            client.applies = False
            refused = await execute(client, "translate", URI, backwards)
            return actions, [e.edit.changes[URI][0] for e in client.edits], refused, list(client.messages)

    actions, edits, refused, messages = run(go())
    assert "RWKV: translate into English" in [a.title for a in actions]
    assert [e.range for e in edits] == [forwards, forwards]
    assert isinstance(refused, str)
    said = [(m.type, m.message) for m in messages]
    assert said[0] == (types.MessageType.Warning, "rwkv-hub: option 'translate_to' must be str, not null")
    refusal = "rwkv-hub: the editor did not apply the edit: the buffer is read-only"
    assert said[1:] == [(types.MessageType.Error, refusal)]


ANSWER = " Bonjour le monde."


@hookimpl
def register_stream_filters(register):
    """As this module is a plugin (below): every answer is ANSWER, with the space RWKV models put after
    `Response:`, whatever the tiny random model says."""

    def make():
        first = iter([ANSWER])
        return lambda delta: next(first, "")

    register("answer-after-a-space", make)


@pytest.fixture
def spacing_daemon(checkpoint_factory, model_factory, tmp_path):
    """A daemon whose every answer is ANSWER: this test module is its plugin (pytest imports it as
    `test_lsp`), and every request enables that stream filter."""
    server = DaemonThread()
    hub = server.hub(model_factory(checkpoint_factory(**SHAPE)), tmp_path / "sessions")
    hub.host = PluginHost(["test_lsp"], entry_points=False, strict=True).load()
    submit = hub.submit
    hub.submit = lambda request: submit({**request, "stream_filters": ["answer-after-a-space"]})
    running = server.start(hub, Config(port=0), TOKEN)
    yield running
    server.stop(running).result(60)
    server.close()


def test_a_replacement_drops_the_space_the_model_puts_first(spacing_daemon, token_file):
    text = "x = 1\ny = 2\n"
    options = {"url": ws_url(spacing_daemon), "token_file": str(token_file)}
    word, lines = span((0, 0), (0, 1)), span((0, 0), (2, 0))  # lines: whole lines, as a line-wise selection

    async def go():
        async with editor(options, text) as client:
            await execute(client, "translate", URI, word)
            await execute(client, "rewrite", URI, lines, "use a tuple")
            await execute(client, "explain", URI, word)
            return [e.edit.changes[URI][0].new_text for e in client.edits], [m.message for m in client.messages]

    edits, messages = run(go())
    assert edits == ["Bonjour le monde.", "Bonjour le monde.\n"]  # a selection of whole lines stays whole lines
    assert messages == ["rwkv-hub: Bonjour le monde."]
