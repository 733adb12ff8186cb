"""Reading a `.safetensors` file: checked, memory-mapped, one copy per tensor.

The format is simple enough to read by hand, which is why we do:

    [8 bytes: N, little-endian u64] [N bytes: JSON header] [raw tensor bytes ...]

The header maps each name to `{"dtype": "F16", "shape": [...], "data_offsets": [a, b]}`
(byte offsets into the data section) and may hold a `__metadata__` dict of strings. There
is no code in the file, unlike a pickled `.ckpt`/`.pt`, whose loading runs whatever
Python the file contains; we refuse those rather than unpickle them.

Reading by hand lets us (1) check the header against the file before touching the data,
so a truncated download or a corrupted header says so in words, and (2) control memory:
the file is memory-mapped, each tensor is copied out once, already in the target dtype,
and the mapped pages are released right after, so loading a 7 GB checkpoint needs about
the model's size in memory, not twice that.

>>> import tempfile, os, safetensors.torch
>>> path = os.path.join(tempfile.mkdtemp(), "tiny.safetensors")
>>> safetensors.torch.save_file({"w": torch.ones(2, 3, dtype=torch.float16)}, path, {"note": "hi"})
>>> with SafetensorsFile(path) as f:
...     f.shapes(), f.metadata, f.get("w", torch.float32).dtype
({'w': (2, 3)}, {'note': 'hi'}, torch.float32)
"""

import json
import mmap
import os
import struct

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER_BYTES = 100 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be what it was given as; the message says what to do."""


def refuse_pickle(path: str, head: bytes = b"") -> None:
    """Pickle files can run arbitrary code when loaded: never open them, say how to convert.

    A file is a pickle if its name says so, or if it is not valid safetensors and starts
    like a zip archive (what `torch.save` writes) or a pickle stream (`head`).
    """
    if path.lower().endswith(PICKLE_SUFFIXES) or head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a pickle checkpoint (.ckpt/.pt/.bin). Loading a pickle can execute arbitrary "
            "code, so sdxl_edu never unpickles. Use the .safetensors release of the same weights, or "
            "convert a file you trust once with: python -c \"import torch, safetensors.torch as st; "
            "sd = torch.load('model.ckpt', map_location='cpu', weights_only=True); "
            "st.save_file({k: v.contiguous() for k, v in sd.get('state_dict', sd).items()}, "
            "'model.safetensors')\"")


def read_header(path: str) -> tuple[dict, dict, int]:
    """Parse and check the header. Returns (tensor entries, metadata, data start offset)."""
    refuse_pickle(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is {size} bytes long: too short to be a safetensors file "
                                  "(truncated download?)")
        n = struct.unpack("<Q", raw)[0]
        if n > min(size - 8, MAX_HEADER_BYTES):
            refuse_pickle(path, raw)
            raise CheckpointError(f"{path} is not a valid safetensors file: its header claims {n} bytes but "
                                  f"the file has {size}. It is truncated or not a safetensors file; "
                                  "download it again.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            refuse_pickle(path, raw)
            raise CheckpointError(f"{path} has a corrupted safetensors header ({e}); download it again.") from None
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    for name, entry in header.items():
        _check_entry(path, name, entry, data_size)
    return header, metadata, 8 + n


def _check_entry(path: str, name: str, entry: dict, data_size: int) -> None:
    if entry.get("dtype") not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
    begin, end = entry["data_offsets"]
    numel = 1
    for d in entry["shape"]:
        numel *= d
    if end - begin != numel * DTYPES[entry["dtype"]].itemsize:
        raise CheckpointError(f"{path} is corrupted: tensor {name!r} of shape {entry['shape']} "
                              f"should take {numel * DTYPES[entry['dtype']].itemsize} bytes, the header gives "
                              f"{end - begin}.")
    if end > data_size:
        raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {end} of the data but "
                              f"the file holds only {data_size} bytes of data. Download it again.")


class SafetensorsFile:
    """A checked, memory-mapped safetensors file. Use as a context manager."""

    def __init__(self, path: str):
        self.path = str(path)
        self.entries, self.metadata, self._data_start = read_header(self.path)
        self._file = open(self.path, "rb")
        # ACCESS_COPY: a private mapping, writable as far as Python's buffer protocol is
        # concerned (torch.frombuffer needs that), never written, so nothing is copied.
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if self.entries else None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(e["shape"]) for k, e in self.entries.items()}

    def dtype(self, key: str) -> torch.dtype:
        return DTYPES[self.entries[key]["dtype"]]

    def get(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Copy one tensor out of the file, cast to `dtype` on the way (one copy)."""
        entry = self.entries[key]
        begin, end = (self._data_start + o for o in entry["data_offsets"])
        stored = DTYPES[entry["dtype"]]
        if end == begin:
            return torch.empty(entry["shape"], dtype=dtype or stored)
        view = torch.frombuffer(self._map, dtype=stored, count=(end - begin) // stored.itemsize,
                                offset=begin).view(entry["shape"])
        if dtype is None or dtype == stored or not stored.is_floating_point:
            out = view.clone()
        else:
            out = view.to(dtype)
        del view
        self._release(begin, end)
        return out

    def _release(self, begin: int, end: int) -> None:
        """Drop the pages just read from this process's memory (they stay in the page cache)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            start = begin - begin % mmap.PAGESIZE
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
