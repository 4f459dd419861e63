"""RWKV-7 decode steps on the CPU through decode7.c: B sequences of one new token each.

Decoding is bound by reading the weights, yet as PyTorch ops a 0.19B model spent a third of each token
on dispatching small ops and starting thread teams. Two levels here:
- every CPU strategy: each layer's small work (layer norms, token-shift mixes, the four LoRAs) is two C
  calls, between the strategy's own matrix products;
- where all six matrices of every layer are gemv.c's (fp32, bf16, int8), all layers
  of a step are one C call (`rwkv7_decode_layers`).
Both compute what `rwkv7.time_mix` and `rwkv7.channel_mix` compute; only the order of some float sums
differs.
"""

from __future__ import annotations

import ctypes
from functools import cached_property

import torch

from .linear import Linear, rounding_kind
from .native import load_decode7
from .rwkv7 import GROUP_NORM_EPS, NATIVE_MAX_HEAD_SIZE, Block, Layout, finish_time_mix
from .state import State

LORAS = 4


class _Mat(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("in_features", ctypes.c_int),
        ("out_features", ctypes.c_int),
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
    ]


_MATRICES = ("receptance", "key", "value", "output", "ffn_key", "ffn_value")
_VECTORS = ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "maa", "ffn_x_k")
_TMIX = ("w0", "a0", "v0", "k_k", "k_a", "r_k", "lnx_w", "lnx_b")


class _Layer(ctypes.Structure):
    """decode7.c's rwkv7_layer, field for field."""

    _fields_ = [
        ("C", ctypes.c_int),
        ("H", ctypes.c_int),
        ("N", ctypes.c_int),
        ("F", ctypes.c_int),
        ("lnx_eps", ctypes.c_float),
        *((name, ctypes.c_void_p) for name in _VECTORS),
        ("lora_down", ctypes.c_void_p * LORAS),
        ("lora_up", ctypes.c_void_p * LORAS),
        ("lora_rank", ctypes.c_int * LORAS),
        ("lora_bf16", ctypes.c_int),
        *((name, ctypes.c_void_p) for name in _TMIX),
        *((name, _Mat) for name in _MATRICES),
    ]


def available(device: torch.device, head_size: int) -> bool:
    """Whether `Decoder` can run here: on the CPU, with the C library built."""
    return device.type == "cpu" and head_size <= NATIVE_MAX_HEAD_SIZE and load_decode7() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _describe(blk: Block, n_head: int, head_size: int, round_bf16: bool) -> _Layer:
    """The C description of one block; it points into the block's tensors, which the model keeps alive.
    With `round_bf16`, bf16 matrices get their inputs rounded to bf16, as the strategy's GEMMs do."""
    layer = _Layer()
    layer.C, layer.H, layer.N = n_head * head_size, n_head, head_size
    layer.F = blk.ffn_key.out_features
    layer.lnx_eps = GROUP_NORM_EPS
    for name in _VECTORS + _TMIX:
        setattr(layer, name, _ptr(getattr(blk, name)))
    for j, pair in enumerate(blk.lora):
        if pair is not None:
            layer.lora_down[j], layer.lora_up[j] = pair[0].data_ptr(), pair[1].data_ptr()
            layer.lora_rank[j] = pair[0].shape[0]
            layer.lora_bf16 = int(pair[0].dtype == torch.bfloat16)
    for name in _MATRICES:
        m = getattr(blk, name).c_matrix()
        if m is not None:
            kind = rounding_kind(m.kind) if round_bf16 else m.kind
            setattr(layer, name, _Mat(kind, m.in_features, m.out_features, m.weight, m.scale))
    return layer


