"""A plugin that registers malformed things: a preset with an unknown field, and a non-format."""

from rwkv_hub import hookimpl


@hookimpl
def register_presets(register):
    register({"name": "oops", "description": "typo", "temprature": 1.0})


@hookimpl
def register_formats(register):
    register("not a format")
