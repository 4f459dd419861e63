"""The built-in prompt formats (chat, instruction, few-shot, raw, abc, midi), the RWKV guide's presets and
the music presets, the `prefix` completion format, MIDI's end nudge and the IRC bot."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..hub.completion import PREFIX_FORMAT
from ..hub.formats import BUILTIN_FORMATS
from ..hub.music import MUSIC_FORMATS, MUSIC_PRESETS, end_nudge
from ..hub.presets import BUILTIN_PRESETS


@hookimpl
def register_formats(register) -> None:
    for fmt in (*BUILTIN_FORMATS, *MUSIC_FORMATS):
        register(fmt)


@hookimpl
def register_presets(register) -> None:
    for preset in (*BUILTIN_PRESETS, *MUSIC_PRESETS):
        register(preset)


@hookimpl
def register_logit_processors(register) -> None:
    register("midi-end-nudge", end_nudge)


@hookimpl
def register_completion_formats(register) -> None:
    register(PREFIX_FORMAT)


def _irc(name, settings, client):
    from ..adapters.bots.irc import make_irc_bot  # imported when a bot starts, not at every start-up

    return make_irc_bot(name, settings, client)


@hookimpl
def register_bots(register) -> None:
    register("irc", _irc, "an IRC bot: answers mentions, commands and private messages (docs/bots.md)")
