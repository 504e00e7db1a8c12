"""What a GGUF model file is, read from its header without loading it: for ``probe`` and capabilities.

``read_gguf(path)`` walks the header (metadata and tensor table) of a GGUF v2/v3 file and returns
its architecture, names, context length, parameter count and quantization; ``file_digest(path)`` is
its sha256, cached on disk by path, size, inode and modification time (hashing a multi-gigabyte
model on every worker start would make ``probe`` slow).

The reference reader (the ``gguf`` package) decodes every array, such as a 262k-entry vocabulary,
into Python objects: 15 s for a 250 MB model here, where this reader skips them in ~0.1 s.

Example::

    info = read_gguf("gemma-3-270m-q4_k_m.gguf")
    info.architecture, info.size_label, info.quantization, info.context_length
    # ('gemma3', '270M', 'Q4_K_M', 32768)
    info.names
    # ['gemma3:270m', 'gemma3:270m-q4_k_m', 'gemma-3-270m-q4_k_m']
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"

# GGUF value types: struct format of the fixed-size ones; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

#: llama.cpp's ``llama_ftype`` values (``general.file_type``) as Ollama names quantization levels.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


class GgufError(ValueError):
    """The file is not a GGUF model this reader understands (the message says what is wrong)."""


@dataclass(frozen=True)
class GgufInfo:
    path: str
    size: int
    architecture: str
    name: str
    size_label: str
    context_length: int
    parameters: int
    quantization: str
    chat_template: bool

    @property
    def parameter_size(self) -> str:
        return parameter_size(self.parameters)

    @property
    def names(self) -> list[str]:
        """Names a job may use for this file: ``arch:size`` (Ollama's convention), the same with the
        quantization, and the file's stem."""
        out = []
        if self.architecture and self.size_label:
            base = f"{self.architecture}:{self.size_label.lower()}"
            out += [base, f"{base}-{self.quantization.lower()}"]
        out.append(Path(self.path).stem)
        return list(dict.fromkeys(out))


def parameter_size(n: int) -> str:
    """A parameter count as Ollama shows it.

    >>> parameter_size(268_098_176), parameter_size(8_030_261_248)
    ('268.10M', '8.0B')
    """
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def read_gguf(path: str | os.PathLike) -> GgufInfo:
    """The metadata of a GGUF file; ``GgufError`` saying what is wrong if it is not one."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _parse(path, m)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError) as e:
        if isinstance(e, GgufError):
            raise
        raise GgufError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from None


def _parse(path: str, m: mmap.mmap) -> GgufInfo:
    if m[:4] != MAGIC:
        raise GgufError(f"{path} is not a GGUF model file (it starts with {bytes(m[:4])!r}, not b'GGUF')")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
    if version not in (2, 3):
        raise GgufError(f"{path} is GGUF version {version}; this reader knows versions 2 and 3")
    pos = 24
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key, pos = _string(m, pos)
        (kind,), pos = struct.unpack_from("<I", m, pos), pos + 4
        value, pos = _value(m, pos, kind)
        meta[key] = value
    parameters = 0
    for _ in range(n_tensors):
        _, pos = _string(m, pos)
        (n_dims,), pos = struct.unpack_from("<I", m, pos), pos + 4
        dims = struct.unpack_from(f"<{n_dims}Q", m, pos)
        pos += 8 * n_dims + 4 + 8  # dims, type, offset
        count = 1
        for d in dims:
            count *= d
        parameters += count
    arch = str(meta.get("general.architecture", ""))
    file_type = meta.get("general.file_type")
    return GgufInfo(
        path=path,
        size=len(m),
        architecture=arch,
        name=str(meta.get("general.name", "")),
        size_label=str(meta.get("general.size_label", "")),
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),  # type: ignore[call-overload]
        parameters=parameters,
        quantization=FILE_TYPES.get(file_type, f"type{file_type}") if isinstance(file_type, int) else "unknown",
        chat_template="tokenizer.chat_template" in meta,
    )


def _string(m: mmap.mmap, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", m, pos)
    end = pos + 8 + n
    if end > len(m):
        raise GgufError("a string runs past the end of the file (truncated download?)")
    return m[pos + 8:end].decode("utf-8"), end


def _value(m: mmap.mmap, pos: int, kind: int) -> tuple[object, int]:
    fmt = _SCALARS.get(kind)
    if fmt is not None:
        return struct.unpack_from("<" + fmt, m, pos)[0], pos + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(m, pos)
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", m, pos)
        pos += 12
        fmt = _SCALARS.get(item)
        if fmt is not None:  # fixed-size items: skipped in one step, never decoded
            return None, pos + count * struct.calcsize(fmt)
        for _ in range(count):  # strings (a vocabulary) or nested arrays: walked, not kept
            _, pos = _value(m, pos, item)
        return None, pos
    raise GgufError(f"unknown GGUF value type {kind} at byte {pos}")


def cache_dir() -> Path:
    """This plugin's cache: ``$DCP_WORKTIMES_CACHE/ollama``, else the user cache directory."""
    from dcp_worktimes.cache import cache_root

    return cache_root("ollama")


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of the file, from the on-disk cache when the file has not changed."""
    path = os.path.realpath(os.fspath(path))
    st = os.stat(path)
    key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    record = cache_dir() / "digests" / f"{key}.json"
    try:
        return json.loads(record.read_text())["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = f"sha256:{h.hexdigest()}"
    try:  # a cache we cannot write only costs the next start the same hashing
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": path, "digest": digest}))
        os.replace(tmp, record)
    except OSError:
        pass
    return digest
