"""A few-shot translation format and a preset for it: an example of a third-party rwkv-hub plugin.

The layout follows the RWKV guide's advice for mechanical tasks: a few worked examples of the same
kind first, then the real sentence; the answer ends at the blank line.
"""

from rwkv_hub import hookimpl
from rwkv_hub.hub.formats import FormatError, PromptFormat, Rendered, clean_message

# Worked examples per target language; a request may bring its own instead.
EXAMPLES = {
    "French": [("Good morning.", "Bonjour."), ("Thank you very much.", "Merci beaucoup.")],
    "Chinese": [("hello, I love you.", "你好，我爱你。"), ("Thank you very much.", "非常感谢。")],
}


def render(inp):
    target = clean_message(inp.instruction) or "French"
    if not inp.input:
        raise FormatError("the translate format needs input: the text to translate")
    examples = list(inp.examples) or EXAMPLES.get(target)
    if not examples:
        raise FormatError(f"no built-in examples for {target!r}; give examples or use {', '.join(EXAMPLES)}")
    shots = "".join(f"English: {clean_message(q)}\n\n{target}: {clean_message(a)}\n\n" for q, a in examples)
    return Rendered(f"{shots}English: {clean_message(inp.input)}\n\n{target}:", ("\n\n",))


@hookimpl
def register_formats(register):
    register(PromptFormat("translate", "few-shot translation from English (instruction: the target language)", render))


@hookimpl
def register_presets(register):
    register(
        {
            "name": "translate",
            "description": "translation: literal and steady",
            "description_zh": "翻译:忠实、稳定",
            "format": "translate",
            "params": {"temperature": 1.0, "top_p": 0.2, "presence_penalty": 0.0, "frequency_penalty": 0.0},
        }
    )
