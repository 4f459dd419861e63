"""Load an official RWKV checkpoint (RWKV-4 to RWKV-7) for a strategy and run it on one or many sequences."""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import os
from collections.abc import Callable, Iterator, Sequence, ValuesView
from pathlib import Path

import torch
import torch.nn.functional as F

from . import decode7, heap, huge_pages, rwkv4, rwkv56, sparse_ffn
from .builtin import BUILTIN_MODEL, NOTICE
from .checkpoint import open_checkpoint
from .embedding import Embedding
from .errors import CheckpointError, RWKVHubError, StateError
from .generate import Generation
from .linear import (
    Linear,
    RowChunkedLinear,
    cpu_int8_kernel,
    int_mm_works,
    join_row_blocks,
    make_linear,
    packing_works,
)
from .rwkv7 import LORA_ORDER, MIX_ORDER, Block, Layout, channel_mix, time_mix
from .sampling import SamplingParams
from .spec import ModelSpec, read_spec
from .state import State, StateShape
from .strategy import Strategy, parse_strategy
from .tokenizer import Tokenizer, choose_tokenizer

# Longest run of tokens one sequence feeds through the blocks at once, and most tokens in one pass over
# all sequences; longer prompts go in chunks so activation memory stays bounded whatever the input.
# 512 rows make the GEMMs about 8% faster than 256 (0.19B cpu fp32 on a 2-core Zen 4: 810 -> 880 tok/s).
# int8 on the C kernel keeps 256. Without an int8 GEMM that is the most rows the kernel takes
# (linear.INT8_KERNEL_MAX_ROWS): at 512 the weights are widened for a GEMM instead, and a 0.45B prompt
# peaked 240 MB higher. With oneDNN's int8 GEMM, 512 prefilled 0.45B 15% faster on a 2-core Zen 4 but
# peaked 36-60 MiB higher, past the memory target (1.2x the weights + 300 MB).
PREFILL_CHUNK = 512
INT8_KERNEL_PREFILL_CHUNK = 256
PASS_TOKENS = 4096
TRIM_AFTER_TOKENS = 64  # passes at least this long may hand freed memory back to the OS
# Freed memory kept for the next pass, in floats per token and channel of a prompt chunk: a 512-token chunk of
# a 768-wide model grows an fp32 process by about 44 (70 MB), bf16 by about 31.
KEEP_FREED_FLOATS = 64
# Int8 prompts on oneDNN's int8 GEMM (linear.NativeInt8Linear._int_mm) keep two int32 sums per output of a
# product, twice an fp32 output, and one 256-token chunk grew 0.45B by 84-134 floats per token and channel
# (0.19B 68-91) on a 2-core Zen 4. At 64 every chunk was trimmed and the next faulted 40,000 pages back in:
# 0.45B cpu bf16i8 prefilled at 379 tok/s, 452-461 when kept.
KEEP_FREED_FLOATS_INT8_GEMM = 160
# Matrices taller than this (the head of a large vocabulary) are converted and stored in row blocks.
HEAD_BLOCK_ROWS = 8192


