"""A logit processor that ends a piece after 24 tokens: the end-of-tune id of ABC (3) and `<end>` of MIDI
(2) are forced, so the tests see the formats stop there."""

from rwkv_hub import hookimpl

AFTER = 24


def _end_after(tokens, logits):
    if len(tokens) >= AFTER:
        end = 3 if logits.shape[-1] <= 256 else 2
        logits[:] = -1e9
        logits[end] = 0.0
    return logits


@hookimpl
def register_logit_processors(register):
    register("end-after-24", _end_after)
