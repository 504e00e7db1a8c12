"""Distribution sets: ``compute.stats.set.{random, randomInt, normal, poisson, binomial, identity}``.

Each call describes ``n`` slices whose datums are draws from a distribution. The set is lazy and
index-addressable: draw ``i`` comes from its own generator seeded with ``(seed, i)``, so
``nth(i)`` costs O(1), any worker can compute any slice from the description alone, and a resumed
job sees exactly the same datums. Without ``seed`` a random seed is chosen once and recorded in
the description::

    >>> from dcp_worktimes.compute import stats      # this module, as the Compute API names it
    >>> s = stats.set.normal(1000, mean=10, stddev=2, seed=42)
    >>> len(s), s.nth(3) == stats.set.normal(1000, mean=10, stddev=2, seed=42).nth(3)
    (1000, True)
    >>> stats.set.identity(3).nth(2)
    2

Signatures (the count ``n`` always comes first; ``seed`` may also be the last positional argument,
as in the spec's ``stats.set.poisson(10, 0.1, 100)``):

=========================================  ==================================================
``random(n, seed=None)``                    uniform floats in [0, 1)
``randomInt(n, low, high, seed=None)``      uniform ints in [low, high] (both inclusive)
``normal(n, mean=0, stddev=1, seed=None)``  Gaussian floats
``poisson(n, lam, seed=None)``              Poisson ints with mean ``lam``
``binomial(n, trials, p, seed=None)``       Binomial ints: successes in ``trials`` draws of ``p``
``identity(n)``                             ``0, 1, ..., n-1`` (no randomness)
=========================================  ==================================================
"""

from __future__ import annotations

import math
import numbers
import random as _random
from types import SimpleNamespace
from typing import Any, Callable, Mapping

from ..limits import to_float

__all__ = ["DistributionSet", "set", "DistributionError"]


class DistributionError(ValueError):
    """Bad parameters for a distribution set (raised before deployment)."""


def _rng(seed: int, i: int) -> _random.Random:
    # str seeds go through SHA-512 in CPython: stable across processes and PYTHONHASHSEED.
    return _random.Random(f"dcp-dist:{seed}:{i}")


def _poisson(lam: float, rng: _random.Random) -> int:
    if lam == 0:
        return 0
    if lam < 10:  # Knuth: multiply uniforms until below e^-lam
        limit, k, prod = math.exp(-lam), 0, rng.random()
        while prod > limit:
            k += 1
            prod *= rng.random()
        return k
    # PTRS, transformed rejection with squeeze (Hörmann 1993), as numpy does for large lambda.
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= -lam + k * loglam - math.lgamma(k + 1):
            return k


def _binomial(n: int, p: float, rng: _random.Random) -> int:
    if p <= 0 or n == 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - _binomial(n, 1 - p, rng)
    if n * p < 10:  # geometric waiting times: O(n p) expected
        c = math.log(1 - p)
        x = y = 0
        while True:
            y += math.floor(math.log(rng.random()) / c) + 1
            if y > n:
                return x
            x += 1
    # BTRS (Hörmann 1993), the algorithm of CPython 3.12's random.binomialvariate.
    spq = math.sqrt(n * p * (1 - p))
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    vr = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    lpq = math.log(p / (1 - p))
    m = math.floor((n + 1) * p)
    h = math.lgamma(m + 1) + math.lgamma(n - m + 1)
    while True:
        u = rng.random() - 0.5
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + c)
        if k < 0 or k > n:
            continue
        v = rng.random()
        if us >= 0.07 and v <= vr:
            return k
        v = math.log(v * alpha / (a / (us * us) + b))
        if v <= h - math.lgamma(k + 1) - math.lgamma(n - k + 1) + (k - m) * lpq:
            return k


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(to_float(value)):
        raise DistributionError(f"{what} must be a finite number that fits a float, got {value!r:.40}")
    return float(value)


