"""Limits and usage for one chat request: admitted (or refused) by the limiter before the
upstream is called, then settled exactly once into the limiter and the usage ledger, with its
cost at the price of the upstream that served it."""

from __future__ import annotations

from ..errors import GatewayError
from ..keystore.ledger import UsageLedger
from ..keystore.records import KeyRecord
from ..limits import Limiter, Ticket
from ..ops import observe
from ..upstream.prices import PriceList, cost_micro_usd
from ..usage import Usage
from .usage_meter import UsageMeter


class Account:
    __slots__ = ("_ledger", "_model", "_name", "_price", "_prices", "_settled", "_ticket", "meter")

    def __init__(
        self,
        ticket: Ticket,
        meter: UsageMeter,
        ledger: UsageLedger,
        prices: PriceList,
        name: str,
        model: str,
    ) -> None:
        self._ticket = ticket
        self._ledger = ledger
        self._prices = prices
        self._name = name
        self._model = model
        # Until an upstream answers, the gateway's own price: a client gone while waiting is
        # still charged for the prompt the upstream got.
        self._price = prices.of(model)
        self._settled = False
        self.meter = meter

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._ticket.headers

    def served_by(self, upstream: str) -> None:
        """The upstream that answers: the request costs its price."""
        self._price = self._prices.of(self._model, upstream)

    def settle(self, *, error: bool, usage: Usage | None) -> None:
        """`usage` is None when the upstream produced nothing (it refused the request)."""
        if self._settled:
            return
        self._settled = True
        cost = None
        if usage is not None:
            observe.current().used(usage)
            if self._price is not None:
                cost = cost_micro_usd(usage, self._price)
        self._ledger.record(self._name, self._model, usage, error=error, cost_micro_usd=cost)
        self._ticket.finish(usage.total if usage is not None else 0, cost or 0)


class Accounting:
    def __init__(self, limiter: Limiter, ledger: UsageLedger, prices: PriceList) -> None:
        self.limiter = limiter
        self.ledger = ledger
        self.prices = prices

    async def admit(self, key: KeyRecord, model: str, meter: UsageMeter) -> Account:
        """The request's account, or the refusal (counted as an error): the limiter's, or a
        dollar budget's for a model without a price."""
        try:
            if key.budget_usd_micro is not None and self.prices.of(model) is None:
                # Its cost would be unknown, so nothing would count towards the budget: a key
                # could spend without end on the one model the operator forgot to price.
                raise GatewayError(
                    403,
                    f"The model '{model}' has no price, so its use cannot count towards this "
                    "API key's dollar budget; use a priced model, or ask the gateway's "
                    "operator to price it.",
                    "permission_error",
                    param="model",
                )
            ticket = await self.limiter.admit(key)
        except GatewayError:
            self.ledger.record(key.name, model, None, error=True)
            raise
        return Account(ticket, meter, self.ledger, self.prices, key.name, model)
