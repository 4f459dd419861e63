"""Replacing a file in one step, so a reader (or a crash) never meets half of it.

The new content goes to a temporary file beside the target, which is then renamed over it; a write that
fails leaves the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_file(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to make the new file at a temporary path, then rename it to `path`."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Replace `path` with `text` (UTF-8); `mode` sets the file's permissions from its creation on."""

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)

    return replace_file(path, write)
