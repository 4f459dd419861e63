"""Parse strategy strings: where the model runs, in which precision, and whether big matrices are int8.

rwkv-hub's own spelling is "DEVICE DTYPE[i8]" ("cpu bf16", "cuda fp16i8"). The official `rwkv`
package's single-device strings mean the same and are accepted as they are, so its users can paste theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import StrategyError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"int8": "bf16i8", "i8": "bf16i8"}
_PATTERN = re.compile(r"^(cpu|cuda(?::\d+)?)\s+(fp32|bf16|fp16|int8|i8)(i8)?$")
STRATEGIES = (
    "cpu fp32",
    "cpu bf16",
    "cpu bf16i8",
    "cpu fp32i8",
    "cuda fp16",
    "cuda bf16",
    "cuda fp16i8",
    "cuda bf16i8",
)


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy: `dtype` is the compute precision; `int8` quantizes the large matrices."""

    device: str
    dtype: torch.dtype
    int8: bool

    @property
    def name(self) -> str:
        short = {v: k for k, v in _DTYPES.items()}[self.dtype]
        return f"{self.device} {short}{'i8' if self.int8 else ''}"


def parse_strategy(text: str, *, check_device: bool = True) -> Strategy:
    """Turn "cpu bf16" or "cuda fp16i8" into a Strategy; raise StrategyError with the accepted forms otherwise."""
    s = " ".join(str(text).strip().lower().split())
    if "->" in s or "*" in s:
        if any(part.split()[:1] == ["cpu"] for part in s.split("->")) and "cuda" not in s:
            advice = "every layer is on the CPU here, so name one form for all of them, e.g. 'cpu bf16' or 'cpu fp32'"
        else:
            advice = "use one device, e.g. 'cuda fp16i8' (int8 halves the memory, so more layers fit) or 'cpu bf16'"
        raise StrategyError(f"strategy {text!r} splits the layers into parts, which rwkv-hub does not do; {advice}")
    m = _PATTERN.match(s)
    if not m:
        raise StrategyError(f"unknown strategy {text!r}; use one of: {', '.join(STRATEGIES)}")
    device, dt, i8 = m.group(1), m.group(2), m.group(3)
    if dt in _ALIASES:
        dt, i8 = "bf16", "i8"
    if device == "cpu" and dt == "fp16":
        raise StrategyError(
            f"strategy {text!r}: fp16 on the CPU is slow and inaccurate in PyTorch; use 'cpu bf16' (or 'cpu bf16i8')"
        )
    if check_device and device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StrategyError(
                f"strategy {text!r} needs CUDA, but this PyTorch sees no CUDA device "
                f"(torch {torch.__version__}); use 'cpu bf16' or install a CUDA build of torch"
            )
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise StrategyError(f"strategy {text!r}: no CUDA device {idx} (found {torch.cuda.device_count()})")
    return Strategy(device, _DTYPES[dt], bool(i8))
