"""The built-in prompt formats (chat, instruction, few-shot, raw) and the RWKV guide's presets."""

from __future__ import annotations

from ..hookspecs import hookimpl
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
