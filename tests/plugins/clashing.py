"""A plugin that replaces the built-in chat format and preset."""

from rwkv_hub import hookimpl
from rwkv_hub.hub.formats import PromptFormat, Rendered


@hookimpl
def register_formats(register):
    register(PromptFormat("chat", "my chat", lambda inp: Rendered("Q: " + inp.input + "\nA:", ("\n",))))
