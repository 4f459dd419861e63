"""CPU weights in 2 MB pages (core/huge_pages.py): the loader's copies hold the same values, in the order a
decode step reads them, in mappings Linux may back with huge pages, and give the same logits bit for bit."""

from __future__ import annotations

import gc

import pytest
import torch

import rwkv_hub
from rwkv_hub.core import heap, huge_pages
from rwkv_hub.core.linear import Linear

needs_thp = pytest.mark.skipif(not huge_pages.available(), reason="no transparent huge pages here")
MiB = 2**20


def _mappings() -> list[tuple[int, int, bool]]:
    """(start, end, eligible for huge pages) of each mapping of this process, from /proc/self/smaps."""
    out: list[tuple[int, int, bool]] = []
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                out.append((lo, hi, False))
            elif head == "THPeligible:" and out:
                lo, hi, _ = out[-1]
                out[-1] = (lo, hi, line.split()[1] == "1")
    return out


def _eligible(t: torch.Tensor, maps: list[tuple[int, int, bool]]) -> bool:
    p = t.data_ptr()
    return any(lo <= p and p + t.numel() * t.element_size() <= hi and ok for lo, hi, ok in maps)


def _large_tensors(model: rwkv_hub.Model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors the loader moves: the blocks', in the order of their fields, and the head's."""
    out: list[torch.Tensor] = []

    def walk(v: object) -> None:
        if isinstance(v, torch.Tensor):
            if huge_pages.wanted(v):
                out.append(v)
        elif isinstance(v, Linear):
            for name in v.held:
                walk(getattr(v, name))
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    for block in model.blocks:
        for value in vars(block).values():
            walk(value)
    blocks = out[:]
    walk(model.head)
    return blocks, out[len(blocks) :]


def test_an_arena_copies_values_aligned_and_leaves_small_tensors_alone():
    g = torch.Generator().manual_seed(0)
    big = [torch.randn(300, 77, generator=g), torch.randint(-128, 127, (1000, 81), generator=g).to(torch.int8)]
    small = torch.randn(100)
    arena = huge_pages.Arena(sum(huge_pages.footprint(t) for t in [*big, small]))
    copies = [arena.copy(t) for t in big]
    assert arena.copy(small) is small and huge_pages.footprint(small) == 0
    for t, c in zip(big, copies, strict=True):
        assert torch.equal(t, c) and c.dtype == t.dtype and c.is_contiguous() and c.data_ptr() != t.data_ptr()
        assert c.data_ptr() % huge_pages.ALIGN == 0
    assert copies[0].data_ptr() % huge_pages.PAGE == 0  # the mapping's first 2 MB page starts the arena
    assert copies[1].data_ptr() == copies[0].data_ptr() + huge_pages.footprint(big[0])
    with pytest.raises(ValueError, match="arena too small"):
        arena.copy(big[0])


def test_a_matrix_from_empty_is_returned_to_the_os_with_its_last_view():
    t = huge_pages.empty((64 * MiB,), dtype=torch.int8)
    t.fill_(1)
    gc.collect()
    with_it = heap.resident_bytes()
    view = t[10:20]
    del t
    gc.collect()
    assert heap.resident_bytes() > with_it - MiB  # a view keeps the mapping
    assert int(view.sum()) == 10
    del view
    gc.collect()
    assert heap.resident_bytes() < with_it - 60 * MiB


@needs_thp
@pytest.mark.parametrize(
    "generation, strategy",
    [("x070", "cpu fp32"), ("x070", "cpu bf16"), ("x070", "cpu bf16i8"), ("x060", "cpu fp32i8")],
)
def test_loaded_weights_sit_in_huge_page_mappings_and_give_the_same_logits(
    checkpoint_factory, monkeypatch, generation, strategy
):
    # Wide enough that every matrix and LoRA is moved, with a head taller than one row block (joined).
    path = checkpoint_factory(n_layer=2, n_embd=256, vocab_size=9000, generation=generation)
    with monkeypatch.context() as m:
        m.setattr(huge_pages, "available", lambda: False)
        plain = rwkv_hub.load(path, strategy=strategy)
    huge = rwkv_hub.load(path, strategy=strategy)

    maps = _mappings()
    (blocks, head), (plain_blocks, plain_head) = _large_tensors(huge), _large_tensors(plain)
    assert len(blocks) == len(plain_blocks) >= 2 * 6 and len(head) == len(plain_head) >= 1
    assert all(_eligible(t, maps) for t in blocks + head)
    assert not any(_eligible(t, maps) for t in plain_blocks + plain_head)
    starts = [t.data_ptr() for t in blocks]
    assert starts == sorted(starts)  # one after another, in the order a step reads them
    assert head[0].data_ptr() % huge_pages.PAGE == 0  # the joined head has a mapping of its own

    tokens = [(i * 37) % 9000 for i in range(40)]
    la, sa = plain.forward(tokens, None)
    lb, sb = huge.forward(tokens, None)
    assert torch.equal(la, lb)
    for t in (5, 77, 8999):
        la, sa = plain.forward(t, sa)
        lb, sb = huge.forward(t, sb)
        assert torch.equal(la, lb)
    batch = [[1, 2, 3], [4]]
    ya, _ = plain.forward_batch(batch, plain.new_state(2))
    yb, _ = huge.forward_batch(batch, huge.new_state(2))
    assert torch.equal(ya, yb)
