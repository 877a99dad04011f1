"""``--max-cost``: what a run's finished rows have cost so far, priced as its reports price them.

Rows are priced in batches, a few times a second (:data:`SETTLE_INTERVAL_S`), on a thread of
their own, not one by one: nothing is added to a request's own path but keeping the row. The
figure is the rows' list-price cost (bundled genai-prices data, as the closing summary and
``batchrunner report`` without ``--prices``); rows of a model nobody prices cannot count toward
it, and are counted apart so that the user can be told.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from batchrunner.pricing import PriceBook
from batchrunner.report import COST_COLUMNS, price_rows
from batchrunner.schema import RESULT_SCHEMA

#: How often the rows finished since the last look are priced (seconds): the run stops at most
#: this much (plus its requests in flight) after reaching the limit.
SETTLE_INTERVAL_S = 0.1

# Live rows hold instants as float epoch seconds (the journal's form), not timestamps.
_LIVE_SCHEMA = pa.schema([
    pa.field(name, pa.float64()) if name.endswith("_at") else RESULT_SCHEMA.field(name)
    for name in COST_COLUMNS
])


class SpendMeter:
    """The cost of a run's rows against a limit.

    :param limit_usd: the ``--max-cost`` limit in dollars.
    :param book: prices (default: bundled genai-prices data).
    """

    def __init__(self, limit_usd: float, book: PriceBook | None = None) -> None:
        self.limit_usd = limit_usd
        self._book = book
        #: Dollars of the priced rows: earlier sessions' (:meth:`add_table`) and this one's.
        self.spent_usd = 0.0
        #: Rows with tokens whose model has no price: their cost is not in :attr:`spent_usd`.
        self.unpriced_rows = 0
        self.unpriced_models: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def book(self) -> PriceBook:
        """The prices, loaded when first needed (the bundled data takes ~0.25 s to load)."""
        if self._book is None:
            self._book = PriceBook()
        return self._book

    @property
    def reached(self) -> bool:
        return self.spent_usd >= self.limit_usd

    def add(self, row: dict[str, Any]) -> None:
        """Keep a finished row for the next :meth:`take` (cheap: on the request's path)."""
        self._pending.append(row)

    def take(self) -> list[dict[str, Any]]:
        """The rows kept since the last call, for :meth:`price` (on another thread: pricing a
        tenth of a second of rows took 1-12 ms, send lag for an open loop)."""
        rows, self._pending = self._pending, []
        return rows

    def price(self, rows: list[dict[str, Any]]) -> list[str]:
        """Add the cost of *rows* (finished rows, as the run emits them).

        :return: models found unpriced for the first time (to tell the user once).
        """
        if not rows:
            return []
        table = pa.table({k: [r.get(k) for r in rows] for k in COST_COLUMNS},
                         schema=_LIVE_SCHEMA)
        return self.add_table(table)

    def settle(self) -> list[str]:
        """:meth:`price` the rows kept since the last call, here."""
        return self.price(self.take())

    def add_table(self, table: pa.Table) -> list[str]:
        """Add the cost of rows already in table form (at least ``COST_COLUMNS``).

        :return: models found unpriced for the first time.
        """
        if table.num_rows == 0:
            return []
        cols: dict[str, Any] = {}
        price_rows(table, self.book, cols)
        total = cols["cost_total"]
        unpriced = np.isnan(total)
        names = {str(m) for m in np.asarray(cols["model_key"], dtype=object)[unpriced]}
        # Failed attempts' usage of a model without prices (the row's own cost still counts).
        retried = cols["retried_unpriced"] > 0
        names |= {str(m) for m in cols["retried_unpriced_model"][retried]}
        with self._lock:  # the last batch may still be priced on its thread at the end
            self.spent_usd += float(total[~unpriced].sum())
            self.unpriced_rows += int((unpriced | retried).sum())
            new = sorted(names - self.unpriced_models)
            self.unpriced_models |= names
        return new

    def add_batches(self, batches: Iterable[pa.Table]) -> list[str]:
        """Add the cost of the rows earlier sessions wrote (e.g. ``store.iter_batches``).

        :return: models found unpriced (to tell the user once).
        """
        new: list[str] = []
        for batch in batches:
            new += self.add_table(batch)
        return new

    def describe(self) -> dict[str, Any]:
        """For ``run.json``: the limit, what the rows cost when the session ended, and what
        could not be counted."""
        return {
            "limit_usd": self.limit_usd,
            "spent_usd": self.spent_usd,
            "unpriced_rows": self.unpriced_rows,
            "unpriced_models": sorted(self.unpriced_models),
            "prices": f"genai-prices {self.book.version}" if self.book.version else None,
        }
