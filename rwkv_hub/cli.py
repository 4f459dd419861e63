"""The `rwkv-hub` command line.

Each subcommand imports the runtime only when it runs, and every user error (an `RWKVHubError`) ends
as one line on stderr with exit status 2, the same status argparse uses for bad arguments.
`bench` lives in its own module, `rwkv_hub.bench`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

PROG = "rwkv-hub"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors print one line and return 2, never a traceback."""
    from rwkv_hub.core.errors import RWKVHubError

    # Notices from the library (such as "using the built-in demo model", a plugin that failed to load)
    # go to stderr as one line each.
    logging.basicConfig(format=f"{PROG}: %(message)s", level=logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except RWKVHubError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while a model loads or a benchmark runs: nothing to save
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rwkv-hub ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail again
        return 0


def build_parser(host=None) -> argparse.ArgumentParser:
    """The parser with every built-in command and those plugins add (`host`: a loaded PluginHost)."""
    from rwkv_hub.hub.commands import add_commands

    parser = argparse.ArgumentParser(prog=PROG, description="Run RWKV language models locally.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect",
        help="describe a checkpoint without loading its weights",
        description="Print a checkpoint's shape, parameter count and the memory each strategy needs.",
    )
    inspect.add_argument(
        "path", nargs="?", help="an RWKV-7, -6, -5 or -4 checkpoint (.pth or .safetensors); default: the demo model"
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    inspect.set_defaults(run=_run_inspect)

    _add_generate(commands)
    _add_bench(commands)
    _add_compose(commands)
    _add_serve(commands)
    add_commands(commands, host or _configured_host())
    return parser


def _configured_host():
    """The plugins `serve` would load (the config file's modules, disabled names and preset overrides), so
    that `plugins`, `formats` and `presets` list what the daemon serves. A config file that cannot be read
    or applied is an error of the commands that need it (serve, bot); these lists then show the built-in
    set and say why."""
    from rwkv_hub.core.errors import RWKVHubError
    from rwkv_hub.hub.config import load_config
    from rwkv_hub.hub.plugins import PluginHost

    try:
        return PluginHost.from_config(load_config())
    except RWKVHubError as e:
        host = PluginHost().load()
        host.warnings.append(f"the config file is not used here, and `serve` will not start on it: {e}")
        return host


# Sampling options of `generate`: flag, SamplingParams field, type, help. Unset flags keep the defaults.
_SAMPLING_FLAGS = (
    ("--temperature", "temperature", float, "randomness, 0 = greedy (default 1.0)"),
    ("--top-p", "top_p", float, "keep the most likely tokens up to this probability mass, 0 = greedy (default 0.3)"),
    ("--top-k", "top_k", int, "keep only the k most likely tokens, 0 = off (default)"),
    ("--presence-penalty", "presence_penalty", float, "penalty for any token already generated (default 0.5)"),
    ("--frequency-penalty", "frequency_penalty", float, "penalty per earlier occurrence (default 0.5)"),
    ("--penalty-decay", "penalty_decay", float, "how fast earlier occurrences are forgiven (default 0.996)"),
    ("--max-tokens", "max_tokens", int, "most tokens to generate (default 1000)"),
    ("--seed", "seed", int, "the same seed and prompt give the same text"),
)


def _add_generate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="continue a prompt, streaming the text",
        description="Continue a prompt with a model and stream the text as it is generated. "
        "See docs/sampling.md for what each sampling option does.",
    )
    parser.add_argument("prompt", help="the prompt text, or - to read it from standard input")
    parser.add_argument(
        "--model", help="an RWKV-7, -6, -5 or -4 checkpoint (.pth, .safetensors); default: the demo model"
    )
    parser.add_argument("--strategy", default="cpu bf16", help='where and how to run it (default "cpu bf16")')
    parser.add_argument("--tokenizer", help='override the tokenizer: "world", "bytes", "20b:PATH" or "midi:PATH"')
    for flag, _, kind, text in _SAMPLING_FLAGS:
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    import rwkv_hub
    from rwkv_hub.core.sampling import SamplingParams

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    options = {field: getattr(args, field) for _, field, _, _ in _SAMPLING_FLAGS if getattr(args, field) is not None}
    params = SamplingParams(**options, stop=tuple(args.stop))  # a bad value is said before the model loads
    model = rwkv_hub.load(args.model, args.strategy, tokenizer=args.tokenizer)
    run = model.generate(prompt, params)
    try:
        for delta in run:
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    r = run.result
    sys.stdout.write("\n")
    print(
        f"[{r.finish_reason}: {r.prompt_tokens} prompt tokens, {r.completion_tokens} generated, "
        f"{r.tokens_per_s:.1f} tokens/s]",
        file=sys.stderr,
    )
    return 0


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the daemon: WebSocket protocol and OpenAI-compatible HTTP API",
        description="Load the model and serve it on localhost until interrupted (docs/config.md, docs/protocol.md).",
    )
    serve.add_argument("--config", help="a TOML config file (default: ~/.config/rwkv-hub/config.toml if present)")
    serve.add_argument(
        "--model", help="an RWKV-7, -6, -5 or -4 checkpoint; overrides the config (default: the demo model)"
    )
    serve.add_argument("--strategy", help='overrides the config (default "cpu bf16")')
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--token", help="the bearer token to require (default: $RWKV_HUB_TOKEN, else the token file)")
    serve.add_argument("--allow-remote", action="store_true", help="allow listening on a non-local address")
    serve.set_defaults(run=_run_serve)
    tui = commands.add_parser(
        "tui",
        help="chat and write in the terminal (starts a local daemon when none is running)",
        description="The terminal app. F1 inside lists every key.",
    )
    tui.add_argument("--url", help="the daemon (default http://127.0.0.1:8765)")
    tui.add_argument("--token", help="the daemon's token (default: $RWKV_HUB_TOKEN, else the token file)")
    tui.add_argument("--model", help="the model for a daemon the TUI starts itself")
    tui.add_argument("--no-start", action="store_true", help="do not start a daemon when none is running")
    tui.set_defaults(run=_run_tui)
    lsp = commands.add_parser(
        "lsp",
        help="a Language Server on stdio that serves the daemon's completions to an editor",
        description="Serve inline completion, completion and selection code actions to an editor over LSP "
        "(stdio), from a running daemon. The editor's initializationOptions override these options.",
    )
    lsp.add_argument("--url", help="the daemon's WebSocket URL (default ws://127.0.0.1:8765/ws)")
    lsp.add_argument("--token-file", help="the daemon's token file (default: $RWKV_HUB_TOKEN, else the token file)")
    lsp.set_defaults(run=_run_lsp)
    bot = commands.add_parser(
        "bot",
        help="run a chat bot against a running daemon",
        description="Run the bot NAME (a plugin's; built in: irc) with the [bots.NAME] settings of the config "
        "file, talking to a running daemon, until interrupted. docs/bots.md has the settings.",
    )
    bot.add_argument("name", help="the bot, e.g. irc")
    bot.add_argument("--config", help="the config file (default: <config dir>/config.toml)")
    bot.add_argument("--url", help="the daemon's WebSocket URL (default ws://127.0.0.1:8765/ws)")
    bot.add_argument("--token", help="the daemon's token (default: $RWKV_HUB_TOKEN, else the token file)")
    bot.set_defaults(run=_run_bot)
    token = commands.add_parser("token", help="print the daemon's bearer token (made on first use)")
    token.set_defaults(run=_run_token)


