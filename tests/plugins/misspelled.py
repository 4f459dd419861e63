"""A plugin with a misspelled hook name."""

from rwkv_hub import hookimpl


@hookimpl
def register_format(register):  # the hook is register_formats
    pass