class Model:
    """A loaded RWKV model (x070, x060, x052, x051, x050 or x040). `forward` mirrors the official package;
    `forward_batch` runs many sequences."""

    def __init__(
        self,
        path: Path,
        spec: ModelSpec,
        strategy: Strategy,
        emb: Embedding,
        blocks: list[Block] | list[rwkv56.Block] | list[rwkv4.Block],
        ln_out: tuple[torch.Tensor, torch.Tensor],
        head: Linear,
        tokenizer: Callable[[], Tokenizer],
    ):
        self.path = path
        self.spec = spec
        self.strategy = strategy
        self.device = torch.device(strategy.device)
        self.dtype = compute_dtype(strategy)
        self.emb = emb
        self.blocks = blocks
        self.ln_out = ln_out
        self.head = head
        self.state_shape = StateShape(spec.generation, spec.n_layer, spec.n_embd, spec.n_head, spec.head_size)
        self._tokenizer = tokenizer
        # Layers whose feed-forward value matrix is stored for mostly-zero inputs (see core/sparse_ffn.py).
        self.sparse_ffn_layers: list[int] = []

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer, built on first use; TokenizerError if none fits (see docs/tokenizers.md)."""
        return self._tokenizer()

    def __repr__(self) -> str:
        s = self.spec
        return f"Model({self.path.name}, {s.n_layer}x{s.n_embd}, vocab {s.vocab_size}, {self.strategy.name!r})"

    @functools.cached_property
    def _decoder(self) -> decode7.Decoder:
        return decode7.Decoder(self.blocks, self.spec.n_head, self.spec.head_size, self.dtype)

    @functools.cached_property
    def _int8_on_c_kernel(self) -> bool:
        """Whether the matrices are int8 on gemv.c's kernel (with oneDNN's int8 GEMM for prompts where it works)."""
        return self.strategy.int8 and self.device.type == "cpu" and cpu_int8_kernel() == "native"

    @functools.cached_property
    def prefill_chunk(self) -> int:
        """Most tokens of one sequence in one pass through the blocks."""
        return INT8_KERNEL_PREFILL_CHUNK if self._int8_on_c_kernel else PREFILL_CHUNK

    @functools.cached_property
    def _kept_freed_bytes(self) -> int:
        """How far the process may grow above its size after the last trim before freed memory goes back
        to the OS (see `heap`): about what the temporaries of one prompt chunk take, so they are reused
        instead of faulted in again, while growth beyond them (fragments no chunk can fit into) is not kept."""
        floats = KEEP_FREED_FLOATS_INT8_GEMM if self._int8_on_c_kernel and int_mm_works() else KEEP_FREED_FLOATS
        return floats * 4 * self.prefill_chunk * self.spec.n_embd

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights held for this strategy."""
        return _nbytes([self.emb, self.head, self.ln_out, *(b.__dict__.values() for b in self.blocks)])

    def new_state(self, batch_size: int = 1) -> State:
        """A zero state: the model has read nothing yet."""
        return State.zeros(self.state_shape, batch_size, self.device)

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        state: State | None = None,
        **overrides,
    ) -> Generation:
        """Continue `state` (or a new one) with the prompt and generate; iterate the result for text deltas.

        Sampling parameters come from `params` with keyword overrides (`temperature=0.8, max_tokens=50`);
        after iteration, `.result` holds the finish reason, token counts, timings and the final state.
        """
        return Generation(self, prompt, dataclasses.replace(params or SamplingParams(), **overrides), state)

    def load_state(self, path: str | os.PathLike) -> State:
        """Read a state saved with `State.save`, checking that it belongs to a model of this shape."""
        return State.load(path, expect=self.state_shape, device=str(self.device))

    def forward(self, tokens: int | Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed tokens to one sequence; return the logits after the last one (fp32, shape [vocab]) and the new state."""
        toks = [tokens] if _is_scalar(tokens) else list(tokens)
        logits, new = self.forward_batch([toks], state if state is not None else self.new_state())
        return logits[0], new

    def forward_every(self, tokens: Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed tokens to one sequence; return the logits after every one of them (fp32, [len, vocab]).

        For scoring text (bits per byte, ranking choices by likelihood); `forward` is cheaper when only
        the next token matters. The input state is never modified.
        """
        toks = _token_list(tokens, 0, self.spec.vocab_size)
        state = state if state is not None else self.new_state()
        self._check_inputs([toks], state)
        out = torch.empty(len(toks), self.spec.vocab_size, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for pos in range(0, len(toks), self.prefill_chunk):
                chunk = toks[pos : pos + self.prefill_chunk]
                hidden, state = self._run([chunk], state, every_row=True)
                out[pos : pos + len(chunk)] = self._head(hidden)
        return out, state

    def forward_batch(
        self, tokens: Sequence[Sequence[int]], states: Sequence[State] | State
    ) -> tuple[torch.Tensor, list[State] | State]:
        """Feed each sequence its own new tokens (at least one each) in one batched pass.

        `states` is a list with one State per sequence (a list comes back) or one batched State
        (a batched State comes back). Returns fp32 logits [B, vocab] after each sequence's last token.
        Input states are never modified.
        """
        batched = isinstance(states, State)
        state = states if batched else State.stack(list(states))
        lists = [_token_list(t, b, self.spec.vocab_size) for b, t in enumerate(tokens)]
        self._check_inputs(lists, state)
        logits = torch.empty(len(lists), self.spec.vocab_size, dtype=torch.float32, device=self.device)
        pos = [0] * len(lists)
        with torch.inference_mode():
            while True:
                active = [b for b, t in enumerate(lists) if pos[b] < len(t)]
                if not active:
                    break
                step = max(1, min(self.prefill_chunk, PASS_TOKENS // len(active)))
                chunk = [lists[b][pos[b] : pos[b] + step] for b in active]
                sub = state if len(active) == len(lists) else state.select(active)
                hidden, sub = self._run(chunk, sub)
                finishing = [i for i, b in enumerate(active) if pos[b] + len(chunk[i]) == len(lists[b])]
                if finishing:
                    rows = hidden if len(finishing) == len(active) else hidden[finishing]
                    out = self._head(rows)
                    for j, i in enumerate(finishing):
                        logits[active[i]] = out[j]
                state = sub if len(active) == len(lists) else _merge(state, sub, active)
                for i, b in enumerate(active):
                    pos[b] += len(chunk[i])
        return logits, (state if batched else state.split())

    def _check_inputs(self, lists: list[list[int]], state: State) -> None:
        if state.shape != self.state_shape:
            raise StateError(f"state is for a model with {state.shape}, but this model has {self.state_shape}")
        if state.batch_size != len(lists):
            raise RWKVHubError(f"{len(lists)} token lists but a state of batch {state.batch_size}")
        for b, t in enumerate(lists):
            if not t:
                raise RWKVHubError(f"sequence {b} has no tokens; every sequence needs at least one new token")

    def _run(self, chunk: list[list[int]], state: State, every_row: bool = False) -> tuple[torch.Tensor, State]:
        """One pass of all blocks over a flat batch of tokens; returns the last token's hidden row per sequence
        (every token's row with `every_row`)."""
        lay = Layout([len(t) for t in chunk], self.device)
        out = self._blocks(chunk, state, lay, every_row)
        if lay.total >= TRIM_AFTER_TOKENS and self.device.type == "cpu":
            heap.trim_if_grown(self._kept_freed_bytes)
        return out

    def _blocks(self, chunk: list[list[int]], state: State, lay: Layout, every_row: bool) -> tuple[torch.Tensor, State]:
        spec, dt = self.spec, self.dtype
        x = self.emb([x for t in chunk for x in t])
        if spec.generation != "x070":
            mix = rwkv4.time_mix if spec.generation == "x040" else rwkv56.time_mix
            return rwkv56.run_blocks(self.blocks, x, state, self.state_shape, lay, dt, mix, every_row)
        if lay.total == lay.batch and decode7.available(x.device, spec.head_size):
            x, att_x, wkv, ffn_x = self._decoder.run(x, state, lay, dt)
            return x, State(self.state_shape, att_x, wkv, ffn_x)
        att_x, wkv, ffn_x = [], [], []
        v_first = None
        c = spec.n_embd
        for i, blk in enumerate(self.blocks):
            # Of the last layer's rows only each sequence's last is wanted, and the one before it for the
            # feed-forward's token shift: its output projection and feed-forward skip the rest (at 512
            # tokens of a 12-layer model, 6% of a prompt's products).
            tail = lay.tail() if i == spec.n_layer - 1 and not every_row and lay.total > 2 * lay.batch else None
            xn = F.layer_norm(x, (c,), blk.ln1_w, blk.ln1_b)
            att_x.append(lay.last_rows(xn))
            out, s, v_first = time_mix(
                blk, i, xn, state.att_x[i], state.wkv[i], v_first, lay, spec.n_head, spec.head_size, dt, tail
            )
            wkv.append(s)
            if tail is not None:
                x, lay = tail.take(x), tail.layout
            x = x + out
            xn = F.layer_norm(x, (c,), blk.ln2_w, blk.ln2_b)
            ffn_x.append(lay.last_rows(xn))
            x = x + channel_mix(blk, xn, state.ffn_x[i], lay, dt)
        return (x if every_row else lay.last_rows(x)), State(self.state_shape, att_x, wkv, ffn_x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.spec.n_embd,), self.ln_out[0], self.ln_out[1])
        return self.head(x.to(self.dtype)).float()


def _nbytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (Linear, Embedding)):
        return obj.nbytes
    if isinstance(obj, (list, tuple, ValuesView)):
        return sum(_nbytes(o) for o in obj)
    return 0


def _token_list(tokens: Sequence[int], b: int, vocab: int) -> list[int]:
    """Token ids as Python ints (numpy and torch integers accepted), each checked against the vocabulary."""
    out = []
    for x in tokens:
        try:
            i = operator.index(x)
        except TypeError:
            raise RWKVHubError(f"sequence {b}: token {x!r} is a {type(x).__name__}, not an integer id") from None
        if not 0 <= i < vocab:
            raise RWKVHubError(f"sequence {b}: token id {i} is outside the vocabulary 0..{vocab - 1}")
        out.append(i)
    return out


def _merge(full: State, sub: State, rows: list[int]) -> State:
    """Write the rows of `sub` back into a copy of `full` at `rows`."""
    idx = torch.tensor(rows, device=full.device)

    def put(parts_full, parts_sub):
        return [f.index_copy(0, idx, s) for f, s in zip(parts_full, parts_sub, strict=True)]

    return State(full.shape, put(full.att_x, sub.att_x), put(full.wkv, sub.wkv), put(full.ffn_x, sub.ffn_x))


def _divided(w: torch.Tensor, divisor: float) -> torch.Tensor:
    return w if divisor == 1.0 else w / divisor


def compute_dtype(strategy: Strategy) -> torch.dtype:
    """The dtype fed to the big matrices: the strategy's, except on CPUs whose kernels for it take fp32
    (int8 outside the weight-only kernel; bf16 where oneDNN has no bf16 GEMM: see `linear.DenseLinear`)."""
    if strategy.device == "cpu":
        if strategy.int8 and cpu_int8_kernel() != "weight-only":
            return torch.float32
        if strategy.dtype == torch.bfloat16 and not packing_works(torch.bfloat16):
            return torch.float32
    return strategy.dtype


def load(
    path: str | os.PathLike | None = None, strategy: str = "cpu fp32", tokenizer: str | Tokenizer | None = None
) -> Model:
    """Load an RWKV checkpoint of any generation from RWKV-4 to RWKV-7 (.pth or .safetensors) for a strategy
    such as "cpu bf16" or "cuda fp16i8".

    With no path, the built-in demo model loads (docs/default-model.md) and a one-line notice is logged
    to the "rwkv_hub" logger.

    `tokenizer` is a name ("world", "bytes", "20b:/path/to/20B_tokenizer.json") or a Tokenizer; by default
    a `<stem>.tokenizer` file beside the checkpoint names it, else the vocabulary size decides.

    Tensors are read and converted one at a time, so peak memory stays near the converted weights' size.
    Raises CheckpointError / StrategyError with a one-line explanation on bad input.
    """
    strat = parse_strategy(strategy)
    if path is None:
        logging.getLogger("rwkv_hub").warning(NOTICE)
        path = BUILTIN_MODEL
    p = Path(path)
    tensors = open_checkpoint(p)
    spec = read_spec(tensors, p)
    tok = choose_tokenizer(tokenizer, p, spec.vocab_size)
    dev, dt, i8 = strat.device, strat.dtype, strat.int8
    f32 = torch.float32
    huge = dev == "cpu" and huge_pages.available()

    def mat(name: str) -> torch.Tensor:
        return tensors[name].read().to(device=dev, dtype=f32).contiguous()

    def vec(name: str) -> torch.Tensor:
        return tensors[name].read().reshape(-1).to(device=dev, dtype=f32)

    def lora(i: int, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A low-rank pair stored (out, in), the layout F.linear reads fastest; layer 0 has no value LoRA.

        On the CPU a bf16 file's pairs stay bf16 (exactly as stored; the products still sum in fp32): a
        decode step reads them all, about 12% of an int8 0.19B model's bytes in fp32."""
        if name == "v" and i == 0:
            return None
        a = f"blocks.{i}.att."
        pair = mat(a + name + "1").t().contiguous(), mat(a + name + "2").t().contiguous()
        if dev == "cpu" and all(tensors[a + name + n].dtype == torch.bfloat16 for n in "12"):
            return pair[0].to(torch.bfloat16), pair[1].to(torch.bfloat16)
        return pair

    def linear(name: str, divisor: float = 1.0) -> Linear:
        """A strategy Linear of a matrix; `divisor` (a power of two, fp16 only) scales it down exactly."""
        t = tensors[name]
        rows = t.shape[0]
        if rows <= HEAD_BLOCK_ROWS:
            return make_linear(_divided(t.read(), divisor), dev, dt, i8)

        def blocks() -> Iterator[Linear]:
            for lo in range(0, rows, HEAD_BLOCK_ROWS):  # no local keeps a block once it is copied
                yield make_linear(_divided(t.read_rows(lo, min(rows, lo + HEAD_BLOCK_ROWS)), divisor), dev, dt, i8)
                heap.release_freed_memory()

        return join_row_blocks(blocks(), rows, huge_pages.empty if huge else torch.empty)

    try:
        emb = Embedding(tensors["emb.weight"], vec("blocks.0.ln0.weight"), vec("blocks.0.ln0.bias"), dev)
        blocks = []
        for i in range(spec.n_layer):
            a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
            if spec.generation != "x070":
                convert = rwkv4.convert_block if spec.generation == "x040" else rwkv56.convert_block
                blocks.append(convert(spec, i, vec, mat, linear, tensors.__contains__, strat.dtype == torch.float16))
                heap.release_freed_memory()
                continue
            blocks.append(
                Block(
                    ln1_w=vec(f"blocks.{i}.ln1.weight"),
                    ln1_b=vec(f"blocks.{i}.ln1.bias"),
                    ln2_w=vec(f"blocks.{i}.ln2.weight"),
                    ln2_b=vec(f"blocks.{i}.ln2.bias"),
                    maa=torch.stack([vec(a + n) for n in MIX_ORDER]).unsqueeze(1),
                    lora=[lora(i, n) for n in LORA_ORDER],
                    w0=vec(a + "w0"),
                    a0=vec(a + "a0"),
                    v0=vec(a + "v0") if i else None,
                    k_k=vec(a + "k_k"),
                    k_a=vec(a + "k_a"),
                    r_k=vec(a + "r_k"),
                    receptance=linear(a + "receptance.weight"),
                    key=linear(a + "key.weight"),
                    value=linear(a + "value.weight"),
                    output=linear(a + "output.weight"),
                    lnx_w=vec(a + "ln_x.weight"),
                    lnx_b=vec(a + "ln_x.bias"),
                    ffn_x_k=vec(f + "x_k"),
                    ffn_key=linear(f + "key.weight"),
                    ffn_value=linear(f + "value.weight"),
                )
            )
            heap.release_freed_memory()
        ln_out = (vec("ln_out.weight"), vec("ln_out.bias"))
        head = linear("head.weight")
    except torch.cuda.OutOfMemoryError:
        raise CheckpointError(f"{p}: not enough GPU memory for strategy {strat.name!r}; try an i8 strategy") from None
    except RuntimeError as e:
        if "memory" in str(e).lower():
            raise CheckpointError(f"{p}: not enough memory for strategy {strat.name!r} ({e})") from None
        raise
    heap.release_freed_memory()
    model = Model(p, spec, strat, emb, blocks, ln_out, head, tok)
    model.sparse_ffn_layers = sparse_ffn.store_sparse_ffns(model)
    if model.sparse_ffn_layers:
        heap.release_freed_memory()  # the plain layouts replaced, and the calibration prompt's
    if huge:
        _into_huge_pages([*blocks, head] if isinstance(head, RowChunkedLinear) else blocks)
    return model


def _into_huge_pages(parts: list) -> None:
    """Copy the large tensors of `parts` (blocks, or Linears), in order, into one mapping in 2 MB pages (see
    `huge_pages`), handing each part's old memory back before the next is copied, so loading peaks about
    one layer above the final size. A joined head is already there (`join_row_blocks`)."""
    need = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal need
        need += huge_pages.footprint(t)
        return t

    _move_tensors(parts, count)
    if not need:
        return
    arena = huge_pages.Arena(need)
    for part in parts:
        _move_tensors(part, arena.copy)
        heap.release_freed_memory()


def _move_tensors(value: object, place: Callable[[torch.Tensor], torch.Tensor]) -> object:
    """`value` with every tensor in it replaced by `place(tensor)`: lists and tuples rebuilt, Linears and
    blocks (dataclasses) changed in place."""
    if isinstance(value, torch.Tensor):
        return place(value)
    if isinstance(value, Linear):
        value.move_weights(place)
    elif isinstance(value, (list, tuple)):
        return type(value)(_move_tensors(v, place) for v in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            setattr(value, f.name, _move_tensors(getattr(value, f.name), place))
    return value


def _is_scalar(tokens: object) -> bool:
    """One token id as a Python, numpy or torch integer (`logits.argmax()` is a 0-d tensor)."""
    if isinstance(tokens, torch.Tensor):
        return tokens.dim() == 0
    try:
        operator.index(tokens)
    except TypeError:
        return False
    return True
