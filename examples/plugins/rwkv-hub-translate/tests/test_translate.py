"""The plugin's own tests: what it registers, the exact prompt, and a run on rwkv-hub's built-in model."""

import asyncio

import pytest

from rwkv_hub.hub.formats import FormatError


def test_registered(rwkv_plugin_host):
    host = rwkv_plugin_host("rwkv_hub_translate")
    assert "translate" in host.formats and host.presets["translate"].format == "translate"


def test_prompt(rwkv_plugin_host):
    fmt = rwkv_plugin_host("rwkv_hub_translate").format("translate")
    from rwkv_hub.hub.formats import FormatInput

    out = fmt.render(FormatInput(instruction="French", input="See you soon."))
    assert out.prompt.endswith("English: See you soon.\n\nFrench:")
    assert out.prompt.startswith("English: Good morning.\n\nFrench: Bonjour.\n\n")
    with pytest.raises(FormatError, match="no built-in examples for 'Klingon'"):
        fmt.render(FormatInput(instruction="Klingon", input="x"))


def test_runs_on_a_real_engine(rwkv_hub_of):
    async def go():
        async with rwkv_hub_of("rwkv_hub_translate") as hub:
            s = hub.submit(
                {
                    "preset": "translate",
                    "input": {"instruction": "French", "input": "Hi."},
                    "params": {"max_tokens": 12},
                }
            )
            await s.text()
            return s

    s = asyncio.run(go())
    assert s.request["format"] == "translate" and s.request["params"]["top_p"] == 0.2
    assert s.result.completion_tokens <= 12
