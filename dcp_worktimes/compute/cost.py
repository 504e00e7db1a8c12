"""Cost profiles: what the deployer will pay for a job's slices (``job.exec(cost)``).

``exec`` accepts a named profile (``compute.marketValue``, ``compute.safeMarketValue``,
``compute.freeValue``, or their names as strings; ``compute.marketPrice``, the name the spec's
example 12 uses, is ``marketValue`` under another name), a number (= ``{"maxTotalPayment": n}``,
including ``0`` for a free job), or a dict with ``maxPaymentPerSlice`` and/or ``maxTotalPayment``
(snake_case spellings accepted). A dict with neither is an error treated like DCP's ``ENOFUNDS``
(no account has infinite funds)::

    >>> parse_cost(123).max_total_payment
    123.0
    >>> parse_cost({"maxPaymentPerSlice": 0.5}).payment_per_slice(10)
    0.5
    >>> parse_cost({})                      # doctest: +SKIP
    CostProfileError: ENOFUNDS: the cost profile {} sets neither maxPaymentPerSlice nor maxTotalPayment ...

Locally nobody is paid; the payment per slice still orders the scheduler's queue (jobs paying
more per slice are leased first), so the named profiles map to nominal rates: ``marketValue``
pays ``MARKET_RATE`` per slice, ``safeMarketValue`` 1.5 times that (it outbids to be picked up
sooner), ``freeValue`` nothing.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

from ..errors import DcpError, ErrorCode
from ..limits import to_float

__all__ = ["CostProfile", "CostProfileError", "parse_cost", "marketValue", "marketPrice", "safeMarketValue", "freeValue",
           "MARKET_RATE"]

#: Nominal market rate per slice (DCC) used to rank jobs in the local queue.
MARKET_RATE = 0.0001


class CostProfileError(DcpError):
    """An unusable cost profile (DCP's ``ENOFUNDS``)."""

    code = ErrorCode.ENOFUNDS


@dataclass(frozen=True)
class CostProfile:
    """A resolved cost profile. ``name`` is set for the fixed profiles."""

    max_payment_per_slice: float | None = None
    max_total_payment: float | None = None
    name: str | None = None

    def payment_per_slice(self, slices: int | None) -> float:
        """What one slice offers: the per-slice cap, and no more than the total spread over the
        slices. A total over a stream whose length is not known yet offers the market rate (at
        most the total): spreading it is impossible, and 0 would queue a paid job behind every
        other one.

        >>> CostProfile(max_payment_per_slice=0.5, max_total_payment=1).payment_per_slice(10)
        0.1
        """
        if self.name == "marketValue":
            return MARKET_RATE
        if self.name == "safeMarketValue":
            return MARKET_RATE * 1.5
        if self.name == "freeValue":
            return 0.0
        per_slice = self.max_payment_per_slice
        if self.max_total_payment is not None:
            spread = self.max_total_payment / slices if slices else (
                min(MARKET_RATE, self.max_total_payment) if slices is None else self.max_total_payment)
            per_slice = spread if per_slice is None else min(per_slice, spread)
        return per_slice if per_slice is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        if self.name:
            return {"profile": self.name}
        out: dict[str, Any] = {}
        if self.max_payment_per_slice is not None:
            out["maxPaymentPerSlice"] = self.max_payment_per_slice
        if self.max_total_payment is not None:
            out["maxTotalPayment"] = self.max_total_payment
        return out

    def __repr__(self) -> str:
        return f"compute.{self.name}" if self.name else f"CostProfile({self.to_dict()})"


marketValue = CostProfile(name="marketValue")
safeMarketValue = CostProfile(name="safeMarketValue")
freeValue = CostProfile(max_total_payment=0.0, name="freeValue")
#: The spec's example 12 ("Use function in Application") pays ``compute.marketPrice``, a name its
#: list of fixed profiles does not have: the same profile as ``marketValue``.
marketPrice = marketValue
_NAMED = {p.name: p for p in (marketValue, safeMarketValue, freeValue)}
_NAMED.update({"market_value": marketValue, "safe_market_value": safeMarketValue, "free_value": freeValue,
               "marketPrice": marketValue, "market_price": marketValue})


def _amount(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        raise CostProfileError(f"{what} must be a number of DCC, got {value!r}")
    f = to_float(value)
    if math.isinf(f) and f > 0 and not (isinstance(value, float) or isinstance(value, Decimal) and value.is_infinite()):
        raise CostProfileError(f"{what} is too large ({value!r:.40}...): amounts go up to {sys.float_info.max:.4g} DCC")
    if not math.isfinite(f) or f < 0:
        raise CostProfileError(f"{what} must be a finite amount >= 0, got {value!r:.40}")
    return f


def parse_cost(cost: Any) -> CostProfile:
    """Resolve what ``exec(cost)`` was given; ``CostProfileError`` (ENOFUNDS) if it is unusable."""
    if cost is None:
        return marketValue
    if isinstance(cost, CostProfile):
        return cost
    if isinstance(cost, str):
        if cost in _NAMED:
            return _NAMED[cost]
        raise CostProfileError(
            f"unknown cost profile {cost!r}; use compute.marketValue, compute.safeMarketValue, a number "
            "(the maximum total payment) or {'maxPaymentPerSlice': x} / {'maxTotalPayment': y}"
        )
    if isinstance(cost, (numbers.Real, Decimal)) and not isinstance(cost, bool):
        return CostProfile(max_total_payment=_amount(cost, "the payment"))
    if isinstance(cost, Mapping):
        keys = {"maxPaymentPerSlice": "max_payment_per_slice", "maxTotalPayment": "max_total_payment",
                "max_payment_per_slice": "max_payment_per_slice", "max_total_payment": "max_total_payment"}
        unknown = set(cost) - set(keys)
        if unknown:
            raise CostProfileError(
                f"cost profile has unknown keys {sorted(unknown)}; use maxPaymentPerSlice and/or maxTotalPayment"
            )
        values = {keys[k]: _amount(v, k) for k, v in cost.items() if v is not None}
        if not values:
            raise CostProfileError(
                f"the cost profile {dict(cost)!r} sets neither maxPaymentPerSlice nor maxTotalPayment, so it would "
                "spend without limit; set one of them (e.g. {'maxTotalPayment': 10}), pass a number, "
                "or use compute.marketValue"
            )
        return CostProfile(**values)
    raise CostProfileError(
        f"cannot use a {type(cost).__name__} as a cost profile; pass compute.marketValue, a number or "
        "{'maxPaymentPerSlice': x}"
    )
