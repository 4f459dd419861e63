"""Pick the next token of each sequence in a batch, with per-sequence penalties and random generators.

The arithmetic is the official `rwkv` PIPELINE's (`sample_logits` and `generate`): banned tokens get minus
infinity; every token already generated loses `presence + occurrence * frequency`; occurrences decay by
`penalty_decay` after each step before the new token's grows by 1 (by 0 for `no_penalty_ids`); then the
nucleus cutoff, top_k, and temperature as `probs ** (1 / temperature)`. To stay fast on a 65536-token
vocabulary only a few hundred most likely tokens are sorted; a row whose nucleus is not inside them is
sorted in full, so the result is the same as a full sort.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import torch

from ..errors import RWKVHubError
from .params import SamplingParams

NO_PENALTY_TEXT = " \t0123456789"
# Rows with more tokens than this near their top logit skip the sorted-candidate path (see nucleus_cutoff).
MAX_CANDIDATES = 1024
_BUCKETS = 1 << 15  # float32 bit patterns >> 16: sign, exponent and 7 mantissa bits, in value order


def nucleus_cutoff(probs: torch.Tensor, top_p: list[float]) -> torch.Tensor:
    """The official top_p cutoff of each row (the first sorted probability whose running sum reaches top_p;
    0 where it never does) without sorting the row.

    A histogram over the top bits of the float patterns (which order like the values) locates the bucket
    where the running sum from the top crosses top_p; only that bucket's members are sorted. Sums run in
    float64 (the official sums in float32: the two can differ only when a sum lands within float32
    rounding of top_p).
    """
    m, _ = probs.shape
    p = torch.tensor(top_p, dtype=torch.float64, device=probs.device)
    keys = (probs.contiguous().view(torch.int32) >> 16).long()
    hist = torch.zeros(m, _BUCKETS, dtype=torch.float64, device=probs.device).scatter_add_(1, keys, probs.double())
    tail = hist.flip(-1).cumsum(-1).flip(-1)  # tail[b]: the mass of buckets b and above
    crossing = (tail >= p[:, None]).sum(-1) - 1  # the highest bucket whose tail reaches top_p; -1: none does
    reached = (crossing >= 0) & (p < 1)
    b = crossing.clamp_min(0)
    above = torch.where(b + 1 < _BUCKETS, tail.gather(1, (b + 1).clamp_max(_BUCKETS - 1)[:, None])[:, 0], 0.0)
    members = keys == b[:, None]
    width = max(1, int(members.sum(-1).max()))
    vals = torch.where(members, probs, torch.full((), -1.0, dtype=probs.dtype)).topk(width, dim=-1).values
    hit = ((above[:, None] + vals.double().cumsum(-1)) >= p[:, None]) & (vals >= 0)
    cutoff = vals.gather(1, hit.to(torch.int8).argmax(-1, keepdim=True))[:, 0]
    return torch.where(reached & hit.any(-1), cutoff, torch.zeros((), dtype=probs.dtype))


@lru_cache(maxsize=16)  # a scan of the whole vocabulary: once per tokenizer and size
def no_penalty_ids(tokenizer, vocab_size: int) -> frozenset[int]:
    """Ids whose text is a substring of ' \\t0123456789' (space, tab, digits, or empty): the official
    PIPELINE lets them repeat freely (their occurrence grows by 0, though the presence penalty still applies)."""
    found = []
    for i in range(vocab_size):
        try:
            text = tokenizer.decode_bytes([i]).decode("utf-8")
        except (UnicodeDecodeError, ValueError, KeyError, IndexError, RWKVHubError):
            continue
        if text in NO_PENALTY_TEXT:
            found.append(i)
    return frozenset(found)


@lru_cache(maxsize=16)
def unusable_ids(tokenizer, vocab_size: int) -> frozenset[int]:
    """Ids the tokenizer has no text for (the World vocabulary's padding ids 65530-65535 of a 65536-row
    head, say): a model may give them probability, but they must never be drawn."""
    bad = []
    for i in range(vocab_size):
        try:
            tokenizer.decode_bytes([i])
        except (ValueError, KeyError, IndexError, RWKVHubError):
            bad.append(i)
    return frozenset(bad)


def _rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """x[rows] without copying when rows is every row in order, the usual case."""
    return x if rows == list(range(x.shape[0])) else x[rows]


class _Slot:
    """One sequence: its parameters, generator, and the column of each token it has generated."""

    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device):
        params.check_vocabulary(vocab_size)
        self.params = params
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        self.banned = torch.tensor(params.banned_tokens, dtype=torch.long, device=device)
        self.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=device)
        self.bias = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device)
        self.stop = frozenset(params.stop_tokens)
        self.columns: dict[int, int] = {}


class Sampler:
    """Samples one token per sequence per call from logits [B, vocab]; each slot is one sequence.

    Slots keep their penalty state between calls; `reset` starts a new sequence in a slot (for continuous
    batching), and `sample(logits, slots)` serves any subset of slots in any order. Each slot has its own
    torch.Generator, so a seeded sequence gives the same tokens alone or in any batch.
    """

    def __init__(
        self,
        vocab_size: int,
        params: Iterable[SamplingParams] = (),
        *,
        no_penalty_ids: Iterable[int] = (),
        never: Iterable[int] = (),
        window: float = 9.0,
        device: str | torch.device = "cpu",
    ):
        self.vocab_size = vocab_size
        self.window = window
        self.device = torch.device(device)
        self._free_growth = frozenset(no_penalty_ids)
        self._never = torch.tensor(sorted(set(never)), dtype=torch.long, device=self.device)
        self._slots: list[_Slot] = []
        # Occurrence of each generated token: ids[s, c] with weight counts[s, c] for c < len(slot.columns).
        self._ids = torch.zeros(0, 64, dtype=torch.long, device=self.device)
        self._counts = torch.zeros(0, 64, dtype=torch.float64, device=self.device)
        for p in params:
            self.add(p)

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, params: SamplingParams) -> int:
        """Start a new sequence in a new slot; returns the slot's index."""
        self._slots.append(_Slot(params, self.vocab_size, self.device))
        self._ids = torch.cat([self._ids, self._ids.new_zeros(1, self._ids.shape[1])])
        self._counts = torch.cat([self._counts, self._counts.new_zeros(1, self._counts.shape[1])])
        return len(self._slots) - 1

    def reset(self, slot: int, params: SamplingParams) -> None:
        """Start a new sequence in an existing slot: new parameters, new generator, no occurrences."""
        self._slots[slot] = _Slot(params, self.vocab_size, self.device)
        self._counts[slot].zero_()

    def occurrences(self, slot: int) -> dict[int, float]:
        """The slot's occurrence weights by token id, as the official PIPELINE's `occurrence` dict holds them."""
        cols = self._slots[slot].columns
        counts = self._counts[slot, : len(cols)].tolist()
        return {tok: counts[c] for tok, c in cols.items()}

    def sample(self, logits: torch.Tensor, slots: Sequence[int] | None = None) -> list[int]:
        """One token for each slot (all slots in order when `slots` is None) from logits [len(slots), vocab].

        The logits are not modified. Stop tokens are returned like any other but leave no occurrence.
        """
        slot_ids = list(range(len(self._slots))) if slots is None else list(slots)
        if logits.dim() != 2 or logits.shape != (len(slot_ids), self.vocab_size):
            raise ValueError(f"logits of shape {tuple(logits.shape)}; expected ({len(slot_ids)}, {self.vocab_size})")
        slots_ = [self._slots[s] for s in slot_ids]
        work = logits.detach().to(self.device, torch.float32, copy=True)
        # NaN is no candidate and +inf the likeliest (an fp16 overflow, damaged weights or state): the
        # sampler's sorts and sums must see finite numbers or -inf. One sum tells whether any is there (a
        # decode step's hot path: the full clean-up cost 1.9 ms for 16 rows of 65,536, the sum 0.04).
        if not torch.isfinite(work.sum()):
            work.nan_to_num_(nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
            if not torch.isfinite(work).any(-1).all():
                raise RWKVHubError(
                    "the model's logits are not finite numbers (NaN or -inf throughout): its weights or state"
                    " are damaged, or 16-bit weights overflowed; try a bf16 or fp32 strategy"
                )
        if self._never.numel():
            work.index_fill_(1, self._never, float("-inf"))
        for b, s in enumerate(slots_):
            if s.bias_ids.numel():
                work[b].index_add_(0, s.bias_ids, s.bias)
            if s.banned.numel():
                work[b].index_fill_(0, s.banned, float("-inf"))
        rows = torch.tensor(slot_ids, dtype=torch.long, device=self.device)
        self._penalize(work, slots_, rows)

        tokens = [0] * len(slots_)
        greedy = [b for b, s in enumerate(slots_) if s.params.greedy]
        if greedy:
            for b, t in zip(greedy, _rows(work, greedy).argmax(-1).tolist(), strict=True):
                tokens[b] = t
        drawn = [b for b, s in enumerate(slots_) if not s.params.greedy]
        if drawn:
            picked = self._draw(_rows(work, drawn), [slots_[b] for b in drawn])
            for b, t in zip(drawn, picked, strict=True):
                tokens[b] = t
        self._record(slot_ids, slots_, tokens)
        return tokens

    def _penalize(self, work: torch.Tensor, slots: list[_Slot], rows: torch.Tensor) -> None:
        """logits[t] -= presence + occurrence[t] * frequency, in float64 like the official Python floats."""
        used = [b for b, s in enumerate(slots) if s.params.penalized and s.columns]
        if not used:
            return
        width = max(len(slots[b].columns) for b in used)
        sel = torch.tensor(used, dtype=torch.long, device=self.device)
        f64 = {"dtype": torch.float64, "device": self.device}
        presence = torch.tensor([slots[b].params.presence_penalty for b in used], **f64)
        frequency = torch.tensor([slots[b].params.frequency_penalty for b in used], **f64)
        seen = torch.tensor([len(slots[b].columns) for b in used], device=self.device)
        ids = self._ids[rows[sel], :width]
        penalty = self._counts[rows[sel], :width] * frequency[:, None] + presence[:, None]
        valid = torch.arange(width, device=self.device)[None, :] < seen[:, None]
        flat = (sel[:, None] * self.vocab_size + ids)[valid]
        # The official subtracts a Python float from a float32 element, which rounds the float to float32 first.
        view = work.view(-1)
        view[flat] = view[flat] - penalty[valid].to(torch.float32)

    def _draw(self, work: torch.Tensor, slots: list[_Slot]) -> list[int]:
        """Sample from softmax(work) truncated by top_p then top_k, tempered by probs ** (1 / temperature)."""
        probs = torch.softmax(work, dim=-1)
        vocab = self.vocab_size
        top_p = [s.params.top_p for s in slots]
        top_k = [s.params.top_k if 0 < s.params.top_k < vocab else 0 for s in slots]
        u = torch.cat([torch.rand(1, generator=s.generator, dtype=torch.float64, device=self.device) for s in slots])
        out = [0] * len(slots)
        whole = [b for b in range(len(slots)) if top_p[b] >= 1 and top_k[b] == 0]
        cut = [b for b in range(len(slots)) if b not in whole]
        if whole:  # no truncation: draw over the vocabulary in id order
            p = _rows(probs, whole)
            ids = torch.arange(vocab, device=self.device).expand(len(whole), vocab)
            keep = torch.full((len(whole),), vocab, device=self.device)
            for b, t in zip(whole, self._pick(p, ids, keep, [slots[b] for b in whole], u[whole]), strict=True):
                out[b] = t
        ranked = [b for b in cut if top_k[b]]
        if ranked:  # top_k bounds the kept set: the k most likely tokens are exact candidates, however flat the row
            k = max(top_k[b] for b in ranked)
            vals, ids = torch.topk(_rows(probs, ranked), k, dim=-1)
            keep, _ = self._nucleus(vals, [top_p[b] for b in ranked], [top_k[b] for b in ranked], None)
            for b, t in zip(ranked, self._pick(vals, ids, keep, [slots[b] for b in ranked], u[ranked]), strict=True):
                out[b] = t
            cut = [b for b in cut if not top_k[b]]
        if cut:
            tp, tk = [top_p[b] for b in cut], [top_k[b] for b in cut]
            if self.window == float("inf"):  # the reference: a full sort of every row
                vals, ids = torch.sort(_rows(probs, cut), dim=-1, descending=True)
                keep, _ = self._nucleus(vals, tp, tk, None)
                for b, t in zip(cut, self._pick(vals, ids, keep, [slots[b] for b in cut], u[cut]), strict=True):
                    out[b] = t
                return out
            w = _rows(work, cut)
            near = w >= w.amax(-1, keepdim=True) - self.window  # the tokens within `window` of each top logit
            width = near.sum(-1).tolist()
            narrow = [i for i in range(len(cut)) if width[i] <= MAX_CANDIDATES]
            wide = [i for i in range(len(cut)) if width[i] > MAX_CANDIDATES]
            if narrow:
                rows = [cut[i] for i in narrow]
                vals, ids, count = self._candidates(_rows(near, narrow), _rows(probs, rows))
                keep, full = self._nucleus(vals, [tp[i] for i in narrow], [tk[i] for i in narrow], count)
                part = [j for j in range(len(narrow)) if j not in full]
                wide += [narrow[j] for j in full]  # the nucleus may reach past the candidates
                if part:
                    sub = [rows[j] for j in part]
                    picked = self._pick(vals[part], ids[part], keep[part], [slots[b] for b in sub], u[sub])
                    for b, t in zip(sub, picked, strict=True):
                        out[b] = t
            if wide:  # flat rows: find the cutoff without sorting the vocabulary, draw in id order
                rows = [cut[i] for i in wide]
                p = probs[rows]
                cutoff = nucleus_cutoff(p, [tp[i] for i in wide])
                kept = torch.where(p >= cutoff[:, None], p, torch.zeros((), dtype=p.dtype, device=p.device))
                ids = torch.arange(vocab, device=self.device).expand(len(rows), vocab)
                keep = torch.full((len(rows),), vocab, device=self.device)
                picked = self._pick(kept, ids, keep, [slots[b] for b in rows], u[rows], in_id_order=True)
                for b, t in zip(rows, picked, strict=True):
                    out[b] = t
        return out

    @staticmethod
    def _candidates(near: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tokens marked in `near` (each row's tokens within `window` of its top logit), sorted by
        probability, padded with -1.

        They are the most likely tokens of the row (a prefix of its full sort), found with one comparison
        over the vocabulary instead of a sort; returns the values, ids and how many each row has.
        """
        n = near.shape[0]
        where = near.nonzero()
        row, col = where[:, 0], where[:, 1]
        count = torch.bincount(row, minlength=n)
        start = torch.cumsum(count, 0) - count
        pos = torch.arange(row.numel(), device=near.device) - start[row]
        width = int(count.max())
        vals = torch.full((n, width), -1.0, device=near.device)
        ids = torch.zeros((n, width), dtype=torch.long, device=near.device)
        vals[row, pos] = probs[row, col]
        ids[row, pos] = col
        vals, order = torch.sort(vals, dim=-1, descending=True)
        return vals, ids.gather(1, order), count

    @staticmethod
    def _nucleus(
        vals: torch.Tensor, top_p: list[float], top_k: list[int], count: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[int]]:
        """How many of the sorted probabilities each row keeps, and the rows that need a full sort.

        The official cutoff is the first sorted probability whose cumulative sum reaches top_p; every
        probability below it is dropped (ties with it stay), then all but the top_k most likely. A row whose
        sums never reach top_p keeps everything. `count` is how many entries are real candidates (None: all,
        a full sort); a row whose kept set fills its candidates without a top_k inside them is unsure.
        """
        k, partial = vals.shape[1], count is not None
        if count is None:
            count = torch.full((vals.shape[0],), k, device=vals.device)
        p = torch.tensor(top_p, dtype=torch.float32, device=vals.device)
        reached = torch.cumsum(vals, dim=-1) >= p[:, None]
        found = reached.any(-1) & (p < 1)
        cutoff = vals.gather(1, reached.to(torch.int8).argmax(-1, keepdim=True))
        keep = torch.where(found, (vals >= cutoff).sum(-1), count).minimum(count)
        full: list[int] = []
        if partial:
            filled, have = (keep == count).tolist(), count.tolist()
            full = [i for i, t in enumerate(top_k) if filled[i] and (t == 0 or t > have[i])]
        limit = torch.tensor([t or k for t in top_k], device=vals.device)
        return keep.minimum(limit), full

    @staticmethod
    def _pick(
        vals: torch.Tensor,
        ids: torch.Tensor,
        keep: torch.Tensor,
        slots: list[_Slot],
        u: torch.Tensor,
        in_id_order: bool = False,
    ) -> list[int]:
        """Inverse-CDF draw over the first `keep` entries of each row, weights (p / p_max) ** (1 / temperature).

        The draw runs over the kept tokens in id order, as the official `np.random.choice` does, so every
        path that keeps the same tokens draws the same one for the same random number.
        """
        n, k = vals.shape
        inside = torch.arange(k, device=vals.device)[None, :] < keep[:, None]
        if not in_id_order:
            order = torch.where(inside, ids, ids.new_full((), 2**62)).argsort(dim=-1)
            vals, ids, inside = vals.gather(1, order), ids.gather(1, order), inside.gather(1, order)
        weights = torch.where(inside, vals, torch.zeros((), dtype=vals.dtype, device=vals.device))
        inv_t = torch.tensor([1.0 / s.params.temperature for s in slots], dtype=torch.float32, device=vals.device)
        if (inv_t != 1).any():
            top = weights.amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            weights = (weights / top) ** inv_t[:, None]
        cdf = torch.cumsum(weights.double(), dim=-1)
        target = u[:, None] * cdf[:, -1:]
        pos = torch.searchsorted(cdf, target, right=True)[:, 0].minimum(keep - 1).clamp_min(0)
        return ids.gather(1, pos[:, None])[:, 0].tolist()

    def _record(self, slot_ids: list[int], slots: list[_Slot], tokens: list[int]) -> None:
        """Decay every occurrence, then count the new token (by 0 for no-penalty ids; stop tokens not at all)."""
        rows = [i for i, s, t in zip(slot_ids, slots, tokens, strict=True) if t not in s.stop]
        if not rows:
            return
        live = [(i, s, t) for i, s, t in zip(slot_ids, slots, tokens, strict=True) if t not in s.stop]
        need = max(len(s.columns) + (t not in s.columns) for _, s, t in live)
        if need > self._ids.shape[1]:
            width = max(need, 2 * self._ids.shape[1])
            grow = width - self._ids.shape[1]
            self._ids = torch.cat([self._ids, self._ids.new_zeros(len(self._slots), grow)], dim=1)
            self._counts = torch.cat([self._counts, self._counts.new_zeros(len(self._slots), grow)], dim=1)
        r = torch.tensor(rows, dtype=torch.long, device=self.device)
        decay = torch.tensor([s.params.penalty_decay for _, s, _ in live], dtype=torch.float64, device=self.device)
        self._counts[r] = self._counts[r] * decay[:, None]
        cols = [s.columns.setdefault(t, len(s.columns)) for _, s, t in live]
        c = torch.tensor(cols, dtype=torch.long, device=self.device)
        add = torch.tensor([0.0 if t in self._free_growth else 1.0 for _, _, t in live], dtype=torch.float64)
        self._ids[r, c] = torch.tensor([t for _, _, t in live], dtype=torch.long, device=self.device)
        self._counts.index_put_((r, c), add.to(self.device), accumulate=True)
