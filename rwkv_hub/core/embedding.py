"""The token embedding: rows of the table as the file stores them, with the first layer norm applied on lookup.

A prompt or a decode step reads only its tokens' rows, so the table is mapped from the checkpoint file
rather than copied: its pages become resident only when a token reads them. For a 65536-token
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
        mapped = table.mapped()
        self.table = mapped if mapped is not None else table.read()  # stays on the CPU, in the file's dtype
        self.ln_w, self.ln_b = ln_w, ln_b
        self.device = torch.device(device)
        self.mapped = mapped is not None

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size() + 4 * (self.ln_w.numel() + self.ln_b.numel())

    def __call__(self, ids: list[int]) -> torch.Tensor:
        rows = self.table.index_select(0, torch.tensor(ids, dtype=torch.long)).to(self.device, torch.float32)
        return F.layer_norm(rows, (rows.shape[-1],), self.ln_w, self.ln_b)
