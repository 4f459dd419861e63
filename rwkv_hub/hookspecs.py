"""The plugin contract: every hook a plugin may implement, with when it is called and what it returns.

A plugin is a module (or object) with functions marked `@rwkv_hub.hookimpl` and named after these specs.
Plugins are found through the entry-point group `rwkv_hub` and through modules named in the config
file; rwkv-hub's own formats and presets are plugins registered the same way. Registration hooks are
called once at start-up with a `register` callback, so the host knows which plugin registered what. No
hook is called per token: logit processors and stream filters are collected at start-up. The per-request
hooks, and a plugin's formats, run in a thread of their own with a time bound, so that a slow plugin
cannot stall the daemon; a plugin's failure is reported against it (`rwkv-hub plugins`), never the
request's.

New arguments may be added to these hooks later; pluggy passes a plugin only the arguments it names,
so existing plugins keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("rwkv_hub")
hookimpl = pluggy.HookimplMarker("rwkv_hub")


@hookspec
def register_formats(register: Callable[..., None]) -> None:
    """Register prompt formats: call `register(fmt)` with a `rwkv_hub.hub.formats.PromptFormat` per format.

    Called once at start-up, for every plugin. A later registration of the same name replaces an
    earlier one by the precedence config > entry point > built-in (with a warning). A format whose
    `defaults` are not valid sampling parameters is refused. `render` returns a `Rendered`; anything else,
    or an exception other than `FormatError`, fails the request naming the plugin. `read_answer` reads
    the finished text into the answer.
    """


@hookspec
def register_presets(register: Callable[..., None]) -> None:
    """Register parameter presets: call `register(preset)` with a `rwkv_hub.hub.presets.Preset`, or with a
    dict of the same fields (`name`, `description`, `description_zh`, `format`, `params`); unknown
    fields, bad parameters and a `format` no plugin registers are refused. Called once at start-up, for
    every plugin.
    """


@hookspec
def register_commands(register: Callable[..., None]) -> None:
    """Add `rwkv-hub` subcommands: call `register(name, help, configure, run)` where `configure(parser)`
    adds arguments to an argparse parser and `run(args) -> int` runs the command. Called when the
    command line is built; import heavy libraries inside `run`, not at module level.
    """


@hookspec
def register_initial_states(register: Callable[..., None]) -> None:
    """Offer initial states (state-tuned personas): call `register(name, path, description)` with the path
    of an RWKV state-tuning `.pth` file. Called once at start-up; files are read when a session uses them.
    """


@hookspec
def register_logit_processors(register: Callable[..., None]) -> None:
    """Offer logit processors: call `register(name, processor)` where `processor(tokens, logits)` gets the
    tokens generated so far and the next token's logits (a 1-D tensor) and returns logits. Collected
    once at start-up; a request enables one by name.
    """


@hookspec
def register_stream_filters(register: Callable[..., None]) -> None:
    """Offer stream filters: call `register(name, make_filter)` where `make_filter()` returns a function
    `filter(delta: str) -> str` applied to each text delta of one request, on the event loop (keep it
    quick). Collected once at start-up; a request enables one by name. One that raises or returns
    anything but text is dropped for that request.
    """


@hookspec
def register_completion_formats(register: Callable[..., None]) -> None:
    """Offer editor completion prompts: call `register(fmt)` with a `rwkv_hub.hub.completion.CompletionFormat`
    (a name, a description, `build(context) -> CompletionPrompt`, and the editor language ids it serves by
    default, e.g. a fill-in-the-middle layout for a model trained with one). Called once at start-up.
    """


@hookspec
def register_bots(register: Callable[..., None]) -> None:
    """Offer chat bots: call `register(name, factory, description)` where `factory(name, settings, client)`
    gets the `[bots.NAME]` table of the config file and a connected-on-demand
    `rwkv_hub.adapters.client.Client`, and returns an object whose `async run()` serves until cancelled.
    The daemon starts the bots whose table says `enabled = true` and stops them with it; `rwkv-hub bot
    NAME` runs one against a running daemon. Build on `rwkv_hub.adapters.bots.core.BotCore`.
    """


@hookspec
def prepare_request(request: dict[str, Any]) -> None:
    """Adjust a request before it runs: `request` has `format`, `preset`, `params` (a dict), `input` and
    `prompt` (the rendered text); change them in place. Called for every request, by every plugin, in
    registration order, each on its own copy: an exception, or a request left unable to run (a prompt
    that is not text, parameters of the wrong type or range), drops that plugin's changes and is
    reported against it.
    """


@hookspec
def generation_finished(request: dict[str, Any], result: dict[str, Any]) -> None:
    """Observe a finished request: `result` has `text` (as generated), `finish_reason`, `usage` (prompt and
    completion tokens) and `timings`. Called for every request, by every plugin, in a thread of its own;
    return values are ignored.
    """


@hookspec
def daemon_started(hub: Any) -> None:
    """The daemon is serving; `hub` gives access to formats, presets and the engine. For adapters such as
    bots that run beside it. Called once per daemon start, by every plugin.
    """


@hookspec
def daemon_stopping(hub: Any) -> None:
    """The daemon is about to stop; release what `daemon_started` took. Called once, by every plugin."""
