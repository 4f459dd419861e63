"""The PyTorch WKV recurrence (GPUs, CPUs without a C compiler): its chunked form against the step loop
that defines it, in values, final states and gradients, and the inputs it must leave to the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

from rwkv_hub.core import wkv
from rwkv_hub.core.rwkv7 import DECAY_SCALE

H, N = 3, 64


def inputs(bsz: int, t_len: int, seed: int, decay: float | None = None) -> list[torch.Tensor]:
    """A state and r, w, k, v, a, b as RWKV-7 makes them: decays exp(-DECAY_SCALE * sigmoid(x)), a = -kk
    and b = kk * iclr with kk of unit length per head."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    shape = (bsz, t_len, H, N)
    w = torch.exp(-DECAY_SCALE * torch.sigmoid(2 * rand(*shape))) if decay is None else torch.full(shape, decay)
    kk = F.normalize(rand(*shape), dim=-1)
    iclr = torch.sigmoid(rand(*shape))
    return [0.3 * rand(bsz, H, N, N), rand(*shape), w, 0.5 * rand(*shape), rand(*shape), -kk, kk * iclr]


@pytest.mark.parametrize("t_len", [8, 31, 32, 33, 300])
def test_chunked_prompt_equals_the_step_loop(t_len: int) -> None:
    args = inputs(2, t_len, seed=t_len)
    y, s = wkv.wkv7(*args)
    y_ref, s_ref = wkv.wkv7_steps(*args)
    assert y.shape == y_ref.shape == (2, t_len, H, N)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5


def test_chunked_form_is_taken_for_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the comparisons above compare: a prompt goes through the chunked form, one token the loop."""
    seen = []
    monkeypatch.setattr(wkv, "_wkv7_chunked", lambda *a: seen.append("chunked") or wkv.wkv7_steps(*a))
    wkv.wkv7(*inputs(1, 40, seed=1))
    wkv.wkv7(*inputs(1, 1, seed=1))
    assert seen == ["chunked"]


@pytest.mark.parametrize("decay", [0.5453, wkv.CHUNKED_MIN_DECAY])
def test_chunked_form_at_the_strongest_decay(decay: float) -> None:
    """Every step at RWKV-7's smallest possible decay (exp(-exp(-0.5))), or at the chunked form's floor."""
    args = inputs(1, 256, seed=7, decay=decay)
    y, s = wkv.wkv7(*args)
    y_ref, s_ref = wkv.wkv7_steps(*args)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5


def test_decays_below_the_floor_take_the_step_loop() -> None:
    """With decays of 0.01 the chunked form would divide by 0.01^32 and overflow; the loop is exact."""
    args = inputs(1, 64, seed=3, decay=0.01)
    assert not torch.isfinite(wkv._wkv7_chunked(*args)[0]).all()  # why the floor exists
    y, s = wkv.wkv7(*args)
    y_ref, s_ref = wkv.wkv7_steps(*args)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


def test_chunked_gradients_equal_the_step_loop() -> None:
    """Training falls back to this path where its C kernel cannot be built."""
    base = inputs(2, 45, seed=11)
    dy = torch.randn(2, 45, H, N, generator=torch.Generator().manual_seed(12))
    grads = []
    for fn in (wkv.wkv7, wkv.wkv7_steps):
        xs = [x.clone().requires_grad_() for x in base]
        y, s = fn(*xs)
        (y * dy).sum().add(s.sum()).backward()
        grads.append([x.grad for x in xs])
    for name, got, want in zip(["state", *"rwkvab"], *grads, strict=True):
        assert rel_err(got, want) < 1e-4, name