class Decoder:
    """Runs the blocks of one model for decode steps; built once per model, on its first decode."""

    def __init__(self, blocks: list[Block], n_head: int, head_size: int, dtype: torch.dtype):
        self.blocks = blocks
        self.layers = [_describe(b, n_head, head_size, dtype == torch.bfloat16) for b in blocks]
        self._scratch_bytes: dict[int, int] = {}  # by batch size: the most any layer needs
        mats = [getattr(b, name).c_matrix() for b in blocks for name in _MATRICES]
        # The fused layer needs every product in gemv.c; its batch limit is the smallest of theirs.
        self.fused_max_rows = min((m.max_rows for m in mats), default=0) if all(mats) else 0

    @cached_property
    def _layer_array(self) -> ctypes.Array:
        """The layers' descriptions side by side, as `rwkv7_decode_layers` reads them."""
        return (_Layer * len(self.layers))(*self.layers)

    @cached_property
    def _lib(self) -> ctypes.CDLL:
        lib = load_decode7()
        assert lib is not None  # `available` was checked before a Decoder was made
        return lib

    def run(
        self, x: torch.Tensor, state: State, lay: Layout, dtype: torch.dtype
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """All blocks for x (B, C) fp32, one token per sequence; returns the last hidden rows and the new
        att_x, wkv and ffn_x of every layer."""
        x = x.float().contiguous()
        if x.shape[0] <= self.fused_max_rows:
            return self._fused(x, state)
        return self._stepwise(x, state, lay, dtype)

    def _fused(self, x: torch.Tensor, state: State):
        lib, bsz, n = self._lib, x.shape[0], len(self.layers)
        threads = torch.get_num_threads()
        if bsz not in self._scratch_bytes:
            self._scratch_bytes[bsz] = max(lib.rwkv7_decode_scratch(ctypes.byref(ly), bsz) for ly in self.layers)
        scratch = torch.empty(self._scratch_bytes[bsz], dtype=torch.uint8)
        v_first = torch.empty_like(x)
        # The new rows of every layer in one block (each layer's are a view of it); the WKV states one
        # tensor a layer, since one block of them is large enough (38 MB for 16 rows of 0.19B) for the
        # C allocator to map it fresh, and fault it in, at every step.
        att_new = torch.empty(n, *x.shape)
        ffn_new = torch.empty(n, *x.shape)
        wkv_out = [torch.empty_like(t) for t in state.wkv]
        ins = [[t.contiguous() for t in part] for part in (state.att_x, state.wkv, state.ffn_x)]
        att_in, wkv_in, ffn_in = (_pointers(part) for part in ins)
        lib.rwkv7_decode_layers(
            self._layer_array, n, bsz, x.data_ptr(), att_in, att_new.data_ptr(), wkv_in, _pointers(wkv_out),
            ffn_in, ffn_new.data_ptr(), v_first.data_ptr(), scratch.data_ptr(), threads,
        )  # fmt: skip
        return x, list(att_new.unbind(0)), wkv_out, list(ffn_new.unbind(0))

    def _stepwise(self, x: torch.Tensor, state: State, lay: Layout, dtype: torch.dtype):
        """The strategy's own matrix products, with each layer's small work in two C calls."""
        lib, (bsz, c) = self._lib, x.shape
        threads = torch.get_num_threads()
        att_x, wkv, ffn_x = [], [], []
        v_first = None
        for i, (blk, layer) in enumerate(zip(self.blocks, self.layers, strict=True)):
            new_att, mixed = torch.empty_like(x), x.new_empty(6, bsz, c)
            prev = state.att_x[i].contiguous()
            lib.rwkv7_norm_mix(
                bsz, c, x.data_ptr(), None, prev.data_ptr(), layer.ln1_w, layer.ln1_b, layer.maa, 6,
                new_att.data_ptr(), mixed.data_ptr(),
            )  # fmt: skip
            loras = x.new_empty(LORAS, bsz, c)
            hidden = x.new_empty(bsz * sum(layer.lora_rank))
            lib.rwkv7_loras(
                bsz, c, mixed.data_ptr(), layer.lora_down, layer.lora_up, layer.lora_bf16, layer.lora_rank,
                hidden.data_ptr(), loras.data_ptr(), threads,
            )  # fmt: skip
            w_l, a_l, g, v_l = loras.unbind(0)
            r, k, v = (_product(lin, mixed[j], dtype) for lin, j in ((blk.receptance, 4), (blk.key, 5), (blk.value, 3)))
            out, s, v_first = finish_time_mix(
                blk, i, r, k, v, w_l, a_l, v_l if i else None, g, state.wkv[i], v_first, lay, dtype
            )
            out = out.float().contiguous()
            new_ffn, kin = torch.empty_like(x), torch.empty_like(x)
            prev = state.ffn_x[i].contiguous()
            lib.rwkv7_norm_mix(
                bsz, c, x.data_ptr(), out.data_ptr(), prev.data_ptr(), layer.ln2_w, layer.ln2_b, layer.ffn_x_k, 1,
                new_ffn.data_ptr(), kin.data_ptr(),
            )  # fmt: skip
            hid = _product(blk.ffn_key, kin, dtype).relu_().square_()
            x.add_(_product(blk.ffn_value, hid, dtype))
            att_x.append(new_att)
            wkv.append(s)
            ffn_x.append(new_ffn)
        return x, att_x, wkv, ffn_x


def _product(lin: Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return lin(x if x.dtype == dtype else x.to(dtype)).float()