def _run_serve(args: argparse.Namespace) -> int:
    from rwkv_hub.adapters.daemon import serve
    from rwkv_hub.hub.config import load_config

    config = load_config(args.config)
    for key in ("model", "strategy", "host", "port"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    return serve(config, args.token, args.allow_remote)


def _run_tui(args: argparse.Namespace) -> int:
    from rwkv_hub.adapters.tui.app import run

    return run(args.url, args.token, not args.no_start, args.model)


def _run_lsp(args: argparse.Namespace) -> int:
    from rwkv_hub.adapters.lsp import Settings, serve_stdio

    settings = Settings()
    if args.url:
        settings.url = args.url
    settings.token_file = args.token_file
    serve_stdio(settings)
    return 0


def _run_bot(args: argparse.Namespace) -> int:
    import asyncio

    from rwkv_hub.adapters.bots.runner import BotRunner
    from rwkv_hub.adapters.client import DEFAULT_URL
    from rwkv_hub.hub.config import load_config
    from rwkv_hub.hub.plugins import PluginHost
    from rwkv_hub.hub.token import get_token

    config = load_config(args.config)
    host = PluginHost(config.plugins, disable=config.disable_plugins).load()
    runner = BotRunner(host.bots, config.bots, args.url or DEFAULT_URL, get_token(args.token, create=False))

    async def main() -> None:
        runner.build([args.name])
        runner.start()
        try:
            await asyncio.gather(*runner.tasks.values())
        finally:
            await runner.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _run_token(args: argparse.Namespace) -> int:
    from rwkv_hub.hub.token import get_token

    print(get_token())
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    """`bench`: its options live in rwkv_hub.bench, which imports torch only when it runs."""
    from rwkv_hub import bench

    parser = commands.add_parser("bench", help="measure throughput and memory", description=bench.__doc__)
    bench.add_arguments(parser)
    parser.set_defaults(run=bench.run)


def _add_compose(commands: argparse._SubParsersAction) -> None:
    """`compose`: its options live in rwkv_hub.compose, which imports torch only when it runs."""
    from rwkv_hub import compose

    parser = commands.add_parser("compose", help="write music with an ABC or MIDI model", description=compose.__doc__)
    compose.add_arguments(parser)
    parser.set_defaults(run=compose.run)


def _run_inspect(args: argparse.Namespace) -> int:
    from rwkv_hub.core import inspect_checkpoint
    from rwkv_hub.core.builtin import BUILTIN_MODEL, NOTICE

    if args.path is None:
        logging.getLogger("rwkv_hub").warning(NOTICE)
        args.path = BUILTIN_MODEL

    report = inspect_checkpoint(args.path).to_dict()
    print(json.dumps(report, indent=2) if args.json else _inspect_table(report))
    return 0


def _inspect_table(report: dict[str, Any]) -> str:
    from rwkv_hub.core.spec import GENERATION_NAMES

    lora = ", ".join(f"{name}={rank}" for name, rank in report["lora"].items()) or "none"
    heads = f"{report['n_head']} x head_size {report['head_size']}"
    if report["generation"] == "x040":
        heads = "none (RWKV-4 mixes channel by channel)"
    rows = [
        ("path", report["path"]),
        ("format", report["format"]),
        ("generation", f"{report['generation']} ({GENERATION_NAMES[report['generation']]})"),
        ("n_layer", report["n_layer"]),
        ("n_embd", report["n_embd"]),
        ("n_head", heads),
        ("ffn_size", report["ffn_size"]),
        ("vocab_size", report["vocab_size"]),
        ("lora ranks", lora),
        ("n_params", f"{report['n_params']:,} ({report['n_params'] / 1e9:.3f} B)"),
        ("file size", _human_bytes(report["file_bytes"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("")
    lines.append("weight memory by strategy (estimate):")
    strategies = report["bytes_per_strategy"]
    width = max((len(name) for name in strategies), default=0)
    lines.extend(f"  {name:<{width}}  {_human_bytes(size)}" for name, size in strategies.items())
    emb = _human_bytes(report["emb_params"] * report["emb_itemsize"])
    lines.append(f"  (each counts the embedding, {emb}, mapped from the file: only the rows read stay resident)")
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _port(text: str) -> int:
    """A TCP port for argparse, so that 70000 is a usage error rather than an OverflowError at bind time."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 0 (any free port) to 65535")
    return port
