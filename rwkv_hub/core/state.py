"""The recurrent state of one or more sequences: all an RWKV model remembers of what it has read.

Per layer it holds the last token's input to time-mix and channel-mix (for token shift) and the WKV
matrix of every head. Everything is fp32 whatever the strategy, so a state is exact, portable between
strategies, and can be saved, cached and resumed. Batches are kept as one tensor per layer part, so
a batched step never copies states around.
"""

from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import replace_file
from .errors import StateError

FORMAT = "rwkv-hub-state/1"
# RWKV-4 keeps its WKV sums relative to a running maximum exponent; an empty sum has an exponent of
# "minus infinity", written finite (as the official package does) so that differences stay defined.
EMPTY_EXPONENT = -1e30


@dataclass(frozen=True)
class StateShape:
    """What a state must look like to fit a model."""

    generation: str
    n_layer: int
    n_embd: int
    n_head: int
    head_size: int

    @property
    def wkv_shape(self) -> tuple[int, ...]:
        """One sequence's WKV state in one layer: an (H, N, N) matrix per head, or for RWKV-4 ("x040") the
        (3, C) rows of its per-channel numerator, denominator and exponent."""
        if self.generation == "x040":
            return (3, self.n_embd)
        return (self.n_head, self.head_size, self.head_size)


class State:
    """Recurrent state of `batch_size` sequences.

    `att_x[i]`, `ffn_x[i]`: (B, C) fp32; `wkv[i]`: (B, *shape.wkv_shape) fp32, matrices indexed [value, key].
    Tensors are never modified in place by the runtime, so holding on to a State is safe.
    """

    __slots__ = ("shape", "att_x", "wkv", "ffn_x")

    def __init__(
        self, shape: StateShape, att_x: list[torch.Tensor], wkv: list[torch.Tensor], ffn_x: list[torch.Tensor]
    ):
        self.shape = shape
        self.att_x = att_x
        self.wkv = wkv
        self.ffn_x = ffn_x

    @classmethod
    def zeros(cls, shape: StateShape, batch_size: int = 1, device: str | torch.device = "cpu") -> State:
        b, c = batch_size, shape.n_embd
        z = torch.zeros
        wkv = z(b, *shape.wkv_shape, device=device)
        if shape.generation == "x040":
            wkv[:, 2] = EMPTY_EXPONENT
        return cls(
            shape,
            [z(b, c, device=device) for _ in range(shape.n_layer)],
            [wkv.clone() for _ in range(shape.n_layer)],
            [z(b, c, device=device) for _ in range(shape.n_layer)],
        )

    @property
    def batch_size(self) -> int:
        return self.att_x[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.att_x[0].device

    @property
    def nbytes(self) -> int:
        """Bytes held by this state's tensors (n_layer * B * (2*C + H*N*N) * 4; RWKV-4: n_layer * B * 5*C * 4)."""
        return sum(t.numel() * t.element_size() for part in (self.att_x, self.wkv, self.ffn_x) for t in part)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Name -> tensor, the layout used on disk."""
        out = {}
        for i in range(self.shape.n_layer):
            out[f"{i}.att_x"] = self.att_x[i]
            out[f"{i}.wkv"] = self.wkv[i]
            out[f"{i}.ffn_x"] = self.ffn_x[i]
        return out

    def copy(self) -> State:
        return State(
            self.shape, [t.clone() for t in self.att_x], [t.clone() for t in self.wkv], [t.clone() for t in self.ffn_x]
        )

    def to(self, device: str | torch.device) -> State:
        return State(
            self.shape,
            [t.to(device) for t in self.att_x],
            [t.to(device) for t in self.wkv],
            [t.to(device) for t in self.ffn_x],
        )

    @staticmethod
    def stack(states: list[State]) -> State:
        """Join states of the same model into one batch (rows in the given order)."""
        if not states:
            raise StateError("cannot stack an empty list of states")
        shape = states[0].shape
        for s in states[1:]:
            if s.shape != shape:
                raise StateError(f"cannot stack states of different models: {s.shape} vs {shape}")
        if len(states) == 1:
            return states[0]
        cat = torch.cat
        return State(
            shape,
            [cat([s.att_x[i] for s in states]) for i in range(shape.n_layer)],
            [cat([s.wkv[i] for s in states]) for i in range(shape.n_layer)],
            [cat([s.ffn_x[i] for s in states]) for i in range(shape.n_layer)],
        )

    def split(self) -> list[State]:
        """One State per row; rows are views into this batch until either is replaced."""
        return [self.select(b) for b in range(self.batch_size)]

    def select(self, rows: int | list[int]) -> State:
        """The state of one row (or several rows, in that order); negative rows count from the end."""
        n, one = self.batch_size, not isinstance(rows, (list, tuple))
        try:
            picked = [operator.index(r) for r in ([rows] if one else rows)]
        except TypeError:
            picked = None
        if picked is None or not all(-n <= r < n for r in picked):
            raise StateError(f"rows {rows!r} are not all rows of a state of batch {n} (0 to {n - 1}, or -1 to -{n})")
        rows_ = [r % n for r in picked]
        idx = slice(rows_[0], rows_[0] + 1) if one else torch.tensor(rows_, dtype=torch.long)
        return State(self.shape, [t[idx] for t in self.att_x], [t[idx] for t in self.wkv], [t[idx] for t in self.ffn_x])

    def save(self, path: str | os.PathLike) -> Path:
        """Write to a safetensors file atomically (a temporary file, then rename)."""
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "shape": json.dumps(self.shape.__dict__)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        try:
            return replace_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        except Exception as e:  # OSError, or safetensors' own error for the same causes
            if Path(path).is_dir():
                raise StateError(f"cannot save the state to {path}: it is a folder; give a file name") from None
            raise StateError(f"cannot save the state to {path}: {e}; give a path in a writable folder") from None

    @classmethod
    def load(cls, path: str | os.PathLike, expect: StateShape | None = None, device: str = "cpu") -> State:
        """Read a state written by `save`; check it fits `expect` when given."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise StateError(f"{p}: no such state file")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise StateError(f"{p}: not an rwkv-hub state file (format {meta.get('format')!r})")
                shape = StateShape(**json.loads(meta["shape"]))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise StateError(f"{p}: damaged or unreadable state file ({e})") from None
        if expect is not None and shape != expect:
            raise StateError(f"{p}: state is for a model with {shape}, but this model has {expect}")
        try:
            state = cls(
                shape,
                [tensors[f"{i}.att_x"] for i in range(shape.n_layer)],
                [tensors[f"{i}.wkv"] for i in range(shape.n_layer)],
                [tensors[f"{i}.ffn_x"] for i in range(shape.n_layer)],
            )
        except KeyError as e:
            raise StateError(f"{p}: state file lacks tensor {e}") from None
        b = state.batch_size
        want = {
            "att_x": (b, shape.n_embd),
            "ffn_x": (b, shape.n_embd),
            "wkv": (b, *shape.wkv_shape),
        }
        for k, t in state.tensors().items():
            if tuple(t.shape) != want[k.split(".")[1]] or t.dtype != torch.float32:
                raise StateError(
                    f"{p}: tensor {k} is {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}, "
                    f"expected {want[k.split('.')[1]]} float32"
                )
        return state.to(device) if device != "cpu" else state
