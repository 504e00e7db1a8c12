"""Build C into a WASI command module, with the toolchain ``pip`` installs (Zig) or the system's clang.

Used by the tests and the benchmarks, and handy for work authors::

    >>> from dcp_worktimes.worktimes.wasi.toolchain import compile_c   # doctest: +SKIP
    >>> wasm = compile_c(open("sum.c").read())                         # doctest: +SKIP

Two toolchains, the first one present wins:

* **Zig** from PyPI (``pip install ziglang``; ``zig cc`` carries its own wasi-libc): works on any
  Linux machine with Python, no system packages. Its first build of wasi-libc takes a minute;
  Zig caches it (``~/.cache/zig``).
* **clang** with Debian's ``clang lld wasi-libc libclang-rt-dev-wasm32`` (the last one holds
  ``libclang_rt.builtins-wasm32.a``, which clang's WASI driver always links).

``DCP_WASI_CC=zig`` or ``=clang`` chooses one explicitly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = "clang lld wasi-libc libclang-rt-dev-wasm32"
PIP_PACKAGE = "ziglang"
TARGET = "wasm32-wasi"
ENV_CC = "DCP_WASI_CC"


class ToolchainMissing(RuntimeError):
    """No toolchain can build WASI programs here; the message says what to install."""


def _zig() -> list[str] | None:
    try:
        import ziglang  # noqa: F401  (the package holds the zig binary)
    except ImportError:
        return None
    return [sys.executable, "-m", "ziglang", "cc", "-target", TARGET]


def _clang() -> list[str] | None:
    path = shutil.which("clang")
    # --stack-first puts the shadow stack below the data: an overflow traps at once (address < 0)
    # instead of first overwriting the program's globals. (Zig's linker lays the stack out so itself.)
    return [path, f"--target={TARGET}", "-Wl,--stack-first"] if path else None


def compiler() -> list[str]:
    """The command line (before flags and files) of a C compiler for ``wasm32-wasi``."""
    choice = os.environ.get(ENV_CC, "").strip().lower()
    found = {"zig": _zig, "clang": _clang}
    if choice in found:
        cmd = found[choice]()
        if cmd is None:
            raise ToolchainMissing(f"{ENV_CC}={choice} but it is not installed; "
                                   + (f"pip install {PIP_PACKAGE}" if choice == "zig" else f"apt-get install -y {PACKAGES}"))
        return cmd
    cmd = _zig() or _clang()
    if cmd is None:
        raise ToolchainMissing(f"no C toolchain for WASI is installed; pip install {PIP_PACKAGE} (or, on Debian, "
                               f"apt-get install -y {PACKAGES})")
    return cmd


def compile_c(source: str, *, opt: str = "-O2", flags: tuple[str, ...] = (), cache: Path | None = None) -> bytes:
    """Compile one C source to a WASI command module and return its bytes.

    ``cache``: a directory where outputs are kept by hash of source, compiler and flags (tests use
    one per session). Raises ``ToolchainMissing`` or ``RuntimeError`` carrying the diagnostics.
    """
    cmd = compiler()
    args = [*cmd, opt, *flags]
    key = hashlib.sha256(("\0".join(args[1:]) + "\0" + source).encode()).hexdigest()[:24]
    if cache is not None and (cache / f"{key}.wasm").is_file():
        return (cache / f"{key}.wasm").read_bytes()
    with tempfile.TemporaryDirectory(prefix="dcp-wasi-cc-") as tmp:
        src, out = Path(tmp, "main.c"), Path(tmp, "main.wasm")
        src.write_text(source)
        proc = subprocess.run([*args, str(src), "-o", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            hint = ""
            if cmd[0] != sys.executable and any(s in proc.stderr for s in ("stdio.h", "crt1", "wasm-ld", "builtins")):
                hint = f"\n(the WASI toolchain is incomplete; pip install {PIP_PACKAGE}, or apt-get install -y {PACKAGES})"
            raise (ToolchainMissing if hint else RuntimeError)(f"the C compiler failed:\n{proc.stderr.strip()}{hint}")
        data = out.read_bytes()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"{key}.wasm").write_bytes(data)
    return data
