"""Build and load the project's small C libraries, once per machine, with the system compiler.

The WKV recurrence is a long chain of tiny steps; run as PyTorch ops it costs a dozen kernel launches per
token and layer. In C it is one call. The World tokenizer's longest-match loop is the same story in
Python. Decoding's matrix-vector products are C too where PyTorch's are slow (gemv.c), and so is the rest
of an RWKV-7 decode step (decode7.c, which includes the other two). Where no compiler is found, callers
keep their pure-Python or PyTorch versions, which compute the same thing.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp-simd",
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-shared",
    "-fPIC",
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rwkv-hub" / "kernels"


def _machine_key() -> str:
    """Compiled with -march=native, the library is only valid on this kind of CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        pass
    return cpu


@cache
def build_library(source_name: str | Path, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """Compile a C file (a bare name means this folder) on first use and load it; None if that is not possible."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None or platform.system() == "Windows":
        return None
    source = Path(__file__).with_name(source_name) if isinstance(source_name, str) else source_name
    src = source.read_bytes()
    for name in re.findall(rb'^#include "([^"]+)"', src, flags=re.M):  # local files it includes
        src += (source.parent / name.decode()).read_bytes()
    flags = (*FLAGS, *extra_flags)
    digest = hashlib.sha256(src + " ".join(flags).encode() + _machine_key().encode()).hexdigest()[:16]
    lib = cache_dir() / f"{source.stem}-{digest}.so"
    if not lib.exists():
        tmp = None
        try:
            lib.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
            os.close(fd)
            subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], check=True, capture_output=True, timeout=120)
            os.replace(tmp, lib)
        except (OSError, subprocess.SubprocessError):
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
            return None
    try:
        return ctypes.CDLL(str(lib))
    except OSError:
        return None


def _with_openmp(source_name: str) -> ctypes.CDLL | None:
    """Build with OpenMP so that the library's threads are torch's (torch's libgomp must be loaded before
    ours binds to one, hence the import); without an OpenMP runtime it is built single-threaded."""
    import torch  # noqa: F401

    return build_library(source_name, ("-fopenmp",)) or build_library(source_name)


def _declare(dll: ctypes.CDLL, signatures: tuple[tuple[str, list[type]], ...]) -> ctypes.CDLL:
    for name, args in signatures:
        fn = getattr(dll, name)
        fn.restype = None
        fn.argtypes = args
    return dll


@cache
def load_gemv() -> ctypes.CDLL | None:
    """Return the compiled matrix-vector kernels (gemv.c), compiling them on first use; None if not possible."""
    dll = _with_openmp("gemv.c")
    if dll is None:
        return None
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    for name in ("rwkv_amx_enable", "rwkv_amx_kernels"):
        getattr(dll, name).restype = i32
        getattr(dll, name).argtypes = []
    return _declare(
        dll,
        (
            ("rwkv_gemv", [i32] + [ptr] * 4 + [i32] * 4),
            ("rwkv_quantize_x_bytes", [ptr] * 3 + [i32] * 2),
            ("rwkv_quantize_w", [ptr, i32, ptr, ptr, i32, i32]),
            ("rwkv_join_bytes", [ptr] * 4 + [i32] * 2),
            ("rwkv_unpair_i8", [ptr] * 2 + [i32] * 2),
            *((("rwkv_gemv_amx_bf16", [ptr] * 3 + [i32] * 4),) if hasattr(dll, "rwkv_gemv_amx_bf16") else ()),
        ),
    )


@cache
def load_decode7() -> ctypes.CDLL | None:
    """Return the RWKV-7 decode-step helpers (decode7.c), compiling them on first use; None if not possible."""
    dll = _with_openmp("decode7.c")
    if dll is None:
        return None
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    dll.rwkv7_decode_scratch.restype = ctypes.c_size_t
    dll.rwkv7_decode_scratch.argtypes = [ptr, i32]
    return _declare(
        dll,
        (
            ("rwkv7_norm_mix", [i32, i32] + [ptr] * 6 + [i32] + [ptr] * 2),
            ("rwkv7_loras", [i32, i32, ptr, ptr, ptr, i32] + [ptr] * 3 + [i32]),
            ("rwkv7_decode_layers", [ptr, i32, i32] + [ptr] * 9 + [i32]),
            ("rwkv7_tmix_mt", [i32] * 4 + [ptr] * 20 + [ctypes.c_float, ptr]),
        ),
    )
