"""Semver matching between a job's requested range and installed worktime versions.

npm range syntax (``^1.0.0``, ``~1.2``, ``>=0.0.0``, ``1.x``, ``*``) via ``semantic_version``'s
``NpmSpec``, the same dialect DCP's JavaScript client uses::

    >>> satisfies("1.4.2", "^1.0.0"), satisfies("2.0.0", "^1.0.0")
    (True, False)
    >>> max_satisfying(["1.0.0", "1.3.0", "2.0.0"], "^1.0.0")
    '1.3.0'
"""

from __future__ import annotations

from typing import Iterable

import semantic_version


def parse_range(spec: str | None) -> semantic_version.NpmSpec:
    """Parse an npm-style range; ``None``/``""`` means any version. ``ValueError`` names the problem."""
    if spec is not None and not isinstance(spec, str):
        raise ValueError(f"invalid version range {spec!r}: write it as a string, an npm-style range such as "
                         "'^1.0.0', '~1.2', '>=0.0.0' or '*'")
    text = (spec or "*").strip() or "*"
    try:
        return semantic_version.NpmSpec(text)
    except ValueError:
        raise ValueError(f"invalid version range {spec!r}; write an npm-style range such as ^1.0.0, ~1.2, >=0.0.0 or *") from None


def parse_version(version: str) -> semantic_version.Version:
    try:
        return semantic_version.Version(version)
    except ValueError:
        raise ValueError(f"invalid semver version {version!r}; write MAJOR.MINOR.PATCH such as 1.0.0") from None


def satisfies(version: str, spec: str | None) -> bool:
    return parse_version(version) in parse_range(spec)


def max_satisfying(versions: Iterable[str], spec: str | None) -> str | None:
    """The highest of ``versions`` inside ``spec`` (DCP's max-satisfying match), or ``None``."""
    rng = parse_range(spec)
    best = rng.select(parse_version(v) for v in versions)
    return str(best) if best is not None else None
