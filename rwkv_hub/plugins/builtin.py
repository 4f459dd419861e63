"""The built-in prompt formats (chat, instruction, few-shot, raw), the RWKV guide's presets and the
`prefix` completion format."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..hub.completion import PREFIX_FORMAT
from ..hub.formats import BUILTIN_FORMATS
from ..hub.presets import BUILTIN_PRESETS


@hookimpl
def register_formats(register) -> None:
    for fmt in BUILTIN_FORMATS:
        register(fmt)


@hookimpl
def register_presets(register) -> None:
    for preset in BUILTIN_PRESETS:
        register(preset)


@hookimpl
def register_completion_formats(register) -> None:
    register(PREFIX_FORMAT)
