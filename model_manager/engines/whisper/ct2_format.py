"""Reader for CTranslate2's `model.bin`, the one binary file of a converted model.

Layout (little endian, binary versions 1-6; ctranslate2/specs/model_spec.py writes version 6):
version u32; [v>=2] spec name (str), revision u32; variable count u32; per variable:
name (str), rank u8, shape u32 * rank, then [v>=4] dtype id u8 + byte count u32, or
[v<4] item size u8 + item count u32, then the raw data; [v>=3] alias count u32 and
(alias, target) string pairs. A str is a u16 length that counts a trailing NUL, then the bytes.

Only numpy and the standard library are needed, so the reader can also check a joined
multi-part file (weights.py) without loading a model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAX_BINARY_VERSION = 6
# Order of include/ctranslate2/types.h DataType; the id in the file indexes this tuple.
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_OLD_ITEM_SIZES = {4: "float32", 2: "int16", 1: "int8"}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model.bin this reader understands, or is truncated."""


@dataclass
class CT2Variable:
    """One variable's header; `data` is None when the file was scanned without loading data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    data: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class CT2Model:
    version: int
    spec: str
    revision: int
    variables: dict[str, CT2Variable] = field(default_factory=dict)
    #: alias name -> the variable it shares storage with (e.g. a tied output projection).
    aliases: dict[str, str] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        """The loaded data of `name` (following aliases); KeyError if absent."""
        var = self.variables[self.aliases.get(name, name)]
        if var.data is None:
            raise ValueError(f"{name}: the model was read without data")
        return var.data

    def scalar(self, name: str) -> int | float:
        return self.array(name).item()


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise CT2FormatError("unexpected end of file")
        return b

    def unpack(self, fmt: str) -> int:
        fmt = "<" + fmt
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = self.read(n)
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError("malformed string")
        return raw[:-1].decode("utf-8")


def _decode(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":
        # numpy has no bfloat16: a bf16 value is the top half of the float32 with the same bits.
        arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=dtype)
    return arr.reshape(shape)


def read_ct2_model(path: str | Path, load_data: bool = True) -> CT2Model:
    """Parse `path` (a model.bin). With `load_data=False` only headers are read (data is
    skipped by seeking), which is cheap even for large models.

    Raises CT2FormatError for an unknown version, a bad dtype, a truncated file or
    trailing bytes, so a wrongly joined file is caught here rather than inside CTranslate2.
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Reader(f)
        version = r.unpack("I")
        if not 1 <= version <= MAX_BINARY_VERSION:
            raise CT2FormatError(f"{path}: unsupported binary version {version}")
        spec = r.string() if version >= 2 else ""
        revision = r.unpack("I") if version >= 2 else 1
        model = CT2Model(version=version, spec=spec, revision=revision)
        for _ in range(r.unpack("I")):
            name = r.string()
            rank = r.unpack("B")
            shape = tuple(r.unpack("I") for _ in range(rank))
            if version >= 4:
                type_id = r.unpack("B")
                if type_id >= len(_DTYPES):
                    raise CT2FormatError(f"{path}: {name} has unknown dtype id {type_id}")
                dtype = _DTYPES[type_id]
                nbytes = r.unpack("I")
            else:
                item_size = r.unpack("B")
                dtype = _OLD_ITEM_SIZES[item_size]
                nbytes = item_size * r.unpack("I")
            var = CT2Variable(name=name, shape=shape, dtype=dtype, nbytes=nbytes)
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            if var.size * itemsize != nbytes:
                raise CT2FormatError(f"{path}: {name} has {nbytes} bytes for shape {shape} {dtype}")
            if load_data:
                var.data = _decode(r.read(nbytes), dtype, shape)
            else:
                f.seek(nbytes, 1)
            model.variables[name] = var
        if version >= 3:
            for _ in range(r.unpack("I")):
                alias = r.string()
                model.aliases[alias] = r.string()
        # Seeking past the end does not fail, so truncation by skipped data shows up here.
        if f.tell() > file_size:
            raise CT2FormatError(f"{path}: truncated ({file_size} bytes, records need {f.tell()})")
        if f.tell() != file_size:
            raise CT2FormatError(f"{path}: {file_size - f.tell()} bytes left after the last record")
    return model


def count_parameters(path: str | Path) -> int:
    """Number of weights in a model.bin: every non-scalar variable once (aliases share storage;
    int8 quantisation scales are bookkeeping, not parameters)."""
    model = read_ct2_model(path, load_data=False)
    return sum(v.size for v in model.variables.values()
               if v.shape and not v.name.endswith("_scale"))
