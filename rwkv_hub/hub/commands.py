"""`rwkv-hub plugins`, `formats`, `formats render` and `presets`, and the commands plugins add.

None of these imports torch: listing what is installed takes a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys

from .formats import FormatInput, Message, render_with
from .plugins import PluginHost


def add_commands(commands: argparse._SubParsersAction, host: PluginHost) -> None:
    p = commands.add_parser("plugins", help="list plugins, what they registered, and any that failed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=lambda a: _plugins(host, a))

    f = commands.add_parser("formats", help="list prompt formats, or render one")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(run=lambda a: _formats(host, a))
    sub = f.add_subparsers(dest="action", metavar="ACTION")
    r = sub.add_parser(
        "render",
        help="print the exact prompt a request would produce, without generating",
        description="Render a format's prompt from the given input. Messages are added in order.",
    )
    r.add_argument("name", help="a format name (see `rwkv-hub formats`)")
    r.add_argument("--user", action=_Append, dest="messages", metavar="TEXT", help="a user message (repeatable)")
    r.add_argument("--assistant", action=_Append, dest="messages", metavar="TEXT", help="an assistant message")
    r.add_argument("--system", default="", help="a system preamble")
    r.add_argument("--instruction", default="", help="the task (instruction format)")
    r.add_argument("--input", default="", help="the material or question")
    r.add_argument("--example", nargs=2, action="append", default=[], metavar=("Q", "A"), help="a few-shot pair")
    r.add_argument("--text", default="", help="text to continue (raw format)")
    r.add_argument("--json", action="store_true", help="print the prompt and stop strings as JSON")
    r.set_defaults(run=lambda a: _render(host, a))

    s = commands.add_parser("presets", help="list parameter presets")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(run=lambda a: _presets(host, a))

    for cmd in host.commands.values():
        if cmd.name in commands.choices:
            host.warnings.append(f"plugin command {cmd.name!r} clashes with a built-in command and was not added")
            continue
        parser = commands.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(parser)
        parser.set_defaults(run=cmd.run)


class _Append(argparse.Action):
    """Collect --user and --assistant in command-line order, remembering which was which."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append(Message(option_string.lstrip("-"), values))
        setattr(namespace, self.dest, items)


def _plugins(host: PluginHost, args: argparse.Namespace) -> int:
    report = host.report()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    for p in report["plugins"]:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registered"].items()) or "nothing registered"
        version = f" {p['version']}" if p["version"] else ""
        print(f"{p['name']}{version} ({p['source']}, {p['module']})\n  hooks: {', '.join(p['hooks'])}\n  {what}")
    for f in report["failures"]:
        times = f" ({f['count']} times)" if f["count"] > 1 else ""
        print(f"FAILED {f['plugin']} ({f['source']}) in {f['stage']}{times}: {f['error']}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    return 0


def _formats(host: PluginHost, args: argparse.Namespace) -> int:
    _warn(host)
    owner = {k: r.plugin for k, r in host.registry["formats"].items()}
    rows = [{"name": k, "description": f.description, "plugin": owner[k]} for k, f in sorted(host.formats.items())]
    if args.json:
        print(json.dumps({"formats": rows}, indent=2, ensure_ascii=False))
    else:
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['description']}  [{r['plugin']}]")
    return 0


def _warn(host: PluginHost) -> None:
    """The loading warnings (a config file not used, a disable that names nothing), on stderr: a list that
    lacks what the user configured says why, and --json output stays clean."""
    for w in host.warnings:
        print(f"warning: {w}", file=sys.stderr)


def _render(host: PluginHost, args: argparse.Namespace) -> int:
    fmt = host.format(args.name)
    inp = FormatInput(
        messages=tuple(args.messages or ()),
        system=args.system,
        instruction=args.instruction,
        input=args.input,
        examples=tuple(tuple(e) for e in args.example),
        text=args.text,
    )
    out = render_with(fmt, inp, host.owner("formats", fmt.name))  # a plugin's failure: one line, no traceback
    if args.json:
        print(json.dumps({"format": fmt.name, "prompt": out.prompt, "stop": list(out.stop)}, ensure_ascii=False))
    else:
        sys.stdout.write(out.prompt + "\n")
        print(f"[stop strings: {', '.join(json.dumps(s) for s in out.stop) or 'none'}]", file=sys.stderr)
    return 0


def _presets(host: PluginHost, args: argparse.Namespace) -> int:
    _warn(host)
    owner = {k: r.plugin for k, r in host.registry["presets"].items()}
    rows = [p.to_dict() | {"plugin": owner[k]} for k, p in sorted(host.presets.items())]
    if args.json:
        print(json.dumps({"presets": rows}, indent=2, ensure_ascii=False))
        return 0
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        fmt = f", format {r['format']}" if r["format"] else ""
        print(f"{r['name']:<{width}}  {r['description']} / {r['description_zh']}  ({params}{fmt})  [{r['plugin']}]")
    return 0
