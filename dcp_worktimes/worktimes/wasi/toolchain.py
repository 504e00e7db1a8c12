"""Build C into a WASI command module with Debian's clang + wasi-libc + lld.

Used by the tests and the benchmark, and handy for work authors::

    >>> from dcp_worktimes.worktimes.wasi.toolchain import compile_c   # doctest: +SKIP
    >>> wasm = compile_c(open("sum.c").read())                         # doctest: +SKIP

Needs the system packages ``clang lld wasi-libc libclang-rt-dev-wasm32`` (the last one holds
``libclang_rt.builtins-wasm32.a``, which clang's WASI driver always links).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGES = "clang lld wasi-libc libclang-rt-dev-wasm32"
TARGET = "wasm32-wasi"


class ToolchainMissing(RuntimeError):
    """clang cannot build WASI programs here; the message says what to install."""


def clang() -> str:
    """Path of a clang that can link ``--target=wasm32-wasi`` programs, or ``ToolchainMissing``."""
    path = shutil.which("clang")
    if path is None:
        raise ToolchainMissing(f"clang is not installed; run: apt-get update && apt-get install -y {PACKAGES}")
    return path


def compile_c(source: str, *, opt: str = "-O2", flags: tuple[str, ...] = (), cache: Path | None = None) -> bytes:
    """Compile one C source to a WASI command module and return its bytes.

    ``cache``: a directory where outputs are kept by hash of source and flags (tests use one per
    session). Raises ``ToolchainMissing`` or ``RuntimeError`` carrying clang's diagnostics.
    """
    # --stack-first puts the shadow stack below the data: an overflow traps at once (address < 0)
    # instead of first overwriting the program's globals.
    args = [f"--target={TARGET}", opt, "-Wl,--stack-first", *flags]
    key = hashlib.sha256(("\0".join(args) + "\0" + source).encode()).hexdigest()[:24]
    if cache is not None and (cache / f"{key}.wasm").is_file():
        return (cache / f"{key}.wasm").read_bytes()
    with tempfile.TemporaryDirectory(prefix="dcp-wasi-cc-") as tmp:
        src, out = Path(tmp, "main.c"), Path(tmp, "main.wasm")
        src.write_text(source)
        proc = subprocess.run([clang(), *args, str(src), "-o", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            hint = ""
            if "stdio.h" in proc.stderr or "crt1" in proc.stderr or "wasm-ld" in proc.stderr or "builtins" in proc.stderr:
                hint = f"\n(the WASI toolchain is incomplete; run: apt-get install -y {PACKAGES})"
            raise (ToolchainMissing if hint else RuntimeError)(f"clang failed:\n{proc.stderr.strip()}{hint}")
        data = out.read_bytes()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"{key}.wasm").write_bytes(data)
    return data
