"""A plugin that registers malformed things: a preset with an unknown field, a non-format, and a
completion format whose build raises."""

from rwkv_hub import hookimpl


@hookimpl
def register_presets(register):
    register({"name": "oops", "description": "typo", "temprature": 1.0})


@hookimpl
def register_formats(register):
    register("not a format")


def _broken(ctx):
    raise ValueError("no idea how to prompt for this")


@hookimpl
def register_completion_formats(register):
    from rwkv_hub.hub.completion import CompletionFormat

    register(CompletionFormat("broken", "always fails", _broken, languages=("cobol",)))
