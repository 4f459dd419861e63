"""Read tensors from official checkpoint files one at a time, without mapping the whole file.

Loading through `torch.load(mmap=True)` or `safetensors.safe_open` keeps every touched page of the file
resident until the last tensor is freed, so converting weights would briefly hold the file and the
converted copy at once. Reading each tensor with plain file reads keeps peak memory near the final
weights' size. Both formats are simple: a zip of raw storages plus a restricted pickle (`torch.save`),
or a JSON header plus raw bytes (safetensors).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_SAFETENSORS_HEADER = 100 << 20


@dataclass(frozen=True)
class LazyTensor:
    """Where one tensor lies in a file; `read()` loads just that tensor."""

    path: Path
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    storage_offset: int = 0

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def read(self) -> torch.Tensor:
        flat = self._read_bytes(0, self.nbytes // self.itemsize, self.itemsize)
        if self.stride is None:
            return flat.view(self.shape)
        return flat.as_strided(self.shape, self.stride, self.storage_offset).contiguous()

    def read_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi-1 of a matrix, reading only their bytes when the tensor is stored row-major."""
        cols = self.numel // self.shape[0]
        row_major = self.stride is None or tuple(self.stride) == (cols, 1)
        if not row_major:
            return self.read()[lo:hi]
        start = self.storage_offset + lo * cols
        return self._read_bytes(start, (hi - lo) * cols, self.itemsize).view(hi - lo, *self.shape[1:])

    def row_reader(self) -> RowReader | None:
        """A reader of single rows of this matrix straight from the file, or None where its layout does not
        allow one (not row-major) or the platform has no positioned reads."""
        contiguous = self.stride is None or tuple(self.stride) == torch.empty(self.shape, device="meta").stride()
        if not contiguous or not self.numel or len(self.shape) != 2 or not hasattr(os, "preadv"):
            return None
        return RowReader(self)

    def _read_bytes(self, first: int, count: int, itemsize: int) -> torch.Tensor:
        flat = torch.empty(count, dtype=self.dtype)
        nbytes = count * itemsize
        if nbytes:
            view = flat.view(torch.uint8).numpy()
            with open(self.path, "rb") as f:
                f.seek(self.offset + first * itemsize)
                got = f.readinto(memoryview(view))
            if got != nbytes:
                raise CheckpointError(f"{self.path}: file is truncated (a tensor's data ends early); download it again")
        return flat


class RowReader:
    """Rows of a row-major matrix in a checkpoint file, read on demand with positioned reads (the embedding).

    Only the bytes asked for are copied into memory. A mapping of the file would make every first touch
    of a page also map its neighbours already in the page cache (the kernel's fault-around, 64 KB by
    default, which `MADV_RANDOM` does not turn off): a 512-token prompt of random tokens grew a 0.19B process
    by 27 MB that way, against 0.8 MB of rows. The file stays open, so replacing it by renaming leaves a
    loaded model as it was."""

    def __init__(self, t: LazyTensor):
        self.rows, self.cols = t.shape
        self.dtype = t.dtype
        self.row_bytes = self.cols * t.itemsize
        self._base = t.offset + t.storage_offset * t.itemsize
        fd = os.open(t.path, os.O_RDONLY)
        if os.fstat(fd).st_size < self._base + self.rows * self.row_bytes:
            os.close(fd)
            raise CheckpointError(f"{t.path}: file is truncated (a tensor's data ends early); download it again")
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)

    def take(self, ids: list[int]) -> torch.Tensor:
        """Rows `ids` as a (len(ids), cols) tensor in the file's dtype."""
        out = torch.empty(len(ids), self.cols, dtype=self.dtype)
        buf = out.view(torch.uint8).numpy()
        for i, r in enumerate(ids):
            if not 0 <= r < self.rows:
                raise IndexError(f"row {r} is out of range for a table of {self.rows} rows")
            if os.preadv(self._fd, [buf[i]], self._base + r * self.row_bytes) != self.row_bytes:
                raise CheckpointError("the checkpoint file was truncated while the model was loaded; load it again")
        return out