def _integer(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DistributionError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise DistributionError(f"{what} must be at least {minimum}, got {value}")
    return value


# name -> (parameter names, validator(params) -> params, draw(rng, *params))
_KINDS: dict[str, tuple[tuple[str, ...], Callable[..., tuple], Callable[..., Any]]] = {}


def _kind(name: str, params: tuple[str, ...]):
    def deco(validate):
        def wrap(draw):
            _KINDS[name] = (params, validate, draw)
            return draw
        return wrap
    return deco


def _v_random() -> tuple:
    return ()


def _v_random_int(low, high) -> tuple:
    low, high = _integer(low, "randomInt low"), _integer(high, "randomInt high")
    if high < low:
        raise DistributionError(f"randomInt(n, low, high): high ({high}) must be >= low ({low}); swap them")
    return (low, high)


def _v_normal(mean=0.0, stddev=1.0) -> tuple:
    mean, stddev = _number(mean, "normal mean"), _number(stddev, "normal stddev")
    if stddev < 0:
        raise DistributionError(f"normal stddev must be >= 0, got {stddev}")
    return (mean, stddev)


def _v_poisson(lam) -> tuple:
    lam = _number(lam, "poisson lam")
    if lam < 0 or lam > 1e12:
        raise DistributionError(f"poisson lam (the mean) must be in [0, 1e12], got {lam}")
    return (lam,)


def _v_binomial(trials, p) -> tuple:
    trials = _integer(trials, "binomial trials", 0)
    p = _number(p, "binomial p")
    if not 0 <= p <= 1:
        raise DistributionError(f"binomial p is a probability and must be in [0, 1], got {p}")
    return (trials, p)


_kind("random", ())(_v_random)(lambda rng: rng.random())
_kind("randomInt", ("low", "high"))(_v_random_int)(lambda rng, low, high: rng.randint(low, high))
_kind("normal", ("mean", "stddev"))(_v_normal)(lambda rng, mean, sd: rng.gauss(mean, sd))
_kind("poisson", ("lam",))(_v_poisson)(lambda rng, lam: _poisson(lam, rng))
_kind("binomial", ("trials", "p"))(_v_binomial)(lambda rng, trials, p: _binomial(trials, p, rng))
_kind("identity", ())(_v_random)(None)


class DistributionSet:
    """``n`` draws from a named distribution, addressable by index. Build it with ``stats.set.*``."""

    def __init__(self, name: str, n: Any, params: tuple = (), seed: int | None = None) -> None:
        if name not in _KINDS:
            raise DistributionError(f"unknown distribution {name!r}; known: {', '.join(_KINDS)}")
        self.name = name
        self.n = _integer(n, f"{name}(n, ...): n, the number of slices,", 0)
        names, validate, draw = _KINDS[name]
        self.params = tuple(validate(*params))
        self._draw = draw
        if seed is None:
            import secrets  # here: it loads OpenSSL (~4 MB), which a deployer otherwise never needs

            seed = secrets.randbits(63)
        self.seed = _integer(seed, "seed")

    @property
    def size(self) -> int:
        """Number of slices, exact at any size (``len()`` stops at 2**63-1)."""
        return self.n

    def __len__(self) -> int:
        from .ranges import checked_len

        return checked_len(self.n, "distribution set")

    def nth(self, i: int) -> Any:
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"slice {i} out of range: this set has {self.n} slices")
        if self._draw is None:
            return i
        return self._draw(_rng(self.seed, i), *self.params)

    def __iter__(self):
        return (self.nth(i) for i in range(self.n))

    def description(self) -> dict:
        return {"kind": "distribution", "name": self.name, "n": self.n, "params": list(self.params), "seed": self.seed}

    @classmethod
    def from_description(cls, desc: Mapping[str, Any]) -> "DistributionSet":
        return cls(desc["name"], desc["n"], tuple(desc.get("params") or ()), desc["seed"])

    def __repr__(self) -> str:
        params = ", ".join(repr(p) for p in self.params)
        return f"stats.set.{self.name}({self.n}{', ' if params else ''}{params}, seed={self.seed})"


def _maker(name: str):
    names = _KINDS[name][0]

    def make(n: Any, *args: Any, seed: int | None = None, **kwargs: Any) -> DistributionSet:
        if len(args) == len(names) + 1 and seed is None:  # the seed may come last, positionally, as in
            *args, seed = args                           # the spec's stats.set.poisson(10, 0.1, 100)
        params = list(args)
        for key in names[len(args):]:
            if key in kwargs:
                params.append(kwargs.pop(key))
        if kwargs:
            raise DistributionError(
                f"stats.set.{name}() got unexpected arguments {sorted(kwargs)}; "
                f"signature: {name}(n{''.join(', ' + p for p in names)}, seed=None)"
            )
        try:
            return DistributionSet(name, n, tuple(params), seed)
        except TypeError:
            raise DistributionError(
                f"stats.set.{name}() arguments do not fit; signature: {name}(n{''.join(', ' + p for p in names)}, seed=None)"
            ) from None

    make.__name__ = name
    make.__doc__ = f"``{name}(n{''.join(', ' + p for p in names)}, seed=None)``: a lazy set of n draws."
    return make


#: ``stats.set.random(n)``, ``stats.set.normal(n, mean, stddev)``, ... (see the module docstring).
set = SimpleNamespace(**{name: _maker(name) for name in _KINDS})  # noqa: A001 - DCP's name
set.random_int = set.randomInt  # the Python spelling as well
