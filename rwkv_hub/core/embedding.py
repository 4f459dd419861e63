"""The token embedding: rows of the table as the file stores them, with the first layer norm applied on lookup.

A prompt or a decode step reads only its tokens' rows, so those rows are read from the checkpoint file
when they are needed rather than the table being copied at load. For a 65536-token
vocabulary that keeps 100-270 MB of a 0.19B-0.45B model out of memory (a third of an int8 model's
weights). The official package normalizes the whole table at load instead; applying the same layer
norm to the few rows a pass reads gives the same fp32 values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checkpoint import LazyTensor


class Embedding:
    """`emb(ids) -> (T, C)` fp32 rows on `device`, layer-normed with blocks.0.ln0."""

    def __init__(self, table: LazyTensor, ln_w: torch.Tensor, ln_b: torch.Tensor, device: str | torch.device):
        self.reader = table.row_reader()
        self.table = table.read() if self.reader is None else None  # where rows cannot be read one at a time
        self.dtype = table.dtype  # the file's, whatever the strategy
        self.ln_w, self.ln_b = ln_w, ln_b
        self.device = torch.device(device)
        self._table_bytes = table.numel * table.itemsize

    @property
    def nbytes(self) -> int:
        return self._table_bytes + 4 * (self.ln_w.numel() + self.ln_b.numel())

    def __call__(self, ids: list[int]) -> torch.Tensor:
        if self.reader is not None:
            rows = self.reader.take(ids)
        else:
            rows = self.table.index_select(0, torch.tensor(ids, dtype=torch.long))
        rows = rows.to(self.device, torch.float32)
        return F.layer_norm(rows, (rows.shape[-1],), self.ln_w, self.ln_b)