class _MetaUnpickler(pickle.Unpickler):
    """Rebuild a state dict's structure from `torch.save`'s pickle without loading data or running code."""

    def __init__(self, file, storages: dict[str, tuple[torch.dtype, int]]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_lazy
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch" and name in ("bfloat16", "float16", "float32", "float64", "int8", "uint8", "int64"):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError("unexpected persistent id")
        storage_type, key = pid[1], pid[2]
        if storage_type not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type}")
        return ("storage", key, _STORAGE_DTYPES[storage_type])


def _rebuild_lazy(storage, storage_offset, size, stride, *rest):
    return ("tensor", storage, int(storage_offset), tuple(size), tuple(stride))


def _zip_member_offset(f, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError("damaged zip entry")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _read_pth(path: Path) -> dict[str, LazyTensor]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (the file is truncated, or is not a zip-format .pth); "
            "check that the download finished"
        ) from None
    with zf, open(path, "rb") as raw:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise CheckpointError(f"{path}: a zip file, but not a torch checkpoint (no data.pkl inside)")
        prefix = pkl[0][: -len("data.pkl")]
        try:
            with zf.open(pkl[0]) as fp:
                obj = _MetaUnpickler(fp, {}).load()
        except zipfile.BadZipFile as e:  # a CRC that does not match: bytes changed after saving
            raise CheckpointError(f"{path}: the file is damaged ({e}); download or copy it again") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: not a plain tensor state dict ({e}); save the checkpoint's state_dict"
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
        file_size = os.path.getsize(path)
        out: dict[str, LazyTensor] = {}
        for name, val in obj.items():
            if not (isinstance(val, tuple) and val and val[0] == "tensor"):
                continue
            _, (_, key, dtype), storage_offset, size, stride = val
            member = f"{prefix}data/{key}"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has no data (missing {member}); the file is damaged"
                ) from None
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: tensor {name!r} is compressed; re-save it with torch.save")
            offset = _zip_member_offset(raw, info)
            if offset + info.file_size > file_size:
                raise CheckpointError(f"{path}: file is truncated (tensor {name!r} ends past the end of the file)")
            out[str(name)] = LazyTensor(path, offset, info.file_size, dtype, size, stride, storage_offset)
        return out


def _read_safetensors(path: Path) -> dict[str, LazyTensor]:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or 8 + n > file_size:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    base = 8 + n
    out: dict[str, LazyTensor] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[meta["dtype"]]
            begin, end = (int(x) for x in meta["data_offsets"])
            shape = tuple(int(s) for s in meta["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has an unsupported or malformed header entry") from None
        if base + end > file_size:
            raise CheckpointError(f"{path}: file is truncated (tensor {name!r} ends past the end of the file)")
        out[name] = LazyTensor(path, base + begin, end - begin, dtype, shape)
    return out


def open_checkpoint(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """Index a `.pth` or `.safetensors` checkpoint: tensor name -> LazyTensor, reading no weights yet."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file; give the path to an RWKV .pth or .safetensors checkpoint")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory; give the path to the checkpoint file inside it")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        tensors = _read_pth(p)
    elif p.suffix == ".safetensors" or len(magic) == 4:
        if p.suffix != ".safetensors" and p.suffix != "":
            tensors = _try_safetensors(p)
        else:
            tensors = _read_safetensors(p)
    else:
        raise CheckpointError(f"{p}: empty or too short to be a checkpoint")
    if not tensors:
        raise CheckpointError(f"{p}: holds no tensors")
    return tensors


def _try_safetensors(p: Path) -> dict[str, LazyTensor]:
    try:
        return _read_safetensors(p)
    except CheckpointError:
        raise CheckpointError(
            f"{p}: not an RWKV checkpoint (neither a torch .pth zip nor a safetensors file)"
        ) from None
