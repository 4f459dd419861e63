"""`rwkv-hub compose`: write a piece of music with an RWKV ABC or MIDI model, into files you can open and hear.

    rwkv-hub compose --model RWKV-ABC.pth --format abc --out reel.mid --svg --wav
    rwkv-hub compose --model RWKV-MIDI.pth --format midi --continue opening.mid --out more.mid

The notation streams to the terminal as it is written; at the end the piece is saved (ABC: .abc and
.mid; MIDI: the event text as .txt and .mid), with .svg sheet music and .wav audio when asked for and
the tools are installed (docs/music.md). A MIDI model's `tokenizer-midi.json` is read from beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="an RWKV music checkpoint (ABC or MIDI vocabulary)")
    parser.add_argument("--format", required=True, choices=["abc", "midi"], help="the model's notation")
    parser.add_argument("--strategy", default="cpu fp32", help='where and how to run it (default "cpu fp32")')
    parser.add_argument("--tokenizer", help='override the tokenizer, e.g. "midi:PATH/tokenizer-midi.json"')
    parser.add_argument("--continue", dest="start", metavar="FILE", help="a tune to continue: .abc, .mid or event text")
    parser.add_argument(
        "--out", default="piece.mid", help="where to save: its stem names each file (a folder: piece.* in it)"
    )
    parser.add_argument("--svg", action="store_true", help="also draw sheet music (ABC; needs abcm2ps)")
    parser.add_argument("--wav", action="store_true", help="also render audio (needs fluidsynth and a soundfont)")
    parser.add_argument("--max-tokens", type=int, default=1000, help="the longest piece, in tokens (default 1000)")
    parser.add_argument("--seed", type=int, help="a seed, for a piece you can make again")


def read_start(path: str, fmt: str) -> str:
    """The text a `--continue` file gives: ABC as it is, a .mid as event text, event text as it is."""
    from .core.errors import RWKVHubError

    p = Path(path).expanduser()
    try:
        if p.suffix.lower() in (".mid", ".midi"):
            if fmt != "midi":
                raise RWKVHubError(f"{p}: a .mid file can be continued by a MIDI model (--format midi), not ABC")
            from .music.midi_text import midi_to_text

            return midi_to_text(p.read_bytes(), close=False)
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise RWKVHubError(f"{p}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        kinds = "an .abc file or event text" if fmt == "abc" else "a .mid file or event text"
        raise RWKVHubError(f"{p}: not UTF-8 text; --continue takes {kinds}") from None


def run(args: argparse.Namespace) -> int:
    import asyncio

    import rwkv_hub

    from .core.engine import Engine
    from .hub.hub import Hub
    from .hub.music import piece_base, piece_text, write_piece
    from .hub.plugins import PluginHost

    start = read_start(args.start, args.format) if args.start else ""
    piece_base(args.out)  # a place the piece cannot be saved is said now, not after generating it
    model = rwkv_hub.load(args.model, args.strategy, tokenizer=args.tokenizer)
    params = {"max_tokens": args.max_tokens} | ({"seed": args.seed} if args.seed is not None else {})

    async def compose() -> str:
        async with Engine(model) as engine:
            stream = Hub(engine, PluginHost().load()).compose(
                {"format": args.format, "continue": start, "params": params}
            )
            parts = []
            async for delta in stream:
                parts.append(delta)
                sys.stdout.write(delta)
                sys.stdout.flush()
            return "".join(parts)

    try:
        generated = asyncio.run(compose())
    except KeyboardInterrupt:
        print("\nrwkv-hub: stopped; nothing saved", file=sys.stderr)
        return 130
    sys.stdout.write("\n")
    piece = write_piece(args.format, piece_text(args.format, start, generated), args.out, svg=args.svg, wav=args.wav)
    for kind, path in piece.files.items():
        print(f"  {kind}: {path}", file=sys.stderr)
    for kind, why in piece.unavailable.items():
        print(f"  {kind}: not made: {why}", file=sys.stderr)
    for problem in piece.problems[:5]:
        print(f"  repaired: {problem}", file=sys.stderr)
    if len(piece.problems) > 5:
        print(f"  ... and {len(piece.problems) - 5} more repairs", file=sys.stderr)
    return 0
