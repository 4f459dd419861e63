"""Log probabilities of generated tokens: how likely the model found each token it wrote, and what else
it weighed. For scoring answers, spotting where a model was unsure, and the OpenAI API's `logprobs`.

The numbers are the model's own distribution (log-softmax of its logits), before penalties, logit bias,
logit processors and temperature: what the model thinks, whatever the sampler then did with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .sampling.params import ParameterError

MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI's API allows


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, its bytes (a token may hold part of a UTF-8 character), its natural-log
    probability, the `top` most likely tokens at that position as (id, bytes, logprob), best first, and
    the `offset` in characters where the text it decodes begins in the generated text (the tokens of a
    character split across several all begin where the character does; a token that shows a lone lead
    byte before it as U+FFFD begins there)."""

    id: int
    bytes: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()
    offset: int = 0

    @property
    def text(self) -> str:
        """The token as text; bytes of a character split across tokens show as U+FFFD."""
        return self.bytes.decode("utf-8", errors="replace")


def token_name(raw: bytes) -> str:
    """A token as one distinct string: its text, or for bytes that are no text on their own (part of a
    character) `bytes:\\xe4\\xbd`, the spelling OpenAI's API uses, so alternatives never collide."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def check_count(value: object) -> int | None:
    """`logprobs` of a request: None (not reported) or how many alternatives to report with each token."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ParameterError(
            f"logprobs = {value!r}: must be a whole number from 0 to {MAX_TOP_LOGPROBS} (the alternatives"
            " reported with each token), or null for none"
        )
    return value


def entries(
    logits: torch.Tensor, tokens: Sequence[int], counts: Sequence[int], token_bytes: Callable[[int], bytes]
) -> list[TokenLogprob]:
    """The entry of each row's chosen token: `logits` [rows, vocab] are the model's, `counts` the number
    of alternatives each row wants. One log-softmax and one top-k for all rows."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(tokens, device=lp.device).unsqueeze(1)).squeeze(1).tolist()
    k = max(counts, default=0)
    top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    top_v, top_i = top_v.tolist(), top_i.tolist()
    out = []
    for r, token in enumerate(tokens):
        top = tuple((i, token_bytes(i), v) for i, v in zip(top_i[r][: counts[r]], top_v[r][: counts[r]], strict=True))
        out.append(TokenLogprob(token, token_bytes(token), chosen[r], top))
    return out
