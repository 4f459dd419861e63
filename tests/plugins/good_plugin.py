"""A well-behaved third-party plugin that uses every hook (loaded as a config module in the tests)."""

from rwkv_hub import hookimpl
from rwkv_hub.hub.completion import CompletionFormat, CompletionPrompt
from rwkv_hub.hub.formats import PromptFormat, Rendered

CALLS: list[tuple[str, object]] = []


def _shout(inp):
    return Rendered(inp.input.upper() + "\n", ("\n",))


@hookimpl
def register_formats(register):
    register(PromptFormat("shout", "the input in capitals", _shout, defaults={"top_p": 0.9}))


@hookimpl
def register_presets(register):
    register({"name": "calm", "description": "low temperature", "format": "shout", "params": {"temperature": 0.5}})


@hookimpl
def register_commands(register):
    def configure(parser):
        parser.add_argument("who")

    def run(args):
        print(f"hello {args.who}")
        return 0

    register("hello", "say hello", configure, run)


@hookimpl
def register_initial_states(register):
    register("pirate", "/nonexistent/pirate.pth", "talks like a pirate")


@hookimpl
def register_logit_processors(register):
    def only_x(tokens, logits):
        out = logits.clone().fill_(-1e9)
        out[ord("x")] = 0.0
        return out

    register("only-x", only_x)


@hookimpl
def register_stream_filters(register):
    def make():
        return lambda delta: delta.replace("x", "y")

    register("x-to-y", make)


def _fim(ctx):
    """A fill-in-the-middle layout, as models trained with one expect: prefix, suffix, then the middle."""
    prompt = f"<PRE>{ctx.prefix}<SUF>{ctx.suffix}<MID>"
    return CompletionPrompt(prompt, ctx.prefix, ctx.rules, stop=("<EOT>",), params={"temperature": 0})


@hookimpl
def register_completion_formats(register):
    register(CompletionFormat("fim", "fill in the middle", _fim, languages=("lua",)))


class QuietBot:
    """A bot that connects nowhere: enough to show a plugin can offer one."""

    def __init__(self, name, settings, client):
        self.name, self.settings, self.client = name, settings, client

    async def run(self):
        CALLS.append(("bot running", self.name, self.settings))


@hookimpl
def register_bots(register):
    register("quiet", QuietBot, "says nothing")


@hookimpl
def prepare_request(request):
    CALLS.append(("prepare_request", request["format"]))
    request["params"]["max_tokens"] = min(request["params"].get("max_tokens", 1000), 7)


@hookimpl
def generation_finished(request, result):
    CALLS.append(("generation_finished", result["usage"]["completion_tokens"]))


@hookimpl
def daemon_started(hub):
    CALLS.append(("daemon_started", hub))


@hookimpl
def daemon_stopping(hub):
    CALLS.append(("daemon_stopping", hub))
